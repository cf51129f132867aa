"""MaxSim launches: block configurations, the public entry points, warmup. The kernels are in
`kernels/maxsim_triton.py`, the exact reference in `kernels/reference.py`.

Documents come packed (`D` [T, d] + `cu_seqlens` [B+1]) or paged (the document store's arena: document b is the
logical rows [doc_start[b], doc_end[b]) of a page list, `pages`, of `page_tokens`-row pages). Every form
accumulates in fp32 and returns fp32; an empty document or query scores 0. Query and documents are computed in the
documents' dtype (the query is cast to it); fp32 inputs use IEEE fp32 products; float8_e4m3 and int8 documents
(with one float32 scale per token) are computed against a float16 query and dequantised inside the kernel, or, in
the paged form the scorer launches, against the query quantised for their own tensor cores (`q_scales`): int8 rows
for int8 documents, a float8 pair (`float8_query`) for float8 ones.

Compilation: the kernels are specialised only on the model dimension, the dtypes and a block configuration chosen
from length buckets (`_config`), never on exact lengths or counts, so a replica that ran `warmup` for its `d`
never compiles while serving. Under TRITON_INTERPRET the Triton kernels run through Triton on the CPU; elsewhere
without CUDA, the exact reference. (The scorer replays its launches as CUDA graphs, `scoring/store/maxsim.py`: what a
launch costs the host is paid once per call shape.)
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from kernels.reference import (check_packed, dequantize, dequantize_query,  # noqa: F401 (re-exported)
                               maxsim_grouped_reference, maxsim_reference)

try:  # Triton is optional: CPU-only installs use the reference.
    from triton.runtime.errors import OutOfResources

    from kernels import maxsim_triton
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    maxsim_triton = None

__all__ = [
    "KernelConfig",
    "maxsim_packed",
    "maxsim_grouped",
    "maxsim_paged",
    "maxsim_reference",
    "maxsim_grouped_reference",
    "float8_query",
    "paged_rows",
    "write_pages",
    "triton_available",
    "warmup",
]

COMPRESSED = (torch.float8_e4m3fn, torch.int8)  # storage dtypes read with one float32 scale per token
QMAX = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}  # the largest magnitude each stores


def float8_query(x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A query for float8_e4m3 documents' tensor cores: each row as two float8_e4m3 terms, [L, 2d] (hi, then lo),
    and one float32 scale a row, amax|row| / 448 (1 for a zero row), so row = scale * (hi + lo) to ~2^-8 of its
    size (one float8 alone: 2^-4; the float8 documents' own rounding is 2^-4). hi is the store's float8 format of
    the row (`scoring.store.pages.quantize`, the same arithmetic: IEEE divisions on every device), lo the float8 of what
    hi leaves. `out`: (pair [L, 2d] float8, scales [L] float32) to write into (the scorer's CUDA graphs)."""
    x = x.float()
    qmax = QMAX[torch.float8_e4m3fn]
    amax = x.abs().amax(1)
    scale = torch.where(amax > 0, amax / torch.full_like(amax, qmax), torch.ones_like(amax))  # not a reciprocal
    y = (x / scale[:, None]).clamp_(-qmax, qmax)
    hi = y.to(torch.float8_e4m3fn)
    lo = y.sub_(hi.float()).to(torch.float8_e4m3fn)
    if out is None:
        return torch.cat([hi.view(torch.uint8), lo.view(torch.uint8)], 1).view(torch.float8_e4m3fn), scale
    pair, scales = out
    d = x.shape[1]
    pair.view(torch.uint8)[:, :d].copy_(hi.view(torch.uint8))
    pair.view(torch.uint8)[:, d:].copy_(lo.view(torch.uint8))
    scales.copy_(scale)
    return pair, scales


def triton_available(device: torch.device | str) -> bool:
    """True where the Triton kernels can run on tensors of `device` (CUDA, or the CPU under TRITON_INTERPRET)."""
    if maxsim_triton is None:
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
    dpp: int = 1  # documents per program (> 1: a query block is loaded once for several documents)


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, math.ceil(math.log2(max(1, n)))))


_LONG_DOCS = 512  # mean document tokens above which `_config` picks the long-document blocks


def _config(q_rows: int, mean_ld: float, d: int, elem_bytes: int, fp8_docs: bool = False) -> KernelConfig:
    """Block shape for programs of `q_rows` query rows (bucketed to a power of two) — measured on the H100 and the
    H200, docs/kernel.md. `elem_bytes`: the query's element size (2 for the float16 queries of float8
    documents, 1 for the int8 queries of int8 documents and the float8 pairs of float8 ones); `fp8_docs`: float8
    documents widened in the kernel (against a float16 query)."""
    block_k = min(128, _pow2_at_least(d, 16))
    if elem_bytes == 4:
        block_k = min(block_k, 64)
    if q_rows <= 64 and fp8_docs:
        # float8 documents widened to float16 in the tile: 2 warps (H200, 10,000 documents of 85-512 tokens, v13:
        # 158 µs against 185 with 4 warps; 1,000: 30.6 against 32), 3 stages (v14: 142 against 145 with 4)
        return KernelConfig(block_q=_pow2_at_least(q_rows, 16), block_d=64, block_k=block_k, swap=True,
                            num_warps=2, num_stages=3)
    if q_rows <= 64:
        # memory-bound: stream the document, doc tokens on the MMA's M side. int8 (against its int8 query) on 2
        # stages, more programs resident (H200, v14, rows a tile ahead; 1,000 documents of 300 tokens: 20.0-20.4 µs
        # against 24.1 with 3 and 24.9 with 4; 10,000: 117.6 / 118.0 / 129.0; 85-512 tokens: 113.5 / 111.3 / 117.5)
        stages = {1: 2, 4: 3}.get(elem_bytes, 4)
        return KernelConfig(block_q=_pow2_at_least(q_rows, 16), block_d=64, block_k=block_k, swap=True,
                            num_warps=4, num_stages=stages)
    if mean_ld > _LONG_DOCS and q_rows > 128 and elem_bytes == 2:
        # long queries against long documents: compute-bound, 256 query rows a program
        return KernelConfig(block_q=256, block_d=64, block_k=block_k, swap=False, num_warps=8, num_stages=3)
    return KernelConfig(block_q=128, block_d=64, block_k=block_k, swap=False,
                        num_warps=8 if mean_ld > _LONG_DOCS else 4, num_stages=3)


@functools.lru_cache(maxsize=4096)
def _config_bucketed(q_rows: int, long_docs: bool, d: int, elem_bytes: int, fp8_docs: bool = False) -> KernelConfig:
    """`_config` memoised on the length bucket (host work on every launch: 10-17 µs on a slow host)."""
    return _config(q_rows, 2 * _LONG_DOCS if long_docs else 1, d, elem_bytes, fp8_docs)


def paged_config(max_lq: int, mean_ld: float, d: int, q_elem_bytes: int, doc_dtype: torch.dtype) -> KernelConfig:
    """The block configuration `maxsim_paged` launches for these lengths and dtypes (the queries' element size: 1
    for the int8 queries of int8 documents and the float8 pairs of float8 ones, 2 for float16 queries); callers that
    replay a launch key it by this."""
    return _config_bucketed(max_lq, mean_ld > _LONG_DOCS, d, q_elem_bytes,
                            doc_dtype == torch.float8_e4m3fn and q_elem_bytes == 2)


@functools.lru_cache(maxsize=4096)
def _plan(nq: int, lq: int, long_docs: bool, d: int, esize: int, config: KernelConfig | None, fp8_docs: bool):
    """(config, queries per block, rows per query in a block, query chunks, programs per document)."""
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
        cfg = config or _config_bucketed(max(16, qpb * lqp), long_docs, d, esize, fp8_docs)
        qpb = max(1, min(_pow2_at_least(nq, 1), cfg.block_q // lqp))
        lqp = cfg.block_q // qpb
        n_chunks = 1
    else:
        cfg = config or _config_bucketed(lq, long_docs, d, esize, fp8_docs)
        qpb, lqp = 1, cfg.block_q
        n_chunks = max(1, math.ceil(lq / cfg.block_q))
    return cfg, qpb, lqp, n_chunks, math.ceil(nq / qpb) * n_chunks


# --------------------------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------------------------

_POISON_OUTPUTS = False  # tests set this: outputs start as NaN, so an element the kernel skips cannot pass
_FITTING_STAGES: dict = {}  # (d, dtype, config) -> the most pipeline stages that fit this GPU's shared memory


def _new_output(*shape: int, device: torch.device) -> torch.Tensor:
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(*shape, dtype=torch.float32, device=device)


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


def _query_dtype(doc_dtype: torch.dtype) -> torch.dtype:
    return torch.float16 if doc_dtype in COMPRESSED else doc_dtype


def _same(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def _launch(Q, D, scales, q_scales, pages, page_tokens, d_start, d_end, cu_q, doc_group, out, n_docs, n_queries, q_len,
            n_chunks, n_jobs, qpb, lqp, grouped, cfg: KernelConfig):
    if n_docs == 0 or n_jobs == 0:
        return
    if D.dtype in COMPRESSED and scales is None:
        raise ValueError(f"{D.dtype} documents need their per-token scales")
    if q_scales is None:
        native = 0
    elif D.dtype == torch.int8:
        native = 1 if D.is_cuda else 2
    else:  # a float8 pair
        native = 3
    cpu_bf16 = not D.is_cuda and D.dtype == torch.bfloat16
    upcast = cpu_bf16 or (native > 1 and not D.is_cuda)
    grid = math.ceil(n_docs / max(1, cfg.dpp)) * n_jobs
    placeholder = out  # pointers a form does not read
    tensors = (Q, D, placeholder if scales is None else scales, placeholder if q_scales is None else q_scales,
               placeholder if pages is None else pages, d_start, d_end, cu_q, doc_group, out)
    scalars = (n_docs, n_queries, q_len, n_chunks, n_jobs)
    consts = dict(D_MODEL=D.shape[1], BLOCK_Q=cfg.block_q, BLOCK_D=cfg.block_d, BLOCK_K=cfg.block_k, QPB=qpb,
                  LQP=lqp, GROUPED=grouped, SWAP=cfg.swap, IEEE=D.dtype == torch.float32 or upcast, UPCAST=upcast,
                  CONVERT=D.dtype in COMPRESSED, DPP=max(1, cfg.dpp), PAGE=page_tokens, SCALED=scales is not None,
                  NATIVE=native)
    fit_key = (D.shape[1], D.dtype, cfg)

    def launch(stages: int) -> None:
        maxsim_triton.maxsim_kernel[(grid,)](
            *tensors, *scalars, **consts, num_warps=cfg.num_warps, num_stages=stages)

    _with_fitting_stages(fit_key, cfg.num_stages, launch)


def maxsim_packed(Q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor, config: KernelConfig | None = None,
                  scales: torch.Tensor | None = None) -> torch.Tensor:
    """MaxSim of Q [Lq, d] -> [B] (fp32), or Q [Nq, Lq, d] -> [Nq, B], against packed documents (`scales` [T]:
    one float32 a token for compressed documents).

    Runs the Triton kernel on CUDA tensors (or on CPU tensors under TRITON_INTERPRET); the exact reference
    otherwise. Never synchronises with the host.
    """
    check_packed(Q, D, cu_seqlens)
    if not triton_available(D.device):
        return maxsim_reference(Q, dequantize(D, scales), cu_seqlens)
    D = _same(D, D.dtype)
    nq, lq, d = (1, *Q.shape) if Q.dim() == 2 else Q.shape
    Qf = _same(Q, _query_dtype(D.dtype))
    n_docs = cu_seqlens.numel() - 1
    cu = _same(cu_seqlens, torch.int32)
    long_docs = D.shape[0] / max(1, n_docs) > _LONG_DOCS
    cfg, qpb, lqp, n_chunks, n_jobs = _plan(nq, lq, long_docs, d, Qf.element_size(), config,
                                            D.dtype == torch.float8_e4m3fn)
    out_shape = (nq, n_chunks, n_docs) if n_chunks > 1 else ((n_docs,) if Q.dim() == 2 else (nq, n_docs))
    out = _new_output(*out_shape, device=D.device)
    _launch(Qf, D, scales, None, None, 0, cu[:-1], cu[1:], cu, cu, out, n_docs, nq, lq, n_chunks, n_jobs, qpb, lqp,
            False, cfg)
    if n_chunks > 1:
        out = out.sum(1)
        return out[0] if Q.dim() == 2 else out
    return out


def _grouped(Q, cu_seqlens_q, D, scales, pages, page_tokens, doc_start, doc_end, doc_group, max_lq, mean_ld,
             config, out=None, q_scales=None):
    n_docs = doc_start.numel()
    if q_scales is not None:
        pair = Q.dtype == D.dtype == torch.float8_e4m3fn and Q.shape[1] == 2 * D.shape[1]
        if not (Q.dtype == D.dtype == torch.int8 or pair):
            raise ValueError(f"q_scales go with an int8 query of int8 documents or a float8 pair [Tq, 2d] "
                             f"(`float8_query`) of float8 ones, got {Q.dtype} {tuple(Q.shape)} and {D.dtype}")
        q_scales = _same(q_scales, torch.float32)
    else:
        Q = _same(Q, _query_dtype(D.dtype))
    cfg = config or paged_config(max_lq, mean_ld, D.shape[1], Q.element_size(), D.dtype)
    n_chunks = max(1, math.ceil(max_lq / cfg.block_q))
    if out is not None and n_chunks == 1:
        if out.dtype != torch.float32 or out.numel() != n_docs or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 [{n_docs}] tensor")
        if _POISON_OUTPUTS:
            out.fill_(float("nan"))
    else:
        out = _new_output(*((n_chunks, n_docs) if n_chunks > 1 else (n_docs,)), device=D.device)
    _launch(Q, D, scales, q_scales, pages, page_tokens, _same(doc_start, torch.int32), _same(doc_end, torch.int32),
            _same(cu_seqlens_q, torch.int32), _same(doc_group, torch.int32), out, n_docs, 1, 0, n_chunks, n_chunks,
            1, cfg.block_q, True, cfg)
    return out.sum(0) if n_chunks > 1 else out


def _max_len(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


def maxsim_grouped(Q: torch.Tensor, cu_seqlens_q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor,
                   doc_group: torch.Tensor, max_lq: int | None = None, config: KernelConfig | None = None,
                   scales: torch.Tensor | None = None) -> torch.Tensor:
    """Many (query, documents) groups in one launch -> one fp32 score per document, [B].

    Q [Tq, d]: the queries packed, query g = Q[cu_seqlens_q[g]:cu_seqlens_q[g+1]]. D [T, d] packed documents with
    cu_seqlens [B+1]; doc_group [B] (int32) maps each document to its query. `max_lq` (the longest query) sizes
    the launch; pass it to avoid a device-to-host read of cu_seqlens_q.
    """
    if D.dim() != 2 or Q.dim() != 2 or Q.shape[1] != D.shape[1]:
        raise ValueError(f"Q [Tq, d] and D [T, d] expected, got {tuple(Q.shape)} and {tuple(D.shape)}")
    if not triton_available(D.device):
        return maxsim_grouped_reference(Q, cu_seqlens_q, dequantize(D, scales), cu_seqlens, doc_group)
    max_lq = _max_len(cu_seqlens_q) if max_lq is None else max_lq
    cu = _same(cu_seqlens, torch.int32)
    return _grouped(Q, cu_seqlens_q, _same(D, D.dtype), scales, None, 0, cu[:-1], cu[1:], doc_group, max_lq,
                    D.shape[0] / max(1, cu.numel() - 1), config)


def paged_rows(pages: torch.Tensor, page_tokens: int, doc_start: torch.Tensor, doc_end: torch.Tensor):
    """(arena rows of every document's tokens, one after another, [T] int64; cu_seqlens [B+1]): where document b's
    logical rows doc_start[b]..doc_end[b] of the page list live in the arena."""
    lengths = (doc_end - doc_start).long()
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    logical = torch.repeat_interleave(doc_start.long() - cu[:-1], lengths, output_size=int(cu[-1])) + \
        torch.arange(int(cu[-1]), device=lengths.device)
    return pages.long()[logical // page_tokens] * page_tokens + logical % page_tokens, cu


def maxsim_paged(Q: torch.Tensor, cu_seqlens_q: torch.Tensor, arena: torch.Tensor, pages: torch.Tensor,
                 page_tokens: int, doc_start: torch.Tensor, doc_end: torch.Tensor, doc_group: torch.Tensor,
                 max_lq: int, mean_ld: float, scales: torch.Tensor | None = None,
                 config: KernelConfig | None = None, out: torch.Tensor | None = None,
                 q_scales: torch.Tensor | None = None) -> torch.Tensor:
    """The grouped form over documents kept in pages of an arena (`scoring/store/pages.py`): arena [rows, d] (rows a
    multiple of `page_tokens`, a power of two), scales [rows] float32 for compressed arenas; document b is the
    logical rows [doc_start[b], doc_end[b]) of the page list `pages` (int32), logical row x being arena row
    pages[x // page_tokens] * page_tokens + x % page_tokens. `mean_ld` (mean document tokens) picks the block
    configuration. -> [B] fp32. Nothing is gathered or copied: the kernel reads the pages in place.

    `out` (float32 [B]): where the scores go when one query block covers the longest query (else a new tensor is
    returned). It may be pinned host memory: the kernel then writes the scores straight to the host (CUDA's
    unified addressing), and the caller needs no copy back, only to synchronise with the stream.

    `q_scales` ([Tq] float32, one a query row): Q holds the queries quantised for the documents' tensor cores, each
    row's max multiplied by its scale. int8 documents: int8 rows quantised as the documents are (amax|row| / 127),
    exact int32 sums. float8_e4m3 documents: a float8 pair [Tq, 2d] (`float8_query`), two fp8 dots a tile, fp32
    sums."""
    pair = q_scales is not None and Q.dtype == torch.float8_e4m3fn
    if arena.dim() != 2 or Q.dim() != 2 or Q.shape[1] != arena.shape[1] * (2 if pair else 1):
        raise ValueError(f"Q [Tq, d] (a float8 pair: [Tq, 2d]) and arena [rows, d] expected, got {tuple(Q.shape)} "
                         f"and {tuple(arena.shape)}")
    if page_tokens <= 0 or page_tokens & (page_tokens - 1):
        raise ValueError(f"page_tokens must be a power of two, got {page_tokens}")
    if not triton_available(arena.device):
        rows, cu = paged_rows(pages, page_tokens, doc_start, doc_end)
        D = dequantize(arena[rows], None if scales is None else scales[rows])
        return maxsim_grouped_reference(dequantize_query(Q, q_scales), cu_seqlens_q, D, cu, doc_group)
    return _grouped(Q, cu_seqlens_q, arena, scales, _same(pages, torch.int32), page_tokens, doc_start, doc_end,
                    doc_group, max_lq, mean_ld, config, out, q_scales)


def write_pages(src: torch.Tensor, arena: torch.Tensor, scales: torch.Tensor | None, log: torch.Tensor,
                doc_src: torch.Tensor, doc_len: torch.Tensor, doc_log: torch.Tensor, page_tokens: int,
                max_pages: int) -> None:
    """Rows doc_src[b] .. + doc_len[b] of `src` [T, d] into document b's pages, the page list `log`'s entries
    doc_log[b] onward (int32 each; `max_pages`: the most pages a document takes); compressed arenas get each row
    quantised with its scale (`maxsim_triton.write_pages_kernel`: programs a document, up to _WRITE_PROGRAMS)."""
    n_docs = doc_len.numel()
    if n_docs == 0 or max_pages <= 0:
        return
    qmax = QMAX.get(arena.dtype, 0.0)
    maxsim_triton.write_pages_kernel[(n_docs, min(max_pages, _WRITE_PROGRAMS))](
        src, arena, scales if scales is not None else doc_len, log, doc_src, doc_len, doc_log,
        D_MODEL=arena.shape[1], PAGE=page_tokens, BLOCK_K=_pow2_at_least(arena.shape[1], 16), QMAX=qmax,
        ROUND=arena.dtype == torch.int8, num_warps=4)


_WRITE_PROGRAMS = 8  # page writer programs a document; each writes every 8th of its pages


def warmup(d: int, dtype: torch.dtype = torch.float16, device: str | torch.device = "cuda", page_tokens: int = 16,
           query_lengths=(16, 32, 64, 128, 256), doc_lengths=(64, 1024)) -> None:
    """Compile every variant of the paged form (what the scorer launches) that `d`, `dtype` and these length
    buckets can select, and the page writer (no-op without Triton)."""
    if not triton_available(device):
        return
    g = torch.Generator(device="cpu").manual_seed(0)
    qdtype = _query_dtype(dtype)
    seen = set()
    for lq in query_lengths:
        for ld in doc_lengths:
            qsize = 1 if dtype in COMPRESSED else torch.empty(0, dtype=qdtype).element_size()
            cfg = paged_config(lq, ld, d, qsize, dtype)
            if (cfg, math.ceil(lq / cfg.block_q) > 1) in seen:
                continue
            seen.add((cfg, math.ceil(lq / cfg.block_q) > 1))
            arena = torch.empty(2 * ld, d, device=device, dtype=dtype)  # every row written below
            scales = torch.ones(2 * ld, device=device) if dtype in COMPRESSED else None
            src = torch.randn(2 * ld, d, generator=g).to(device=device, dtype=qdtype)
            pages = torch.arange(2 * ld // page_tokens, dtype=torch.int32, device=device)
            zero = torch.zeros(1, dtype=torch.int32, device=device)
            write_pages(src, arena, scales, pages, zero, torch.full_like(zero, 2 * ld), zero, page_tokens,
                        pages.numel())
            Q = torch.randn(lq, d, generator=g).to(device=device, dtype=qdtype)
            q_scales = None
            if dtype == torch.int8:  # the scorer's queries of compressed documents come quantised (`q_scales`)
                Q, q_scales = Q.clamp(-1, 1).mul(127).round().to(torch.int8), torch.ones(lq, device=device)
            elif dtype == torch.float8_e4m3fn:
                Q, q_scales = float8_query(Q)
            cq = torch.tensor([0, lq], dtype=torch.int32, device=device)
            cu = torch.tensor([0, ld, 2 * ld], dtype=torch.int32, device=device)
            group = torch.zeros(2, dtype=torch.int32, device=device)
            maxsim_paged(Q, cq, arena, pages, page_tokens, cu[:-1], cu[1:], group, lq, ld, scales=scales,
                         q_scales=q_scales)
