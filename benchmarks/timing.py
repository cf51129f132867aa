"""What the MaxSim benchmarks share, with no import of this repository's packages (a probe can point those at
another tree): synchronised wall-clock medians, and a request as the encoder hands it to the scorer."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def wall_us(fn, n: int = 30, warmup: int = 1) -> float:
    """Median wall µs of `fn()` followed by a device synchronisation, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6)
    return round(statistics.median(ts), 1)


def request(n: int, d: int = 128, seed: int = 1, lengths: tuple[int, int] = (85, 512)):
    """n documents of 85-512 tokens (`lengths`, both ends included) as the encoder hands them over (one packed
    float16 buffer + lengths), a 32-token query: (lengths, documents, query) as numpy arrays."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g).numpy()
    docs = torch.nn.functional.normalize(torch.randn(int(lens.sum()), d, generator=g), dim=-1).half().numpy()
    query = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=-1).numpy()
    return lens, docs, query


def encoder_calls(docs: np.ndarray, lens: np.ndarray, chunk_tokens: int = 8192) -> list[np.ndarray]:
    """The packed buffer cut at document boundaries into the deployment's encoder calls of ~chunk_tokens."""
    cu = np.concatenate([[0], np.cumsum(lens)])
    cuts = np.searchsorted(cu, np.arange(chunk_tokens, cu[-1], chunk_tokens))
    return np.split(docs, np.unique(cu[cuts]))
