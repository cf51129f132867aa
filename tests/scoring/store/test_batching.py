import numpy as np

from scoring.messages import EncodeJob
from scoring.store.affinity import rendezvous_order
from scoring.store.batching import estimate_tokens, plan_encode_calls, scatter_results, split_rows
from scoring.store.embeddings import PackedEmbeddings


def job(model, texts, max_tokens=None):
    return EncodeJob(model, texts, max_tokens, sum(estimate_tokens(t, max_tokens) for t in texts))


def fake_encode(texts):
    """Stand-in encoder output for the plan: text i → len(text) rows filled with its first char's code."""
    return PackedEmbeddings.pack([np.full((len(t), 2), ord(t[0]), np.float32) for t in texts], dim=2)


def test_calls_respect_chunk_budget_and_options():
    jobs = [job("m", ["a" * 40] * 5), job("m", ["b" * 40] * 3, max_tokens=4), job("m", ["c" * 40] * 2)]
    calls = plan_encode_calls(jobs, chunk_tokens=30)
    assert all(len({(c.model, c.max_tokens)}) == 1 for c in calls)
    for c in calls:
        assert sum(estimate_tokens(t, c.max_tokens) for t in c.texts) <= 30 or len(c.texts) == 1
    assert sum(len(c.texts) for c in calls) == 10
    # requests with the same options share calls
    assert any({j for j, _ in c.origins} == {0, 2} for c in calls)


def test_scatter_returns_each_job_its_documents_in_order():
    jobs = [job("m", ["ab", "xyz", "q"]), job("m", ["hello"]), job("n", ["zz", "k"])]
    calls = plan_encode_calls(jobs, chunk_tokens=3)
    out = scatter_results(jobs, calls, [split_rows(fake_encode(c.texts)) for c in calls])
    for j, jb in enumerate(jobs):
        assert [(len(r), int(r[0, 0])) for r in out[j]] == [(len(t), ord(t[0])) for t in jb.texts]


def test_oversized_document_gets_its_own_call():
    calls = plan_encode_calls([job("m", ["x" * 4000, "y"])], chunk_tokens=10)
    assert [len(c.texts) for c in calls] == [1, 1]


def test_rendezvous_moves_only_the_keys_of_a_new_member():
    keys = [f"query-{i}" for i in range(4000)]
    three = ["r1", "r2", "r3"]
    four = three + ["r4"]
    home3 = {k: rendezvous_order(k, three)[0] for k in keys}
    home4 = {k: rendezvous_order(k, four)[0] for k in keys}
    moved = [k for k in keys if home3[k] != home4[k]]
    assert all(home4[k] == "r4" for k in moved)
    assert 0.15 < len(moved) / len(keys) < 0.35  # about 1/4
    counts = {m: list(home4.values()).count(m) for m in four}
    assert min(counts.values()) > 0.2 * len(keys)
    # removing a member moves only its own keys
    home_without_r2 = {k: rendezvous_order(k, ["r1", "r3"])[0] for k in keys}
    assert all(home_without_r2[k] == home3[k] for k in keys if home3[k] != "r2")
