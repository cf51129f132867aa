"""MaxSim dispatch for the scorer: one grouped Triton launch on CUDA, the exact torch reference on CPU.

A group's documents come packed (one contiguous buffer + per-document lengths) or as one array per document (the
scorer deployment's cached rows and views of the encoder's packed output): the latter are read in place, a chunk
of rows at a time (one C-level concatenation per chunk, into the CPU path's cache-sized buffer or straight into a
pinned slot), so a request is never packed into one buffer of its size first. On CUDA
every call stages the documents of all groups through a small ring of reused pinned slots, each slot's
host-to-device copy overlapping the host-side staging of the next, and scores every group in one kernel launch;
nothing loops over documents in Python. The pinned memory is fixed (`_RING_SLOTS` x `_STAGE_CHUNK_BYTES`) instead
of growing with the largest request; on the H100's host the ring stages 76 MB as fast as one pinned buffer of the
request's size did, within that host's noise (docs/benchmarks.md v8). The staging copy is memory-bound and runs on
torch's intra-op threads, so the scorer sets their number itself (`staging_threads`) rather than inherit a Ray
actor's `OMP_NUM_THREADS` (its `num_cpus`, often 1: one thread stages 76 MB in ~16 ms on the H100's host, sixteen in
~2.6). No Ray or vLLM import here.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Sequence

import numpy as np
import torch

from kernels import maxsim as kmaxsim

_ALIGN = 256  # bytes: every staged section starts aligned, so the kernel sees aligned pointers
_FIRST_CHUNK_BYTES = 2 << 20  # host staging and the host-to-device copies proceed in chunks: a small first one,
_STAGE_CHUNK_BYTES = 8 << 20  # then chunks of this size
_RING_SLOTS = 4  # pinned staging slots of _STAGE_CHUNK_BYTES, reused round-robin (v8: 3-6 slots within noise)
_MAX_STAGING_THREADS = 16  # more adds no bandwidth on the H100's host (76 MB: 1 thread 10.2 ms, 4 1.9, 16 0.9)
_CPU_CHUNK_ROWS = 4096  # document rows widened to fp32 at a time on the CPU path (6 MB at d 384; v3: 2048-8192 best)
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY_DTYPES = {torch.float16: np.dtype(np.float16), torch.float32: np.dtype(np.float32)}


@dataclass
class ScoreGroup:
    """One rerank request: one query against its documents."""

    query: np.ndarray  # [Lq, d], float32 or float16
    # [T, d] packed documents, or one [L_i, d] array per document (a cache's rows): read in place, a chunk of rows
    # at a time, so a request mixing cached and fresh documents is never packed into one buffer first
    docs: np.ndarray | Sequence[np.ndarray]  # float16 or float32
    lengths: np.ndarray  # [B] int32/int64 token count per document, sum == T


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _validate(groups: Sequence[ScoreGroup], dim: int) -> None:
    for i, g in enumerate(groups):
        if g.query.ndim != 2 or g.query.shape[1] != dim:
            raise ValueError(f"group {i}: query must be [Lq, {dim}], got {g.query.shape}")
        lengths = np.asarray(g.lengths)
        if lengths.ndim != 1 or (lengths.size and lengths.min() < 0):
            raise ValueError(f"group {i}: lengths must be a 1-D array of non-negative counts")
        if isinstance(g.docs, np.ndarray):
            if g.docs.ndim != 2 or g.docs.shape[1] != dim:
                raise ValueError(f"group {i}: docs must be [T, {dim}], got {g.docs.shape}")
            if int(lengths.sum()) != g.docs.shape[0]:
                raise ValueError(f"group {i}: lengths sum to {int(lengths.sum())}, docs have {g.docs.shape[0]} rows")
            continue
        # one array per document: checked with C-level maps over the list, no Python frame per document
        shapes = list(map(_SHAPE, g.docs))
        if len(shapes) != lengths.size:
            raise ValueError(f"group {i}: {len(shapes)} document arrays for {lengths.size} lengths")
        if shapes and (set(map(len, shapes)) != {2} or set(map(_SECOND, shapes)) != {dim}):
            raise ValueError(f"group {i}: every document must be [L, {dim}]")
        if shapes and not np.array_equal(np.fromiter(map(_FIRST, shapes), np.int64, len(shapes)), lengths):
            raise ValueError(f"group {i}: document arrays' rows differ from lengths")
        if len(set(map(_DTYPE, g.docs))) > 1:
            raise ValueError(f"group {i}: document arrays of mixed dtypes")


def _cu_seqlens(lengths: np.ndarray) -> np.ndarray:
    cu = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    return cu


_SHAPE, _DTYPE = attrgetter("shape"), attrgetter("dtype")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


class _Rows:
    """One array per document ([L_i, d] each), read as one row range in place."""

    def __init__(self, parts: Sequence[np.ndarray], lengths: np.ndarray):
        self.parts = list(parts)
        self.starts = _cu_seqlens(np.asarray(lengths, dtype=np.int64))
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.float16)

    def gather(self, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
        """Rows r0..r1 (cutting through documents where they fall), copied into out[:r1 - r0] of this dtype: one
        C-level concatenation of the documents' slices, whatever their number."""
        dst = out[:r1 - r0]
        i0 = int(np.searchsorted(self.starts, r0, side="right")) - 1
        i1 = int(np.searchsorted(self.starts, r1, side="left"))
        if i1 - i0 == 1:  # inside one document
            np.copyto(dst, self.parts[i0][r0 - self.starts[i0]:r1 - self.starts[i0]])
            return dst
        pieces = self.parts[i0:i1]
        pieces[0] = pieces[0][r0 - self.starts[i0]:]
        pieces[-1] = pieces[-1][:r1 - self.starts[i1 - 1]]
        np.concatenate(pieces, axis=0, out=dst)
        return dst


class MaxSimScorer:
    """Scores (query, packed documents) groups; one instance per replica, for one model dimension."""

    def __init__(self, dim: int, device: str = "auto", dtype: str = "float16", staging_threads: int | None = None):
        """`staging_threads`: CPU threads of the host-side staging copy on CUDA; default the cores this process may
        run on, at most 16."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.dim = dim
        self._device = torch.device(device)
        self._dtype = _DTYPES[dtype]
        self._esize = torch.empty(0, dtype=self._dtype).element_size()
        self._lock = threading.Lock()  # the staging buffers are reused: one call at a time
        self._host: torch.Tensor | None = None  # pinned uint8 buffer: queries, metadata, scores
        self._dev: torch.Tensor | None = None  # device uint8 buffer: documents, queries, metadata
        self._ring: list[torch.Tensor] = []  # pinned uint8 slots the documents are staged through
        self._convert: np.ndarray | None = None  # per-document arrays of another dtype than the kernel's, gathered
        self._stream = torch.cuda.Stream(self._device) if self._device.type == "cuda" else None
        self._staging_threads = staging_threads or min(_MAX_STAGING_THREADS, len(os.sched_getaffinity(0)))

    @property
    def device(self) -> str:
        return str(self._device)

    def warmup(self) -> float:
        """Compile the kernels for this dim and every length bucket; seconds taken (≈0 on CPU)."""
        t0 = time.perf_counter()
        if self._device.type == "cuda":
            kmaxsim.warmup(self.dim, self._dtype, self._device)
            rng = np.random.default_rng(0)
            q = rng.standard_normal((32, self.dim)).astype(np.float32)
            docs = rng.standard_normal((300, self.dim)).astype(np.float16)
            self.score([ScoreGroup(q, docs, np.array([100, 200]))])  # allocates the staging buffers too
            torch.cuda.synchronize(self._device)
        return time.perf_counter() - t0

    def score(self, groups: Sequence[ScoreGroup]) -> list[np.ndarray]:
        """One float32 [B_i] array of MaxSim scores per group, in order."""
        _validate(groups, self.dim)
        if not groups:
            return []
        if self._device.type == "cuda":
            with self._lock:
                if torch.get_num_threads() != self._staging_threads:  # a per-thread setting: score() runs in
                    torch.set_num_threads(self._staging_threads)  # the event loop's worker threads
                return self._score_cuda(groups)
        return [self._score_cpu(g) for g in groups]

    # -- CPU: exact, fp32 accumulation, in cache-sized chunks of whole documents --------------------------------
    def _score_cpu(self, g: ScoreGroup) -> np.ndarray:
        """Documents are widened to fp32 a chunk at a time into one reused buffer that stays in cache, multiplied
        with the fp32 query (one GEMM a chunk) and reduced per document: no full-size fp32 copy of the documents
        and no fresh allocation (page faults) per chunk."""
        lengths = np.asarray(g.lengths, dtype=np.int64)
        n_docs = lengths.size
        out = np.zeros(n_docs, dtype=np.float32)
        if n_docs == 0 or g.query.shape[0] == 0:
            return out
        q_t = torch.from_numpy(np.ascontiguousarray(g.query, dtype=np.float32)).T.contiguous()  # [d, Lq]
        packed = isinstance(g.docs, np.ndarray)
        docs = torch.from_numpy(np.ascontiguousarray(g.docs)) if packed else None
        src = None if packed else _Rows(g.docs, lengths)
        cu = _cu_seqlens(lengths)
        lq, dim = q_t.shape[1], self.dim
        rows = max(_CPU_CHUNK_ROWS, int(lengths.max()))  # a chunk holds whole documents, at least one
        widened = torch.empty(rows, dim, dtype=torch.float32)
        # per-document arrays: a chunk's rows are gathered into a cache-sized buffer of their dtype first
        gathered = np.empty((rows, dim), dtype=src.dtype) if docs is None else None
        sims = torch.empty(rows, lq, dtype=torch.float32)
        out_t = torch.from_numpy(out)
        uniform = bool((lengths == lengths[0]).all())
        b0 = 0
        while b0 < n_docs:
            b1 = int(np.searchsorted(cu, cu[b0] + rows, side="right")) - 1
            b1 = min(max(b1, b0 + 1), n_docs)
            t0, t1 = int(cu[b0]), int(cu[b1])
            if t1 > t0:
                w = widened[:t1 - t0]
                w.copy_(docs[t0:t1] if docs is not None else torch.from_numpy(src.gather(t0, t1, gathered)))
                s = torch.mm(w, q_t, out=sims[:t1 - t0])
                if uniform:  # equal lengths: one reshape, no scatter
                    out_t[b0:b1] = s.view(b1 - b0, int(lengths[0]), lq).amax(1).sum(1)
                else:
                    ids = torch.from_numpy(np.repeat(np.arange(b1 - b0), lengths[b0:b1]))
                    best = torch.zeros(b1 - b0, lq, dtype=torch.float32)
                    best.scatter_reduce_(0, ids[:, None].expand_as(s), s, reduce="amax", include_self=False)
                    out_t[b0:b1] = best.sum(1)
            b0 = b1
        return out

    # -- CUDA: stage through pinned memory, one grouped launch --------------------------------------------------
    def _buffers(self, host_bytes: int, dev_bytes: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The pinned and the device buffer, grown geometrically; True when the device buffer is new (allocated on
        the caller's stream, so the scorer's stream must wait for that stream's pending work once)."""
        if self._host is None or self._host.numel() < host_bytes:
            size = max(host_bytes, 2 * (0 if self._host is None else self._host.numel()), 1 << 16)
            self._host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        grown = self._dev is None or self._dev.numel() < dev_bytes
        if grown:
            size = max(dev_bytes, 2 * (0 if self._dev is None else self._dev.numel()), 1 << 20)
            self._dev = None  # the old block goes back to the allocator before the larger one is taken
            self._dev = torch.empty(size, dtype=torch.uint8, device=self._device)
        return self._host, self._dev, grown

    def _slots(self, slot_bytes: int) -> list[torch.Tensor]:
        if len(self._ring) != _RING_SLOTS or self._ring[0].numel() < slot_bytes:
            self._ring = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(_RING_SLOTS)]
        return self._ring

    def _gather(self, src: _Rows, r0: int, r1: int, slot: torch.Tensor) -> None:
        """Rows r0..r1 of per-document arrays into a pinned slot: straight from the documents' arrays when their
        dtype is the slot's, else through one host buffer of their dtype and a converting copy. One thread: split
        over up to 16 threads (numpy concatenations in a pool) it measured slower on the H100's host
        (docs/benchmarks.md v9)."""
        if src.dtype == _NUMPY_DTYPES.get(self._dtype):
            src.gather(r0, r1, slot.numpy())
            return
        if self._convert is None or self._convert.dtype != src.dtype or self._convert.shape[0] < r1 - r0:
            self._convert = np.empty((max(r1 - r0, slot.shape[0]), self.dim), dtype=src.dtype)
        slot.copy_(torch.from_numpy(src.gather(r0, r1, self._convert)))

    def _score_cuda(self, groups: Sequence[ScoreGroup]) -> list[np.ndarray]:
        dim, esize = self.dim, self._esize
        q_lens = np.array([g.query.shape[0] for g in groups], dtype=np.int64)
        n_docs = np.array([len(g.lengths) for g in groups], dtype=np.int64)
        doc_lengths = np.concatenate([np.asarray(g.lengths, dtype=np.int64) for g in groups])
        tq, t, b = int(q_lens.sum()), int(doc_lengths.sum()), int(n_docs.sum())
        if b == 0:
            return [np.zeros(0, dtype=np.float32) for _ in groups]

        # device layout: [documents | queries | cu_q (G+1) | cu_d (B+1) | doc_group (B)] (the kernel allocates its
        # scores); pinned: [queries | metadata | scores (B, fp32)], the documents going through the ring. Documents
        # first: their address is the buffer's, so the L2 streaming window the kernel sets over them stays valid
        # from one call to the next
        off_q = _align(t * dim * esize)
        n_meta = (len(groups) + 1) + (b + 1) + b
        h_meta = _align(tq * dim * esize)
        h_out = h_meta + _align(4 * n_meta)
        host, dev, grown = self._buffers(h_out + _align(4 * b), off_q + h_out)
        row_bytes = dim * esize
        slot_rows = max(1, _STAGE_CHUNK_BYTES // row_bytes)
        slots = self._slots(slot_rows * row_bytes)
        done: list[torch.cuda.Event | None] = [None] * len(slots)

        stream = self._stream
        if grown:  # a new device buffer may reuse memory that work still queued on the caller's stream reads
            stream.wait_stream(torch.cuda.current_stream(self._device))

        def send_queries_and_metadata() -> None:
            meta = np.concatenate([_cu_seqlens(q_lens), _cu_seqlens(doc_lengths),
                                   np.repeat(np.arange(len(groups)), n_docs)]).astype(np.int32)
            host[h_meta:h_meta + 4 * n_meta].view(torch.int32).copy_(torch.from_numpy(meta))
            q_host = host[:tq * dim * esize].view(self._dtype).view(tq, dim)
            r = 0
            for g, lq in zip(groups, q_lens):
                q_host[r:r + lq].copy_(torch.from_numpy(np.ascontiguousarray(g.query)))
                r += int(lq)
            dev[off_q:off_q + h_out].copy_(host[:h_out], non_blocking=True)

        with torch.cuda.stream(stream):
            # the documents a chunk at a time through the ring, the DMA of one slot overlapping the host-side copy
            # (and dtype conversion) into the next; the first chunk is small and goes first, so the link idles only
            # while it is staged, and the queries and metadata (one small copy) follow it
            rows_per_chunk = min(slot_rows, max(1, _FIRST_CHUNK_BYTES // row_bytes))
            row = 0
            i = 0
            for g in groups:
                packed = torch.from_numpy(np.ascontiguousarray(g.docs)) if isinstance(g.docs, np.ndarray) else None
                src = None if packed is not None else _Rows(g.docs, g.lengths)
                n_rows = int(np.asarray(g.lengths).sum())
                r0 = 0
                while r0 < n_rows:
                    n = min(rows_per_chunk, n_rows - r0)
                    k = i % len(slots)
                    if done[k] is not None:
                        done[k].synchronize()  # the slot's previous copy to the GPU has finished
                    slot = slots[k][:n * row_bytes].view(self._dtype).view(n, dim)
                    if packed is not None:
                        slot.copy_(packed[r0:r0 + n])  # torch's threads (and the dtype conversion)
                    else:
                        self._gather(src, r0, r0 + n, slot)
                    a = row * row_bytes
                    dev[a:a + n * row_bytes].copy_(slots[k][:n * row_bytes], non_blocking=True)
                    done[k] = torch.cuda.Event()
                    done[k].record(stream)
                    if i == 0:
                        send_queries_and_metadata()
                    row += n
                    r0 += n
                    i += 1
                    rows_per_chunk = slot_rows
            if i == 0:  # no document rows at all
                send_queries_and_metadata()

            meta_dev = dev[off_q + h_meta:off_q + h_meta + 4 * n_meta].view(torch.int32)
            cu_q = meta_dev[:len(groups) + 1]
            cu_d = meta_dev[len(groups) + 1:len(groups) + 2 + b]
            doc_group = meta_dev[len(groups) + 2 + b:]
            scores = kmaxsim.maxsim_grouped(
                dev[off_q:off_q + tq * dim * esize].view(self._dtype).view(tq, dim), cu_q,
                dev[:t * dim * esize].view(self._dtype).view(t, dim), cu_d, doc_group,
                max_lq=int(q_lens.max()),
            )
            out_host = host[h_out:h_out + 4 * b].view(torch.float32)
            out_host.copy_(scores, non_blocking=True)
        stream.synchronize()
        result = out_host.numpy().copy()
        return np.split(result, np.cumsum(n_docs)[:-1])


def pack_device_documents(docs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-document [Ld_i, d] tensors already on the GPU -> (packed [T, d], cu_seqlens [B+1] int32).

    When the tensors are consecutive row ranges of one buffer (an encoder that writes one packed output), the
    packed view is returned without a copy; otherwise they are concatenated on the GPU.
    """
    if not docs:
        raise ValueError("no documents")
    first = docs[0]
    lengths = np.fromiter((t.shape[0] for t in docs), dtype=np.int64, count=len(docs))
    ptrs = np.fromiter((t.data_ptr() for t in docs), dtype=np.int64, count=len(docs))
    row_bytes = first.shape[1] * first.element_size()
    cu = torch.from_numpy(_cu_seqlens(lengths).astype(np.int32)).to(first.device, non_blocking=True)
    total = int(lengths.sum())
    base = first.untyped_storage()
    offset = first.storage_offset()
    if (all(t.is_contiguous() for t in docs) and bool(np.all(np.diff(ptrs) == lengths[:-1] * row_bytes))
            and (offset + total * first.shape[1]) * first.element_size() <= base.nbytes()):
        packed = torch.empty(0, dtype=first.dtype, device=first.device)
        packed.set_(base, offset, (total, first.shape[1]), (first.shape[1], 1))
        return packed, cu
    return torch.cat(list(docs)), cu
