"""Tiny ColBERT checkpoints with random weights, in the two on-disk formats users deploy.

No ColBERT weights can be downloaded here, so each format is written on the spot, file for file as its library
saves it, around a small real BERT (hidden 128, 2 heads of 64: vLLM's CPU attention rejects smaller heads) and the
packaged MiniLM WordPiece tokenizer (whose vocabulary has the `[unused0]` / `[unused1]` marker tokens):
- PyLate (what `pylate.models.ColBERT.save` writes): a sentence-transformers folder, BertModel weights at the root,
  the projection in `1_Dense`, the encoding settings in `config_sentence_transformers.json`;
- Stanford ColBERT (what `colbert.modeling.checkpoint` saves, e.g. colbert-ir/colbertv2.0): `HF_ColBERT` in
  config.json, `bert.*` weights and the projection `linear.weight` in one file, the settings in `artifact.metadata`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _copy_tokenizer(path: Path) -> None:
    """The MiniLM tokenizer's files as they are (what checkpoints on the hub carry: vocab.txt among them)."""
    source = Path(resolve_model_path(EMBEDDED_MODEL))
    for name in TOKENIZER_FILES:
        (path / name).write_bytes((source / name).read_bytes())


def _random_bert(hidden_size: int, layers: int, max_positions: int, seed: int):
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,  # MiniLM's WordPiece vocabulary
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        # wide weights: token embeddings differ clearly from token to token, so scores tell encodings apart
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return BertModel(config, add_pooling_layer=False).to(torch.float32).eval()


def _projection(hidden_size: int, dim: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(dim, hidden_size, generator=generator, dtype=torch.float32) / hidden_size**0.5


def build_pylate_colbert(
    path: str | Path,
    *,
    query_length: int = 12,
    document_length: int = 20,
    attend_to_expansion_tokens: bool = True,
    do_query_expansion: bool = True,
    dim: int = 48,
    hidden_size: int = 128,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A PyLate ColBERT folder at `path` (markers `[unused0]` / `[unused1]`, punctuation skiplist); returns it."""
    from safetensors.torch import save_file

    path = Path(path)
    bert = _random_bert(hidden_size, layers, 512, seed)
    bert.save_pretrained(path, safe_serialization=True)
    _copy_tokenizer(path)
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ],
            indent=2,
        )
    )
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": document_length - 1, "do_lower_case": False})
    )
    settings = {
        "__version__": {"sentence_transformers": "3.4.1", "transformers": "4.48.2", "pytorch": "2.5.1"},
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        "query_prefix": "[unused0]",
        "document_prefix": "[unused1]",
        "query_length": query_length,
        "document_length": document_length,
        "attend_to_expansion_tokens": attend_to_expansion_tokens,
        "skiplist_words": list(string.punctuation),
        "do_query_expansion": do_query_expansion,
    }
    (path / "config_sentence_transformers.json").write_text(json.dumps(settings, indent=2))
    dense = path / "1_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": hidden_size,
                "out_features": dim,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    save_file({"linear.weight": _projection(hidden_size, dim, seed)}, str(dense / "model.safetensors"))
    return path


def build_stanford_colbert(
    path: str | Path,
    *,
    query_maxlen: int = 10,
    doc_maxlen: int = 16,
    attend_to_mask_tokens: bool = False,
    dim: int = 32,
    hidden_size: int = 128,
    layers: int = 2,
    seed: int = 1,
) -> Path:
    """A Stanford ColBERT (`HF_ColBERT`) folder at `path`; returns it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bert = _random_bert(hidden_size, layers, 512, seed)
    config = bert.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    weights = {f"bert.{name}": tensor.contiguous() for name, tensor in bert.state_dict().items()}
    weights["linear.weight"] = _projection(hidden_size, dim, seed)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    _copy_tokenizer(path)
    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        "ncells": None,
        "centroid_score_threshold": None,
        "ndocs": None,
        "index_path": None,
        "nbits": 1,
        "kmeans_niters": 20,
        "resume": False,
        "similarity": "cosine",
        "bsize": 32,
        "accumsteps": 1,
        "lr": 1e-05,
        "maxsteps": 400000,
        "save_every": None,
        "warmup": 20000,
        "warmup_bert": None,
        "relu": False,
        "nway": 64,
        "use_ib_negatives": True,
        "reranker": False,
        "distillation_alpha": 1.0,
        "ignore_scores": False,
        "model_name": None,
        "query_maxlen": query_maxlen,
        "attend_to_mask_tokens": attend_to_mask_tokens,
        "interaction": "colbert",
        "dim": dim,
        "doc_maxlen": doc_maxlen,
        "mask_punctuation": True,
        "checkpoint": "bert-base-uncased",
        "triples": None,
        "collection": None,
        "queries": None,
        "index_name": None,
        "overwrite": False,
        "root": "experiments",
        "experiment": "default",
        "index_root": None,
        "name": "tiny",
        "rank": 0,
        "nranks": 1,
        "amp": True,
        "gpus": 0,
        "meta": {"hostname": "test", "git_branch": "main", "git_hash": "0", "cmd": "", "version": "colbert-v0.4"},
    }
    (path / "artifact.metadata").write_text(json.dumps(metadata, indent=4))
    return path
