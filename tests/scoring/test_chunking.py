"""Windows of long documents: boundaries, overlap, multi-byte text, spans that map back to the original string."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.api.requests import QueryGroup
from scoring.chunking import Chunker, Span, WindowBudget, split_spans, window_ranges
from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path
from scoring.errors import PayloadTooLarge
from scoring.messages import ScoreOutcome


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))


@pytest.fixture(scope="module")
def byte_level():
    """A byte-level BPE tokenizer (GPT-2 / Qwen style) trained here: characters outside its merges are split into
    byte tokens, several tokens to one character."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(["the capital of France is Paris"] * 20, vocab_size=300, min_frequency=1)
    return PreTrainedTokenizerFast(tokenizer_object=trained._tokenizer)


def offsets(tokenizer, text: str):
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


@pytest.mark.parametrize(
    "tokens,size,overlap,expected",
    [
        (5, 5, 2, [(0, 5)]),  # fits exactly: one window
        (6, 5, 2, [(0, 5), (3, 6)]),  # one token over: a second window, overlapping by 2
        (12, 5, 0, [(0, 5), (5, 10), (10, 12)]),  # no overlap: the last window is short
        (13, 5, 2, [(0, 5), (3, 8), (6, 11), (9, 13)]),
        (10, 4, 4, [(0, 4), (2, 6), (4, 8), (6, 10)]),  # overlap >= size: half the window
        (3, 1, 0, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_window_ranges(tokens, size, overlap, expected):
    assert window_ranges(tokens, size, overlap) == expected


def test_window_ranges_cover_every_token_and_overlap_as_asked():
    for tokens in range(1, 60):
        ranges = window_ranges(tokens, 8, 3)
        assert ranges[0][0] == 0 and ranges[-1][1] == tokens
        assert all(end - start <= 8 for start, end in ranges)
        assert all(b[0] == a[1] - 3 for a, b in zip(ranges, ranges[1:]))  # each starts 3 before the last ends
        assert all(b[1] > a[1] for a, b in zip(ranges, ranges[1:]))  # no window inside the one before


def test_spans_map_back_to_the_tokens_of_the_original_string(wordpiece):
    text = " ".join(f"sentence {i} says something about topic {i % 7}." for i in range(40))
    found = offsets(wordpiece, text)
    ids = wordpiece(text, add_special_tokens=False)["input_ids"]
    spans = split_spans(text, found, 30, 5)
    starts = [start for start, _ in window_ranges(len(found), 30, 5)]
    assert len(spans) == len(starts) > 3
    for span, first in zip(spans, starts):
        window = text[span.start : span.end]
        assert window == window.strip() and span.start == found[first][0]
        # the window's own tokens are the document's tokens of that range: whole words at both ends here
        window_ids = wordpiece(window, add_special_tokens=False)["input_ids"]
        assert window_ids == ids[first : first + len(window_ids)]
        assert len(window_ids) <= 30
    assert spans[0].start == 0 and spans[-1].end == len(text)


def test_a_short_document_is_one_window_of_its_whole_text(wordpiece):
    text = "  Paris is the capital of France.  "
    assert split_spans(text, offsets(wordpiece, text), 30, 5) == [Span(0, len(text))]


def test_multi_byte_text_wordpiece(wordpiece):
    # CJK characters are a token each; accents are stripped by the normaliser; the emoji is an unknown token
    text = "東京は日本の首都です。" * 6 + " Ünïcödé café 🎉 " + "Paris est la capitale de la France. " * 4
    found = offsets(wordpiece, text)
    spans = split_spans(text, found, 7, 2)
    assert len(spans) > 5
    for span, (first, last) in zip(spans, window_ranges(len(found), 7, 2)):
        assert (span.start, span.end) == (found[first][0], max(e for _, e in found[first:last]))
        text[span.start : span.end].encode("utf-8")  # a whole number of characters: valid UTF-8
    cjk = "東京は日本の首都です"
    cjk_spans = split_spans(cjk, offsets(wordpiece, cjk), 4, 1)
    assert [cjk[s.start : s.end] for s in cjk_spans] == ["東京は日", "日本の首", "首都です"]


def test_multi_byte_text_byte_level(byte_level):
    # a character of several UTF-8 bytes becomes several byte tokens, each with the character's offsets: a window
    # boundary between them keeps the whole character on both sides
    text = "the capital of France is Paris 🎉🎉 東京 Ünïcödé " * 3
    found = offsets(byte_level, text)
    assert len(found) > len(text.split())
    spans = split_spans(text, found, 5, 1)
    for span in spans:
        window = text[span.start : span.end]
        assert window.encode("utf-8").decode("utf-8") == window
        assert text.find(window) >= 0
    assert spans[0].start == 0 and spans[-1].end == len(text)  # byte-level BPE keeps the spaces in its tokens


def group(documents: list[str]) -> QueryGroup:
    return QueryGroup(query="q", documents=documents, positions=list(range(10, 10 + len(documents))))


def test_chunker_windows_and_best_window(wordpiece):
    chunker = Chunker(wordpiece, WindowBudget(tokenizer="minilm", document_tokens=10))
    long = " ".join(f"w{i}" for i in range(25))  # w0 is 2 tokens ("w", "##0"): 50+ tokens
    windowed = chunker.split(group(["short one", long]), size=10, overlap=2, max_chunks=16)
    owners = windowed.owners
    assert owners[0] == 0 and set(owners[1:]) == {1} and len(owners) > 4
    assert windowed.group.documents[0] == "short one"
    assert windowed.group.positions == [10] + [11] * (len(owners) - 1)
    for document, span in zip(windowed.group.documents[1:], windowed.spans[1:]):
        assert document == long[span.start : span.end]

    scores = np.arange(len(owners), dtype=np.float64)
    scores[2] = 100.0  # the second window of the long document
    outcome = windowed.best(ScoreOutcome(scores=scores, query_tokens=3, document_tokens=99, query_cache_hit=True))
    assert outcome.scores.tolist() == [0.0, 100.0]
    assert outcome.chunks == [(0, len("short one")), (windowed.spans[2].start, windowed.spans[2].end)]
    assert outcome.document_tokens == 99 and outcome.query_cache_hit  # usage: every window's tokens


def test_ties_keep_the_first_window(wordpiece):
    chunker = Chunker(wordpiece, WindowBudget(tokenizer="minilm", document_tokens=4))
    windowed = chunker.split(group(["a b c d e f g h i j"]), size=4, overlap=0, max_chunks=8)
    outcome = windowed.best(ScoreOutcome(np.ones(len(windowed.owners)), 0, 0, False))
    assert outcome.chunks == [(windowed.spans[0].start, windowed.spans[0].end)]


def test_too_many_windows_is_a_413_naming_the_document(wordpiece):
    chunker = Chunker(wordpiece, WindowBudget(tokenizer="minilm", document_tokens=4))
    message = r"documents\[11\] is 10 tokens long: 4 windows .* max_chunks_per_doc \(3\)"
    with pytest.raises(PayloadTooLarge, match=message):
        chunker.split(group(["ok", "a b c d e f g h i j"]), size=4, overlap=2, max_chunks=3)


def test_window_size_leaves_room_for_the_query_and_the_request_limit(wordpiece):
    alone = Chunker(wordpiece, WindowBudget(tokenizer="m", document_tokens=254, document_overhead=2))
    assert alone.window_size("what is the capital of France?") == 254
    assert alone.window_size("q", max_tokens_per_doc=32) == 30  # [CLS] and [SEP] counted by max_tokens_per_doc
    budget = WindowBudget(tokenizer="m", document_tokens=125, query_shares_input=True, query_limit=124)
    paired = Chunker(wordpiece, budget)
    assert paired.window_size("what is the capital of France?") == 125 - 7
    assert paired.window_size("what is the capital of France?", max_tokens_per_query=3) == 122
    assert paired.window_size("what is the capital of France?", max_tokens_per_doc=20) == 20
    assert paired.window_size(" ".join(["word"] * 500)) == 1  # the query cut to leave one token


def test_a_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        Chunker(Slow(), WindowBudget(tokenizer="slow", document_tokens=8))
