"""MaxSimScorer on the CPU: the exact path the service uses without a GPU, against a float64 reference."""
import numpy as np
import pytest

from scoring.maxsim import MaxSimScorer, ScoreGroup


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
    assert scorer.score([]) == []


def test_cpu_chunks_hold_whole_documents(monkeypatch):
    import scoring.maxsim as sm
    monkeypatch.setattr(sm, "_CPU_CHUNK_ROWS", 64)  # many chunks; a document longer than a chunk is one of its own
    rng = np.random.default_rng(3)
    scorer = MaxSimScorer(dim=24, device="cpu")
    for lengths in ([30, 30, 30, 30, 30], [1, 0, 200, 63, 64, 65, 2]):
        g = group(rng, 11, lengths, 24)
        np.testing.assert_allclose(scorer.score([g])[0], reference(g.query, g.docs, g.lengths), rtol=1e-5, atol=1e-4)


def per_document(g: ScoreGroup) -> ScoreGroup:
    """The same group with one array per document (views of the packed one), as a document cache hands them over."""
    cu = np.concatenate([[0], np.cumsum(g.lengths)])
    return ScoreGroup(query=g.query, docs=[g.docs[cu[i]:cu[i + 1]] for i in range(len(g.lengths))],
                      lengths=g.lengths)


def test_per_document_arrays_score_as_the_packed_buffer(monkeypatch):
    import scoring.maxsim as sm
    rng = np.random.default_rng(5)
    scorer = MaxSimScorer(dim=24, device="cpu")
    for chunk_rows in (4096, 64):  # one chunk; many chunks, a document longer than one
        monkeypatch.setattr(sm, "_CPU_CHUNK_ROWS", chunk_rows)
        for g in (group(rng, 11, [1, 0, 200, 63, 64, 65, 2], 24), group(rng, 5, [7], 24, np.float32),
                  group(rng, 3, [0, 0], 24), group(rng, 2, [], 24)):
            rows = per_document(g)
            rows.docs = [np.array(a) for a in rows.docs]  # separate arrays, not views of one buffer
            np.testing.assert_array_equal(scorer.score([rows])[0], scorer.score([g])[0])
            np.testing.assert_allclose(scorer.score([rows])[0], reference(g.query, g.docs, g.lengths),
                                       rtol=1e-5, atol=1e-4)


def test_rows_gather_cuts_through_documents():
    import scoring.maxsim as sm
    rng = np.random.default_rng(6)
    g = group(rng, 1, [5, 0, 3, 9, 1, 0], 4)
    src = sm._Rows(per_document(g).docs, g.lengths)
    out = np.full((20, 4), np.nan, dtype=np.float16)
    total = int(g.lengths.sum())
    for r0 in range(total):
        for r1 in range(r0 + 1, total + 1):
            np.testing.assert_array_equal(src.gather(r0, r1, out), g.docs[r0:r1])


def test_rejects_inconsistent_per_document_arrays():
    rng = np.random.default_rng(7)
    scorer = MaxSimScorer(dim=8, device="cpu")
    good = per_document(group(rng, 2, [3, 4], 8))
    cases = [
        ScoreGroup(good.query, good.docs[:1], good.lengths),  # one array short
        ScoreGroup(good.query, [good.docs[0], np.zeros((4, 9), np.float16)], good.lengths),  # wrong d
        ScoreGroup(good.query, [good.docs[0], np.zeros(4, np.float16)], good.lengths),  # not 2-D
        ScoreGroup(good.query, good.docs, np.array([4, 3])),  # rows differ from lengths
        ScoreGroup(good.query, [good.docs[0], good.docs[1].astype(np.float32)], good.lengths),  # mixed dtypes
    ]
    for bad in cases:
        with pytest.raises(ValueError):
            scorer.score([bad])
