"""The documents' L2 streaming window on CUDA (skipped without a GPU, as in CI): set on the launching stream over
the documents' bytes, moved when the documents change, cleared when turned off, and never a change in the scores."""
import ctypes

import pytest
import torch

from kernels import maxsim as km

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def window(stream: torch.cuda.Stream):
    value = km._StreamAttrValue()
    rc = km._libcuda().cuStreamGetAttribute(ctypes.c_void_p(stream.cuda_stream),
                                            km._CU_STREAM_ATTRIBUTE_ACCESS_POLICY_WINDOW, ctypes.byref(value))
    assert rc == 0
    return value.window


def documents(tokens: int, n_docs: int, d: int = 128, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(tokens, d, device="cuda", generator=g), dim=-1).half()
    cu = torch.linspace(0, tokens, n_docs + 1, device="cuda").round().to(torch.int32)
    return D, cu


def test_window_follows_the_documents_and_scores_do_not_change(monkeypatch):
    monkeypatch.setattr(km, "_L2_WINDOWS", {})
    stream = torch.cuda.Stream()
    D, cu = documents(100_000, 400)  # 25.6 MB: above the window's threshold
    D2, cu2 = documents(90_000, 300, seed=1)
    small, cu_small = documents(4_000, 10, seed=2)  # 1 MB: below it
    Q = torch.nn.functional.normalize(torch.randn(32, 128, device="cuda"), dim=-1).half()
    limit = km._max_window(torch.cuda.current_device())
    assert limit > 0, "the driver offers no L2 access-policy window on this GPU"
    with torch.cuda.stream(stream):
        monkeypatch.setattr(km, "L2_STREAMING", False)
        plain = km.maxsim_packed(Q, D, cu)
        assert window(stream).num_bytes == 0
        monkeypatch.setattr(km, "L2_STREAMING", True)
        streamed = km.maxsim_packed(Q, D, cu)
        w = window(stream)
        assert (w.base_ptr, w.num_bytes) == (D.data_ptr(), min(D.numel() * 2, limit))
        assert (w.hitProp, w.missProp, w.hitRatio) == (km._CU_ACCESS_PROPERTY_STREAMING,) * 2 + (1.0,)
        prefix = km.maxsim_packed(Q, D[:75_000], cu[:301])  # a prefix of the same bytes: the window stays whole
        assert (window(stream).base_ptr, window(stream).num_bytes) == (w.base_ptr, w.num_bytes)
        grouped = km.maxsim_grouped(Q, torch.tensor([0, 32], dtype=torch.int32, device="cuda"), D2, cu2,
                                    torch.zeros(300, dtype=torch.int32, device="cuda"), max_lq=32)
        assert window(stream).base_ptr == D2.data_ptr()
        km.maxsim_packed(Q, small, cu_small)
        assert window(stream).base_ptr == D2.data_ptr()  # small documents leave the window where it was
        monkeypatch.setattr(km, "L2_STREAMING", False)
        km.maxsim_packed(Q, D, cu)
        assert window(stream).num_bytes == 0
    torch.cuda.synchronize()
    assert torch.equal(plain, streamed)
    assert torch.equal(prefix, km.maxsim_packed(Q, D[:75_000], cu[:301]))
    ref = km.maxsim_reference(Q, D, cu, dtype=torch.float64)
    torch.testing.assert_close(streamed.double(), ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grouped.double(), km.maxsim_reference(Q, D2, cu2, dtype=torch.float64),
                               rtol=1e-4, atol=1e-3)
