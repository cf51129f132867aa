"""MaxSim (ColBERT late interaction) over packed documents: Triton kernels and their exact reference.

score(query, doc) = sum over query tokens i of max over doc tokens j of <Q_i, D_j>.

Documents are packed without padding: `D` is `[T, d]` and `cu_seqlens` `[B+1]` (int32) holds the offsets, so
document b is `D[cu_seqlens[b]:cu_seqlens[b+1]]`. Every form accumulates in fp32 and returns fp32. Extra memory
is O(B): the kernels keep the running max of each query token in registers and write one value per (query,
document); a query longer than one row block adds one partial sum per (block, document), summed afterwards.

Conventions: an empty document scores 0 (max over nothing is taken as 0), so does an empty query. Query and
documents are computed in the documents' dtype (the query is cast to it); fp32 inputs use IEEE fp32 products.

Compilation: the kernels are specialised only on the model dimension, the dtype and a block configuration chosen
from length buckets (`_config`), never on exact lengths or counts, so a replica that ran `warmup` for its `d`
never compiles while serving.

L2: on CUDA a launch marks the documents' bytes as streaming (evicted first) through the stream's L2 access-policy
window, since every document byte is read once (`_stream_documents`, `L2_STREAMING`; docs/kernel_notes.md v9).
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
from dataclasses import dataclass

from itertools import repeat as _repeat
from operator import attrgetter, itemgetter

import numpy as np
import torch

try:  # Triton is optional: CPU-only installs use the reference.
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None
    tl = None

__all__ = [
    "maxsim_packed",
    "maxsim_list",
    "maxsim_grouped",
    "maxsim_reference",
    "maxsim_grouped_reference",
    "triton_available",
    "warmup",
]


# --------------------------------------------------------------------------------------------------------------
# Exact reference (CPU or GPU, any float dtype; float64 on request)
# --------------------------------------------------------------------------------------------------------------

_REF_CHUNK_ELEMS = 1 << 22  # similarity elements per chunk: bounds the reference's memory, never [B, Lq, Ld]


def _doc_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths,
                                   output_size=total)


def _segment_maxsim(Qs: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Qs [Nq, Lq, d] against packed D -> [Nq, B] in `dtype`, chunked over tokens at document boundaries."""
    nq, lq, _ = Qs.shape
    n_docs = cu_seqlens.numel() - 1
    out = torch.zeros(nq, n_docs, dtype=dtype, device=D.device)
    if n_docs == 0 or lq == 0 or nq == 0:
        return out
    cu = cu_seqlens.long().cpu()
    Qf = Qs.to(dtype).reshape(nq * lq, -1)
    rows_per_chunk = max(1, _REF_CHUNK_ELEMS // max(1, nq * lq))
    b0 = 0
    while b0 < n_docs:
        # whole documents per chunk; a single document longer than the budget is one chunk of its own
        b1 = int(torch.searchsorted(cu, cu[b0] + rows_per_chunk, right=True)) - 1
        b1 = min(max(b1, b0 + 1), n_docs)
        t0, t1 = int(cu[b0]), int(cu[b1])
        if t1 > t0:
            sims = D[t0:t1].to(dtype) @ Qf.T  # [tokens, Nq*Lq]
            ids = _doc_ids(cu_seqlens[b0:b1 + 1].to(D.device) - t0, t1 - t0)
            best = torch.zeros(b1 - b0, nq * lq, dtype=dtype, device=D.device)
            best.scatter_reduce_(0, ids[:, None].expand_as(sims), sims, reduce="amax", include_self=False)
            out[:, b0:b1] = best.reshape(b1 - b0, nq, lq).sum(-1).T
        b0 = b1
    return out


def maxsim_reference(Q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact MaxSim in `dtype` (float32 or float64): Q [Lq, d] -> [B], Q [Nq, Lq, d] -> [Nq, B]."""
    _check_packed(Q, D, cu_seqlens)
    out = _segment_maxsim(Q if Q.dim() == 3 else Q[None], D, cu_seqlens, dtype)
    return out if Q.dim() == 3 else out[0]


def maxsim_grouped_reference(Q: torch.Tensor, cu_seqlens_q: torch.Tensor, D: torch.Tensor,
                             cu_seqlens: torch.Tensor, doc_group: torch.Tensor,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact grouped MaxSim: document b is scored against query `doc_group[b]` -> [B] in `dtype`.

    Loops over groups (requests), never over documents.
    """
    n_docs = cu_seqlens.numel() - 1
    out = torch.zeros(n_docs, dtype=dtype, device=D.device)
    if n_docs == 0:
        return out
    cu = cu_seqlens.long()
    cq = cu_seqlens_q.long().cpu()
    group = doc_group.long()
    order = torch.argsort(group, stable=True)
    sorted_group = group[order].cpu()
    bounds = torch.searchsorted(sorted_group, torch.arange(cq.numel(), dtype=torch.long))
    for g in range(cq.numel() - 1):
        docs = order[int(bounds[g]):int(bounds[g + 1])]
        if docs.numel() == 0:
            continue
        # gather this group's documents into one packed block (contiguous runs stay contiguous)
        starts, ends = cu[docs], cu[docs + 1]
        lengths = ends - starts
        token_idx = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths) + \
            torch.arange(int(lengths.sum()), device=D.device)
        sub_cu = torch.zeros(docs.numel() + 1, dtype=torch.long, device=D.device)
        sub_cu[1:] = torch.cumsum(lengths, 0)
        q = Q[int(cq[g]):int(cq[g + 1])]
        out[docs] = _segment_maxsim(q[None], D[token_idx], sub_cu, dtype)[0]
    return out


# --------------------------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------------------------

def _tile_dots(d_ptrs, d_valid, q_ptrs, q0, row_valid, offs_k, D_MODEL: tl.constexpr, BLOCK_Q: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr, EVEN_K: tl.constexpr,
               UPCAST: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr, CLAMP: tl.constexpr,
               EVICT: tl.constexpr = ""):
    """Similarities of one block of document rows with the query rows over all of d, fp32 accumulation:
    `[BLOCK_D, BLOCK_Q]` when SWAP, else `[BLOCK_Q, BLOCK_D]`. `q0` is the query tile when d fits one K block.
    CLAMP: every document row of the tile is valid (the caller repeats the last row), so the loads are unmasked
    in that dimension."""
    if SWAP:
        acc = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for kk in tl.static_range(NUM_K):
        k_valid = (offs_k[None, :] + kk * BLOCK_K) < D_MODEL
        if EVEN_K and CLAMP:
            dt = tl.load(d_ptrs + kk * BLOCK_K, eviction_policy=EVICT)
        elif EVEN_K:
            dt = tl.load(d_ptrs + kk * BLOCK_K, mask=d_valid[:, None], other=0.0, eviction_policy=EVICT)
        elif CLAMP:
            dt = tl.load(d_ptrs + kk * BLOCK_K, mask=k_valid, other=0.0, eviction_policy=EVICT)
        else:
            dt = tl.load(d_ptrs + kk * BLOCK_K, mask=d_valid[:, None] & k_valid, other=0.0, eviction_policy=EVICT)
        if NUM_K == 1:
            qt = q0
        elif EVEN_K:
            qt = tl.load(q_ptrs + kk * BLOCK_K, mask=row_valid[:, None], other=0.0)
        else:
            qt = tl.load(q_ptrs + kk * BLOCK_K, mask=row_valid[:, None] & k_valid, other=0.0)
        if UPCAST:
            dt = dt.to(tl.float32)
            qt = qt.to(tl.float32)
        if SWAP:
            if IEEE:
                acc = tl.dot(dt, tl.trans(qt), acc, input_precision="ieee")
            else:
                acc = tl.dot(dt, tl.trans(qt), acc)
        else:
            if IEEE:
                acc = tl.dot(qt, tl.trans(dt), acc, input_precision="ieee")
            else:
                acc = tl.dot(qt, tl.trans(dt), acc)
    return acc


def _query_tile(q_ptrs, row_valid, offs_k, D_MODEL: tl.constexpr, NUM_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The query block over all of d when d fits one K block (kept for every document tile); else a placeholder:
    `_tile_dots` then loads the query per K block."""
    if NUM_K == 1:
        if EVEN_K:
            q0 = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
        else:
            q0 = tl.load(q_ptrs, mask=row_valid[:, None] & (offs_k[None, :] < D_MODEL), other=0.0)
    else:
        q0 = 0.0
    return q0


_dots = None  # the jitted _tile_dots, set by _kernel() before either kernel is jitted
_qtile = None  # the jitted _query_tile, likewise


def _maxsim_kernel(
    Q, D, cu_d, cu_q, doc_group, out, partial, counter, doc_off,
    n_docs, n_queries, q_len, n_chunks, n_jobs,
    D_MODEL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    QPB: tl.constexpr, LQP: tl.constexpr, GROUPED: tl.constexpr, SWAP: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, NSPLIT: tl.constexpr, PTRS: tl.constexpr, ALIGN: tl.constexpr,
    DPP: tl.constexpr, CLAMP: tl.constexpr, EVICT: tl.constexpr = "",
):
    """One program: DPP consecutive documents, one after the other, against one block of BLOCK_Q query rows.

    Rows of a block: QPB queries of LQP rows each (QPB > 1 packs several short queries of the multi-query form),
    or chunk `c` of one long query (n_chunks > 1, QPB == 1). Programs of one document are adjacent, so a document
    read by several query blocks is served from L2.
    GROUPED: the query of document b is rows cu_q[g]:cu_q[g+1] of Q, g = doc_group[b]; out is [n_chunks, B].
    Otherwise queries are [n_queries, q_len] rows of Q; out is [n_queries, n_chunks, B].
    SWAP computes the tile as D @ Q^T ([BLOCK_D, BLOCK_Q], doc tokens on the MMA's M side), keeps an elementwise
    running max and reduces over doc tokens once at the end: better for short queries.
    CLAMP: the last tile of a document repeats the document's last row instead of masking rows past its end (a
    repeated row cannot change a max), so no tile needs a row mask or a select: the select over every
    similarity tile cost compute-bound shapes 7-13% on the H100 (docs/kernel_notes.md, v6).
    NSPLIT > 1 (one query block, short queries, few documents): the document is split over NSPLIT adjacent
    programs; each writes its row maxima to `partial` [B, NSPLIT, BLOCK_Q] and bumps counter[b]; the last one to
    arrive combines them, writes the score and resets the counter to 0 for the next launch.
    PTRS: documents are not packed in D: document b starts doc_off[b] elements (int64, a multiple of ALIGN) past
    D's first element (its rows are contiguous), and cu_d holds only the cumulative lengths.
    UPCAST (interpreter only): Triton's CPU interpreter multiplies bf16 tiles as raw integers, so there they are
    widened to fp32 first (exact: every bf16 is an fp32, and products accumulate in fp32 either way).
    """
    pid = tl.program_id(0)
    b_first = (pid // n_jobs) * DPP
    job = pid % n_jobs
    split = job % NSPLIT
    c = (job // NSPLIT) % n_chunks
    qblock = job // (NSPLIT * n_chunks)
    r = tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    NUM_K: tl.constexpr = (D_MODEL + BLOCK_K - 1) // BLOCK_K
    EVEN_K: tl.constexpr = D_MODEL % BLOCK_K == 0
    if not GROUPED:  # the query block is the same for every document of this program: load it once
        qi = qblock * QPB + r // LQP
        tok = c * LQP + r % LQP
        row_valid = (qi < n_queries) & (tok < q_len)
        q_rows = qi.to(tl.int64) * q_len + tok
        q_ptrs = Q + q_rows[:, None] * D_MODEL + offs_k[None, :]
        q0 = _qtile(q_ptrs, row_valid, offs_k, D_MODEL, NUM_K, EVEN_K)

    # DPP documents a program, one after the other, with the same query block
    for i in range(0, tl.minimum(DPP, n_docs - b_first)):
        b = b_first + i
        d_start = tl.load(cu_d + b)
        d_end = tl.load(cu_d + b + 1)
        if PTRS:  # rows d_start.. of this document live at D + doc_off[b]: shift the base, row indices stay as-is
            shift = tl.multiple_of(tl.load(doc_off + b), ALIGN) - d_start.to(tl.int64) * D_MODEL
            Db = D + shift
        else:
            Db = D
        if NSPLIT > 1:
            tiles_per_split = ((d_end - d_start + BLOCK_D - 1) // BLOCK_D + NSPLIT - 1) // NSPLIT
            s_start = d_start + split * tiles_per_split * BLOCK_D
            s_end = tl.minimum(s_start + tiles_per_split * BLOCK_D, d_end)
        else:
            s_start = d_start
            s_end = d_end

        if GROUPED:
            g = tl.load(doc_group + b)
            q_start = tl.load(cu_q + g)
            lq = tl.load(cu_q + g + 1) - q_start
            tok = c * BLOCK_Q + r
            row_valid = tok < lq
            q_rows = q_start.to(tl.int64) + tok
            # a chunk past the end of a shorter query in the same launch reads no document
            loop_end = tl.where(c * BLOCK_Q < lq, s_end, s_start)
            q_ptrs = Q + q_rows[:, None] * D_MODEL + offs_k[None, :]
            q0 = _qtile(q_ptrs, row_valid, offs_k, D_MODEL, NUM_K, EVEN_K)
        else:
            loop_end = s_end

        if SWAP:
            best = tl.full([BLOCK_D, BLOCK_Q], float("-inf"), dtype=tl.float32)
        else:
            best_row = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
        for start in range(s_start, loop_end, BLOCK_D):
            if CLAMP:
                rows = tl.minimum(start + offs_d, loop_end - 1)
            else:
                rows = start + offs_d
            d_valid = rows < loop_end
            d_ptrs = Db + rows.to(tl.int64)[:, None] * D_MODEL + offs_k[None, :]
            acc = _dots(d_ptrs, d_valid, q_ptrs, q0, row_valid, offs_k, D_MODEL, BLOCK_Q, BLOCK_D, BLOCK_K,
                        NUM_K, EVEN_K, UPCAST, IEEE, SWAP, CLAMP, EVICT)
            if CLAMP:
                if SWAP:
                    best = tl.maximum(best, acc)
                else:
                    best_row = tl.maximum(best_row, tl.max(acc, axis=1))
            elif SWAP:
                best = tl.maximum(best, tl.where(d_valid[:, None], acc, float("-inf")))
            else:
                best_row = tl.maximum(best_row, tl.max(tl.where(d_valid[None, :], acc, float("-inf")), axis=1))
        if SWAP:
            best_row = tl.max(best, axis=0)

        if NSPLIT > 1:
            slot = partial + b.to(tl.int64) * (NSPLIT * BLOCK_Q)
            tl.store(slot + split * BLOCK_Q + r, best_row)
            arrived = tl.atomic_add(counter + b, 1, sem="acq_rel")  # release: the row maxima above are visible
            part_idx = tl.arange(0, NSPLIT)[:, None] * BLOCK_Q + r[None, :]
            parts = tl.load(slot + part_idx, mask=(part_idx * 0 + arrived) == NSPLIT - 1, other=0.0, volatile=True)
            best_row = tl.max(parts, axis=0)
            tl.store(counter + b + tl.arange(0, 1), tl.zeros([1], dtype=tl.int32),
                     mask=(tl.arange(0, 1) + arrived) == NSPLIT - 1)
            # as a vector: the CPU interpreter wants tensor masks
            last = (tl.arange(0, QPB) * 0 + arrived) == NSPLIT - 1
        else:
            last = tl.arange(0, QPB) >= 0
        best_row = tl.where(row_valid & (d_end > d_start), best_row, 0.0)
        per_query = tl.sum(tl.reshape(best_row, [QPB, LQP]), axis=1)  # [QPB]
        if GROUPED:
            tl.store(out + c * n_docs + b + tl.arange(0, QPB), per_query, mask=last)
        else:
            qo = qblock * QPB + tl.arange(0, QPB)
            tl.store(out + (qo.to(tl.int64) * n_chunks + c) * n_docs + b, per_query, mask=(qo < n_queries) & last)


def _count_less(cu, n, x, K: tl.constexpr):
    """#{i < n: cu[i] < x} for nondecreasing cu: a K-ary search, one vector load of K samples a step."""
    lo = n * 0
    hi = n
    ks = tl.arange(0, K)
    while hi > lo:
        step = tl.maximum((hi - lo + K - 1) // K, 1)
        idx = lo + ks * step
        inside = idx < hi
        vals = tl.load(cu + idx, mask=inside, other=0)
        c = tl.sum(((vals < x) & inside).to(tl.int32), axis=0)
        new_hi = tl.where(c == 0, lo, tl.minimum(lo + c * step, hi))
        lo = tl.where(c == 0, lo, lo + (c - 1) * step + 1)
        hi = new_hi
    return lo


_search = None  # the jitted _count_less, set by _kernel(flat=True)


def _maxsim_flat_kernel(
    Q, D, cu_d, out, rowbuf, counter, n_docs, q_len, n_progs,
    D_MODEL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, SEARCH_K: tl.constexpr,
):
    """Persistent form for one short query (Lq <= BLOCK_Q <= 64): a fixed number of programs, program p streams
    the tokens [p·chunk, (p+1)·chunk) of the packed documents (chunk = T / n_progs rounded up to BLOCK_D), in
    BLOCK_D-row tiles that restart at every document start, across document boundaries in one loop.

    A document inside one program is finished there. A document cut by a program boundary: each piece folds its
    row maxima into rowbuf[b] (fp32 atomic max; rowbuf holds -inf between launches) and bumps counter[b]; the
    piece that arrives last reads the combined maxima (and puts -inf back), writes the score
    and resets the counter. Empty documents score 0; each costs one (load-free) iteration of the program whose
    token range holds its position (the last active program takes those at the very end).
    """
    pid = tl.program_id(0)
    total = tl.load(cu_d + n_docs)
    chunk = ((total + n_progs - 1) // n_progs + BLOCK_D - 1) // BLOCK_D * BLOCK_D
    chunk = tl.maximum(chunk, BLOCK_D)
    t0 = pid * chunk
    t1 = tl.minimum(t0 + chunk, total)
    active = (t0 < total) | (pid == 0)
    # documents of this program: those starting in [t0, t1), the one cut at t0, and the empty ones at `total`
    lo = _search(cu_d, n_docs, t0, SEARCH_K)
    b_end = _search(cu_d, n_docs, t1, SEARCH_K)
    b_end = tl.where(t1 >= total, n_docs, b_end)
    cut_first = (lo > 0) & (tl.load(cu_d + lo, mask=lo > 0, other=0) > t0)
    b_first = tl.where(cut_first, lo - 1, lo)
    b_end = tl.where(active, b_end, b_first)

    # iterations: max(1, tiles of each document's part in [t0, t1))
    n_iter = b_first * 0
    blk = tl.arange(0, 128)
    for b0 in range(b_first, b_end, 128):
        bi = b0 + blk
        m = bi < b_end
        s = tl.maximum(tl.load(cu_d + bi, mask=m, other=0), t0)
        e = tl.minimum(tl.load(cu_d + bi + 1, mask=m, other=0), t1)
        n_iter += tl.sum(tl.where(m, tl.maximum((e - s + BLOCK_D - 1) // BLOCK_D, 1), 0), axis=0)

    r = tl.arange(0, BLOCK_Q)
    row_valid = r < q_len
    offs_k = tl.arange(0, BLOCK_K)
    NUM_K: tl.constexpr = (D_MODEL + BLOCK_K - 1) // BLOCK_K
    EVEN_K: tl.constexpr = D_MODEL % BLOCK_K == 0
    q_ptrs = Q + r[:, None] * D_MODEL + offs_k[None, :]
    q0 = _qtile(q_ptrs, row_valid, offs_k, D_MODEL, NUM_K, EVEN_K)
    offs_d = tl.arange(0, BLOCK_D)
    one = tl.arange(0, 1)

    b = b_first
    ds = tl.load(cu_d + b, mask=active, other=0)
    de = tl.load(cu_d + b + 1, mask=active, other=0)
    ts = tl.maximum(ds, t0)
    te = tl.minimum(de, t1)
    best = tl.full([BLOCK_D, BLOCK_Q], float("-inf"), dtype=tl.float32)
    for _ in range(0, n_iter):
        rows = ts + offs_d
        d_valid = rows < te
        d_ptrs = D + rows.to(tl.int64)[:, None] * D_MODEL + offs_k[None, :]
        acc = _dots(d_ptrs, d_valid, q_ptrs, q0, row_valid, offs_k, D_MODEL, BLOCK_Q, BLOCK_D, BLOCK_K,
                    NUM_K, EVEN_K, UPCAST, IEEE, True, False)
        best = tl.maximum(best, tl.where(d_valid[:, None], acc, float("-inf")))
        ts += BLOCK_D
        if ts >= te:  # this document's part ends here
            best_row = tl.max(best, axis=0)
            if (ds < t0) | (de > t1):  # cut by a program boundary: combine through rowbuf
                slot = rowbuf + b.to(tl.int64) * BLOCK_Q + r
                tl.atomic_max(slot, best_row, sem="relaxed")
                p_first = ds // chunk
                n_pieces = (de - 1) // chunk - p_first + 1
                tl.debug_barrier()  # every thread's atomic max is issued before the counter's release
                arrived = tl.atomic_add(counter + b + one, one + 1, sem="acq_rel")
                last = (arrived == n_pieces - 1)  # [1]
                lastv = (r * 0 + tl.sum(arrived, axis=0)) == n_pieces - 1
                got = tl.load(slot, mask=lastv, other=0.0, volatile=True)  # every piece's maxima (L2)
                tl.store(slot, tl.full([BLOCK_Q], float("-inf"), tl.float32), mask=lastv)
                score = tl.sum(tl.where(row_valid, got, 0.0), axis=0)
                tl.store(out + b + one, score + tl.zeros([1], tl.float32), mask=last)
                tl.store(counter + b + one, tl.zeros([1], dtype=tl.int32), mask=last)
            else:
                score = tl.sum(tl.where(row_valid & (de > ds), best_row, 0.0), axis=0)
                tl.store(out + b, score)
            b += 1
            ds = tl.load(cu_d + b, mask=b < n_docs, other=0)
            de = tl.load(cu_d + b + 1, mask=b < n_docs, other=0)
            ts = ds
            te = tl.minimum(de, t1)
            best = tl.full([BLOCK_D, BLOCK_Q], float("-inf"), dtype=tl.float32)


_DTYPE_OF = attrgetter("dtype")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_JITTED: dict = {}


def _kernel(flat: bool = False):
    """The Triton kernel (or the persistent flat one), jitted on first use under the current TRITON_INTERPRET
    setting (tests flip it)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    key = (interpret, flat)
    if key not in _JITTED:
        # both kernels call the shared tile loop through the module global `_dots`, jitted for this mode
        globals()["_dots"] = _JITTED.setdefault(("dots", interpret), triton.jit(_tile_dots))
        globals()["_qtile"] = _JITTED.setdefault(("qtile", interpret), triton.jit(_query_tile))
        if flat:
            # the kernel calls the search through the module global `_search`, jitted for this mode
            globals()["_search"] = _JITTED.setdefault(("search", interpret), triton.jit(_count_less))
            _JITTED[key] = triton.jit(_maxsim_flat_kernel, do_not_specialize=["n_docs", "q_len", "n_progs"])
        else:
            _JITTED[key] = triton.jit(
                _maxsim_kernel,
                do_not_specialize=["n_docs", "n_queries", "q_len", "n_chunks", "n_jobs"],
            )
    return _JITTED[key]


def triton_available(device: torch.device | str) -> bool:
    """True where the Triton kernels can run on tensors of `device` (CUDA, or the CPU under TRITON_INTERPRET)."""
    if triton is None:
        return False
    if torch.device(device).type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------------------------
# Launch configuration: chosen from buckets of the query rows, the mean document length, d and the batch size.
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelConfig:
    block_q: int
    block_d: int
    block_k: int
    swap: bool
    num_warps: int
    num_stages: int
    nsplit: int = 0  # programs per document (power of two); 0: chosen from the batch size
    dpp: int = 1  # documents per program (> 1: a query block is loaded once for several documents; not with nsplit)
    flat: int = 0  # > 0: the persistent form (one short query), this many programs per multiprocessor
    clamp: bool = True  # a document's last tile repeats its last row: no row masks or selects in the tile loop
    # L2 eviction priority of the document loads ("", "evict_first", "evict_last"); opt-in: Triton 3.6 keeps it only
    # on unpipelined loads (num_stages 1), which measured faster only under do_bench's dirty L2 (docs/kernel_notes.md v8)
    evict: str = ""


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, math.ceil(math.log2(max(1, n)))))


_LONG_DOCS = 512  # mean document tokens above which `_config` picks the long-document blocks


def _config(q_rows: int, mean_ld: float, d: int, elem_bytes: int) -> KernelConfig:
    """Block shape for programs of `q_rows` query rows (bucketed to a power of two) — measured on the H100,
    docs/kernel_notes.md."""
    block_k = min(128, _pow2_at_least(d, 16))
    if elem_bytes == 4:
        block_k = min(block_k, 64)
    if q_rows <= 64:
        # memory-bound: stream the document, doc tokens on the MMA's M side
        return KernelConfig(block_q=_pow2_at_least(q_rows, 16), block_d=64, block_k=block_k, swap=True,
                            num_warps=4, num_stages=4 if elem_bytes == 2 else 3)
    if mean_ld > _LONG_DOCS and q_rows > 128 and elem_bytes == 2:
        # long queries against long documents: compute-bound, 256 query rows a program
        return KernelConfig(block_q=256, block_d=64, block_k=block_k, swap=False, num_warps=8, num_stages=3)
    return KernelConfig(block_q=128, block_d=64, block_k=block_k, swap=False,
                        num_warps=8 if mean_ld > _LONG_DOCS else 4, num_stages=3)


@functools.lru_cache(maxsize=4096)
def _config_bucketed(q_rows: int, long_docs: bool, d: int, elem_bytes: int) -> KernelConfig:
    """`_config` memoised on the length bucket (host work on every grouped launch: 10-17 µs on a slow host); any
    mean document length of the bucket gives the same config."""
    return _config(q_rows, 2 * _LONG_DOCS if long_docs else 1, d, elem_bytes)


def _nsplit(cfg: KernelConfig) -> int:
    """Programs per document. Splitting (cfg.nsplit > 1) measured no faster on the H100 for any benchmark row,
    serve-64 included (docs/kernel_notes.md, v2), so it runs only when a config asks for it."""
    return cfg.nsplit or 1


# The persistent form is opt-in (KernelConfig.flat > 0): it measured slower than one program per document on
# every H100 row (docs/kernel_notes.md, v4), so no default selects it (FLAT_MIN_TOKENS None) and warmup skips it.
FLAT_MIN_TOKENS: int | None = None
FLAT_DEFAULT = dict(flat=4, num_stages=3)
_SM_COUNT: dict = {}
_ROWBUFS: dict = {}  # (device, stream, block_q) -> fp32 -inf, restored by the kernel after every use

_POISON_OUTPUTS = False  # tests set this: outputs start as NaN, so an element the kernel skips cannot pass
_COUNTERS: dict = {}  # (device, stream) -> int32 zeros, reset by the kernel itself after every use


def _new_output(*shape: int, device: torch.device) -> torch.Tensor:
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(*shape, dtype=torch.float32, device=device)


def _counter(n: int, device: torch.device) -> torch.Tensor:
    key = (str(device), torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 2 * (0 if buf is None else buf.numel()), 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the CPU interpreter: a few programs, so tests cross program boundaries
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SM_COUNT:
        _SM_COUNT[key] = torch.cuda.get_device_properties(key).multi_processor_count
    return _SM_COUNT[key]


def _rowbuf(n: int, block_q: int, device: torch.device) -> torch.Tensor:
    key = (str(device), torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0, block_q)
    buf = _ROWBUFS.get(key)
    if buf is None or buf.numel() < n * block_q:
        rows = max(n, 2 * (0 if buf is None else buf.numel() // block_q), 1024)
        buf = torch.full((rows * block_q,), float("-inf"), dtype=torch.float32, device=device)
        _ROWBUFS[key] = buf
    return buf


def _launch_flat(Q, D, cu, out, n_docs, q_len, cfg: KernelConfig):
    if n_docs == 0:
        return
    n_progs = cfg.flat * _sm_count(D.device)
    cpu_bf16 = not D.is_cuda and D.dtype == torch.bfloat16
    rowbuf, counter = _rowbuf(n_docs, cfg.block_q, D.device), _counter(n_docs, D.device)
    _with_fitting_stages(("flat", D.shape[1], D.dtype, cfg), cfg.num_stages, lambda stages: _kernel(flat=True)[(n_progs,)](
        Q, D, cu, out, rowbuf, counter, n_docs, q_len, n_progs,
        D_MODEL=D.shape[1], BLOCK_Q=cfg.block_q, BLOCK_D=cfg.block_d, BLOCK_K=cfg.block_k,
        IEEE=D.dtype == torch.float32 or cpu_bf16, UPCAST=cpu_bf16, SEARCH_K=128,
        num_warps=cfg.num_warps, num_stages=stages,
    ))


# Direct launches. Triton's `JITFunction.run` binds and specialises every argument on every call (~30 µs of host
# time a launch on the H100's host, against ~10 µs for its compiled launcher alone; docs/kernel_notes.md v10). A
# launch of the grid kernel is determined by what Triton specialises on (the constexprs, warps and stages, each
# tensor's dtype and 16-byte alignment, each scalar's integer width: the scalars are `do_not_specialize`), so the
# compiled kernel the first launch of such a key returns is called directly for later launches with that key.
# Launches with Triton's launch hooks set (a profiler) and CPU (interpreter) launches always go through `run`.
DIRECT_LAUNCH = True
_DIRECT: dict = {}  # launch key -> Triton's CompiledKernel


def _hook_set(hook) -> bool:
    calls = getattr(hook, "calls", None)  # Triton 3.6's HookChain: set when it holds a hook
    return hook is not None and (bool(calls) if isinstance(calls, list) else True)


def _launch_hooked() -> bool:
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    return runtime is None or _hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook)


def _direct_key(device: int, stages: int, num_warps: int, tensors: tuple, scalars: tuple, consts: tuple) -> tuple:
    return (device, stages, num_warps, consts, tuple(t.dtype for t in tensors),
            tuple(t.data_ptr() % 16 == 0 for t in tensors), tuple(-(1 << 31) <= v < (1 << 31) for v in scalars))


def _launch(Q, D, cu_d, cu_q, doc_group, out, n_docs, n_queries, q_len, n_chunks, n_jobs, qpb, lqp, grouped,
            cfg: KernelConfig, nsplit: int, doc_off: torch.Tensor | None = None):
    if n_docs == 0 or n_jobs == 0:
        return
    if nsplit > 1:
        partial = torch.empty(n_docs * nsplit * cfg.block_q, dtype=torch.float32, device=D.device)
        counter = _counter(n_docs, D.device)
    else:
        partial = counter = out
    if doc_off is None:
        doc_off = out
    cpu_bf16 = not D.is_cuda and D.dtype == torch.bfloat16
    dpp = 1 if nsplit > 1 else max(1, cfg.dpp)
    grid = (math.ceil(n_docs / dpp) * n_jobs * nsplit,)
    tensors = (Q, D, cu_d, cu_q, doc_group, out, partial, counter, doc_off)
    scalars = (n_docs, n_queries, q_len, n_chunks, n_jobs * nsplit)
    # the constexprs in the kernel's parameter order (D_MODEL ... EVICT)
    consts = (D.shape[1], cfg.block_q, cfg.block_d, cfg.block_k, qpb, lqp, grouped, cfg.swap,
              D.dtype == torch.float32 or cpu_bf16, cpu_bf16, nsplit, doc_off is not out,
              max(1, 16 // D.element_size()), dpp, cfg.clamp, cfg.evict)
    fit_key = ("grid", D.shape[1], D.dtype, cfg)
    direct = D.is_cuda and DIRECT_LAUNCH and not _launch_hooked()
    if direct:
        device = torch.cuda.current_device()  # where Triton's own launch would go
        stages = _FITTING_STAGES.get(fit_key)
        kernel = None if stages is None else _DIRECT.get(
            _direct_key(device, stages, cfg.num_warps, tensors, scalars, consts))
        if kernel is not None:
            kernel.run(grid[0], 1, 1, torch._C._cuda_getCurrentRawStream(device), kernel.function,
                       kernel.packed_metadata, None, None, None, *tensors, *scalars, *consts)
            return
    names = ("D_MODEL", "BLOCK_Q", "BLOCK_D", "BLOCK_K", "QPB", "LQP", "GROUPED", "SWAP", "IEEE", "UPCAST", "NSPLIT",
             "PTRS", "ALIGN", "DPP", "CLAMP", "EVICT")
    compiled = {}

    def launch(stages: int) -> None:
        compiled[stages] = _kernel()[grid](*tensors, *scalars, **dict(zip(names, consts)),
                                           num_warps=cfg.num_warps, num_stages=stages)

    _with_fitting_stages(fit_key, cfg.num_stages, launch)
    stages = _FITTING_STAGES[fit_key]
    if direct and all(hasattr(compiled.get(stages), a) for a in ("run", "function", "packed_metadata")):
        _DIRECT[_direct_key(device, stages, cfg.num_warps, tensors, scalars, consts)] = compiled[stages]


# --------------------------------------------------------------------------------------------------------------
# L2 residency of the documents: read once per launch, so marked streaming (evicted first)
# --------------------------------------------------------------------------------------------------------------
# Reads allocate L2 lines at normal priority, evicting (and writing back) dirty lines that earlier kernels left
# there: under do_bench's flush that write-back is ~10 µs of a 40 µs rr-1k launch (docs/kernel_notes.md v4).
# The loads' own evict-first hint would avoid it, but Triton 3.6 drops `eviction_policy` from pipelined loads
# (v8), so the hint travels through the stream instead: its L2 access-policy window covers the documents' bytes
# with the streaming property. Measured on the H100 (v9): rr-1k 40.8 -> 35.6 µs, rr-1k-d96 35.0 -> 30.0,
# rr-1k-d64 24.3 -> 21.8, colpali-1k 458 -> 437; rows above the window's size limit (128 MB) unchanged.
L2_STREAMING = True  # False: launches leave the stream's window alone (and clear one they set)
_L2_MIN_BYTES = 16 << 20  # smaller document sets: no window (serve-64, 4.9 MB, measured unchanged either way)
_L2_WINDOWS: dict = {}  # (device index, stream handle) -> (address, bytes) of the window last set on that stream
_L2_MAX_WINDOW: dict = {}  # device index -> the driver's largest window (0: windows unavailable there)
_CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE = 109
_CU_STREAM_ATTRIBUTE_ACCESS_POLICY_WINDOW = 1
_CU_ACCESS_PROPERTY_STREAMING = 1


class _AccessPolicyWindow(ctypes.Structure):  # CUaccessPolicyWindow (cuda.h)
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hitRatio", ctypes.c_float),
                ("hitProp", ctypes.c_int), ("missProp", ctypes.c_int)]


class _StreamAttrValue(ctypes.Union):  # CUstreamAttrValue: a 64-byte union
    _fields_ = [("window", _AccessPolicyWindow), ("pad", ctypes.c_char * 64)]


@functools.lru_cache(maxsize=1)
def _libcuda():
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def _max_window(index: int) -> int:
    if index not in _L2_MAX_WINDOW:
        cu, dev, size = _libcuda(), ctypes.c_int(0), ctypes.c_int(0)
        ok = cu is not None and cu.cuDeviceGet(ctypes.byref(dev), index) == 0 and cu.cuDeviceGetAttribute(
            ctypes.byref(size), _CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE, dev) == 0
        _L2_MAX_WINDOW[index] = size.value if ok else 0
    return _L2_MAX_WINDOW[index]


def _set_window(index: int, stream: int, address: int, size: int) -> bool:
    value = _StreamAttrValue()  # zeroed: a size of 0 clears the window
    value.window.base_ptr, value.window.num_bytes, value.window.hitRatio = address, size, 1.0
    value.window.hitProp = value.window.missProp = _CU_ACCESS_PROPERTY_STREAMING if size else 0
    ok = _libcuda().cuStreamSetAttribute(ctypes.c_void_p(stream), _CU_STREAM_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                                         ctypes.byref(value)) == 0
    if not ok:
        _L2_MAX_WINDOW[index] = 0  # refused once: no more windows on this device
    return ok


def _stream_documents(D: torch.Tensor) -> None:
    """Cover D's bytes (the first 128 MB of them) with the current stream's L2 streaming window. Set only when the
    window set last does not cover them, so repeated launches over the same documents or a prefix of them (a
    replica's reused staging buffer) pay nothing; it stays on the stream after the launch, so later kernels of this
    stream reading those bytes see them evicted first: a matter of speed, never of results."""
    if not D.is_cuda:
        return
    index = D.get_device()
    stream = torch._C._cuda_getCurrentRawStream(index)  # what Triton's launcher reads; 6 µs less than a Stream
    key = (index, stream)
    size = D.numel() * D.element_size()
    if not L2_STREAMING or size < _L2_MIN_BYTES:
        if not L2_STREAMING and key in _L2_WINDOWS:
            _L2_WINDOWS.pop(key)
            _set_window(index, stream, 0, 0)
        return
    want = (D.data_ptr(), min(size, _max_window(index)))
    have = _L2_WINDOWS.get(key)
    if want[1] == 0 or (have is not None and have[0] <= want[0] and want[0] + want[1] <= have[0] + have[1]):
        return  # no window to be had, or the one set already covers these bytes
    if _set_window(index, stream, *want):
        _L2_WINDOWS[key] = want
    else:
        _L2_WINDOWS.pop(key, None)


_FITTING_STAGES: dict = {}  # (kernel, d, dtype, config) -> the most pipeline stages that fit this GPU's shared memory


def _with_fitting_stages(key, stages: int, launch) -> None:
    """`launch(stages)`, with fewer pipeline stages while the kernel needs more shared memory than the GPU has
    (d 384 with long or many queries, fp32 with d ≥ 256 on an H100; smaller GPUs sooner). Compilation fails before
    anything runs, so a retry is safe; the stage count that fits is remembered, so only the first launch of a
    configuration (the replica's warmup) pays for it."""
    stages = min(stages, _FITTING_STAGES.get(key, stages))
    while True:
        try:
            launch(stages)
        except OutOfResources:
            if stages <= 1:
                raise
            stages -= 1
            continue
        _FITTING_STAGES[key] = stages
        return


# --------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------

def _check_packed(Q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if D.dim() != 2:
        raise ValueError(f"D must be [T, d], got {tuple(D.shape)}")
    if Q.dim() not in (2, 3) or Q.shape[-1] != D.shape[1]:
        raise ValueError(f"Q must be [Lq, d] or [Nq, Lq, d] with d={D.shape[1]}, got {tuple(Q.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be [B+1]")


def _same(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def _plan(nq: int, lq: int, mean_ld: float, d: int, esize: int, config: KernelConfig | None):
    """(config, queries per block, rows per query in a block, query chunks, programs per document)."""
    # memoised on the length bucket: the plan is host work on every launch (a few µs of Python each time)
    return _plan_bucketed(nq, lq, mean_ld > _LONG_DOCS, d, esize, config)


@functools.lru_cache(maxsize=4096)
def _plan_bucketed(nq: int, lq: int, long_docs: bool, d: int, esize: int, config: KernelConfig | None):
    if nq > 1 and lq <= 64:
        # several short queries share one program (the compute-bound many-queries case); the config is chosen
        # for up to 128 rows, and a config with larger blocks packs more queries
        lqp = _pow2_at_least(lq, 1)
        qpb = min(128 // lqp, _pow2_at_least(nq, 1))
        if config is None and esize == 2 and lqp * _pow2_at_least(nq, 1) >= 256 and d <= 128:
            # many short queries: 256 query rows a program, 8 warps (multi-128x128 106 -> 93 µs, v3 sweep), 4
            # documents a program so each query block is loaded once for 4 of them (93 -> 88 µs, v5). Only while
            # d fits one K block: above, the pipelined 256-row query tiles need more shared memory than an H100 has
            config = KernelConfig(block_q=256, block_d=64, block_k=min(128, _pow2_at_least(d, 16)), swap=False,
                                  num_warps=8, num_stages=3, dpp=4)
        cfg = config or _config_bucketed(max(16, qpb * lqp), long_docs, d, esize)
        qpb = max(1, min(_pow2_at_least(nq, 1), cfg.block_q // lqp))
        lqp = cfg.block_q // qpb
        n_chunks = 1
    else:
        cfg = config or _config_bucketed(lq, long_docs, d, esize)
        qpb, lqp = 1, cfg.block_q
        n_chunks = max(1, math.ceil(lq / cfg.block_q))
    return cfg, qpb, lqp, n_chunks, math.ceil(nq / qpb) * n_chunks


def maxsim_packed(Q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor,
                  config: KernelConfig | None = None) -> torch.Tensor:
    """MaxSim of Q [Lq, d] -> [B] (fp32), or Q [Nq, Lq, d] -> [Nq, B], against packed documents.

    Runs the Triton kernel on CUDA tensors (or on CPU tensors under TRITON_INTERPRET); the exact reference
    otherwise. Never synchronises with the host.
    """
    _check_packed(Q, D, cu_seqlens)
    if not triton_available(D.device):
        return maxsim_reference(Q, D, cu_seqlens)
    D = _same(D, D.dtype)
    nq, lq, d = (1, *Q.shape) if Q.dim() == 2 else Q.shape
    Qf = _same(Q, D.dtype)
    n_docs = cu_seqlens.numel() - 1
    cu = _same(cu_seqlens, torch.int32)
    mean_ld = D.shape[0] / max(1, n_docs)
    cfg, qpb, lqp, n_chunks, n_jobs = _plan(nq, lq, mean_ld, d, D.element_size(), config)
    if nq == 1 and n_chunks == 1 and cfg.swap and lq <= cfg.block_q:
        if config is None and FLAT_MIN_TOKENS is not None and D.shape[0] >= FLAT_MIN_TOKENS:
            cfg = KernelConfig(**{**cfg.__dict__, **FLAT_DEFAULT})
        if cfg.flat > 0:
            out = _new_output(n_docs, device=D.device)
            _stream_documents(D)
            _launch_flat(Qf.reshape(lq, d), D, cu, out, n_docs, lq, cfg)
            return out if Q.dim() == 2 else out[None]
    nsplit = _nsplit(cfg) if n_chunks == 1 and qpb == 1 else 1
    out_shape = (nq, n_chunks, n_docs) if n_chunks > 1 else ((n_docs,) if Q.dim() == 2 else (nq, n_docs))
    out = _new_output(*out_shape, device=D.device)
    _stream_documents(D)
    _launch(Qf, D, cu, cu, cu, out, n_docs, nq, lq, n_chunks, n_jobs, qpb, lqp, False, cfg, nsplit)
    if n_chunks > 1:
        out = out.sum(1)
        return out[0] if Q.dim() == 2 else out
    return out


def _list_layout(docs, d: int):
    """(base tensor, element offsets [B] int64 numpy, lengths [B] int64 numpy) of per-document tensors that the
    pointer form can read in place, or None (mixed dtype/device, not [L, d] with rows of d contiguous elements,
    misaligned). One C-level map per attribute over the list: no Python frame runs per document."""
    n = len(docs)
    if set(map(torch.Tensor.stride, docs)) != {(d, 1)}:  # 2-D, rows of d contiguous elements
        return None
    sizes = list(map(torch.Tensor.size, docs))
    if set(map(_SECOND, sizes)) != {d}:
        return None
    if len(set(map(torch.Tensor.get_device, docs))) != 1 or len(set(map(_DTYPE_OF, docs))) != 1:
        return None
    ptrs = np.fromiter(map(torch.Tensor.data_ptr, docs), dtype=np.int64, count=n)
    lengths = np.fromiter(map(_FIRST, sizes), dtype=np.int64, count=n)
    base_i = int(ptrs.argmin())
    off = ptrs - ptrs[base_i]
    if (off % 16).any() or ptrs[base_i] % 16:
        return None
    return docs[base_i], off // docs[0].element_size(), lengths


def maxsim_list(Q: torch.Tensor, docs, config: KernelConfig | None = None) -> torch.Tensor:
    """MaxSim of Q [Lq, d] -> [B] (or [Nq, Lq, d] -> [Nq, B]) against a list of per-document [Ld_i, d] tensors,
    read where they are: the kernel gets one array of document offsets (relative to the lowest-addressed document)
    and the cumulative lengths, so nothing is copied and nothing loops over documents in Python. Falls back to
    packing (`torch.cat`) for lists the pointer form cannot read (mixed dtypes or devices, non-contiguous rows)."""
    if len(docs) == 0:
        return torch.zeros((0,) if Q.dim() == 2 else (Q.shape[0], 0), dtype=torch.float32, device=Q.device)
    d = Q.shape[-1]
    layout = _list_layout(docs, d) if triton_available(docs[0].device) else None
    if layout is None:
        lengths = [t.shape[0] for t in docs]
        cu = torch.zeros(len(docs) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
        return maxsim_packed(Q, torch.cat(list(docs)), cu.to(docs[0].device), config=config)
    base, off, lengths = layout
    n_docs = len(docs)
    meta = np.empty(2 * n_docs + 2, dtype=np.int64)  # [doc offsets (B) | cu_seqlens (B+1) as int32 pairs]
    meta[:n_docs] = off
    cu32 = meta[n_docs:].view(np.int32)
    cu32[0] = 0
    np.cumsum(lengths, out=cu32[1:n_docs + 1], dtype=np.int32)
    meta_t = torch.from_numpy(meta)
    if base.is_cuda:
        meta_t = meta_t.pin_memory().to(base.device, non_blocking=True)
    doc_off = meta_t[:n_docs]
    cu = meta_t[n_docs:].view(torch.int32)[:n_docs + 1]
    nq, lq = (1, Q.shape[0]) if Q.dim() == 2 else Q.shape[:2]
    Qf = _same(Q, base.dtype)
    mean_ld = float(lengths.mean())
    cfg, qpb, lqp, n_chunks, n_jobs = _plan(nq, lq, mean_ld, d, base.element_size(), config)
    out_shape = (nq, n_chunks, n_docs) if n_chunks > 1 else ((n_docs,) if Q.dim() == 2 else (nq, n_docs))
    out = _new_output(*out_shape, device=base.device)
    _launch(Qf, base, cu, cu, cu, out, n_docs, nq, lq, n_chunks, n_jobs, qpb, lqp, False, cfg, 1, doc_off=doc_off)
    if n_chunks > 1:
        out = out.sum(1)
        return out[0] if Q.dim() == 2 else out
    return out


def maxsim_grouped(Q: torch.Tensor, cu_seqlens_q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor,
                   doc_group: torch.Tensor, max_lq: int | None = None,
                   config: KernelConfig | None = None) -> torch.Tensor:
    """Many (query, documents) groups in one launch -> one fp32 score per document, [B].

    Q [Tq, d]: the queries packed, query g = Q[cu_seqlens_q[g]:cu_seqlens_q[g+1]]. D [T, d] packed documents with
    cu_seqlens [B+1]; doc_group [B] (int32) maps each document to its query. `max_lq` (the longest query) sizes
    the launch; pass it to avoid a device-to-host read of cu_seqlens_q.
    """
    if D.dim() != 2 or Q.dim() != 2 or Q.shape[1] != D.shape[1]:
        raise ValueError(f"Q [Tq, d] and D [T, d] expected, got {tuple(Q.shape)} and {tuple(D.shape)}")
    if not triton_available(D.device):
        return maxsim_grouped_reference(Q, cu_seqlens_q, D, cu_seqlens, doc_group)
    n_docs = cu_seqlens.numel() - 1
    if max_lq is None:
        max_lq = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if cu_seqlens_q.numel() > 1 else 0
    D = _same(D, D.dtype)
    Q = _same(Q, D.dtype)
    mean_ld = D.shape[0] / max(1, n_docs)
    cfg = config or _config_bucketed(max_lq, mean_ld > _LONG_DOCS, D.shape[1], D.element_size())
    n_chunks = max(1, math.ceil(max_lq / cfg.block_q))
    nsplit = _nsplit(cfg) if n_chunks == 1 else 1
    out = _new_output(*((n_chunks, n_docs) if n_chunks > 1 else (n_docs,)), device=D.device)
    _stream_documents(D)
    _launch(Q, D, _same(cu_seqlens, torch.int32), _same(cu_seqlens_q, torch.int32), _same(doc_group, torch.int32),
            out, n_docs, 1, 0, n_chunks, n_chunks, 1, cfg.block_q, True, cfg, nsplit)
    return out.sum(0) if n_chunks > 1 else out


def warmup(d: int, dtype: torch.dtype = torch.float16, device: str | torch.device = "cuda",
           query_lengths=(16, 32, 64, 128, 256), doc_lengths=(64, 1024), multi: bool = False) -> None:
    """Compile every kernel variant that `d`, `dtype` and these length buckets can select (no-op without
    Triton): each query-row bucket, short and long documents."""
    if not triton_available(device):
        return
    g = torch.Generator(device="cpu").manual_seed(0)
    for lq in query_lengths:
        for ld in doc_lengths:
            cfg = _config(lq, ld, d, torch.tensor([], dtype=dtype).element_size())
            D = torch.randn(2 * ld, d, generator=g).to(device=device, dtype=dtype)
            cu = torch.tensor([0, ld, 2 * ld], dtype=torch.int32, device=device)
            Q = torch.randn(lq, d, generator=g).to(device=device, dtype=dtype)
            cq = torch.tensor([0, lq], dtype=torch.int32, device=device)
            group = torch.zeros(2, dtype=torch.int32, device=device)
            maxsim_grouped(Q, cq, D, cu, group, max_lq=lq, config=cfg)
            maxsim_packed(Q, D, cu, config=cfg)
            if FLAT_MIN_TOKENS is not None and cfg.swap and lq <= cfg.block_q:  # persistent form, if selectable
                maxsim_packed(Q, D, cu, config=KernelConfig(**{**cfg.__dict__, **FLAT_DEFAULT}))
            if multi:
                maxsim_packed(Q[None].expand(4, lq, d), D, cu)
