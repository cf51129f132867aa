"""The application test_kinds and test_generative share: every engine in it starts once for both files (a tiny
engine costs CI about half a minute of its 2 cores, and each app adds an ingress and a scorer).

A new model joins here when its config fits beside these (app-wide settings such as `cache`, `limits` and `auth`
are the defaults): its file takes the `shared_app` fixture (tests/e2e/conftest.py) and names its models so no two
files' names clash. The app is deleted after the last test that uses it; the files that use it run one after
another, so none of its engines outlives them.
"""

from __future__ import annotations

from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL
from tests.conftest import default_app_args

NAME, ROUTE = "shared", "/shared"
CANDIDATES = 3
CHUNK_OVERLAP = 4  # test_kinds' windows are laid out for this overlap


def shared_app_args(checkpoints: dict[str, Path]) -> dict:
    """The default late-interaction model first (what a request without a model gets); then test_kinds' kinds and
    cascades, whose settings include CHUNK_OVERLAP; then test_generative's Qwen3 template model and cascade, ahead of
    the raw-template one, so a /generative_scoring request without a model gets it."""
    kinds = [
        {"name": "tiny-ce", "kind": "cross_encoder", "model": str(checkpoints["cross_encoder"])},
        {"name": "tiny-xlmr-ce", "kind": "cross_encoder", "model": str(checkpoints["xlmr_cross_encoder"])},
        {"name": "tiny-modernbert-ce", "kind": "cross_encoder", "model": str(checkpoints["modernbert_cross_encoder"])},
        {"name": "minilm-bi", "kind": "bi_encoder", "model": EMBEDDED_MODEL},
        {"name": "colbert-then-ce", "kind": "cascade", "first": "minilm-colbert", "then": "tiny-ce",
         "candidates": CANDIDATES},
        {"name": "bi-then-ce", "kind": "cascade", "first": "minilm-bi", "then": "tiny-ce", "candidates": CANDIDATES},
        {"name": "ce-then-qwen3", "kind": "cascade", "first": "tiny-ce", "then": "tiny-qwen3-raw",
         "candidates": CANDIDATES},
        # chunks long documents unless a request says otherwise (the config's default)
        {"name": "colbert-then-ce-chunked", "kind": "cascade", "first": "minilm-colbert", "then": "tiny-ce",
         "candidates": CANDIDATES, "long_documents": "chunk"},
    ]
    generative = [
        {"name": "tiny-qwen3", "kind": "generative", "model": str(checkpoints["generative"]),
         "template": "qwen3-reranker", "max_model_len": 512, "gpu_memory_utilization": 0.1},
        {"name": "cascade", "kind": "cascade", "first": "minilm-colbert", "then": "tiny-qwen3",
         "candidates": CANDIDATES},
    ]
    # the same checkpoint with the raw template (query + item ids): a generative model with no instruction slot
    raw = {"name": "tiny-qwen3-raw", "kind": "generative", "model": str(checkpoints["generative"])}
    for model in [*kinds, raw]:  # a cascade's own setting applies to its requests, as a model's does
        model["chunk_overlap"] = CHUNK_OVERLAP
    default = {**default_app_args()["models"][0], "chunk_overlap": CHUNK_OVERLAP}
    return {"models": [default, *kinds[:4], *generative, raw, *kinds[4:]]}
