"""A tiny Qwen3 CausalLM with random weights and the MiniLM tokenizer, for tests and benchmarks.

No CausalLM weights can be downloaded here, so generative scoring is checked on a model built on the spot:
vLLM serves it like any Qwen3 checkpoint, and `transformers` gives the reference forward pass.
"""

from __future__ import annotations

from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path


def build_tiny_qwen3(
    path: str | Path,
    *,
    hidden_size: int = 128,
    layers: int = 2,
    intermediate_size: int = 256,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Save a random Qwen3ForCausalLM and the MiniLM tokenizer (vocab 30522) to `path`; returns `path`."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=1,
        head_dim=64,  # vLLM's CPU attention kernels reject smaller heads
        max_position_embeddings=max_positions,
        # Wide enough weights that label probabilities differ clearly from item to item.
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random Qwen3 CausalLM (for trying generative models).")
    parser.add_argument("path", help="directory to write (config.json, weights, tokenizer)")
    parser.add_argument("--max-positions", type=int, default=4096, help="its max_position_embeddings")
    args = parser.parse_args()
    print(build_tiny_qwen3(args.path, max_positions=args.max_positions))
