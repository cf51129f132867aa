"""MaxSim dispatch for the scorer: documents are scored where the document store keeps them (`scoring/store/pages.py`):
one grouped launch of the paged kernel on CUDA, the exact fp32 path on CPU.

A group's documents are either already in the store (`StoredDocuments`: slots that `DocumentStore.lookup` or
`insert` pinned) or a packed host buffer + lengths. On CUDA a packed buffer is written to the store for the call
(one staged copy) and dropped after it; on CPU it is read in place. A CUDA call then copies the queries and the
metadata (each document's start and end in the store's page list, its group) in one pinned host-to-device copy and
launches once for every group; the kernel writes the scores straight into the pinned buffer: nothing loops over
documents in Python and a stored document costs no copy. Those two steps are a CUDA graph per call shape (query
rows, groups and documents rounded up to powers of two, the block configuration), captured the first time a shape
is seen and replayed after: a warm call's host work is the writes into the pinned buffer and one replay. The CPU
path gathers stored rows a chunk of whole documents at a time into a cache-sized buffer, widens them to fp32 (and
applies the per-token scales of compressed storage after the GEMM) and reduces per document. Against compressed
documents the query is quantised for their tensor cores on both paths: int8 rows like the documents' for int8
(`quantize_int8`: int8 tensor cores on CUDA, exact fp32 sums of the integers on CPU), a float8 pair for float8_e4m3
(`kernels.maxsim.float8_query`: made on the GPU inside the call's graph, two fp8 dots a tile; on CPU the pair's
values in fp32). No Ray or vLLM import here.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kernels import maxsim as kmaxsim
from scoring.store.pages import INTEGER_VIEWS, DocumentStore, StoredDocuments, cu_seqlens

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
    store's int8 format (`scoring.store.pages.quantize`, the same float32 arithmetic), in numpy, for queries scored
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
        # the query reaches the kernel in the storage dtype: quantised for compressed storage (int8 rows like the
        # documents' for int8, a float8 pair [Lq, 2d] for float8_e4m3, each with a scale a row); its element size
        # picks the block configuration
        self._qsize = self.store.arena.element_size()
        self._layouts: dict[tuple, _Layout] = {}  # (tq, groups, documents) caps -> buffers and graphs, LRU order

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
        """The query as the CPU path multiplies it, [d, Lq] fp32, and its per-row scales (compressed documents only):
        quantised for stored compressed documents as on CUDA."""
        if stored and self.store.dtype == torch.int8:  # the query quantised like the documents
            q_int, q_scale = quantize_int8(g.query)
            return torch.from_numpy(q_int.astype(np.float32)).T.contiguous(), torch.from_numpy(q_scale)
        if stored and self.store.dtype == torch.float8_e4m3fn:  # the float8 pair's values (hi + lo, exact in fp32)
            pair, q_scale = kmaxsim.float8_query(torch.from_numpy(np.ascontiguousarray(g.query, dtype=np.float32)))
            return kmaxsim.dequantize_query(pair, torch.ones_like(q_scale)).T.contiguous(), q_scale
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

    # -- CUDA: one metadata copy and one launch, replayed as a CUDA graph ---------------------------------------
    def _layout(self, tq: int, n_groups: int, b: int) -> "_Layout":
        """The buffers of calls of up to (tq, n_groups, b) rounded up to powers of two; `_LAYOUTS` of them are kept,
        the least recently used dropped first."""
        caps = (_pow2(max(tq, 32)), _pow2(n_groups), _pow2(max(b, 64)))
        lay = self._layouts.pop(caps, None)
        if lay is None:
            lay = _Layout(*caps, self.dim, self.store.dtype, self._device)
            while len(self._layouts) >= _LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
        self._layouts[caps] = lay
        return lay

    def _score_cuda(self, groups: Sequence[ScoreGroup], slots: list[np.ndarray]) -> list[np.ndarray]:
        """Host work is a few writes into the layout's pinned buffer; then its graph (one metadata copy, one launch
        whose kernel writes the scores into the pinned buffer) is replayed, or, for a shape not seen before, issued
        once and captured."""
        store, dim, n_groups = self.store, self.dim, len(groups)
        q_lens = [g.query.shape[0] for g in groups]
        n_docs = [s.size for s in slots]
        tq, b = sum(q_lens), sum(n_docs)
        if b == 0:
            return [np.zeros(0, dtype=np.float32) for _ in groups]
        all_slots = slots[0] if n_groups == 1 else np.concatenate(slots)
        lay = self._layout(tq, n_groups, b)
        start, end, group = lay.start, lay.end, lay.group
        np.take(store.row_start, all_slots, out=start[:b])
        np.take(store.row_end, all_slots, out=end[:b])
        if lay.filled > b:  # past the call's documents: empty ones (the launch covers the layout's b)
            start[b:lay.filled] = 0
            end[b:lay.filled] = 0
            group[b:lay.filled] = 0
        lay.filled = b
        if n_groups == 1:
            group[:b] = 0
            lay.cu[1] = tq
        else:
            group[:b] = np.repeat(np.arange(n_groups, dtype=np.int32), n_docs)
            np.cumsum(q_lens, out=lay.cu[1:1 + n_groups])
        queries = [g.query for g in groups]
        if store.dtype == torch.int8:  # int8 documents: the queries quantised like them, with their scales
            quantized = [quantize_int8(q) for q in queries]
            lay.q_np[:tq] = quantized[0][0] if n_groups == 1 else np.concatenate([qi for qi, _ in quantized])
            lay.qs_np[:tq] = quantized[0][1] if n_groups == 1 else np.concatenate([qs for _, qs in quantized])
        else:  # cast by torch (numpy's float32 -> float16 cast took 20 µs a 32 x 128 query); float8 documents: float32
            # rows, made float8 pairs on the GPU (`_issue`)
            rows = queries[0] if n_groups == 1 else np.concatenate(queries)
            lay.q_host[:tq].copy_(torch.from_numpy(np.ascontiguousarray(rows)))
        max_lq = max(q_lens)
        cfg = kmaxsim.paged_config(max_lq, float(end[:b].sum() - start[:b].sum()) / b, dim, self._qsize,
                                   store.dtype)
        n_chunks = -(-max_lq // cfg.block_q)
        # the store's stream is the device's default one: a thread that set no other issues on it without a switch
        on_store = torch._C._cuda_getCurrentRawStream(self._device_index) == store.stream.cuda_stream
        with contextlib.nullcontext() if on_store else torch.cuda.stream(store.stream):
            graph = lay.graphs.get((cfg, n_chunks))  # None: not seen yet; False: capture failed
            if graph:
                graph.replay()
            else:
                self._issue(lay, cfg, n_chunks)
        store.stream.synchronize()
        out = lay.out_np[:b].copy()
        if graph is None:
            lay.graphs[(cfg, n_chunks)] = self._capture(lay, cfg, n_chunks)
        if n_groups == 1:
            return [out]
        ends = np.cumsum(n_docs).tolist()
        return [out[a:e] for a, e in zip([0, *ends[:-1]], ends)]

    def _issue(self, lay: "_Layout", cfg, n_chunks: int) -> None:
        """The device work of a call of this layout, the same every call (what a graph captures): the metadata
        copy, the launch over every document slot of the layout, and for a query longer than one block the sum of
        its chunks, copied back."""
        store = self.store
        lay.dev[:lay.nbytes].copy_(lay.host[:lay.nbytes], non_blocking=True)
        if lay.q_kernel is not lay.q_dev:  # float8 documents: the queries as float8 pairs (host: 160 µs a call, v15)
            kmaxsim.float8_query(lay.q_dev, out=(lay.q_kernel, lay.qs_dev))
        scores = kmaxsim.maxsim_paged(
            lay.q_kernel, lay.cu_dev, store.arena, store.log, store.page_tokens, lay.start_dev, lay.end_dev,
            lay.group_dev, max_lq=n_chunks * cfg.block_q, mean_ld=0.0, scales=store.scales, config=cfg,
            out=lay.out_host, q_scales=lay.qs_dev)
        if scores is not lay.out_host:
            lay.out_host.copy_(scores, non_blocking=True)

    def _capture(self, lay: "_Layout", cfg, n_chunks: int) -> torch.cuda.CUDAGraph | bool:
        """A CUDA graph of `_issue` for this layout and configuration (its launch replays in a few µs of host time
        instead of the ~50 of a copy and a Triton launch); False where capture fails: that shape stays eager."""
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(self.store.stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(stream):
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    self._issue(lay, cfg, n_chunks)
                finally:
                    graph.capture_end()
        except RuntimeError:
            return False
        return graph


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


_LAYOUTS = 16  # call layouts (and their graphs) a scorer keeps


class _Layout:
    """Pinned host and device buffers for calls of up to `tq` query rows, `n_groups` groups and `b` documents:
    [queries | their scales (compressed storage) | cu_q | doc start | doc end | doc group | scores], each region
    256-byte aligned, at fixed addresses (what lets a call be a CUDA graph), with typed views made once. For
    float8 documents the queries go up as float32 rows and become float8 pairs in two device-only buffers."""

    def __init__(self, tq: int, n_groups: int, b: int, dim: int, qdtype: torch.dtype, device: torch.device):
        int8 = qdtype == torch.int8
        fp8 = qdtype == torch.float8_e4m3fn
        if fp8:
            qdtype = torch.float32
        qsize = torch.empty(0, dtype=qdtype).element_size()
        o_qs = _align(tq * dim * qsize)
        o_cu = o_qs + (_align(4 * tq) if int8 else 0)
        o_start = o_cu + _align(4 * (n_groups + 1))
        o_end = o_start + _align(4 * b)
        o_group = o_end + _align(4 * b)
        o_out = o_group + _align(4 * b)
        self.nbytes = o_out  # what the call copies to the device: everything but the scores
        self.host = torch.zeros(o_out + _align(4 * b), dtype=torch.uint8, pin_memory=True)
        self.dev = torch.zeros(o_out, dtype=torch.uint8, device=device)
        h = self.host.numpy()
        ints = lambda t, o, n: t[o:o + 4 * n].view(torch.int32)  # noqa: E731
        self.q_host = self.host[:tq * dim * qsize].view(qdtype).view(tq, dim)
        self.q_np = h[:tq * dim].view(np.int8).reshape(tq, dim) if int8 else None
        self.qs_np = h[o_qs:o_qs + 4 * tq].view(np.float32) if int8 else None
        self.cu = h[o_cu:o_cu + 4 * (n_groups + 1)].view(np.int32)
        self.start, self.end, self.group = (h[o:o + 4 * b].view(np.int32) for o in (o_start, o_end, o_group))
        self.out_np = h[o_out:o_out + 4 * b].view(np.float32)
        self.out_host = self.host[o_out:o_out + 4 * b].view(torch.float32)
        self.q_dev = self.dev[:tq * dim * qsize].view(qdtype).view(tq, dim)
        if fp8:  # what the kernel reads: the pair and its scales, made on the device from q_dev
            self.q_kernel = torch.empty(tq, 2 * dim, dtype=torch.float8_e4m3fn, device=device)
            self.qs_dev = torch.empty(tq, dtype=torch.float32, device=device)
        else:
            self.q_kernel = self.q_dev
            self.qs_dev = self.dev[o_qs:o_qs + 4 * tq].view(torch.float32) if int8 else None
        self.cu_dev = ints(self.dev, o_cu, n_groups + 1)
        self.start_dev, self.end_dev, self.group_dev = (ints(self.dev, o, b) for o in (o_start, o_end, o_group))
        self.filled = 0  # documents the last call wrote
        self.graphs: dict = {}  # (config, query chunks) -> CUDA graph of the call
