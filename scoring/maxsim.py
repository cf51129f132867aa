"""MaxSim dispatch for the scorer: documents are scored where the document store keeps them (`scoring/store.py`):
one grouped launch of the paged kernel on CUDA, the exact fp32 path on CPU.

A group's documents are either already in the store (`StoredDocuments`: slots that `DocumentStore.lookup` or
`insert` pinned) or a packed host buffer + lengths. On CUDA a packed buffer is written to the store for the call
(one staged copy) and dropped after it; on CPU it is read in place. A CUDA call then copies the queries and the
metadata (each document's start and end in the store's page list, its group) in one pinned host-to-device copy,
launches once for every group and copies the scores back: nothing loops over documents in Python and a stored
document costs no copy. The CPU path gathers stored rows a chunk of whole documents at a time into a cache-sized
buffer, widens them to fp32 (and applies the per-token scales of compressed storage after the GEMM) and reduces
per document. No Ray or vLLM import here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kernels import maxsim as kmaxsim
from scoring.store import INTEGER_VIEWS, DocumentStore, StoredDocuments

_ALIGN = 256  # bytes: the queries and the metadata start aligned in the call's buffers
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
_CPU_CHUNK_ROWS = 4096  # document rows widened to fp32 at a time on the CPU path (6 MB at d 384; v3: 2048-8192 best)


@dataclass
class ScoreGroup:
    """One rerank request: one query against its documents."""

    query: np.ndarray  # [Lq, d], float32 or float16
    docs: np.ndarray | StoredDocuments  # [T, d] packed host documents (float16/float32), or documents in the store
    lengths: np.ndarray | None = None  # [B] token count per packed document, sum == T; None for stored documents


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _cu_seqlens(lengths: np.ndarray) -> np.ndarray:
    cu = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    return cu


def _validate(groups: Sequence[ScoreGroup], dim: int) -> None:
    for i, g in enumerate(groups):
        if g.query.ndim != 2 or g.query.shape[1] != dim:
            raise ValueError(f"group {i}: query must be [Lq, {dim}], got {g.query.shape}")
        if isinstance(g.docs, StoredDocuments):
            continue
        if not isinstance(g.docs, np.ndarray) or g.docs.ndim != 2 or g.docs.shape[1] != dim:
            raise ValueError(f"group {i}: docs must be a [T, {dim}] array or stored documents")
        lengths = np.asarray(g.lengths)
        if g.lengths is None or lengths.ndim != 1 or (lengths.size and lengths.min() < 0):
            raise ValueError(f"group {i}: lengths must be a 1-D array of non-negative counts")
        if int(lengths.sum()) != g.docs.shape[0]:
            raise ValueError(f"group {i}: lengths sum to {int(lengths.sum())}, docs have {g.docs.shape[0]} rows")


class MaxSimScorer:
    """Scores (query, documents) groups; one instance per replica, for one model dimension, with its store."""

    def __init__(self, dim: int, device: str = "auto", dtype: str = "float16", store_bytes: int = 0,
                 headroom_bytes: int | None = None, staging_threads: int | None = None):
        """`dtype`: how documents are stored and scored (float16, bfloat16, float32, float8_e4m3, int8);
        `store_bytes`: document bytes the store keeps between calls; see `DocumentStore` for the rest."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dim = dim
        self._device = torch.device(device)
        self.store = DocumentStore(dim, store_bytes, self._device, dtype, headroom_bytes,
                                   staging_threads=staging_threads)
        qdtype = torch.float16 if self.store.compressed else self.store.dtype
        self._qdtype = qdtype
        self._qsize = torch.empty(0, dtype=qdtype).element_size()
        self._host: torch.Tensor | None = None  # pinned uint8: queries, metadata, scores
        self._host_np: np.ndarray | None = None
        self._dev: torch.Tensor | None = None  # device uint8: queries, metadata

    @property
    def device(self) -> str:
        return str(self._device)

    def warmup(self) -> float:
        """Compile the kernels for this dim and every length bucket; seconds taken (≈0 on CPU)."""
        t0 = time.perf_counter()
        if self._device.type == "cuda":
            kmaxsim.warmup(self.dim, self.store.dtype, self._device, page_tokens=self.store.page_tokens)
            rng = np.random.default_rng(0)
            q = rng.standard_normal((32, self.dim)).astype(np.float32)
            docs = rng.standard_normal((300, self.dim)).astype(np.float16)
            self.score([ScoreGroup(q, docs, np.array([100, 200]))])  # allocates the call's buffers too
            torch.cuda.synchronize(self._device)
        return time.perf_counter() - t0

    def score(self, groups: Sequence[ScoreGroup]) -> list[np.ndarray]:
        """One float32 [B_i] array of MaxSim scores per group, in order."""
        _validate(groups, self.dim)
        if not groups:
            return []
        if self._device.type != "cuda":
            return [self._score_cpu(g) for g in groups]
        with self.store.lock:
            host = [i for i, g in enumerate(groups) if not isinstance(g.docs, StoredDocuments)]
            written = None
            if host:  # packed host documents: into the store for this call, in one staged copy
                lengths = np.concatenate([np.asarray(groups[i].lengths, dtype=np.int64) for i in host])
                written = self.store.insert([None] * lengths.size, [groups[i].docs for i in host], lengths)
            try:
                slots = self._slots(groups, host, written)
                return self._score_cuda(groups, slots)
            finally:
                if written is not None:
                    self.store.release(written)

    @staticmethod
    def _slots(groups, host, written) -> list[np.ndarray]:
        slots = [g.docs.slots if isinstance(g.docs, StoredDocuments) else None for g in groups]
        at = 0
        for i in host:
            n = len(groups[i].lengths)
            slots[i] = written[at:at + n]
            at += n
        return slots

    # -- CPU: exact, fp32 accumulation, in cache-sized chunks of whole documents --------------------------------
    def _score_cpu(self, g: ScoreGroup) -> np.ndarray:
        """Documents are widened to fp32 a chunk at a time into one reused buffer that stays in cache, multiplied
        with the fp32 query (one GEMM a chunk) and reduced per document: no full-size fp32 copy of the documents
        and no fresh allocation (page faults) per chunk. Stored documents are gathered from the arena a chunk at a
        time first (their rows, in the arena's dtype); compressed ones get their scales after the GEMM."""
        stored = isinstance(g.docs, StoredDocuments)
        if stored:
            with self.store.lock:
                rows, cu = self.store.arena_rows(g.docs.slots)
            lengths = np.diff(cu)
        else:
            lengths = np.asarray(g.lengths, dtype=np.int64)
            cu = _cu_seqlens(lengths)
        n_docs = lengths.size
        out = np.zeros(n_docs, dtype=np.float32)
        if n_docs == 0 or g.query.shape[0] == 0:
            return out
        q_t = torch.from_numpy(np.ascontiguousarray(g.query, dtype=np.float32)).T.contiguous()  # [d, Lq]
        lq, dim = q_t.shape[1], self.dim
        chunk = max(_CPU_CHUNK_ROWS, int(lengths.max()))  # a chunk holds whole documents, at least one
        widened = torch.empty(chunk, dim, dtype=torch.float32)
        sims = torch.empty(chunk, lq, dtype=torch.float32)
        if stored:
            arena, scales = self.store.arena, self.store.scales
            bits = INTEGER_VIEWS[arena.dtype]  # gathered through an integer view: no float8 CPU index_select
            arena_bits = arena.view(bits)
            gathered = torch.empty(chunk, dim, dtype=bits)
            row_scales = torch.empty(chunk, dtype=torch.float32) if scales is not None else None
            rows_t = torch.from_numpy(rows)
        else:
            docs = torch.from_numpy(np.ascontiguousarray(g.docs))
        out_t = torch.from_numpy(out)
        uniform = bool((lengths == lengths[0]).all())
        b0 = 0
        while b0 < n_docs:
            b1 = int(np.searchsorted(cu, cu[b0] + chunk, side="right")) - 1
            b1 = min(max(b1, b0 + 1), n_docs)
            t0, t1 = int(cu[b0]), int(cu[b1])
            if t1 > t0:
                w = widened[:t1 - t0]
                if stored:
                    idx = rows_t[t0:t1]
                    w.copy_(torch.index_select(arena_bits, 0, idx, out=gathered[:t1 - t0]).view(arena.dtype))
                else:
                    w.copy_(docs[t0:t1])
                s = torch.mm(w, q_t, out=sims[:t1 - t0])
                if stored and scales is not None:
                    s.mul_(torch.index_select(scales, 0, idx, out=row_scales[:t1 - t0])[:, None])
                if uniform:  # equal lengths: one reshape, no scatter
                    out_t[b0:b1] = s.view(b1 - b0, int(lengths[0]), lq).amax(1).sum(1)
                else:
                    ids = torch.from_numpy(np.repeat(np.arange(b1 - b0), lengths[b0:b1]))
                    best = torch.zeros(b1 - b0, lq, dtype=torch.float32)
                    best.scatter_reduce_(0, ids[:, None].expand_as(s), s, reduce="amax", include_self=False)
                    out_t[b0:b1] = best.sum(1)
            b0 = b1
        return out

    # -- CUDA: one metadata copy, one grouped launch over the store's pages -------------------------------------
    def _buffers(self, nbytes: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """The pinned buffer (and a numpy view of it: host-side writes through numpy skip torch's per-op cost) and
        the device buffer, grown geometrically."""
        if self._host is None or self._host.numel() < nbytes:
            size = max(nbytes, 2 * (0 if self._host is None else self._host.numel()), 1 << 16)
            self._host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self._host_np = self._host.numpy()
            with torch.cuda.stream(self.store.stream):
                self._dev = torch.empty(size, dtype=torch.uint8, device=self._device)
        return self._host, self._host_np, self._dev

    def _score_cuda(self, groups: Sequence[ScoreGroup], slots: list[np.ndarray]) -> list[np.ndarray]:
        store, dim = self.store, self.dim
        q_lens = np.fromiter((g.query.shape[0] for g in groups), dtype=np.int64, count=len(groups))
        n_docs = np.fromiter(map(len, slots), dtype=np.int64, count=len(slots))
        all_slots = np.concatenate(slots) if len(slots) > 1 else slots[0]
        tq, b = int(q_lens.sum()), int(n_docs.sum())
        if b == 0:
            return [np.zeros(0, dtype=np.float32) for _ in groups]
        start, end = store.rows(all_slots)
        # pinned and device: [queries | cu_q (G+1) | doc start (B) | doc end (B) | doc group (B)]; pinned: the scores
        n_meta = len(groups) + 1 + 3 * b
        off_meta = _align(tq * dim * self._qsize)
        off_out = off_meta + _align(4 * n_meta)
        host, host_np, dev = self._buffers(off_out + 4 * b)
        meta = host_np[off_meta:off_meta + 4 * n_meta].view(np.int32)
        meta[:len(groups) + 1] = _cu_seqlens(q_lens)
        doc_meta = meta[len(groups) + 1:].reshape(3, b)
        doc_meta[0], doc_meta[1] = start, end
        doc_meta[2] = np.repeat(np.arange(len(groups)), n_docs)
        if self._qdtype == torch.bfloat16:  # no numpy bfloat16: through torch
            q_host = host[:tq * dim * self._qsize].view(torch.bfloat16).view(tq, dim)
            rows = [torch.from_numpy(np.ascontiguousarray(g.query)) for g in groups]
        else:
            q_host = host_np[:tq * dim * self._qsize].view(_NUMPY_DTYPES[self._qdtype]).reshape(tq, dim)
            rows = [g.query for g in groups]
        r = 0
        for row, lq in zip(rows, q_lens.tolist()):
            q_host[r:r + lq] = row  # cast to the query dtype on the way
            r += lq
        with torch.cuda.stream(store.stream):
            dev[:off_meta + 4 * n_meta].copy_(host[:off_meta + 4 * n_meta], non_blocking=True)
            m = dev[off_meta:off_meta + 4 * n_meta].view(torch.int32)
            d = m[len(groups) + 1:]
            scores = kmaxsim.maxsim_paged(
                dev[:tq * dim * self._qsize].view(self._qdtype).view(tq, dim), m[:len(groups) + 1], store.arena,
                store.log, store.page_tokens, d[:b], d[b:2 * b], d[2 * b:], max_lq=int(q_lens.max()),
                mean_ld=float((end - start).mean()), scales=store.scales)
            host[off_out:off_out + 4 * b].view(torch.float32).copy_(scores, non_blocking=True)
        store.stream.synchronize()
        return np.split(host_np[off_out:off_out + 4 * b].view(np.float32).copy(), np.cumsum(n_docs)[:-1])
