"""Direct launches of the compiled grid kernel on CUDA (skipped without a GPU, as in CI): after the first launch of
a key, later launches skip Triton's `run` and must give the same scores on the right stream, and anything Triton
specialises on (dtype, alignment, block config) must get its own kernel."""
import pytest
import torch
import triton

from kernels import maxsim as km

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def jit_calls(monkeypatch):
    """The grids of the launches that went through Triton's `run` (the direct ones do not)."""
    calls = []
    real = km._kernel

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            calls.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(km, "_kernel", lambda flat=False: Counting(real(flat)))
    monkeypatch.setattr(km, "_DIRECT", {})
    return calls


def documents(tokens, n_docs, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(tokens, d, device="cuda", generator=g), dim=-1).to(dtype)
    cu = torch.linspace(0, tokens, n_docs + 1, device="cuda").round().to(torch.int32)
    return D, cu


def query(rows, d, dtype, seed=1, nq=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (rows, d) if nq is None else (nq, rows, d)
    return torch.nn.functional.normalize(torch.randn(*shape, device="cuda", generator=g), dim=-1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d", [64, 96, 128, 384])
@pytest.mark.parametrize("form", ["one query", "several queries", "long query", "grouped"])
def test_direct_launch_matches_triton_run(jit_calls, monkeypatch, dtype, d, form):
    D, cu = documents(6_000, 40, d, dtype)
    rows = 300 if form == "long query" else 32
    Q = query(rows, d, dtype, nq=4 if form == "several queries" else None)

    def score():
        if form == "grouped":
            return km.maxsim_grouped(Q, torch.tensor([0, 32], dtype=torch.int32, device="cuda"), D, cu,
                                     torch.zeros(40, dtype=torch.int32, device="cuda"), max_lq=32)
        return km.maxsim_packed(Q, D, cu)

    monkeypatch.setattr(km, "DIRECT_LAUNCH", False)
    through_run = score()
    monkeypatch.setattr(km, "DIRECT_LAUNCH", True)
    first = score()
    n_run = len(jit_calls)
    direct = [score() for _ in range(3)]
    assert len(jit_calls) == n_run, "later launches of the same key went through Triton's run"
    assert km._DIRECT, "no compiled kernel was kept"
    torch.cuda.synchronize()
    for out in [first, *direct]:
        assert torch.equal(out, through_run)
    ref = (km.maxsim_grouped_reference(Q, torch.tensor([0, 32], device="cuda"), D, cu,
                                       torch.zeros(40, dtype=torch.long, device="cuda"), dtype=torch.float64)
           if form == "grouped" else km.maxsim_reference(Q, D, cu, dtype=torch.float64))
    torch.testing.assert_close(direct[-1].double(), ref, rtol=1e-3, atol=1e-2)


def test_alignment_and_config_changes_get_their_own_kernel(jit_calls):
    flat = torch.nn.functional.normalize(torch.randn(4_001 * 128, device="cuda"), dim=0).half()
    aligned = flat[:4_000 * 128].view(4_000, 128)
    shifted = flat[1:1 + 4_000 * 128].view(4_000, 128)  # 2 bytes off: no 16-byte alignment
    assert shifted.data_ptr() % 16 != 0
    cu = torch.linspace(0, 4_000, 21, device="cuda").round().to(torch.int32)
    Q = query(32, 128, torch.float16)
    a1 = km.maxsim_packed(Q, aligned, cu)
    runs = len(jit_calls)
    s1 = km.maxsim_packed(Q, shifted, cu)
    assert len(jit_calls) == runs + 1  # another specialisation: through run, compiled apart
    a2, s2 = km.maxsim_packed(Q, aligned, cu), km.maxsim_packed(Q, shifted, cu)
    assert len(jit_calls) == runs + 1  # both now direct
    masked = km.maxsim_packed(Q, aligned, cu, config=km.KernelConfig(
        block_q=32, block_d=64, block_k=128, swap=True, num_warps=4, num_stages=4, clamp=False))
    assert len(jit_calls) == runs + 2  # another config: another kernel
    torch.cuda.synchronize()
    assert torch.equal(a1, a2) and torch.equal(s1, s2)
    for out, docs in ((a2, aligned), (s2, shifted), (masked, aligned)):
        torch.testing.assert_close(out.double(), km.maxsim_reference(Q, docs, cu, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-3)


def test_direct_launch_runs_on_the_current_stream(jit_calls):
    D, cu = documents(20_000, 100, 128, torch.float16)
    D2, _ = documents(20_000, 100, 128, torch.float16, seed=5)
    Q = query(32, 128, torch.float16)
    km.maxsim_packed(Q, D, cu)  # compiles; the next launch is direct
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # the side stream is busy, so an ordering mistake shows
        D.copy_(D2)  # queued behind the sleep: a launch on another stream would read the old documents
        out = km.maxsim_packed(Q, D, cu)
    assert len(jit_calls) == 1
    torch.cuda.synchronize()
    torch.testing.assert_close(out.double(), km.maxsim_reference(Q, D2, cu, dtype=torch.float64),
                               rtol=1e-4, atol=1e-3)


def test_launch_hooks_take_triton_run(jit_calls, monkeypatch):
    D, cu = documents(4_000, 20, 128, torch.float16)
    Q = query(32, 128, torch.float16)
    km.maxsim_packed(Q, D, cu)
    seen = []
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", lambda *a: seen.append(1))
    km.maxsim_packed(Q, D, cu)
    km.maxsim_packed(Q, D, cu)
    assert len(jit_calls) == 3 and len(seen) == 2
