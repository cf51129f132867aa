"""A tiny ColQwen3 checkpoint with random weights, in the on-disk layout of TomoroAI/tomoro-colqwen3-embed-4b.

That checkpoint is its remote code's `ColQwen3` saved with `save_pretrained`: config.json with `model_type: colqwen3`,
`architectures: ["ColQwen3"]`, `embed_dim`, Qwen3-VL's `text_config` / `vision_config` and token ids, and an
`auto_map` naming its remote code files (not written here: that code is not ours to copy, and neither vLLM nor this
service runs it); weights `vlm.model.visual.*`, `vlm.model.language_model.*`, `vlm.lm_head.*` (a Qwen3-VL) and
`embedding_proj_layer.{weight,bias}` (a Linear with a bias); a Qwen2-VL image processor (16-pixel patches merged
2x2: one image token per 32x32 pixels) and a processor_config.json naming `ColQwen3Processor`.

Written on the spot, as small as vLLM's CPU backend runs it: a Qwen3 text model of hidden 128 (heads of 64, the CPU
minimum; two layers; M-RoPE sections for head dim 64), a two-block vision tower of width 64 with one deepstack
merger, and the byte-level BPE tokenizer of tests/tiny_jina_m0.py (Qwen2's format with Qwen-VL's special tokens,
`<|endoftext|>` its pad token: the query augmentation token).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_jina_m0 import qwen2_tokenizer

PATCH, MERGE = 16, 2
MIN_PIXELS = (PATCH * MERGE) ** 2  # one image token at least


def build_tiny_colqwen3(
    path: str | Path, *, hidden_size: int = 128, layers: int = 2, vision_hidden: int = 64, vision_layers: int = 2,
    embed_dim: int = 32, seed: int = 0,
) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen2_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text_config = {
        "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers, "num_attention_heads": hidden_size // 64, "num_key_value_heads": 1,
        "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [12, 10, 10],
                            "mrope_interleaved": True},
        "initializer_range": 0.2,  # wide weights: token embeddings differ clearly, so scores tell encodings apart
        "dtype": "float32",
    }
    vision_config = {
        "depth": vision_layers, "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
        "num_heads": vision_hidden // 64, "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
        "out_hidden_size": hidden_size, "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        "initializer_range": 0.2,
    }
    vlm_config = Qwen3VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False,
                               **ids)
    torch.manual_seed(seed)
    vlm = Qwen3VLForConditionalGeneration(vlm_config).to(torch.float32).eval()
    projection = torch.nn.Linear(hidden_size, embed_dim)
    torch.nn.init.normal_(projection.bias, std=0.5)  # a bias vLLM must not drop
    state = {f"vlm.{name}": tensor.contiguous() for name, tensor in vlm.state_dict().items()}
    state.update({f"embedding_proj_layer.{n}": t.detach().contiguous() for n, t in projection.state_dict().items()})
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["ColQwen3"],
        "auto_map": {"AutoConfig": "configuration_colqwen3.ColQwen3Config",
                     "AutoModel": "modeling_colqwen3.ColQwen3"},
        "model_type": "colqwen3",
        "embed_dim": embed_dim,
        "padding_side": "left",
        "initializer_range": 0.02,
        "dtype": "float32",
        "text_config": {**text_config, "model_type": "qwen3_vl_text"},
        "vision_config": {**vision_config, "model_type": "qwen3_vl", "hidden_act": "gelu_pytorch_tanh",
                          "in_channels": 3},
        "tie_word_embeddings": False,
        **ids,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], size={"shortest_edge": MIN_PIXELS, "longest_edge": 16777216},
    )
    image_processor.save_pretrained(path)
    preprocessor = json.loads((path / "preprocessor_config.json").read_text())
    preprocessor["image_processor_type"] = "Qwen2VLImageProcessor"  # the name the hub's file gives
    preprocessor["processor_class"] = "ColQwen3Processor"
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (path / "processor_config.json").write_text(json.dumps({
        "processor_class": "ColQwen3Processor",
        "auto_map": {"AutoProcessor": "processing_colqwen3.ColQwen3Processor"},
    }, indent=2))
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random ColQwen3 checkpoint (TomoroAI's layout).")
    parser.add_argument("path", help="directory to write (config.json, weights, processor, tokenizer)")
    print(build_tiny_colqwen3(parser.parse_args().path))


class CardReference:
    """The model card's encoding of the checkpoint at `path`, written out from its documented computation: its
    `ColQwen3Processor` (loaded with `max_num_visual_tokens=1280`) for the ids and pixels, its `ColQwen3` for the
    embeddings: transformers' Qwen3-VL (`Qwen3VLModel`'s last hidden states), `embedding_proj_layer`, L2
    normalisation clamped at float32's eps; `score_multi_vector`'s MaxSim. Float32, one item at a time (the card's
    batches pad on the left with masked rows, which give the same rows for the real tokens)."""

    VISUAL_PROMPT = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
    )

    def __init__(self, path: str | Path):
        import torch
        from safetensors.torch import load_file
        from transformers import (
            AutoTokenizer,
            Qwen2VLImageProcessorPil,
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
        )

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        token_ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        vlm_config = Qwen3VLConfig(text_config=config["text_config"], vision_config=config["vision_config"],
                                   **{key: config[key] for key in token_ids})
        self.image_token_id = config["image_token_id"]
        weights = load_file(str(path / "model.safetensors"))
        self.vlm = Qwen3VLForConditionalGeneration(vlm_config).to(torch.float32).eval()
        self.vlm.load_state_dict({k[len("vlm."):]: v for k, v in weights.items() if k.startswith("vlm.")})
        self.projection = torch.nn.Linear(vlm_config.text_config.hidden_size, config["embed_dim"])
        self.projection.load_state_dict({n: weights[f"embedding_proj_layer.{n}"] for n in ("weight", "bias")})
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path))
        tile = self.image_processor.patch_size * self.image_processor.merge_size
        self.image_processor.max_pixels = 1280 * tile * tile  # the card's max_num_visual_tokens=1280
        self.image_processor.size["longest_edge"] = self.image_processor.max_pixels

    def query_ids(self, text: str) -> list[int]:
        """`process_texts`: no query prefix, the stripped text, the pad token ten times."""
        return self.tokenizer(text.strip() + self.tokenizer.pad_token * 10)["input_ids"]

    def image_inputs(self, image) -> dict:
        """`process_images`: the visual prompt, its `<|image_pad|>` expanded to the image's merged patches."""
        pixels = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        count = int(pixels["image_grid_thw"][0].prod()) // self.image_processor.merge_size**2
        prompt = self.VISUAL_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * count)
        return {"input_ids": self.tokenizer(prompt)["input_ids"], **pixels}

    def embed_text(self, text: str):
        return self._embed({"input_ids": self.query_ids(text)})

    def embed_image(self, image):
        return self._embed(self.image_inputs(image))

    def _embed(self, inputs: dict):
        import torch

        ids = torch.tensor([inputs.pop("input_ids")])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **inputs}
        if "pixel_values" in inputs:  # transformers 5's Qwen3-VL places M-RoPE's image positions by this mask
            batch["mm_token_type_ids"] = (ids == self.image_token_id).long()
        with torch.no_grad():
            hidden = self.vlm.model(**batch).last_hidden_state
            embeddings = self.projection(hidden)
            norms = embeddings.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(embeddings.dtype).eps)
            return (embeddings / norms)[0]

    @staticmethod
    def score(query, document) -> float:
        """`score_multi_vector` of one query and one document."""
        return float((query @ document.T).max(dim=1).values.sum())
