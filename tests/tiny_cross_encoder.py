"""Cross-encoder checkpoints built on the spot (no cross-encoder weights can be downloaded here), for tests and
benchmarks: a BertForSequenceClassification with one label, saved in the ordinary on-disk format with the MiniLM
WordPiece tokenizer, so vLLM and sentence-transformers load it like any cross-encoder from the hub."""

from __future__ import annotations

from pathlib import Path

from scoring.config import EMBEDDED_MODEL, resolve_model_path


def build_tiny_cross_encoder(
    path: str | Path, *, hidden_size: int = 128, layers: int = 2, max_positions: int = 128, seed: int = 0
) -> Path:
    """A random BERT cross-encoder (heads of 64, vLLM's CPU minimum; token types on), whose tokenizer and
    position table agree on `max_positions`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), model_max_length=max_positions)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
        num_labels=1,
        initializer_range=0.2,  # wide enough weights that scores differ clearly from pair to pair
        architectures=["BertForSequenceClassification"],
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_minilm_cross_encoder(path: str | Path, seed: int = 0) -> Path:
    """The packaged MiniLM's BERT with a random one-label classification head: a real-sized cross-encoder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = Path(path)
    source = resolve_model_path(EMBEDDED_MODEL)
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.config.architectures = ["BertForSequenceClassification"]
    model.to(torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random BERT cross-encoder (for trying cross_encoder).")
    parser.add_argument("path", help="directory to write (config.json, weights, tokenizer)")
    parser.add_argument("--max-positions", type=int, default=512, help="its max_position_embeddings")
    args = parser.parse_args()
    print(build_tiny_cross_encoder(args.path, max_positions=args.max_positions))
