import pytest
from transformers import AutoTokenizer

from scoring.config import EMBEDDED_MODEL, LateInteractionModelConfig, resolve_model_path
from scoring.tokens import LateInteractionTokenizer


@pytest.fixture(scope="module")
def hf_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))


def make(hf_tokenizer, **options) -> LateInteractionTokenizer:
    return LateInteractionTokenizer(hf_tokenizer, LateInteractionModelConfig(name="m", **options), max_model_len=256)


def test_plain_tokens_match_the_tokenizer(hf_tokenizer):
    tokens = make(hf_tokenizer)
    assert tokens.query_ids(["hello world"]) == [hf_tokenizer("hello world")["input_ids"]]


def test_prefixes_truncation_and_special_tokens(hf_tokenizer):
    tokens = make(hf_tokenizer, query_prefix="[Q] ", document_prefix="[D] ", max_tokens_per_doc=8)
    (doc,) = tokens.document_ids(["one two three four five six seven eight nine ten"])
    assert len(doc) == 8
    assert doc[0] == hf_tokenizer.cls_token_id and doc[-1] == hf_tokenizer.sep_token_id
    assert doc[1:4] == hf_tokenizer("[D]", add_special_tokens=False)["input_ids"]
    (short,) = tokens.document_ids(["one two three"], max_tokens=5)
    assert len(short) == 5
    (query,) = tokens.query_ids(["hi"])
    assert query[1:4] == hf_tokenizer("[Q]", add_special_tokens=False)["input_ids"]


def test_query_augmentation_pads_with_mask(hf_tokenizer):
    tokens = make(hf_tokenizer, query_pad_length=12)
    (query,) = tokens.query_ids(["short query"])
    assert len(query) == 12
    assert query[-1] == hf_tokenizer.mask_token_id
    (long,) = tokens.query_ids([" ".join(["word"] * 50)])
    assert len(long) == 12 and long[-1] == hf_tokenizer.sep_token_id


def test_request_truncation_never_exceeds_model_limit(hf_tokenizer):
    tokens = make(hf_tokenizer)
    (doc,) = tokens.document_ids([" ".join(["word"] * 1000)], max_tokens=10_000)
    assert len(doc) == 256
