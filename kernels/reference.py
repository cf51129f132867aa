"""Exact MaxSim in float32 or float64 (CPU or GPU, any float dtype): the reference every kernel is checked against.

score(query, doc) = sum over query tokens i of max over doc tokens j of <Q_i, D_j>. Documents are packed without
padding: `D` is `[T, d]` and `cu_seqlens` `[B+1]` holds the offsets, so document b is
`D[cu_seqlens[b]:cu_seqlens[b+1]]`.
An empty document scores 0, so does an empty query. Compressed documents (float8_e4m3 / int8 with one float32 scale
per token) are scored on their dequantised values, `dequantize(D, scales)`.
"""
from __future__ import annotations

import torch

_CHUNK_ELEMS = 1 << 22  # similarity elements per chunk: bounds the reference's memory, never [B, Lq, Ld]


def dequantize(D: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values a compressed document stands for: each token's row times its scale (a plain cast when None)."""
    out = D.to(dtype)
    return out if scales is None else out * scales.to(dtype)[:, None]


def dequantize_query(Q: torch.Tensor, q_scales: torch.Tensor | None, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """The values a quantised query stands for (`kernels.maxsim.maxsim_paged`'s `q_scales` forms): a float8 pair
    [Tq, 2d] is scale * (hi + lo), int8 rows scale * row, and a query without scales itself."""
    if q_scales is not None and Q.dtype == torch.float8_e4m3fn:
        d = Q.shape[1] // 2
        return (Q[:, :d].to(dtype) + Q[:, d:].to(dtype)) * q_scales.to(dtype)[:, None]
    return dequantize(Q, q_scales, dtype)


def check_packed(Q: torch.Tensor, D: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if D.dim() != 2:
        raise ValueError(f"D must be [T, d], got {tuple(D.shape)}")
    if Q.dim() not in (2, 3) or Q.shape[-1] != D.shape[1]:
        raise ValueError(f"Q must be [Lq, d] or [Nq, Lq, d] with d={D.shape[1]}, got {tuple(Q.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be [B+1]")


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
    rows_per_chunk = max(1, _CHUNK_ELEMS // max(1, nq * lq))
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
    check_packed(Q, D, cu_seqlens)
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
