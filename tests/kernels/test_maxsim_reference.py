"""The exact reference against a per-document float64 loop (no Triton involved)."""
import torch

from kernels import reference as km


def loop_reference(Q, docs):
    return torch.tensor([(Q.double() @ doc.double().T).amax(1).sum().item() if len(doc) else 0.0 for doc in docs],
                        dtype=torch.float64)


def test_reference_matches_loop_across_chunks(monkeypatch):
    monkeypatch.setattr(km, "_CHUNK_ELEMS", 600)  # force many chunks, and documents larger than one chunk
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 0, 40, 3, 500, 17]
    D = torch.randn(sum(lengths), 24, generator=gen)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    Q = torch.randn(9, 24, generator=gen)
    out = km.maxsim_reference(Q, D, cu, torch.float64)
    assert torch.allclose(out, loop_reference(Q, torch.split(D, lengths)), rtol=1e-12, atol=1e-9)
    multi = km.maxsim_reference(torch.stack([Q, -Q]), D, cu, torch.float64)
    assert torch.allclose(multi[1], loop_reference(-Q, torch.split(D, lengths)), rtol=1e-12, atol=1e-9)
