"""The MaxSim kernels on CUDA (skipped without a GPU, as in CI): every form and storage dtype against float64,
across the model dimensions the service meets, and the page writer against torch's quantisation."""
import numpy as np
import pytest
import torch

from kernels import maxsim as km
from scoring.store.pages import quantize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.int8]


def bits(t):
    """A same-size integer view: torch has no CUDA indexing kernels for float8."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def rel(out, ref):
    assert torch.isfinite(out).all(), "an output element was not written"
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def documents(lengths, d, dtype, seed):
    """(stored documents, scales or None, cu_seqlens, float64 dequantised values) on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    x = torch.nn.functional.normalize(torch.randn(int(cu[-1]), d, device="cuda", generator=g), dim=-1)
    if dtype in km.COMPRESSED:
        values, scales = quantize(x.half(), dtype)
        return values, scales, cu.cuda(), km.dequantize(values, scales, torch.float64)
    x = x.to(dtype)
    return x, None, cu.cuda(), x.double()


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(km, "_POISON_OUTPUTS", True)


@pytest.mark.parametrize("dtype, d", [
    (torch.float16, 64), (torch.float16, 96), (torch.float16, 128), (torch.float16, 384), (torch.bfloat16, 128),
    (torch.float32, 128), (torch.float32, 384), (torch.float8_e4m3fn, 128), (torch.float8_e4m3fn, 384),
    (torch.int8, 96), (torch.int8, 128),
])
def test_every_form_against_float64(dtype, d):
    lengths = [300, 1, 0, 77, 512, 33] * 20
    D, scales, cu, exact = documents(lengths, d, dtype, d)
    qdtype = torch.float16 if dtype in km.COMPRESSED else dtype
    tol = 1e-5 if dtype != torch.float32 else 1e-6
    g = torch.Generator(device="cuda").manual_seed(1)
    for lq in (1, 32, 300):  # one token, the memory-bound bucket, a long query over several blocks
        Q = torch.randn(lq, d, device="cuda", generator=g).to(qdtype)
        assert rel(km.maxsim_packed(Q, D, cu, scales=scales), km.maxsim_reference(Q, exact, cu, torch.float64)) < tol
    Qm = torch.randn(16, 32, d, device="cuda", generator=g).to(qdtype)  # many short queries
    assert rel(km.maxsim_packed(Qm, D, cu, scales=scales), km.maxsim_reference(Qm, exact, cu, torch.float64)) < tol
    cq = torch.tensor([0, 32, 33, 333], dtype=torch.int32, device="cuda")
    Qg = torch.randn(333, d, device="cuda", generator=g).to(qdtype)
    group = (torch.arange(len(lengths), device="cuda") % 3).to(torch.int32)
    ref = km.maxsim_grouped_reference(Qg, cq, exact, cu, group, torch.float64)
    assert rel(km.maxsim_grouped(Qg, cq, D, cu, group, max_lq=300, scales=scales), ref) < tol
    # the paged form: every page of 16 rows somewhere else in a larger arena
    pages_per_doc = [-(-n // 16) for n in lengths]
    n_pages = sum(pages_per_doc)
    perm = torch.randperm(2 * n_pages, device="cuda")[:n_pages].to(torch.int32)
    arena = torch.zeros(2 * n_pages * 16, d, device="cuda", dtype=D.dtype)
    arena_scales = torch.ones(2 * n_pages * 16, device="cuda") if scales is not None else None
    starts = torch.cumsum(torch.tensor([0] + pages_per_doc[:-1]), 0) * 16
    logical = torch.arange(int(cu[-1])) + torch.repeat_interleave(starts - cu[:-1].cpu().long(), torch.tensor(lengths))
    rows = (perm.long().cpu()[logical // 16] * 16 + logical % 16).cuda()  # where each token of D goes
    bits(arena)[rows] = bits(D)
    if scales is not None:
        arena_scales[rows] = scales
    start = starts.to(torch.int32).cuda()
    end = start + torch.tensor(lengths, dtype=torch.int32, device="cuda")
    out = km.maxsim_paged(Qg, cq, arena, perm, 16, start, end, group, 300, 150.0, scales=arena_scales)
    assert rel(out, ref) < tol
    if dtype == torch.int8:  # the scorer's int8 form: int8 queries with their scales, on int8 tensor cores
        q_int, q_scales = quantize(Qg.float().cpu(), torch.int8)
        want = km.maxsim_grouped_reference(km.dequantize(q_int, q_scales, torch.float64).cuda(), cq, exact, cu,
                                           group, torch.float64)
        out = km.maxsim_paged(q_int.cuda(), cq, arena, perm, 16, start, end, group, 300, 150.0,
                              scales=arena_scales, q_scales=q_scales.cuda())
        assert rel(out, want) < tol
    if dtype == torch.float8_e4m3fn:  # the scorer's float8 form: a float8 pair query, on fp8 tensor cores
        pair, q_scales = km.float8_query(Qg.float())
        want = km.maxsim_grouped_reference(km.dequantize_query(pair, q_scales, torch.float64), cq, exact, cu, group,
                                           torch.float64)
        out = km.maxsim_paged(pair, cq, arena, perm, 16, start, end, group, 300, 150.0, scales=arena_scales,
                              q_scales=q_scales)
        # float8 x float8 on the H200's tensor cores keeps fewer bits than fp32 in its sums: 2.7e-5 off here, up to
        # 1.1e-4 over 1,000-10,000 documents, whatever Triton's max_num_imprecise_acc (the documents' own float8
        # rounding moves scores by ~6e-2 of their size)
        assert rel(out, want) < 3e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_page_writer_matches_torch(dtype):
    g = torch.Generator(device="cuda").manual_seed(2)
    d, page = 128, 16
    src = torch.randn(1000, d, device="cuda", generator=g).half()
    src[7] = 0
    lengths = [300, 0, 195, 505]  # documents of 19, 0, 13 and 32 pages, the last rows of two in part-filled pages
    n_pages = [-(-n // page) for n in lengths]
    log = torch.randperm(sum(n_pages), device="cuda").to(torch.int32)  # their pages anywhere in the arena
    as_dev = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731
    doc_src, doc_log = as_dev(np.cumsum([0, *lengths[:-1]])), as_dev(np.cumsum([0, *n_pages[:-1]]))
    arena = torch.zeros(sum(n_pages) * page, d, dtype=dtype, device="cuda")
    scales = torch.zeros(sum(n_pages) * page, device="cuda") if dtype in km.COMPRESSED else None
    km.write_pages(src, arena, scales, log, doc_src, as_dev(lengths), doc_log, page, max(n_pages))
    page_rows = as_dev([min(page, n - j * page) for n, k in zip(lengths, n_pages) for j in range(k)])
    rows = (log.long()[:, None] * page + torch.arange(page, device="cuda")).flatten()
    valid = (torch.arange(page, device="cuda")[None, :] < page_rows[:, None]).flatten()
    got = bits(arena)[rows[valid]].view(dtype)
    if dtype in km.COMPRESSED:
        # against the CPU's quantisation (IEEE divisions; torch on CUDA divides by a scalar through its reciprocal)
        want, want_scales = quantize(src[:int(valid.sum())].cpu(), dtype)
        got_scales = scales[rows[valid]].cpu()
        torch.testing.assert_close(got_scales, want_scales, rtol=2.4e-7, atol=0)
        if dtype == torch.float8_e4m3fn:  # one float8 step: an eighth of the value, 2^-9 among subnormals
            step = want_scales[:, None] * torch.clamp(want.float().abs() / 8, min=2.0 ** -9)
        else:
            step = want_scales[:, None].expand_as(want)
        diff = (got.float().cpu() * got_scales[:, None] - want.float() * want_scales[:, None]).abs()
        off = int((diff > 0).sum())
        print(f"{dtype}: {off} of {diff.numel()} values differ from the CPU's, by at most one step")
        assert (diff <= step + 1e-12).all() and off <= diff.numel() // 1000
    else:
        assert torch.equal(got, src[:int(valid.sum())].to(dtype))
