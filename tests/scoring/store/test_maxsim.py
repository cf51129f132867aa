"""MaxSimScorer on the CPU: the exact path the service uses without a GPU, against a float64 reference."""
import numpy as np
import pytest
import torch

from kernels import maxsim as km
from scoring.store import maxsim as sm
from scoring.store import pages as st
from scoring.store.maxsim import MaxSimScorer, ScoreGroup
from scoring.store.pages import StoredDocuments


def reference(query, docs, lengths):
    out, start = [], 0
    for n in lengths:
        sims = query.astype(np.float64) @ docs[start:start + n].astype(np.float64).T
        out.append(sims.max(1).sum() if n else 0.0)
        start += n
    return np.array(out)


def group(rng, lq, lengths, d, doc_dtype=np.float16, q_dtype=np.float32):
    lengths = np.asarray(lengths, dtype=np.int32)
    return ScoreGroup(query=rng.standard_normal((lq, d)).astype(q_dtype),
                      docs=rng.standard_normal((int(lengths.sum()), d)).astype(doc_dtype), lengths=lengths)


def test_cpu_scores_match_float64_reference():
    rng = np.random.default_rng(0)
    scorer = MaxSimScorer(dim=48, device="cpu")
    assert scorer.device == "cpu" and scorer.warmup() < 1.0
    groups = [group(rng, 32, [300, 1, 77], 48), group(rng, 1, [5], 48, np.float32, np.float16),
              group(rng, 9, [], 48), group(rng, 3, [0, 4], 48)]
    results = scorer.score(groups)
    assert len(results) == len(groups)
    for g, got in zip(groups, results):
        assert got.dtype == np.float32 and got.shape == (len(g.lengths),)
        want = reference(g.query, g.docs, g.lengths)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(1)
    scorer = MaxSimScorer(dim=16, device="cpu")
    groups = [group(rng, lq, rng.integers(1, 50, 6), 16) for lq in (4, 20, 7)]
    together = scorer.score(groups)
    for g, got in zip(groups, together):
        np.testing.assert_array_equal(got, scorer.score([g])[0])


def test_rejects_inconsistent_groups():
    rng = np.random.default_rng(2)
    scorer = MaxSimScorer(dim=8, device="cpu")
    bad = group(rng, 2, [3, 4], 8)
    bad.lengths = np.array([3, 5])
    with pytest.raises(ValueError):
        scorer.score([bad])
    with pytest.raises(ValueError):
        scorer.score([group(rng, 2, [3], 9)])
    with pytest.raises(ValueError):  # one array per document: the store takes packed buffers
        scorer.score([ScoreGroup(bad.query, [bad.docs[:3], bad.docs[3:]], np.array([3, 4]))])
    assert scorer.score([]) == []


def test_cpu_chunks_hold_whole_documents(monkeypatch):
    import scoring.store.maxsim as sm
    monkeypatch.setattr(sm, "_CPU_CHUNK_ROWS", 64)  # many chunks; a document longer than a chunk is one of its own
    rng = np.random.default_rng(3)
    scorer = MaxSimScorer(dim=24, device="cpu")
    for lengths in ([30, 30, 30, 30, 30], [1, 0, 200, 63, 64, 65, 2]):
        g = group(rng, 11, lengths, 24)
        np.testing.assert_allclose(scorer.score([g])[0], reference(g.query, g.docs, g.lengths), rtol=1e-5, atol=1e-4)


def stored(scorer: MaxSimScorer, g: ScoreGroup, keys=None) -> ScoreGroup:
    """The same group with its documents written to the scorer's store (pinned), as the scorer deployment sends it."""
    keys = keys if keys is not None else [None] * len(g.lengths)
    return ScoreGroup(g.query, StoredDocuments(scorer.store.insert(keys, [g.docs], g.lengths)))


def stored_reference(scorer: MaxSimScorer, g: ScoreGroup) -> np.ndarray:
    """float64 MaxSim on the values the store holds for g's documents (dequantised for compressed storage)."""
    store = scorer.store
    rows, cu = store.arena_rows(g.docs.slots)
    rows = torch.from_numpy(rows).to(store.device)
    arena = store.arena.view(torch.uint8)[rows].view(store.dtype) if store.compressed else store.arena[rows]
    values = km.dequantize(arena, None if store.scales is None else store.scales[rows], torch.float64).cpu()
    query = g.query
    if store.dtype == torch.int8:  # queries against int8 documents are quantised like them, on every device
        q_int, q_scale = sm.quantize_int8(query)
        query = q_int.astype(np.float64) * q_scale[:, None].astype(np.float64)
    elif store.dtype == torch.float8_e4m3fn:  # and against float8 documents as float8 pairs, on every device
        query = km.dequantize_query(*km.float8_query(torch.from_numpy(query)), torch.float64).numpy()
    elif store.device.type == "cuda":  # the kernel computes in the query's float16 (bfloat16, float32: those)
        query = torch.from_numpy(query).to(store.dtype).double().numpy()
    return reference(query, values.numpy(), np.diff(cu))


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16", "float8_e4m3", "int8"])
def test_stored_documents_match_float64_on_their_stored_values(monkeypatch, dtype):
    import scoring.store.maxsim as sm
    rng = np.random.default_rng(5)
    scorer = MaxSimScorer(dim=24, device="cpu", dtype=dtype, store_bytes=1 << 20)
    for chunk_rows in (4096, 64):  # one chunk; many chunks, a document longer than one
        monkeypatch.setattr(sm, "_CPU_CHUNK_ROWS", chunk_rows)
        for g in (group(rng, 11, [1, 0, 200, 63, 64, 65, 2], 24, np.float32), group(rng, 5, [7], 24),
                  group(rng, 3, [0, 0], 24), group(rng, 2, [], 24), group(rng, 1, [1, 1, 1], 24)):
            s = stored(scorer, g)
            got = scorer.score([s])[0]
            assert got.dtype == np.float32 and got.shape == (len(g.lengths),)
            np.testing.assert_allclose(got, stored_reference(scorer, s), rtol=1e-5, atol=1e-4)
            if dtype in ("float32", "float16"):  # lossless for these inputs: the packed path's scores
                if dtype == "float32":  # to an ulp or two: the stored path's GEMM runs over whole pages
                    np.testing.assert_allclose(got, scorer.score([g])[0], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(got, reference(g.query, g.docs.astype(dtype), g.lengths),
                                           rtol=1e-5, atol=1e-4)
            scorer.store.release(s.docs.slots)


def test_a_request_mixing_stored_and_fresh_documents():
    """Some documents found in the store, the others written by this call, in request order: every score is the
    one the document has alone."""
    rng = np.random.default_rng(8)
    scorer = MaxSimScorer(dim=16, device="cpu", store_bytes=1 << 20)
    first = group(rng, 4, [5, 30, 1, 17], 16)
    scorer.store.release(scorer.store.insert(["a", "b", "c", "d"], [first.docs], first.lengths))
    fresh = group(rng, 4, [9, 2], 16)
    keys = ["b", "x", "d", "y", "a"]
    slots = scorer.store.lookup(keys)
    assert (slots >= 0).tolist() == [True, False, True, False, True]
    slots[slots < 0] = scorer.store.insert(["x", "y"], [fresh.docs], fresh.lengths)
    got = scorer.score([ScoreGroup(first.query, StoredDocuments(slots))])[0]
    alone = np.concatenate([scorer.score([ScoreGroup(first.query, first.docs, first.lengths)])[0],
                            scorer.score([ScoreGroup(first.query, fresh.docs, fresh.lengths)])[0]])
    np.testing.assert_allclose(got, alone[[1, 4, 3, 5, 0]], rtol=1e-6, atol=1e-5)
    scorer.store.release(slots)


def test_int8_queries_are_quantised_as_the_store_quantises_documents():
    """The scorer's numpy quantiser is the store's int8 format bit for bit (zero rows, halves, clipping)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 96)).astype(np.float32)
    x[3] = 0.0
    x[5, :4] = [127.5, -127.5, 0.5, -0.5]  # rounding half up after the division
    x[6] = np.linspace(-3, 3, 96)
    values, scales = sm.quantize_int8(x)
    want_values, want_scales = st.quantize(torch.from_numpy(x), torch.int8)
    np.testing.assert_array_equal(values, want_values.numpy())
    np.testing.assert_array_equal(scales, want_scales.numpy())
    assert values.dtype == np.int8 and scales.dtype == np.float32 and scales[3] == 1.0
