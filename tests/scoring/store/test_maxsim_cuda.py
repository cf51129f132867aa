"""MaxSimScorer and its document store on CUDA (skipped without a GPU, as in CI): documents written through the
pinned ring into GPU pages and scored there by the paged kernel, against float64 on the values the store holds."""
import numpy as np
import pytest
import torch

from scoring.store import maxsim as sm
from scoring.store import pages as st
from scoring.store.pages import StoredDocuments
from tests.scoring.store.test_maxsim import group, reference, stored_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rtol(dtype: str) -> float:
    """Float8 documents are scored on the H200's fp8 tensor cores, whose sums keep fewer bits than fp32: up to
    4.2e-4 off float64 on these tests' unnormalised random vectors (v15); every other dtype's sums are fp32's."""
    return 1e-3 if dtype == "float8_e4m3" else 1e-4


def rounded_reference(g: sm.ScoreGroup, dtype) -> np.ndarray:
    cast = torch.from_numpy(np.ascontiguousarray(g.docs)).to(dtype).double().numpy()
    return reference(torch.from_numpy(g.query).to(dtype).double().numpy(), cast, g.lengths)


# the default chunks and ring; small chunks that cut through documents and groups, through rings of 2 slots and
# of 1 (every chunk waits for the previous one's copy to the GPU before it overwrites the slot)
@pytest.mark.parametrize("first, chunk, slots", [(2 << 20, 8 << 20, 4), (4096, 12288, 2), (8192, 65536, 1)])
@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16", "float8_e4m3", "int8"])
def test_cuda_scores_match_float64(monkeypatch, first, chunk, slots, dtype):
    if dtype != "float16" and slots != 4:
        pytest.skip("the ring's chunking is the same for every dtype: run once, with float16")
    monkeypatch.setattr(st, "_FIRST_CHUNK_BYTES", first)
    monkeypatch.setattr(st, "_STAGE_CHUNK_BYTES", chunk)
    monkeypatch.setattr(st, "_RING_SLOTS", slots)
    rng = np.random.default_rng(4)
    for d in (128, 96, 384) if dtype == "float16" else (128,):
        scorer = sm.MaxSimScorer(dim=d, device="cuda", dtype=dtype, store_bytes=64 << 20)
        groups = [group(rng, 32, rng.integers(1, 400, 300), d), group(rng, 1, [5], d, np.float32),
                  group(rng, 9, [], d), group(rng, 70, [0, 4, 1], d), group(rng, 1, [1, 1], d)]
        stored = [sm.ScoreGroup(g.query, StoredDocuments(scorer.store.insert(
            [f"{d}-{i}-{b}" for b in range(len(g.lengths))], [g.docs], g.lengths))) for i, g in enumerate(groups)]
        for call in range(2):  # the second call reuses the buffers the first one left
            order = stored if call == 0 else stored[::-1]
            for s, got in zip(order, scorer.score(order)):
                assert got.dtype == np.float32 and got.shape == (s.docs.slots.size,)
                np.testing.assert_allclose(got, stored_reference(scorer, s), rtol=rtol(dtype), atol=1e-3)
        if dtype in ("float16", "float32", "bfloat16"):  # packed host groups, written for the call, beside stored
            mixed = [groups[0], stored[1], groups[2], stored[3], groups[4]]
            torch_dtype = st.STORAGE_DTYPES[dtype]
            want = [rounded_reference(groups[i], torch_dtype) for i in range(5)]
            for got, w in zip(scorer.score(mixed), want):
                np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-3)
        for s in stored:
            scorer.store.release(s.docs.slots)
        assert scorer.store.used_pages * scorer.store.page_bytes <= scorer.store.capacity_bytes
        assert len(scorer.store._ring) in (0, slots) and all(r.is_pinned() for r in scorer.store._ring)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_encoder_call_buffers_share_ring_slots(monkeypatch, dtype):
    """Many small packed buffers (the encoder's calls), of both dtypes, one insert: their rows fill the ring's slots
    across buffer boundaries (a buffer split over two slots, several buffers in one slot), and inserts follow one
    another with nothing waited for in between; every stored row is the row it came from, and scores match."""
    monkeypatch.setattr(st, "_FIRST_CHUNK_BYTES", 3000)
    monkeypatch.setattr(st, "_STAGE_CHUNK_BYTES", 12288)
    monkeypatch.setattr(st, "_RING_SLOTS", 2)
    rng = np.random.default_rng(11)
    d = 128
    scorer = sm.MaxSimScorer(dim=d, device="cuda", dtype=dtype, store_bytes=64 << 20)
    store = scorer.store
    calls = []
    for c in range(6):  # each call: its documents as one buffer of 1 to 90 rows a document
        lengths = rng.integers(1, 90, int(rng.integers(1, 6)))
        docs = rng.standard_normal((int(lengths.sum()), d)).astype(np.float16 if c % 2 else np.float32)
        calls.append((docs, lengths))
    inserted = []
    for round_ in range(3):  # back to back: the ring's and the metadata's buffers reused while copies may run
        lengths = np.concatenate([lens for _, lens in calls])
        keys = [f"{round_}-{i}" for i in range(lengths.size)]
        inserted.append(store.insert(keys, [docs for docs, _ in calls], lengths))
    want = torch.from_numpy(np.concatenate([docs.astype(np.float16) for docs, _ in calls]).astype(np.float32))
    for slots in inserted:
        rows = torch.from_numpy(store.arena_rows(slots)[0]).cuda()
        got = store.arena[rows].float()
        if store.compressed:
            got = got * store.scales[rows][:, None]
            np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), atol=float(want.abs().max()) / 127)
        else:
            np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())
        g = sm.ScoreGroup(rng.standard_normal((32, d)).astype(np.float32), StoredDocuments(slots))
        np.testing.assert_allclose(scorer.score([g])[0], stored_reference(scorer, g), rtol=1e-4, atol=1e-3)
        store.release(slots)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_eviction_while_in_use_and_a_mixed_request(dtype):
    """A document pinned by a call survives a flood of writes (evictions, reused pages, a compacted page list) and
    scores the same; a request mixing stored and fresh documents scores each as alone."""
    rng = np.random.default_rng(5)
    d = 128
    scorer = sm.MaxSimScorer(dim=d, device="cuda", dtype=dtype, store_bytes=2 << 20, headroom_bytes=1 << 20)
    keep = group(rng, 32, [300, 1, 50], d)
    pinned = scorer.store.insert(["a", "b", "c"], [keep.docs], keep.lengths)
    before = scorer.score([sm.ScoreGroup(keep.query, StoredDocuments(pinned))])[0]
    for i in range(300):
        g = group(rng, 1, rng.integers(1, 200, 8), d)
        scorer.store.release(scorer.store.insert([f"{i}-{b}" for b in range(8)], [g.docs], g.lengths))
    assert scorer.store.stats().evictions > 0 and scorer.store.compactions > 0
    again = scorer.score([sm.ScoreGroup(keep.query, StoredDocuments(pinned))])[0]
    np.testing.assert_array_equal(again, before)
    fresh = group(rng, 32, [7, 120], d)
    slots = scorer.store.lookup(["b", "new1", "a", "new2"])
    assert (slots >= 0).tolist() == [True, False, True, False]
    slots[slots < 0] = scorer.store.insert(["new1", "new2"], [fresh.docs], fresh.lengths)
    got = scorer.score([sm.ScoreGroup(keep.query, StoredDocuments(slots))])[0]
    alone = scorer.score([sm.ScoreGroup(keep.query, StoredDocuments(scorer.store.lookup(["new1", "new2"])))])[0]
    np.testing.assert_array_equal(got, [before[1], alone[0], before[0], alone[1]])


def test_a_full_store_refuses_after_staging_and_stays_usable():
    """An insert that finds every page pinned raises StoreFull after its documents were staged (their copies still
    in flight): nothing of it is kept, and the next inserts, through the same ring, store and score what they are
    given."""
    rng = np.random.default_rng(7)
    d = 64
    page_bytes = st.PAGE_TOKENS * d * 2
    scorer = sm.MaxSimScorer(dim=d, device="cuda", store_bytes=4 * page_bytes, headroom_bytes=2 * page_bytes)
    store = scorer.store
    held = group(rng, 8, [16 * 5], d)
    pinned = store.insert(["held"], [held.docs], held.lengths)
    big = group(rng, 8, [16 * 16] * 64, d)  # 2 MB of rows: still staging when the bookkeeping refuses it
    with pytest.raises(st.StoreFull):
        store.insert([f"big{i}" for i in range(64)], [big.docs], big.lengths)
    assert (store.lookup([f"big{i}" for i in range(64)]) == -1).all() and store.used_pages == 5
    store.release(pinned)
    for i in range(3):
        g = group(rng, 8, [16, 30, 1], d)
        s = sm.ScoreGroup(g.query, StoredDocuments(store.insert([f"after{i}-{b}" for b in range(3)], [g.docs],
                                                                g.lengths)))
        np.testing.assert_allclose(scorer.score([s])[0], rounded_reference(g, torch.float16), rtol=1e-4, atol=1e-3)
        store.release(s.docs.slots)


@pytest.mark.parametrize("dtype", ["float8_e4m3", "int8"])
def test_warmup_compiles_what_a_call_uses(dtype):
    scorer = sm.MaxSimScorer(dim=64, device="cuda", dtype=dtype)
    assert scorer.warmup() > 0
    g = group(np.random.default_rng(6), 1, [1], 64)  # one-token query and document (a bi-encoder's rows)
    s = sm.ScoreGroup(g.query, StoredDocuments(scorer.store.insert(["one"], [g.docs], g.lengths)))
    np.testing.assert_allclose(scorer.score([s])[0], stored_reference(scorer, s), rtol=rtol(dtype), atol=1e-3)


def test_staging_threads_replace_the_actors_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what a Ray actor of num_cpus 1 starts with (OMP_NUM_THREADS=1)
    try:
        scorer = sm.MaxSimScorer(dim=64, device="cuda", staging_threads=3)
        g = group(np.random.default_rng(5), 8, [10, 20], 64)
        np.testing.assert_allclose(scorer.score([g])[0], rounded_reference(g, torch.float16), rtol=1e-4, atol=1e-3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float16", "float8_e4m3", "int8"])
def test_replayed_calls_score_what_they_are_given(dtype):
    """A call's shape seen before replays its CUDA graph: every replay reads the call's own documents and queries,
    also with fewer documents or groups than the call the graph was captured on (stale slots past the end), a query
    longer than one block (chunks summed on the GPU), and a page list compacted in between."""
    rng = np.random.default_rng(8)
    d = 128
    scorer = sm.MaxSimScorer(dim=d, device="cuda", dtype=dtype, store_bytes=24 << 20, headroom_bytes=8 << 20)
    docs = group(rng, 1, rng.integers(1, 300, 400), d)
    keys = [f"k{i}" for i in range(400)]
    slots = scorer.store.insert(keys, [docs.docs], docs.lengths)

    def stored(lq, picked):
        return sm.ScoreGroup(rng.standard_normal((lq, d)).astype(np.float32), StoredDocuments(slots[picked]))

    calls = [[stored(32, np.arange(400))], [stored(32, np.arange(400))], [stored(20, rng.permutation(400)[:250])],
             [stored(32, np.arange(3))], [stored(30, np.arange(100)), stored(17, np.arange(100, 160))],
             [stored(25, np.arange(40))], [stored(300, np.arange(200))], [stored(280, np.arange(150))]]
    for call in calls + calls[::-1]:
        for got, g in zip(scorer.score(call), call):
            np.testing.assert_allclose(got, stored_reference(scorer, g), rtol=rtol(dtype), atol=1e-3)
    graphs = [gr for lay in scorer._layouts.values() for gr in lay.graphs.values()]
    assert graphs and all(isinstance(gr, torch.cuda.CUDAGraph) for gr in graphs)
    for i in range(3000):  # a flood of other writes: evictions and a compacted page list under the graphs
        g = group(rng, 1, rng.integers(1, 200, 8), d)
        scorer.store.release(scorer.store.insert([f"f{i}-{b}" for b in range(8)], [g.docs], g.lengths))
        if scorer.store.compactions:
            break
    assert scorer.store.compactions > 0 and scorer.store.stats().evictions > 0
    for call in calls:
        for got, g in zip(scorer.score(call), call):
            np.testing.assert_allclose(got, stored_reference(scorer, g), rtol=rtol(dtype), atol=1e-3)


def test_a_shape_whose_capture_fails_stays_eager(monkeypatch):
    """Where a CUDA graph cannot be captured (a driver or build without stream capture), the shape is issued
    eagerly on every call, with the same scores."""
    def refuse(self, *args, **kwargs):
        raise RuntimeError("stream capture is not supported here")

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", refuse)
    rng = np.random.default_rng(9)
    scorer = sm.MaxSimScorer(dim=128, device="cuda", store_bytes=8 << 20)
    g = group(rng, 32, rng.integers(1, 300, 50), 128)
    s = sm.ScoreGroup(g.query, StoredDocuments(scorer.store.insert([f"e{i}" for i in range(50)], [g.docs], g.lengths)))
    for _ in range(3):
        np.testing.assert_allclose(scorer.score([s])[0], stored_reference(scorer, s), rtol=1e-4, atol=1e-3)
    graphs = [gr for lay in scorer._layouts.values() for gr in lay.graphs.values()]
    assert graphs and all(gr is False for gr in graphs)
