"""The document store on the CPU: LRU within its byte bound, pins that keep an entry's pages while a call reads
them, transient entries, duplicate keys, page reuse and page-list compaction. The kernel reading the same store in
place runs under Triton's interpreter (tests/kernels/interpreted_cases.py)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoring.store.pages import DocumentStore, StoreFull

D = 8


def docs(rng, lengths):
    lengths = np.asarray(lengths, dtype=np.int64)
    return rng.standard_normal((int(lengths.sum()), D)).astype(np.float32), lengths


def store_of(pages: int, headroom_pages: int = 0, **kwargs) -> DocumentStore:
    page_bytes = 16 * D * 2
    return DocumentStore(D, pages * page_bytes, "cpu", headroom_bytes=headroom_pages * page_bytes, **kwargs)


def stored_rows(store, slot) -> np.ndarray:
    rows, _ = store.arena_rows(np.array([slot]))
    return store.arena[rows].float().numpy()


def test_lookup_insert_release_and_counters():
    rng = np.random.default_rng(0)
    store = store_of(10)
    data, lengths = docs(rng, [16, 1, 0, 17])
    slots = store.insert(["a", "b", "c", "d"], [data[:10], data[10:]], lengths)
    assert store.stats().bytes == (1 + 1 + 0 + 2) * store.page_bytes and store.stats().entries == 4
    np.testing.assert_array_equal(stored_rows(store, slots[3]), data[17:].astype(np.float16).astype(np.float32))
    store.release(slots)
    found = store.lookup(["d", "x", "a"])
    assert found[0] == slots[3] and found[1] == -1 and found[2] == slots[0]
    assert store.stats().hits == 2 and store.stats().misses == 1
    store.release(found)
    assert store.lengths(slots).tolist() == [16, 1, 0, 17]


def test_input_tokens_are_kept_per_entry():
    """What usage counts: a document's rows unless `insert` is told its input tokens (a bi-encoder's one vector)."""
    rng = np.random.default_rng(12)
    store = store_of(10)
    data, lengths = docs(rng, [1, 1, 1])
    vectors = store.insert(["a", "b", "c"], [data], lengths, tokens=np.array([9, 30, 2]))
    rows = store.insert(["d"], [docs(rng, [17])[0]], [17])
    store.release(np.concatenate([vectors, rows]))
    found = store.lookup(["c", "d", "a"])
    assert store.tokens(found).tolist() == [2, 17, 9] and store.lengths(found).tolist() == [1, 17, 1]
    store.release(found)
    with pytest.raises(ValueError, match="tokens and lengths disagree"):
        store.insert(["e"], [data[:1]], [1], tokens=np.array([1, 2]))


def test_least_recently_used_goes_first_and_the_bound_holds():
    rng = np.random.default_rng(1)
    store = store_of(4)
    for key in "abcd":
        store.release(store.insert([key], [docs(rng, [16])[0]], [16]))
    store.release(store.lookup(["a"]))  # a is now the most recent
    store.release(store.insert(["e"], [docs(rng, [20])[0]], [20]))  # two pages: b and c go
    assert (store.lookup(["a", "b", "c", "d", "e"]) >= 0).tolist() == [True, False, False, True, True]
    stats = store.stats()
    assert stats.evictions == 2 and stats.bytes <= stats.capacity_bytes


def test_eviction_reads_its_queue_a_window_at_a_time(monkeypatch):
    """Windows of 3 queue entries: evictions that need several windows, windows whose entries were all used since
    the queue was built, a pinned entry among them. What stays is what an LRU of the same bound keeps, at every
    step (one document a write and one key a hit, so no two entries share a recency)."""
    import collections

    import scoring.store.pages as st
    monkeypatch.setattr(st, "_EVICT_WINDOW", 3)
    rng = np.random.default_rng(11)
    store = store_of(24, headroom_pages=8)
    model: collections.OrderedDict = collections.OrderedDict()  # key -> pages, least recent first
    pinned = store.insert(["pinned"], [docs(rng, [16])[0]], [16])  # held throughout: never goes
    evicted = 0
    for step in range(400):
        if step % 3 == 0:  # hits: old entries become the newest
            for k in list(model)[:8:2]:
                store.release(store.lookup([k]))
                model.move_to_end(k)
        n = int(rng.integers(1, 40))
        store.release(store.insert([f"s{step}"], [docs(rng, [n])[0]], [n]))
        model[f"s{step}"] = -(-n // 16)
        while sum(model.values()) > 24 - 1:  # the pinned entry's page counts against the bound
            model.popitem(last=False)
            evicted += 1
        assert set(store._index) == set(model) | {"pinned"}, step  # read without touching recency
    assert store.stats().evictions == evicted > 300 and store.lookup(["pinned"])[0] == pinned[0]


def test_pinned_entries_survive_eviction_and_keep_their_rows():
    """An entry a call still reads is never evicted, and its pages are not given to another document."""
    rng = np.random.default_rng(2)
    store = store_of(4, headroom_pages=2)
    data, _ = docs(rng, [16])
    (pinned,) = store.insert(["pinned"], [data], [16])
    before = stored_rows(store, pinned)
    for i in range(20):  # much more than the store holds, while "pinned" is in use
        store.release(store.insert([f"k{i}a", f"k{i}b"], [docs(rng, [16, 16])[0]], [16, 16]))
    np.testing.assert_array_equal(stored_rows(store, pinned), before)
    assert store.lookup(["pinned"])[0] == pinned
    with pytest.raises(StoreFull):  # every page pinned: a call that needs more is told to retry
        store.insert(["big"], [docs(rng, [16 * 6])[0]], [16 * 6])
    store.release([pinned, pinned])
    store.release(store.insert(["big"], [docs(rng, [16 * 6])[0]], [16 * 6]))  # now it fits (arena 6 pages)
    assert store.lookup(["pinned"])[0] == -1 and store.stats().bytes <= store.stats().capacity_bytes


def test_transient_documents_and_the_cache_turned_off():
    rng = np.random.default_rng(3)
    store = store_of(0, headroom_pages=8)
    data, lengths = docs(rng, [5, 40])
    slots = store.insert(["a", None], [data], lengths)
    assert store.stats().entries == 1 and store.used_pages == 4
    store.release(slots)  # capacity 0: nothing stays once no call reads it
    assert store.used_pages == 0 and store.stats().entries == 0 and store.lookup(["a"])[0] == -1


def test_the_same_document_twice_in_one_write():
    rng = np.random.default_rng(4)
    store = store_of(10)
    data, lengths = docs(rng, [3, 3])
    slots = store.insert(["a", "a"], [data], lengths)
    assert slots[0] != slots[1] and store.stats().entries == 1
    store.release(slots)
    assert store.lookup(["a"])[0] == slots[0] and store.used_pages == 1


def test_pages_are_reused_and_the_page_list_compacts():
    rng = np.random.default_rng(5)
    store = store_of(6)
    kept = {}
    for i in range(500):
        lengths = rng.integers(0, 33, 2)
        data, _ = docs(rng, lengths)
        slots = store.insert([f"{i}a", f"{i}b"], [data], lengths)
        kept = {f"{i}a": data[:lengths[0]], f"{i}b": data[lengths[0]:]}
        store.release(slots)
    assert store.compactions > 0 and store._next_page <= 6
    slots = store.lookup(list(kept))
    for slot, rows in zip(slots, kept.values()):
        if slot >= 0:
            np.testing.assert_array_equal(stored_rows(store, slot), rows.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dtype, step", [("float8_e4m3", 1 / 8), ("int8", 1 / 127)])
def test_compressed_rows_are_within_one_step_of_the_input(dtype, step):
    rng = np.random.default_rng(6)
    store = DocumentStore(D, 1 << 20, "cpu", dtype=dtype)
    data, lengths = docs(rng, [7, 1, 30])
    data[3] = 0  # a zero row
    slots = store.insert([None] * 3, [data], lengths)
    rows, _ = store.arena_rows(slots)
    arena = store.arena.view(torch.uint8)[rows].view(store.dtype).float() * store.scales[rows][:, None]
    amax = np.abs(data).max(1, keepdims=True)
    assert (np.abs(arena.numpy() - data) <= amax * step + 1e-6).all()
    assert (arena.numpy()[3] == 0).all() and store.scales[rows[3]] == 1


def test_rejects_what_it_cannot_store():
    with pytest.raises(ValueError):
        DocumentStore(D, 1 << 20, "cpu", dtype="float64")
    with pytest.raises(ValueError):
        DocumentStore(D, 1 << 20, "cpu", page_tokens=12)
    store = store_of(4)
    with pytest.raises(ValueError):
        store.insert(["a"], [np.zeros((3, D), np.float32)], [4])


def test_a_failed_write_leaves_no_entry(monkeypatch):
    rng = np.random.default_rng(7)
    store = store_of(10)
    data, lengths = docs(rng, [5, 20])
    kept = store.insert(["kept"], [data[:5]], [5])

    def broken(*args):
        raise RuntimeError("copy failed")

    monkeypatch.setattr(store, "_write", broken)
    with pytest.raises(RuntimeError):
        store.insert(["kept", "new"], [data], lengths)
    assert store.lookup(["new"])[0] == -1 and store.used_pages == 1
    store.release(kept)
    store.release(store.lookup(["kept"]))
    assert store._pins[kept[0]] == 0


def test_read_only_rows_from_the_object_store_are_stored_without_a_warning():
    """Ray hands the encoders' rows over read-only; the store only reads them, and says nothing about it in the
    replica's log (torch warns once a process: a fresh one, so an earlier test cannot hide it)."""
    code = """
import warnings
import numpy as np
from scoring.store.pages import DocumentStore
rows = np.ones((40, 8), dtype=np.float32)
rows.setflags(write=False)
store = DocumentStore(8, 1 << 20, "cpu")
with warnings.catch_warnings(record=True) as caught:
    store.insert(["a", "b"], [rows], np.array([15, 25]))
print([str(w.message)[:60] for w in caught])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
