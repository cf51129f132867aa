"""MaxSim Triton kernels under Triton's CPU interpreter against a float64 reference.

Run by tests/kernels/test_maxsim.py in a fresh process with TRITON_INTERPRET=1: Triton reads that variable when
it is first imported, and other tests in the main pytest process may import it first (through vLLM).
Every run starts from a NaN-poisoned output, so an element the kernel fails to write cannot pass.
"""
import os
import dataclasses

import pytest
import torch

triton = pytest.importorskip("triton")

from kernels import maxsim as km  # noqa: E402


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/kernels/test_maxsim.py"
    monkeypatch.setattr(km, "_POISON_OUTPUTS", True)


TOL = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-5}


def packed(lengths, d, dtype, gen):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return torch.randn(int(cu[-1]), d, generator=gen).to(dtype), cu


def check(out, ref, dtype):
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.isfinite(out).all(), "an output element was not written"
    err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    assert err < TOL[dtype], err


CASES = [  # (Lq, doc lengths, d, dtype)
    (32, [300, 5, 1, 77], 128, torch.float16),
    (1, [1], 33, torch.float32),
    (1, [7, 64, 65], 64, torch.bfloat16),
    (17, [1, 2, 3, 129], 96, torch.float16),
    (200, [10, 150], 96, torch.bfloat16),  # two query blocks, summed
    (5, [3, 0, 9], 384, torch.float16),  # empty document scores 0
    (64, [40, 33], 256, torch.float32),
    (9, [90], 31, torch.float16),  # odd d
]


@pytest.mark.parametrize("lq,lengths,d,dtype", CASES)
def test_packed_single_query(lq, lengths, d, dtype):
    gen = torch.Generator().manual_seed(hash((lq, d)) % 2**31)
    D, cu = packed(lengths, d, dtype, gen)
    Q = torch.randn(lq, d, generator=gen).to(dtype)
    check(km.maxsim_packed(Q, D, cu), km.maxsim_reference(Q, D, cu, torch.float64), dtype)


@pytest.mark.parametrize("nq,lq,lengths,d,dtype", [
    (3, 32, [300, 5, 1], 128, torch.float16),
    (5, 7, [20, 1, 33], 64, torch.float32),  # several short queries share a program
    (2, 130, [50, 9], 64, torch.bfloat16),  # long queries: chunks summed
    (1, 1, [1], 16, torch.float16),
])
def test_packed_multi_query(nq, lq, lengths, d, dtype):
    gen = torch.Generator().manual_seed(nq * 1000 + lq)
    D, cu = packed(lengths, d, dtype, gen)
    Q = torch.randn(nq, lq, d, generator=gen).to(dtype)
    out = km.maxsim_packed(Q, D, cu)
    assert out.shape == (nq, len(lengths))
    check(out, km.maxsim_reference(Q, D, cu, torch.float64), dtype)


@pytest.mark.parametrize("q_lengths,doc_groups,d,dtype", [
    ([32, 7, 1], [0, 0, 1, 2, 1, 0], 128, torch.float16),
    ([150, 3], [1, 0, 1], 64, torch.float32),  # a long and a short query in one launch
    ([12], [0, 0], 384, torch.bfloat16),
])
def test_grouped(q_lengths, doc_groups, d, dtype):
    gen = torch.Generator().manual_seed(len(doc_groups) * 7 + d)
    lengths = torch.randint(1, 90, (len(doc_groups),), generator=gen).tolist()
    D, cu = packed(lengths, d, dtype, gen)
    Q, cq = packed(q_lengths, d, dtype, gen)
    group = torch.tensor(doc_groups, dtype=torch.int32)
    out = km.maxsim_grouped(Q, cq, D, cu, group)
    ref = km.maxsim_grouped_reference(Q, cq, D, cu, group, torch.float64)
    check(out, ref, dtype)
    for g, lq in enumerate(q_lengths):  # each group equals its own single-query call
        docs = (group == g).nonzero().flatten()
        for b in docs.tolist():
            single = km.maxsim_reference(Q[cq[g]:cq[g + 1]], D[cu[b]:cu[b + 1]],
                                         torch.tensor([0, lengths[b]]), torch.float64)
            assert abs(out[b].item() - single.item()) <= 1e-5 * max(1.0, abs(single.item()))


@pytest.mark.parametrize("nsplit", [2, 8])
def test_documents_split_over_programs(nsplit):
    gen = torch.Generator().manual_seed(nsplit)
    D, cu = packed([300, 1, 0, 64, 65], 64, torch.float16, gen)
    Q = torch.randn(20, 64, generator=gen).half()
    cfg = dataclasses.replace(km._config(20, 100, 64, 2), nsplit=nsplit)
    ref = km.maxsim_reference(Q, D, cu, torch.float64)
    for _ in range(2):  # the per-document counters must be back at 0 for the next launch
        check(km.maxsim_packed(Q, D, cu, config=cfg), ref, torch.float16)
    cq = torch.tensor([0, 20], dtype=torch.int32)
    check(km.maxsim_grouped(Q, cq, D, cu, torch.zeros(5, dtype=torch.int32), config=cfg), ref, torch.float16)


def test_block_configs_agree():
    gen = torch.Generator().manual_seed(3)
    D, cu = packed([70, 130, 1], 64, torch.float16, gen)
    Q = torch.randn(40, 64, generator=gen).half()
    ref = km.maxsim_reference(Q, D, cu, torch.float64)
    for swap in (True, False):
        for block_d in (32, 64):
            cfg = km.KernelConfig(block_q=64, block_d=block_d, block_k=32, swap=swap, num_warps=4, num_stages=2)
            check(km.maxsim_packed(Q, D, cu, config=cfg), ref, torch.float16)


def test_empty_batch():
    D = torch.randn(0, 32).half()
    out = km.maxsim_packed(torch.randn(4, 32).half(), D, torch.zeros(1, dtype=torch.int32))
    assert out.shape == (0,)


@pytest.mark.parametrize("lq,lengths,d,dtype", [
    (32, [300, 5, 1, 77, 0], 128, torch.float16),
    (200, [10, 150, 3], 96, torch.bfloat16),  # long query: chunks summed
    (7, [9, 40], 32, torch.float32),
])
def test_list_of_separate_tensors(lq, lengths, d, dtype):
    gen = torch.Generator().manual_seed(lq + d)
    docs = [torch.randn(n, d, generator=gen).to(dtype) for n in lengths]  # separate allocations, any order
    Q = torch.randn(lq, d, generator=gen).to(dtype)
    D = torch.cat(docs)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    assert km._list_layout(docs, d) is not None  # the pointer form, not the cat fallback
    check(km.maxsim_list(Q, docs), km.maxsim_reference(Q, D, cu, torch.float64), dtype)
    check(km.maxsim_list(Q, docs[::-1]), km.maxsim_reference(Q, D, cu, torch.float64).flip(0), dtype)


def test_list_views_multi_query_and_fallback():
    gen = torch.Generator().manual_seed(11)
    lengths = [33, 1, 64, 65]
    D, cu = packed(lengths, 64, torch.float16, gen)
    views = list(torch.split(D, lengths))
    Q = torch.randn(5, 9, 64, generator=gen).half()
    ref = km.maxsim_reference(Q, D, cu, torch.float64)
    check(km.maxsim_list(Q, views), ref, torch.float16)
    mixed = views[:-1] + [views[-1].float()]  # mixed dtypes: packed by the fallback
    assert km._list_layout(mixed, 64) is None
    check(km.maxsim_list(Q, mixed), ref, torch.float16)
    strided = [torch.randn(64, 2 * n, generator=gen).half()[:, :n].T for n in (64, 64)]  # not row-contiguous
    assert km._list_layout(strided, 64) is None


def test_multi_query_large_blocks():
    gen = torch.Generator().manual_seed(12)
    D, cu = packed([40, 1, 70], 32, torch.float16, gen)
    Q = torch.randn(9, 32, 32, generator=gen).half()
    ref = km.maxsim_reference(Q, D, cu, torch.float64)
    for swap in (True, False):
        cfg = km.KernelConfig(block_q=256, block_d=32, block_k=32, swap=swap, num_warps=8, num_stages=2)
        check(km.maxsim_packed(Q, D, cu, config=cfg), ref, torch.float16)


@pytest.mark.parametrize("lq,lengths,d,dtype,per_sm", [
    (32, [300, 5, 1, 77, 0, 200, 64, 63, 65], 128, torch.float16, 1),  # 4 programs: documents cut at boundaries
    (17, [0, 0, 130, 0, 1, 2, 3, 129, 0, 0], 96, torch.float16, 2),  # empty documents at start, middle, end
    (5, [700], 64, torch.bfloat16, 1),  # one document over every program
    (9, [3, 0, 9, 40], 31, torch.float32, 4),  # more programs than tiles: idle programs
    (1, [0, 0], 32, torch.float16, 1),  # no tokens at all
    (64, [90] * 13 + [1] * 40, 64, torch.float16, 1),  # many tiny documents in one program
])
def test_flat_persistent(lq, lengths, d, dtype, per_sm):
    gen = torch.Generator().manual_seed(lq * 31 + d)
    D, cu = packed(lengths, d, dtype, gen)
    Q = torch.randn(lq, d, generator=gen).to(dtype)
    base = km._config(lq, 100, d, D.element_size())
    ref = km.maxsim_reference(Q, D, cu, torch.float64)
    for block_d in (16, 64):
        cfg = dataclasses.replace(base, flat=per_sm, block_d=block_d)
        for _ in range(2):  # counters and row buffers must be restored for the next launch
            check(km.maxsim_packed(Q, D, cu, config=cfg), ref, dtype)
    check(km.maxsim_packed(Q[None], D, cu, config=cfg), ref[None], dtype)
    assert bool((km._ROWBUFS[("cpu", 0, base.block_q)] == float("-inf")).all())
    assert int(km._COUNTERS[("cpu", 0)].abs().sum()) == 0


@pytest.mark.parametrize("dpp", [2, 3, 8])
def test_several_documents_per_program(dpp):
    """A program scores `dpp` consecutive documents (the last program fewer); every form and length mix."""
    gen = torch.Generator().manual_seed(40 + dpp)
    lengths = [300, 5, 1, 0, 77, 64, 65]  # 7 documents: not a multiple of dpp, an empty one inside
    D, cu = packed(lengths, 64, torch.float16, gen)
    Q = torch.randn(20, 64, generator=gen).half()
    for swap in (True, False):
        cfg = km.KernelConfig(block_q=32, block_d=32, block_k=32, swap=swap, num_warps=4, num_stages=2, dpp=dpp)
        check(km.maxsim_packed(Q, D, cu, config=cfg), km.maxsim_reference(Q, D, cu, torch.float64), torch.float16)
        Qm = torch.randn(5, 9, 64, generator=gen).half()  # several queries in one block
        check(km.maxsim_packed(Qm, D, cu, config=cfg), km.maxsim_reference(Qm, D, cu, torch.float64), torch.float16)
        Ql = torch.randn(70, 64, generator=gen).half()  # a query over three blocks, summed
        check(km.maxsim_packed(Ql, D, cu, config=cfg), km.maxsim_reference(Ql, D, cu, torch.float64), torch.float16)
    cq = torch.tensor([0, 20, 29], dtype=torch.int32)
    Qg = torch.randn(29, 64, generator=gen).half()
    group = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.int32)
    check(km.maxsim_grouped(Qg, cq, D, cu, group, config=cfg),
          km.maxsim_grouped_reference(Qg, cq, D, cu, group, torch.float64), torch.float16)
    docs = [D[cu[b]:cu[b + 1]].clone() for b in range(len(lengths))]  # the pointer form
    check(km.maxsim_list(Q, docs, config=cfg), km.maxsim_reference(Q, D, cu, torch.float64), torch.float16)


@pytest.mark.parametrize("clamp", [False, True])
def test_tile_loop_clamped_or_masked(clamp):
    """Last tiles clamped to the document's last row (the default) or masked, in both orientations and every form:
    documents shorter than a tile, one row past a tile, empty, and split documents (clamped within their piece)."""
    gen = torch.Generator().manual_seed(50 + clamp)
    lengths = [300, 5, 1, 0, 33, 64, 65]
    for d, dtype in ((64, torch.float16), (48, torch.bfloat16)):  # d 48: the row-unmasked load keeps its K mask
        D, cu = packed(lengths, d, dtype, gen)
        for swap, dpp, nsplit in ((True, 1, 1), (False, 1, 1), (False, 3, 1), (True, 1, 4)):
            cfg = km.KernelConfig(block_q=32, block_d=32, block_k=32, swap=swap, num_warps=4, num_stages=2,
                                  dpp=dpp, nsplit=nsplit, clamp=clamp)
            Q = torch.randn(20, d, generator=gen).to(dtype)
            check(km.maxsim_packed(Q, D, cu, config=cfg), km.maxsim_reference(Q, D, cu, torch.float64), dtype)
            if nsplit > 1:
                continue
            Qm = torch.randn(5, 9, d, generator=gen).to(dtype)
            check(km.maxsim_packed(Qm, D, cu, config=cfg), km.maxsim_reference(Qm, D, cu, torch.float64), dtype)
            Ql = torch.randn(70, d, generator=gen).to(dtype)
            check(km.maxsim_packed(Ql, D, cu, config=cfg), km.maxsim_reference(Ql, D, cu, torch.float64), dtype)
            cq = torch.tensor([0, 20, 29], dtype=torch.int32)
            Qg = torch.randn(29, d, generator=gen).to(dtype)
            group = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.int32)
            check(km.maxsim_grouped(Qg, cq, D, cu, group, config=cfg),
                  km.maxsim_grouped_reference(Qg, cq, D, cu, group, torch.float64), dtype)
            docs = [D[cu[b]:cu[b + 1]].clone() for b in range(len(lengths))]
            check(km.maxsim_list(Q, docs, config=cfg), km.maxsim_reference(Q, D, cu, torch.float64), dtype)
