"""MaxSimScorer on CUDA (skipped without a GPU, as in CI): documents staged through pinned memory in chunks and
scored by the Triton kernel, against a float64 reference of the fp16-rounded inputs."""
import numpy as np
import pytest
import torch

from scoring import maxsim as sm
from tests.scoring.test_maxsim import group, per_document, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rounded_reference(g: sm.ScoreGroup) -> np.ndarray:
    return reference(g.query.astype(np.float16), g.docs.astype(np.float16), g.lengths)


# the default chunks and ring; small chunks that cut through documents and groups, through rings of 2 slots and
# of 1 (every chunk waits for the previous one's copy to the GPU before it overwrites the slot)
@pytest.mark.parametrize("first, chunk, slots", [(2 << 20, 8 << 20, 4), (4096, 12288, 2), (8192, 65536, 1)])
def test_cuda_scores_match_float64_reference(monkeypatch, first, chunk, slots):
    monkeypatch.setattr(sm, "_FIRST_CHUNK_BYTES", first)
    monkeypatch.setattr(sm, "_STAGE_CHUNK_BYTES", chunk)
    monkeypatch.setattr(sm, "_RING_SLOTS", slots)
    rng = np.random.default_rng(4)
    for d in (128, 96, 384):
        scorer = sm.MaxSimScorer(dim=d, device="cuda")
        groups = [group(rng, 32, rng.integers(1, 400, 300), d), group(rng, 1, [5], d, np.float32),
                  group(rng, 9, [], d), group(rng, 70, [0, 4, 1], d)]
        for call in range(2):  # the second call reuses the slots and buffers the first one left
            results = scorer.score(groups if call == 0 else groups[::-1])
            for g, got in zip(groups if call == 0 else groups[::-1], results):
                assert got.dtype == np.float32 and got.shape == (len(g.lengths),)
                np.testing.assert_allclose(got, rounded_reference(g), rtol=1e-4, atol=1e-3)
            # the same documents as one array per document (separate arrays; fp16 straight into the slots, fp32
            # through the converting copy), beside packed groups in one call
            rows = [per_document(g) for g in groups]
            for r in rows:
                r.docs = [np.array(a) for a in r.docs]
            mixed = [rows[0], groups[1], rows[1], rows[2], groups[3], rows[3]]
            want = [rounded_reference(g) for g in (groups[0], groups[1], groups[1], groups[2], groups[3], groups[3])]
            for got, w in zip(scorer.score(mixed), want):
                np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-3)
        assert len(scorer._ring) == slots and all(s.is_pinned() for s in scorer._ring)


def test_staging_threads_replace_the_actors_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what a Ray actor of num_cpus 1 starts with (OMP_NUM_THREADS=1)
    try:
        scorer = sm.MaxSimScorer(dim=64, device="cuda", staging_threads=3)
        g = group(np.random.default_rng(5), 8, [10, 20], 64)
        np.testing.assert_allclose(scorer.score([g])[0], rounded_reference(g), rtol=1e-4, atol=1e-3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
