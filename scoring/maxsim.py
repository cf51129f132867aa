"""MaxSim dispatch for the scorer: documents are scored where the document store keeps them (`scoring/store.py`):
one grouped launch of the paged kernel on CUDA, the exact fp32 path on CPU.

A group's documents are either already in the store (`StoredDocuments`: slots that `DocumentStore.lookup` or
`insert` pinned) or a packed host buffer + lengths. On CUDA a packed buffer is written to the store for the call
(one staged copy) and dropped after it; on CPU it is read in place. A CUDA call then copies the queries and the
metadata (each document's start and end in the store's page list, its group) in one pinned host-to-device copy and
launches once for every group; the kernel writes the scores straight into the pinned buffer: nothing loops over
documents in Python and a stored document costs no copy. The CPU path gathers stored rows a chunk of whole
documents at a time into a cache-sized buffer, widens them to fp32 (and applies the per-token scales of compressed
storage after the GEMM) and reduces per document. Against int8 documents the query is quantised the same way
(`quantize_int8`) on both paths: int8 tensor cores on CUDA, exact fp32 sums of the integers on CPU. No Ray or vLLM
import here.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kernels import maxsim as kmaxsim
from scoring.store import INTEGER_VIEWS, DocumentStore, StoredDocuments, cu_seqlens

_ALIGN = 256  # bytes: the queries and the metadata start aligned in the call's buffers
_CPU_CHUNK_ROWS = 4096  # document rows widened to fp32 at a time on the CPU path (6 MB at d 384; v3: 2048-8192 best)


@dataclass
class ScoreGroup:
    """One rerank request: one query against its documents."""

    query: np.ndarray  # [Lq, d], float32 or float16
    docs: np.ndarray | StoredDocuments  # [T, d] packed host documents (float16/float32), or documents in the store
    lengths: np.ndarray | None = None  # [B] token count per packed document, sum == T; None for stored documents


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `x` as int8 with one float32 scale each (amax|row| / 127, 1 for a zero row), rounded half up: the
    store's int8 format (`scoring.store.quantize`, the same float32 arithmetic), in numpy, for queries scored
    against int8 documents."""
    x = np.asarray(x, dtype=np.float32)
    y = np.abs(x)
    amax = y.max(axis=1)
    scale = amax / np.float32(127)
    scale[amax == 0] = 1
    np.divide(x, scale[:, None], out=y)  # ufuncs in place: np.clip and temporaries cost more than the arithmetic
    np.minimum(y, 127, out=y)
    np.maximum(y, -127, out=y)
    y += np.float32(0.5)
    np.floor(y, out=y)
    return y.astype(np.int8), scale


def _chunks(cu: np.ndarray, size: int):
    """(b0, b1): runs of whole documents whose rows (or pages; offsets `cu`) fit `size`, at least one a run."""
    n, b0 = cu.size - 1, 0
    while b0 < n:
        b1 = min(max(int(np.searchsorted(cu, cu[b0] + size, side="right")) - 1, b0 + 1), n)
        yield b0, b1
        b0 = b1


def _segment_max(x: torch.Tensor, counts: np.ndarray, uniform: bool) -> torch.Tensor:
    """Max over consecutive runs of `counts` rows of x [sum(counts), Lq] -> [len(counts), Lq] (an empty run: 0);
    `uniform` (every count equal) takes one reshape instead of a scatter."""
    if uniform:
        return x.view(counts.size, int(counts[0]), x.shape[1]).amax(1)
    ids = torch.from_numpy(np.repeat(np.arange(counts.size), counts))
    best = torch.zeros(counts.size, x.shape[1], dtype=torch.float32)
    return best.scatter_reduce_(0, ids[:, None].expand_as(x), x, reduce="amax", include_self=False)


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
        self._device_index = (self._device.index if self._device.index is not None else torch.cuda.current_device()
                              ) if self._device.type == "cuda" else -1
        self.store = DocumentStore(dim, store_bytes, self._device, dtype, headroom_bytes,
                                   staging_threads=staging_threads)
        # the query as the kernel reads it: int8 (quantised like the documents) for int8 storage, float16 for
        # float8, else the storage dtype
        self._int8_queries = self.store.dtype == torch.int8
        qdtype = torch.int8 if self._int8_queries else torch.float16 if self.store.compressed else self.store.dtype
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
    def _query_t(self, g: ScoreGroup, stored: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The query as the CPU path multiplies it, [d, Lq] fp32, and its per-row scales (int8 documents only)."""
        if stored and self._int8_queries:  # int8 documents: the query quantised like them, as on CUDA
            q_int, q_scale = quantize_int8(g.query)
            return torch.from_numpy(q_int.astype(np.float32)).T.contiguous(), torch.from_numpy(q_scale)
        return torch.from_numpy(np.ascontiguousarray(g.query, dtype=np.float32)).T.contiguous(), None

    def _score_cpu(self, g: ScoreGroup) -> np.ndarray:
        """Documents are widened to fp32 a chunk at a time into one reused buffer that stays in cache, multiplied
        with the fp32 query (one GEMM a chunk) and reduced per document: no full-size fp32 copy of the documents
        and no fresh allocation (page faults) per chunk."""
        if isinstance(g.docs, StoredDocuments):
            return self._score_cpu_stored(g)
        lengths = np.asarray(g.lengths, dtype=np.int64)
        cu = cu_seqlens(lengths)
        n_docs = lengths.size
        out = np.zeros(n_docs, dtype=np.float32)
        if n_docs == 0 or g.query.shape[0] == 0:
            return out
        q_t, _ = self._query_t(g, stored=False)
        lq, dim = q_t.shape[1], self.dim
        chunk = max(_CPU_CHUNK_ROWS, int(lengths.max()))  # a chunk holds whole documents, at least one
        widened = torch.empty(chunk, dim, dtype=torch.float32)
        sims = torch.empty(chunk, lq, dtype=torch.float32)
        docs = torch.from_numpy(np.ascontiguousarray(g.docs))
        out_t = torch.from_numpy(out)
        uniform = bool((lengths == lengths[0]).all())
        for b0, b1 in _chunks(cu, chunk):
            t0, t1 = int(cu[b0]), int(cu[b1])
            if t1 > t0:
                w = widened[:t1 - t0]
                w.copy_(docs[t0:t1])
                s = torch.mm(w, q_t, out=sims[:t1 - t0])
                out_t[b0:b1] = _segment_max(s, lengths[b0:b1], uniform).sum(1)
        return out

    def _score_cpu_stored(self, g: ScoreGroup) -> np.ndarray:
        """Stored documents a chunk of whole pages at a time: one `index_select` of pages (16 rows, 12 KB at d 384 in
        fp16) into the chunk buffer, widened and multiplied whole; the rows past a document's end in its last page
        are masked before the max. Compressed rows get their scales after the GEMM, an int8 query its scale after
        the max."""
        store = self.store
        with store.lock:
            pages, page_rows, n_pages = store.arena_pages(g.docs.slots)
        n_docs = n_pages.size
        out = np.zeros(n_docs, dtype=np.float32)
        if n_docs == 0 or g.query.shape[0] == 0 or pages.size == 0:
            return out
        q_t, q_scale = self._query_t(g, stored=True)
        lq, dim, p = q_t.shape[1], self.dim, store.page_tokens
        arena, scales = store.arena, store.scales
        arena_pages = arena.view(INTEGER_VIEWS[arena.dtype]).view(-1, p, dim)  # no float8 CPU index_select
        scale_pages = scales.view(-1, p) if scales is not None else None
        cu_p = cu_seqlens(n_pages)
        # rows past their document's end (in its last page): [P, page_tokens]
        stale = torch.from_numpy(np.arange(p)[None, :] >= page_rows[:, None])
        pages_t = torch.from_numpy(pages)
        chunk = max(_CPU_CHUNK_ROWS // p, int(n_pages.max()))  # pages a chunk; whole documents, at least one
        gathered = torch.empty(chunk, p, dim, dtype=arena_pages.dtype)
        widened = torch.empty(chunk * p, dim, dtype=torch.float32)
        sims = torch.empty(chunk * p, lq, dtype=torch.float32)
        out_t = torch.from_numpy(out)
        uniform = bool((n_pages == n_pages[0]).all())
        for b0, b1 in _chunks(cu_p, chunk):
            p0, p1 = int(cu_p[b0]), int(cu_p[b1])
            if p1 > p0:
                n = p1 - p0
                rows = torch.index_select(arena_pages, 0, pages_t[p0:p1], out=gathered[:n])
                w = widened[:n * p]
                w.copy_(rows.view(n * p, dim).view(arena.dtype))
                s = torch.mm(w, q_t, out=sims[:n * p])
                if scale_pages is not None:
                    s.mul_(torch.index_select(scale_pages, 0, pages_t[p0:p1]).view(n * p, 1))
                s3 = s.view(n, p, lq).masked_fill_(stale[p0:p1, :, None], float("-inf"))
                best = _segment_max(s3.amax(1), n_pages[b0:b1], uniform)  # pages' maxima, then documents'
                out_t[b0:b1] = (best if q_scale is None else best * q_scale).sum(1)
        return out

    # -- CUDA: one metadata copy, one grouped launch over the store's pages -------------------------------------
    def _buffers(self, nbytes: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """The pinned buffer (and a numpy view of it: host-side writes through numpy skip torch's per-op cost) and
        the device buffer, grown geometrically; typed views of both made once, so a call slices each only once."""
        if self._host is None or self._host.numel() < nbytes:
            size = max(nbytes, 2 * (0 if self._host is None else self._host.numel()), 1 << 16)
            size = _align(size)
            self._host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self._host_np = self._host.numpy()
            with torch.cuda.stream(self.store.stream):
                self._dev = torch.empty(size, dtype=torch.uint8, device=self._device)
            self._host_f32 = self._host.view(torch.float32)
            self._host_q = self._host.view(self._qdtype)
            self._dev_i32 = self._dev.view(torch.int32)
            self._dev_f32 = self._dev.view(torch.float32)
            self._dev_q = self._dev.view(self._qdtype)
        return self._host, self._host_np, self._dev

    def _score_cuda(self, groups: Sequence[ScoreGroup], slots: list[np.ndarray]) -> list[np.ndarray]:
        """Host work is a few writes into the pinned buffer: [queries | their scales (int8 only) | cu_q (G+1) | doc
        start (B) | doc end (B) | doc group (B) | scores (B)], each region 256-byte aligned; one copy up to the
        scores and one launch, whose kernel writes the scores into the pinned buffer."""
        store, dim, n_groups = self.store, self.dim, len(groups)
        q_lens = [g.query.shape[0] for g in groups]
        n_docs = [s.size for s in slots]
        tq, b = sum(q_lens), sum(n_docs)
        if b == 0:
            return [np.zeros(0, dtype=np.float32) for _ in groups]
        all_slots = slots[0] if n_groups == 1 else np.concatenate(slots)
        o_qs = _align(tq * dim * self._qsize) // 4  # 4-byte offsets from here on; the queries' scales (int8)
        o_cu = o_qs + (_align(4 * tq) // 4 if self._int8_queries else 0)
        o_start = o_cu + _align(4 * (n_groups + 1)) // 4
        o_end = o_start + _align(4 * b) // 4
        o_group = o_end + _align(4 * b) // 4
        o_out = o_group + _align(4 * b) // 4
        host, host_np, dev = self._buffers(4 * (o_out + b))
        ints = host_np.view(np.int32)
        start, end = ints[o_start:o_start + b], ints[o_end:o_end + b]
        np.take(store.row_start, all_slots, out=start)
        np.take(store.row_end, all_slots, out=end)
        if n_groups == 1:
            ints[o_group:o_group + b] = 0
            ints[o_cu:o_cu + 2] = (0, tq)
        else:
            ints[o_group:o_group + b] = np.repeat(np.arange(n_groups, dtype=np.int32), n_docs)
            ints[o_cu] = 0
            np.cumsum(q_lens, out=ints[o_cu + 1:o_cu + 1 + n_groups])
        queries = [g.query for g in groups]
        if self._int8_queries:  # int8 documents: the queries quantised like them, with their scales
            quantized = [quantize_int8(q) for q in queries]
            q_int = quantized[0][0] if n_groups == 1 else np.concatenate([qi for qi, _ in quantized])
            host_np[:tq * dim].view(np.int8).reshape(tq, dim)[:] = q_int
            host_np[4 * o_qs:4 * o_qs + 4 * tq].view(np.float32)[:] = (
                quantized[0][1] if n_groups == 1 else np.concatenate([qs for _, qs in quantized]))
        else:  # cast by torch (vectorised: numpy's float32 -> float16 cast took 20 µs a 32 x 128 query)
            rows = queries[0] if n_groups == 1 else np.concatenate(queries)
            self._host_q[:tq * dim].view(tq, dim).copy_(torch.from_numpy(np.ascontiguousarray(rows)))
        mean_ld = float(end.sum() - start.sum()) / b
        d32 = self._dev_i32
        # the store's stream is the device's default one: a thread that set no other issues on it without a switch
        on_store = torch._C._cuda_getCurrentRawStream(self._device_index) == store.stream.cuda_stream
        with contextlib.nullcontext() if on_store else torch.cuda.stream(store.stream):
            dev[:4 * o_out].copy_(host[:4 * o_out], non_blocking=True)
            pinned_out = self._host_f32[o_out:o_out + b]
            scores = kmaxsim.maxsim_paged(
                self._dev_q[:tq * dim].view(tq, dim), d32[o_cu:o_cu + n_groups + 1], store.arena, store.log,
                store.page_tokens, d32[o_start:o_start + b], d32[o_end:o_end + b], d32[o_group:o_group + b],
                max_lq=max(q_lens), mean_ld=mean_ld, scales=store.scales, out=pinned_out,
                q_scales=self._dev_f32[o_qs:o_qs + tq] if self._int8_queries else None)
            if scores is not pinned_out:  # queries longer than one block: summed on the GPU, then copied back
                pinned_out.copy_(scores, non_blocking=True)
        store.stream.synchronize()
        out = host_np.view(np.float32)[o_out:o_out + b].copy()
        if n_groups == 1:
            return [out]
        ends = np.cumsum(n_docs).tolist()
        return [out[a:e] for a, e in zip([0, *ends[:-1]], ends)]
