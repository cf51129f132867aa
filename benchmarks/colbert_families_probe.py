"""How far vLLM's own encoding of a ColBERT family is from PyLate's, on the tiny random checkpoints of the tests.

vLLM's server encodes query and document text as plain token sequences: no markers, no `[MASK]` expansion, no
skiplist, the full embedding width. This service encodes them as PyLate does (tests/e2e/test_colbert_families.py
checks it to 1e-4). Per family, the relative difference of the two MaxSim scores over the test's queries and
documents; the forward pass is the one the tests use as reference (transformers' ModernBertModel; vLLM's offline
engine for jina's rotary XLM-RoBERTa), so only the encoding differs. Random weights: the size of the gap on a
trained model is not measured here.

    .venv/bin/python -m benchmarks.colbert_families_probe     # table + results/colbert_families_probe.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tests.e2e.test_colbert_families import (DOCUMENTS, QUERIES, PyLateReference, VllmForward,
                                             transformers_reference)
from tests.tiny_colbert_families import build_jina_colbert, build_modernbert_colbert

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="colbert-families-"))
    jina_path = build_jina_colbert(root / "jina")
    engine = VllmForward(jina_path, "ColBERTJinaRobertaModel", trust_remote_code=True)
    references = {
        "modernbert (GTE-ModernColBERT layout)": transformers_reference(build_modernbert_colbert(root / "modernbert")),
        "jina-colbert-v2 layout": PyLateReference(jina_path, engine, query_prefix="[QueryMarker]",
                                                  document_prefix="[DocumentMarker]", query_length=12,
                                                  document_length=24, attend=True),
    }
    rows = {}
    for name, reference in references.items():
        def plain(text, reference=reference):
            return reference.tok(text, truncation=True, max_length=64)["input_ids"]

        if reference.forward is engine:
            ids = [reference.query_ids(q)[0] for q in QUERIES] + [reference.document_ids(d) for d in DOCUMENTS]
            engine.encode_all(ids + [plain(t) for t in QUERIES + DOCUMENTS])
        relative = []
        for query in QUERIES:
            q = reference.forward(plain(query), [1] * len(plain(query)))
            for document in DOCUMENTS:
                d = reference.forward(plain(document), [1] * len(plain(document)))
                vllm_own = float((q @ d.T).max(axis=1).sum())
                pylate = reference.score(query, document)
                relative.append(abs(vllm_own - pylate) / abs(pylate))
        rows[name] = {"pairs": len(relative), "median_relative_difference": float(np.median(relative)),
                      "max_relative_difference": float(max(relative))}
    print(f"{'family':40} {'pairs':>5} {'median rel. diff':>17} {'max rel. diff':>14}")
    for name, row in rows.items():
        print(f"{name:40} {row['pairs']:>5} {row['median_relative_difference']:>17.3f} "
              f"{row['max_relative_difference']:>14.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "colbert_families_probe.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
