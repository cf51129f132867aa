"""The Triton kernels: MaxSim over packed or paged documents, and the page writer of the document store.

Imported only where Triton is installed (`kernels/maxsim.py` launches these; `kernels/reference.py` is the exact
reference they are checked against).

MaxSim: one program scores DPP consecutive documents, one after the other, against one block of BLOCK_Q query rows,
streaming each document in BLOCK_D-row tiles (cp.async pipelined by Triton, `num_stages`): one `tl.dot` a tile
(fp32 accumulation) and a running max. Extra memory is O(B). Document b is the logical rows
[d_start[b], d_end[b]) of D:
- PAGE == 0: packed, logical row = row of D.
- PAGE > 0: paged (the document store's arena): logical row x lives at row `pages[x // PAGE] * PAGE + x % PAGE`.
Compressed documents (float8_e4m3 or int8, CONVERT) are widened to the query's float16 in registers (exact), and
SCALED multiplies each document token's similarities by its float32 scale before the max: the dequantisation,
inside the kernel. NATIVE (grouped form): the query comes quantised to the documents' dtype, one float32 scale a
row (`q_scales`), the dot runs on the documents' tensor cores with no widening, and each query row's max is
multiplied by its scale:
- NATIVE == 1: int8 rows (quantised like the documents), int8 tensor cores, exact int32 sums; == 2 the same
  arithmetic in fp32, for the interpreter.
- NATIVE == 3: float8 documents against a float8 pair: each query row is two float8_e4m3 terms (`Q` [Tq, 2d], hi
  then lo, `kernels.maxsim.float8_query`), two fp8 dots a tile into one fp32 accumulator (on the UPCAST path, the
  interpreter's, in fp32). Hopper's fp8 MMA keeps fewer bits than fp32 in its sums: scores come out 3e-5 to 1e-4 off,
  relative (v15; max_num_imprecise_acc does not change it, and one dot over a stacked hi/lo tile was no faster).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["maxsim_kernel", "write_pages_kernel", "triton"]


@triton.jit
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


@triton.jit
def _dot(dt, qt, acc, IEEE: tl.constexpr, SWAP: tl.constexpr):
    """acc + the tile's similarities: dt @ qt^T when SWAP, else qt @ dt^T."""
    if SWAP:
        if IEEE:
            acc = tl.dot(dt, tl.trans(qt), acc, input_precision="ieee")
        else:
            acc = tl.dot(dt, tl.trans(qt), acc, out_dtype=acc.dtype)
    else:
        if IEEE:
            acc = tl.dot(qt, tl.trans(dt), acc, input_precision="ieee")
        else:
            acc = tl.dot(qt, tl.trans(dt), acc, out_dtype=acc.dtype)
    return acc


@triton.jit
def _tile_dots(d_ptrs, q_ptrs, q0, q1, row_valid, offs_k, D_MODEL: tl.constexpr, BLOCK_Q: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr, EVEN_K: tl.constexpr,
               UPCAST: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr, CONVERT: tl.constexpr,
               NATIVE: tl.constexpr):
    """Similarities of one tile of document rows with the query rows over all of d, fp32 accumulation:
    `[BLOCK_D, BLOCK_Q]` when SWAP, else `[BLOCK_Q, BLOCK_D]`. Every document row of the tile is valid (the caller
    repeats a document's last row past its end: a repeated row cannot change a max), so the loads are unmasked in
    that dimension. A float8 pair query (NATIVE == 3): its lo term is q1 (NUM_K == 1) or D_MODEL past q_ptrs."""
    if NATIVE == 1:  # int8 x int8 on the tensor cores: exact int32 sums
        if SWAP:
            acc = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.int32)
        else:
            acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.int32)
    elif SWAP:
        acc = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for kk in tl.static_range(NUM_K):
        k_valid = (offs_k[None, :] + kk * BLOCK_K) < D_MODEL
        if EVEN_K:
            dt = tl.load(d_ptrs + kk * BLOCK_K)
        else:
            dt = tl.load(d_ptrs + kk * BLOCK_K, mask=k_valid, other=0.0)
        if NUM_K == 1:
            qt = q0
        elif EVEN_K:
            qt = tl.load(q_ptrs + kk * BLOCK_K, mask=row_valid[:, None], other=0.0)
        else:
            qt = tl.load(q_ptrs + kk * BLOCK_K, mask=row_valid[:, None] & k_valid, other=0.0)
        if CONVERT and NATIVE == 0:  # float8 / int8 storage: every value is a float16 exactly
            dt = dt.to(qt.dtype)
        if UPCAST:
            dt = dt.to(tl.float32)
            qt = qt.to(tl.float32)
        acc = _dot(dt, qt, acc, IEEE, SWAP)
        if NATIVE == 3:  # the pair's lo term, on the same document tile
            if NUM_K == 1:
                qt = q1
            elif EVEN_K:
                qt = tl.load(q_ptrs + D_MODEL + kk * BLOCK_K, mask=row_valid[:, None], other=0.0)
            else:
                qt = tl.load(q_ptrs + D_MODEL + kk * BLOCK_K, mask=row_valid[:, None] & k_valid, other=0.0)
            if UPCAST:
                qt = qt.to(tl.float32)
            acc = _dot(dt, qt, acc, IEEE, SWAP)
    if NATIVE == 1:
        acc = acc.to(tl.float32)
    return acc


@triton.jit
def _rows64(pages, rows, end, PAGE: tl.constexpr, valid=True):
    """Where logical rows (clamped to the document's last, end - 1) live: arena rows of the page list (PAGE > 0),
    else the rows themselves; int64. `valid` False (an empty document): no page-list read, row 0."""
    rows = tl.maximum(tl.minimum(rows, end - 1), 0)
    if PAGE > 0:
        return tl.load(pages + rows // PAGE, mask=valid, other=0).to(tl.int64) * PAGE + rows % PAGE
    return rows.to(tl.int64)


@triton.jit(do_not_specialize=["n_docs", "n_queries", "q_len", "n_chunks", "n_jobs"])
def maxsim_kernel(
    Q, D, scales, q_scales, pages, d_start, d_end, cu_q, doc_group, out,
    n_docs, n_queries, q_len, n_chunks, n_jobs,
    D_MODEL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    QPB: tl.constexpr, LQP: tl.constexpr, GROUPED: tl.constexpr, SWAP: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, CONVERT: tl.constexpr, DPP: tl.constexpr,
    PAGE: tl.constexpr, SCALED: tl.constexpr, NATIVE: tl.constexpr,
):
    """Rows of a query block: QPB queries of LQP rows each (QPB > 1 packs several short queries of the multi-query
    form), or chunk `c` of one long query (n_chunks > 1, QPB == 1). Programs of one document are adjacent, so a
    document read by several query blocks is served from L2.
    GROUPED: the query of document b is rows cu_q[g]:cu_q[g+1] of Q, g = doc_group[b]; out is [n_chunks, B].
    Otherwise queries are [n_queries, q_len] rows of Q; out is [n_queries, n_chunks, B].
    SWAP computes the tile as D @ Q^T ([BLOCK_D, BLOCK_Q], doc tokens on the MMA's M side), keeps an elementwise
    running max and reduces over doc tokens once at the end: better for short queries.
    The last tile of a document repeats the document's last row instead of masking rows past its end, so no tile
    needs a row mask or a select (the select cost compute-bound shapes 7-13% on the H100, docs/kernel.md).
    UPCAST (interpreter only): Triton's CPU interpreter multiplies bf16 tiles as raw integers, so there they are
    widened to fp32 first (exact: every bf16 is an fp32, and products accumulate in fp32 either way).
    """
    pid = tl.program_id(0)
    b_first = (pid // n_jobs) * DPP
    job = pid % n_jobs
    c = job % n_chunks
    qblock = job // n_chunks
    r = tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    NUM_K: tl.constexpr = (D_MODEL + BLOCK_K - 1) // BLOCK_K
    EVEN_K: tl.constexpr = D_MODEL % BLOCK_K == 0
    Q_ROW: tl.constexpr = 2 * D_MODEL if NATIVE == 3 else D_MODEL  # a float8 pair's row: hi, then lo
    if not GROUPED:  # the query block is the same for every document of this program: load it once
        qi = qblock * QPB + r // LQP
        tok = c * LQP + r % LQP
        row_valid = (qi < n_queries) & (tok < q_len)
        q_rows = qi.to(tl.int64) * q_len + tok
        q_ptrs = Q + q_rows[:, None] * D_MODEL + offs_k[None, :]
        q0 = _query_tile(q_ptrs, row_valid, offs_k, D_MODEL, NUM_K, EVEN_K)
        q1 = 0.0  # NATIVE forms are grouped

    for i in range(0, tl.minimum(DPP, n_docs - b_first)):
        b = b_first + i
        s_start = tl.load(d_start + b)
        s_end = tl.load(d_end + b)
        if GROUPED:
            g = tl.load(doc_group + b)
            q_start = tl.load(cu_q + g)
            lq = tl.load(cu_q + g + 1) - q_start
            tok = c * BLOCK_Q + r
            row_valid = tok < lq
            q_rows = q_start.to(tl.int64) + tok
            # a chunk past the end of a shorter query in the same launch reads no document
            loop_end = tl.where(c * BLOCK_Q < lq, s_end, s_start)
            q_ptrs = Q + q_rows[:, None] * Q_ROW + offs_k[None, :]
            q0 = _query_tile(q_ptrs, row_valid, offs_k, D_MODEL, NUM_K, EVEN_K)
            q1 = _query_tile(q_ptrs + D_MODEL, row_valid, offs_k, D_MODEL, NUM_K, EVEN_K) if NATIVE == 3 else 0.0
        else:
            loop_end = s_end

        if SWAP:
            best = tl.full([BLOCK_D, BLOCK_Q], float("-inf"), dtype=tl.float32)
        else:
            best_row = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
        first_valid = s_start + offs_d * 0 < loop_end
        if PAGE > 0:  # each tile's arena rows (and scales) are requested a tile ahead, with the previous tile's
            # loads, so no tile waits for the page-list load that gates its addresses (an H200, v14: int8 10,000
            # documents 119 -> 113 µs, float8 158 -> 147, float16 1,000 35.5 -> 33.5)
            rows_next = _rows64(pages, s_start + offs_d, loop_end, PAGE, first_valid)
            if SCALED:
                scale_next = tl.load(scales + rows_next, mask=first_valid, other=0.0)
        elif SCALED:  # packed: the first tile's scales, requested with the pipeline's first tiles
            scale_next = tl.load(scales + _rows64(pages, s_start + offs_d, loop_end, PAGE), mask=first_valid,
                                 other=0.0)
        for start in range(s_start, loop_end, BLOCK_D):
            nxt_valid = start + BLOCK_D + offs_d * 0 < loop_end
            if PAGE > 0:
                rows64 = rows_next
                rows_next = _rows64(pages, start + BLOCK_D + offs_d, loop_end, PAGE, nxt_valid)
            else:
                rows64 = _rows64(pages, start + offs_d, loop_end, PAGE)
            d_ptrs = D + rows64[:, None] * D_MODEL + offs_k[None, :]
            if SCALED:  # this tile's scales were requested a tile ago; request the next tile's
                scale = scale_next
                if PAGE > 0:
                    scale_next = tl.load(scales + rows_next, mask=nxt_valid, other=0.0)
                else:
                    scale_next = tl.load(scales + _rows64(pages, start + BLOCK_D + offs_d, loop_end, PAGE),
                                         mask=nxt_valid, other=0.0)
            acc = _tile_dots(d_ptrs, q_ptrs, q0, q1, row_valid, offs_k, D_MODEL, BLOCK_Q, BLOCK_D, BLOCK_K,
                             NUM_K, EVEN_K, UPCAST, IEEE, SWAP, CONVERT, NATIVE)
            if SCALED:
                if SWAP:
                    acc = acc * scale[:, None]
                else:
                    acc = acc * scale[None, :]
            if SWAP:
                best = tl.maximum(best, acc)
            else:
                best_row = tl.maximum(best_row, tl.max(acc, axis=1))
        if SWAP:
            best_row = tl.max(best, axis=0)
        if NATIVE > 0:  # the query's own scale a row (grouped form only)
            best_row = best_row * tl.load(q_scales + q_rows, mask=row_valid, other=0.0)

        best_row = tl.where(row_valid & (s_end > s_start), best_row, 0.0)
        per_query = tl.sum(tl.reshape(best_row, [QPB, LQP]), axis=1)  # [QPB]
        if GROUPED:
            tl.store(out + c * n_docs + b + tl.arange(0, QPB), per_query)
        else:
            qo = qblock * QPB + tl.arange(0, QPB)
            tl.store(out + (qo.to(tl.int64) * n_chunks + c) * n_docs + b, per_query, mask=qo < n_queries)


@triton.jit
def write_pages_kernel(src, dst, dst_scales, log, doc_src, doc_len, doc_log,
                       D_MODEL: tl.constexpr, PAGE: tl.constexpr, BLOCK_K: tl.constexpr, QMAX: tl.constexpr,
                       ROUND: tl.constexpr):
    """Document b's rows doc_src[b] .. + doc_len[b] of the staged documents `src` into its pages, the page list's
    entries log[doc_log[b]] onward, a page a step: program (b, j) writes pages j, j + G, ... of document b (G the
    grid's second size). QMAX > 0 (compressed storage): each row is divided by its scale amax|row| / QMAX (1 for a
    zero row), rounded (ROUND: to the nearest integer, halves up, for int8; else the cast to float8 rounds) and
    stored with its scale. `scoring/store/pages.py` does the same on the CPU, with the same arithmetic."""
    b = tl.program_id(0)
    first = tl.load(doc_src + b).to(tl.int64)
    length = tl.load(doc_len + b)
    at = tl.load(doc_log + b).to(tl.int64)
    r = tl.arange(0, PAGE)
    k = tl.arange(0, BLOCK_K)
    for j in range(tl.program_id(1), (length + PAGE - 1) // PAGE, tl.num_programs(1)):
        n = tl.minimum(length - j * PAGE, PAGE)
        s = first + j * PAGE
        page = tl.load(log + at + j).to(tl.int64)
        m = (r < n)[:, None] & (k < D_MODEL)[None, :]
        x = tl.load(src + (s + r)[:, None] * D_MODEL + k[None, :], mask=m, other=0.0).to(tl.float32)
        rows = page * PAGE + r
        if QMAX > 0:
            amax = tl.max(tl.abs(x), axis=1)
            scale = tl.where(amax > 0, tl.math.div_rn(amax, QMAX + 0.0 * amax), 1.0)  # IEEE divisions, as torch's
            x = tl.minimum(tl.maximum(tl.math.div_rn(x, scale[:, None] + 0.0 * x), -QMAX), QMAX)
            if ROUND:
                x = tl.floor(x + 0.5)
            tl.store(dst_scales + rows, scale, mask=r < n)
        tl.store(dst + rows[:, None] * D_MODEL + k[None, :], x.to(dst.dtype.element_ty), mask=m)
