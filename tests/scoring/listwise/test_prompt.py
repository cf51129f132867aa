"""Listwise prompts, the model's block split and the blocks' merge (no engine)."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.config.schema import parse_app_config
from scoring.errors import ValidationFailed
from scoring.listwise.prompt import (
    ASSISTANT,
    EMBED_TOKEN,
    RERANK_TOKEN,
    SYSTEM,
    ListwisePrompts,
    fitted_limits,
    listwise_prompt,
    listwise_score_groups,
    merge_blocks,
    plan_blocks,
    split_engine_rows,
)
from scoring.api.protocol import ScoreRequest


class WordTokenizer:
    """One token a whitespace-separated word (markers are words of their own)."""

    model_max_length = 10**6

    def __call__(self, text, **kwargs):
        return {"input_ids": [hash(w) % 1000 for w in text.replace(EMBED_TOKEN, f" {EMBED_TOKEN} ").split()]}

    def decode(self, ids, **kwargs):
        return " ".join(f"w{i}" for i in ids)


def test_prompt_is_the_models():
    prompt = listwise_prompt("q?", ["a", f"b{EMBED_TOKEN}"], instruction="be strict")
    assert prompt.startswith(SYSTEM) and prompt.endswith(ASSISTANT)
    assert "I will provide you with 2 passages, each indicated by a numerical identifier. " in prompt
    assert "Rank the passages based on their relevance to query: q?\n<instruct>\nbe strict\n</instruct>\n" in prompt
    assert f'<passage id="0">\na{EMBED_TOKEN}\n</passage>\n<passage id="1">\nb{EMBED_TOKEN}\n</passage>\n' in prompt
    assert prompt.count(EMBED_TOKEN) == 2 and prompt.count(RERANK_TOKEN) == 1
    assert f"<query>\nq?{RERANK_TOKEN}\n</query>" in prompt
    assert "<instruct>" not in listwise_prompt("q", ["a"])


def test_blocks_close_at_the_block_size_or_when_the_room_left_is_one_document():
    assert plan_blocks([5] * 7, query_tokens=10, max_length=1000, max_doc_tokens=100, block_size=3) == [
        [0, 1, 2], [3, 4, 5], [6]
    ]
    # room 1000 - 2 * 100 = 800: after 300 + 300 the room left (200) is at most the document limit (250)
    assert plan_blocks([300, 300, 300, 10], 100, 1000, 250, 125) == [[0, 1], [2, 3]]
    assert plan_blocks([1], 1, 1000, 10, 125) == [[0]]


def test_block_prompts_cut_texts_and_halve_a_block_that_does_not_fit():
    prompts = ListwisePrompts(WordTokenizer(), max_length=10**6, max_query_tokens=3, max_doc_tokens=4, block_size=2)
    blocks = prompts.blocks("one two three four", ["a b c d e f", "g", "h"])
    assert [b.positions for b in blocks] == [[0, 1], [2]]
    words = WordTokenizer()
    cut_query = words.decode(words("one two three four")["input_ids"][:3])
    cut_document = words.decode(words("a b c d e f")["input_ids"][:4])
    assert blocks[0].token_ids == words(listwise_prompt(cut_query, [cut_document, "g"]))["input_ids"]

    one_block = len(words(listwise_prompt("q", ["x"] * 4))["input_ids"])
    tight = ListwisePrompts(WordTokenizer(), max_length=one_block - 1, max_query_tokens=3, max_doc_tokens=1,
                            block_size=4)
    assert [b.positions for b in tight.blocks("q", ["x"] * 4)] == [[0, 1], [2, 3]]
    with pytest.raises(ValidationFailed, match="takes .* tokens; the model reads"):
        tight.blocks("q", ["x"], instruction=" ".join(["long"] * 50))
    # the request's limits tighten the model's, and a request's instruction replaces the configured one
    instructed = ListwisePrompts(WordTokenizer(), 10**6, 8, 8, 4, instruction="configured")
    (block,) = instructed.blocks("q", ["a b c"], max_tokens_per_doc=1, instruction="mine")
    assert block.token_ids == words(listwise_prompt("q", [words.decode(words("a")["input_ids"])], "mine"))["input_ids"]


def test_limits_are_fitted_to_the_context():
    overhead = len(WordTokenizer()(listwise_prompt("", [""]))["input_ids"])
    assert fitted_limits(WordTokenizer(), 10**6, 512, 2048, None) == (512, 2048)
    assert fitted_limits(WordTokenizer(), overhead + 100, 512, 2048, None) == (33, 34)
    with pytest.raises(ValueError, match="no room"):
        fitted_limits(WordTokenizer(), overhead + 2, 512, 2048, None)


def test_merge_is_the_cosine_for_one_block_and_a_weighted_query_for_several():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=8), rng.normal(size=(3, 8))
    cos = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
    assert merge_blocks([q], [d]) == pytest.approx(cos)

    q2, d2 = rng.normal(size=8), rng.normal(size=(2, 8))
    cos2 = d2 @ q2 / (np.linalg.norm(d2, axis=1) * np.linalg.norm(q2))
    w = np.array([((1 + cos) / 2).max(), ((1 + cos2) / 2).max()])
    merged = (w[0] * q + w[1] * q2) / w.sum()
    docs = np.concatenate([d, d2])
    expected = docs @ merged / (np.linalg.norm(docs, axis=1) * np.linalg.norm(merged))
    assert merge_blocks([q, q2], [d, d2]) == pytest.approx(expected)


def test_engine_rows_are_documents_then_the_query():
    rows = np.arange(12.0).reshape(4, 3)
    query, documents = split_engine_rows(rows, 3)
    assert list(query) == [9, 10, 11] and documents.shape == (3, 3)
    with pytest.raises(RuntimeError, match="4 rows for a block of 2"):
        split_engine_rows(rows, 2)


def test_score_pairs_one_list_per_query_or_one_a_pair():
    config = parse_app_config({"models": [{"name": "j", "kind": "listwise", "model": "x"}]})
    groups, count = listwise_score_groups(ScoreRequest(queries="q", documents=["a", "b"]), config)
    assert count == 2 and [(g.query, g.documents, g.positions) for g in groups] == [("q", ["a", "b"], [0, 1])]
    groups, _ = listwise_score_groups(ScoreRequest(queries=["q"], documents=["a", "b"]), config)
    assert len(groups) == 1
    groups, count = listwise_score_groups(ScoreRequest(queries=["q", "r", "q"], documents=["a", "b", "c"]), config)
    assert [(g.query, g.documents, g.positions) for g in groups] == [
        ("q", ["a"], [0]), ("r", ["b"], [1]), ("q", ["c"], [2])
    ]
