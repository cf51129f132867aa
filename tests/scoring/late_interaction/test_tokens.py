"""Token ids as PyLate and the Stanford ColBERT library build them: marker right after [CLS], lengths counting
every token, [MASK] expansion after [SEP], the skiplist applied to documents only."""

import string
from dataclasses import replace

import numpy as np
import pytest
from transformers import AutoTokenizer

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path
from scoring.late_interaction.formats import Encoding
from scoring.late_interaction.tokens import LateInteractionTokenizer

PLAIN = Encoding(
    format="plain",
    query_prefix="",
    document_prefix="",
    query_length=64,
    document_length=None,
    query_expansion=False,
    attend_to_expansion_tokens=True,
    skiplist_words=(),
    embedding_dim=384,
)
COLBERT = replace(
    PLAIN,
    format="pylate",
    query_prefix="[unused0]",
    document_prefix="[unused1]",
    query_length=12,
    document_length=10,
    query_expansion=True,
    attend_to_expansion_tokens=False,
    skiplist_words=tuple(string.punctuation),
)


@pytest.fixture(scope="module")
def hf():
    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))


def words(hf, text: str) -> list[int]:
    return hf(text, add_special_tokens=False)["input_ids"]


def test_plain_tokens_match_the_tokenizer(hf):
    tokens = LateInteractionTokenizer(hf, PLAIN, max_model_len=256)
    assert tokens.query_ids(["hello world"]) == [hf("hello world")["input_ids"]]
    assert tokens.document_keep(tokens.document_ids(["a, b."])[0]) is None
    (long,) = tokens.document_ids([" ".join(["word"] * 1000)], max_tokens=10_000)
    assert len(long) == 256  # never past the engine's limit


def test_marker_is_one_token_right_after_cls(hf):
    tokens = LateInteractionTokenizer(hf, COLBERT, max_model_len=256)
    unused0, unused1 = hf.convert_tokens_to_ids(["[unused0]", "[unused1]"])
    (doc,) = tokens.document_ids(["hello world"])
    assert doc == [hf.cls_token_id, unused1, *words(hf, "hello world"), hf.sep_token_id]
    (query,) = tokens.query_tokens(["hello world"])
    assert query.ids[:5] == [hf.cls_token_id, unused0, *words(hf, "hello world"), hf.sep_token_id][:5]


def test_truncation_counts_marker_and_special_tokens(hf):
    tokens = LateInteractionTokenizer(hf, COLBERT, max_model_len=256)
    text = " ".join(["word"] * 50)
    (doc,) = tokens.document_ids([text])
    assert len(doc) == 10 and doc[-1] == hf.sep_token_id and doc[2:-1] == words(hf, text)[:7]
    (short,) = tokens.document_ids([text], max_tokens=6)
    assert len(short) == 6
    (query,) = tokens.query_tokens([text])
    assert len(query.ids) == 12 and query.ids[-1] == hf.sep_token_id and query.attended == 12


def test_expansion_pads_with_mask_after_sep(hf):
    tokens = LateInteractionTokenizer(hf, COLBERT, max_model_len=256)
    (query,) = tokens.query_tokens(["short query"])
    body = [hf.cls_token_id, hf.convert_tokens_to_ids("[unused0]"), *words(hf, "short query"), hf.sep_token_id]
    assert query.ids == body + [hf.mask_token_id] * (12 - len(body))
    assert query.attended == len(body)  # the [MASK]s are not attended to
    attending = LateInteractionTokenizer(hf, replace(COLBERT, attend_to_expansion_tokens=True), 256)
    assert attending.query_tokens(["short query"])[0].attended == 12
    plain = LateInteractionTokenizer(hf, replace(COLBERT, query_expansion=False), 256)
    assert plain.query_ids(["short query"]) == [body]


def test_skiplist_keeps_punctuation_out_of_documents_only(hf):
    tokens = LateInteractionTokenizer(hf, COLBERT, max_model_len=256)
    (doc,) = tokens.document_ids(["yes, no!"])
    keep = tokens.document_keep(doc)
    kept = [hf.convert_ids_to_tokens(i) for i, k in zip(doc, keep) if k]
    assert kept == ["[CLS]", "[unused1]", "yes", "no", "[SEP]"]
    assert tokens.document_keep(tokens.document_ids(["no punctuation"])[0]) is None
    (query,) = tokens.query_ids(["yes, no!"])
    assert hf.convert_tokens_to_ids(",") in query  # queries keep every token


def test_marker_outside_the_vocabulary_is_an_error(hf):
    with pytest.raises(ValueError, match="query_prefix '\\[Q\\] ' is not a token"):
        LateInteractionTokenizer(hf, replace(COLBERT, query_prefix="[Q] "), 256)


def test_added_marker_tokens_are_found(tmp_path, hf):
    """PyLate's `[Q] ` / `[D] ` markers are tokens it added to the tokenizer (saved with the checkpoint)."""
    hf.save_pretrained(tmp_path)
    added = AutoTokenizer.from_pretrained(tmp_path)
    added.add_tokens(["[Q] ", "[D] "])
    tokens = LateInteractionTokenizer(added, replace(COLBERT, query_prefix="[Q] ", document_prefix="[D] "), 256)
    (doc,) = tokens.document_ids(["text"])
    assert doc[1] == added.convert_tokens_to_ids("[D] ") == len(hf) + 1
    assert np.asarray(doc).max() < len(added)
