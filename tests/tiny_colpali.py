"""A tiny ColPali checkpoint with random weights, in transformers' `save_pretrained` layout of `ColPaliForRetrieval`
+ `ColPaliProcessor` (the layout of vidore/colpali-v1.3-hf).

No ColPali weights can be downloaded here, so it is written on the spot: PaliGemma's SigLIP vision tower (hidden 64,
one head of 64: vLLM's CPU attention rejects smaller heads) on 32-pixel images of 8-pixel patches (16 image tokens an
image), a Gemma text model (hidden 128, heads of 64, two layers), and a Gemma tokenizer (byte-fallback BPE, `<pad>`
`<eos>` `<bos>` `<unk>` at 0-3 as in Gemma's) trained on a few sentences, with `<image>` added as a special token;
the processor adds its `<locNNNN>` / `<segNNN>` tokens after it, as it does to the released tokenizer.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "what does the chart on this page show? quarterly revenue grew by ten percent in every region.",
    "Describe the image. Question: which table lists the sales of the north and south offices?",
    "the report compares costs, prices and margins of the products sold last year.",
]


def gemma_tokenizer(vocab_size: int = 400):
    """A Gemma tokenizer (transformers' `GemmaTokenizer`: byte-fallback BPE, spaces as `▁`) with merges learnt from
    `CORPUS`, `<image>` added as a special token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)] + ["\n", "▁"],
        show_progress=False,
    )
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    bpe.train_from_iterator(CORPUS, trainer)
    learnt = bpe.model  # the vocabulary and merges, in the order they were learnt
    import json

    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    del learnt
    tokenizer = GemmaTokenizer(vocab=state["vocab"], merges=merges, add_bos_token=True, model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_tiny_colpali(
    path: str | Path, *, image_size: int = 32, patch_size: int = 8, text_hidden: int = 128, text_layers: int = 2,
    vision_hidden: int = 64, embedding_dim: int = 128, seed: int = 0,
) -> Path:
    import torch
    from transformers import (
        ColPaliConfig,
        ColPaliForRetrieval,
        ColPaliProcessor,
        GemmaConfig,
        PaliGemmaConfig,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    path = Path(path)
    tokenizer = gemma_tokenizer()
    image_seq_length = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        resample=3,
    )
    image_processor.image_seq_length = image_seq_length
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <loc>/<seg> tokens
    text_config = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers, num_attention_heads=text_hidden // 64, num_key_value_heads=1, head_dim=64,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,  # wide weights: token embeddings differ clearly, so scores tell encodings apart
    )
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2,
        num_attention_heads=vision_hidden // 64, image_size=image_size, patch_size=patch_size, vision_use_head=False,
    )
    vlm_config = PaliGemmaConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vocab_size=len(tokenizer),
        projection_dim=text_hidden, hidden_size=text_hidden,
    )
    config = ColPaliConfig(vlm_config=vlm_config.to_dict(), embedding_dim=embedding_dim, initializer_range=0.2,
                           architectures=["ColPaliForRetrieval"])
    torch.manual_seed(seed)
    model = ColPaliForRetrieval(config).to(torch.float32).eval()
    with torch.no_grad():  # the projection's bias is random too (zero at init), so a loader dropping it shows
        model.embedding_proj_layer.bias.normal_(0.0, 0.2)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random ColPali checkpoint.")
    parser.add_argument("path", help="directory to write (config.json, weights, processor, tokenizer)")
    print(build_tiny_colpali(parser.parse_args().path))
