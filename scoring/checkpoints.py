"""Checkpoint folders, whatever the kind: where a model's files are, its config.json, the longest sequence its
engine takes, and converted copies (a checkpoint presented to vLLM in the layout it loads, written once into a cache
folder, the checkpoint's own files untouched). No Ray or vLLM import here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from scoring.config.schema import resolve_model_path

CACHE_ENV = "RERANK_CHECKPOINT_CACHE"
# a Stanford checkpoint's settings file (artifact.metadata) is neither JSON nor weights
_HUB_FILES = ["*.json", "*.txt", "*.model", "artifact.metadata", "*.safetensors", "*/*.json", "*/*.safetensors"]

logger = logging.getLogger(__name__)


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
    return read_json(path / "config.json")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
