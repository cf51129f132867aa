"""A tiny ColModernVBert checkpoint with random weights, in transformers' `save_pretrained` layout of
`ColModernVBertForRetrieval` + `ColModernVBertProcessor` (the layout of ModernVBERT/colmodernvbert-merged's
transformers port).

No ColModernVBert weights can be downloaded here, so it is written on the spot: a SigLIP vision tower (hidden 64,
one head of 64: vLLM's CPU attention rejects smaller heads) on 32-pixel images of 8-pixel patches, a pixel shuffle
of 2 (4 image tokens an image), and a ModernBERT text model (hidden 128, heads of 64, three layers: one global, two
local), with the packaged MiniLM WordPiece tokenizer plus the processor's special tokens (`<fake_token_around_image>`,
`<image>`, `<end_of_utterance>`, `<global-img>`, the tile tags, `<|begin_of_text|>`). Every text-model setting vLLM's
config does not read stays at its default, as in the released checkpoint. The image processor splits pages into
tiles as the released one does (Idefics3's `do_image_splitting`, pages resized to a longest edge of a few tiles:
2048 = 4 x 512 there, 64 = 2 x 32 here, so a page is up to 2 x 2 tiles and the global image, 20 image tokens);
`image_splitting=False` writes one that does not.
"""

from __future__ import annotations

from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|begin_of_text|>"]
TILE_TAGS = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]


def build_tiny_colmodernvbert(
    path: str | Path, *, image_size: int = 32, patch_size: int = 8, pixel_shuffle_factor: int = 2,
    text_hidden: int = 128, text_layers: int = 3, vision_hidden: int = 64, embedding_dim: int = 128,
    max_positions: int = 512, seed: int = 0, image_splitting: bool = True,
) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        ColModernVBertConfig,
        ColModernVBertForRetrieval,
        ColModernVBertProcessor,
        Idefics3ImageProcessor,
        ModernBertConfig,
        ModernVBertConfig,
        SiglipVisionConfig,
    )

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), model_max_length=max_positions,
                                              model_input_names=["input_ids", "attention_mask"])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS + TILE_TAGS})
    image_seq_len = (image_size // patch_size) ** 2 // pixel_shuffle_factor**2
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=image_splitting,
        size={"longest_edge": 2 * image_size if image_splitting else image_size},
        max_image_size={"longest_edge": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = ColModernVBertProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        image_seq_len=image_seq_len)
    text_config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers, num_attention_heads=text_hidden // 64, mlp_bias=False,
        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        initializer_range=0.2,  # wide weights: token embeddings differ clearly, so scores tell encodings apart
    )
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2,
        num_attention_heads=vision_hidden // 64, image_size=image_size, patch_size=patch_size,
    )
    vlm_config = ModernVBertConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pixel_shuffle_factor=pixel_shuffle_factor,
    )
    config = ColModernVBertConfig(vlm_config=vlm_config.to_dict(), embedding_dim=embedding_dim,
                                  initializer_range=0.2, architectures=["ColModernVBertForRetrieval"])
    torch.manual_seed(seed)
    model = ColModernVBertForRetrieval(config).to(torch.float32).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random ColModernVBert checkpoint.")
    parser.add_argument("path", help="directory to write (config.json, weights, processor, tokenizer)")
    parser.add_argument("--no-splitting", action="store_true", help="an image processor that does not split pages")
    args = parser.parse_args()
    print(build_tiny_colmodernvbert(args.path, image_splitting=not args.no_splitting))
