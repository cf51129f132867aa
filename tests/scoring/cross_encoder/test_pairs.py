"""Cross-encoder pairs and activations against the tokenizer's own pairing and sentence-transformers' rule."""

from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path
from scoring.cross_encoder.pairs import (
    IDENTITY,
    SIGMOID,
    CrossEncoderHead,
    CrossEncoderTokenizer,
    activation_name,
    check_one_label,
)

QUERY = "what is the capital of France?"
LONG = " ".join(f"sentence number {i} about Paris." for i in range(100))


@pytest.fixture(scope="module")
def hf_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))


def test_pairs_are_the_tokenizers_own_pairs_with_token_types(hf_tokenizer):
    tokens = CrossEncoderTokenizer(hf_tokenizer, max_model_len=512)
    documents = ["Paris is in France.", "Bananas are yellow."]
    pairs = tokens.pairs(QUERY, documents)
    for pair, document in zip(pairs, documents):
        expected = hf_tokenizer(QUERY, document)
        assert pair.token_ids == expected["input_ids"]
        assert pair.second_segment_start == expected["token_type_ids"].index(1)
        assert pair.token_ids[pair.second_segment_start - 1] == hf_tokenizer.sep_token_id


def test_the_document_is_cut_first_to_the_model_length(hf_tokenizer):
    (pair,) = CrossEncoderTokenizer(hf_tokenizer, max_model_len=64).pairs(QUERY, [LONG])
    expected = hf_tokenizer(QUERY, LONG, truncation="only_second", max_length=64)["input_ids"]
    assert pair.token_ids == expected and len(expected) == 64
    assert pair.token_ids[: len(hf_tokenizer(QUERY)["input_ids"])] == hf_tokenizer(QUERY)["input_ids"]


def test_query_and_document_limits(hf_tokenizer):
    tokens = CrossEncoderTokenizer(hf_tokenizer, max_model_len=512, max_tokens_per_doc=10)
    (pair,) = tokens.pairs(QUERY, [LONG])
    query = hf_tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    assert len(pair.token_ids) == len(query) + 3 + 10
    (short,) = tokens.pairs(QUERY, [LONG], max_tokens_per_query=3, max_tokens_per_doc=5)
    assert short.token_ids == [hf_tokenizer.cls_token_id, *query[:3], hf_tokenizer.sep_token_id, *
                               hf_tokenizer(LONG, add_special_tokens=False)["input_ids"][:5], hf_tokenizer.sep_token_id]
    assert short.second_segment_start == 5


def test_a_query_longer_than_the_model_leaves_room_for_the_document(hf_tokenizer):
    (pair,) = CrossEncoderTokenizer(hf_tokenizer, max_model_len=32).pairs(LONG, ["Paris"])
    assert len(pair.token_ids) <= 32 and pair.token_ids[-2] == hf_tokenizer("Paris", add_special_tokens=False)[
        "input_ids"][0]


def config(**fields):
    return SimpleNamespace(num_labels=1, **fields)


@pytest.mark.parametrize(
    "hf_config,configured,expected",
    [
        (config(), None, SIGMOID),
        (SimpleNamespace(num_labels=3), None, IDENTITY),
        (config(sentence_transformers={"activation_fn": "torch.nn.modules.linear.Identity"}), None,
         "torch.nn.modules.linear.Identity"),
        (config(sbert_ce_default_activation_function="torch.nn.modules.activation.Tanh"), None,
         "torch.nn.modules.activation.Tanh"),
        (config(sentence_transformers={"activation_fn": "mypackage.Custom"}), None, SIGMOID),  # untrusted: default
        (config(sentence_transformers={"activation_fn": "torch.nn.Tanh"}), "torch.nn.Identity", "torch.nn.Identity"),
    ],
)
def test_activation_follows_sentence_transformers(hf_config, configured, expected):
    assert activation_name(hf_config, configured) == expected


def test_heads_apply_the_activation():
    logits = np.array([-2.0, 0.0, 3.5], dtype=np.float32)
    assert CrossEncoderHead(SIGMOID).scores(logits) == pytest.approx(1 / (1 + np.exp(-logits)), abs=1e-7)
    assert CrossEncoderHead(IDENTITY).scores(logits) == pytest.approx(logits)
    with pytest.raises(ValueError, match="torch.nn.NoSuchThing"):
        CrossEncoderHead("torch.nn.NoSuchThing")


def test_more_than_one_label_is_refused_naming_the_model():
    with pytest.raises(ValueError, match="'nli'.*num_labels=1.*3"):
        check_one_label(SimpleNamespace(num_labels=3), "nli")


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from tests.tiny_jina_reranker import byte_level_tokenizer

    specials = {"<|endoftext|>": 500, "<|im_start|>": 501, "<|im_end|>": 502}
    return byte_level_tokenizer(specials, 512, 512, trained=500, pad_token="<|endoftext|>")


def test_qwen3_reranker_pairs_are_the_conversions_card_texts(qwen_tokenizer, hf_tokenizer):
    from scoring.cross_encoder.pairs import Qwen3RerankerPairs
    from scoring.generative.templates import QWEN3_RERANKER_ASSISTANT, QWEN3_RERANKER_SYSTEM

    pairs = Qwen3RerankerPairs(qwen_tokenizer, 512, "Find it")
    head = f"{QWEN3_RERANKER_SYSTEM}<Instruct>: Find it\n<Query>: {QUERY}\n"
    (pair,) = pairs.pairs(QUERY, ["Paris is in France."])
    card = qwen_tokenizer(head, f"<Document>: Paris is in France.{QWEN3_RERANKER_ASSISTANT}")["input_ids"]
    assert pair.token_ids == list(card) and pair.second_segment_start is None
    (other,) = pairs.pairs(QUERY, ["Paris is in France."], instruction="Mine")
    assert other.token_ids[: len(card)] != card

    encode = lambda text: qwen_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    (cut,) = pairs.pairs(QUERY, [LONG])
    assert len(cut.token_ids) == 512 and cut.token_ids[-len(encode(QWEN3_RERANKER_ASSISTANT)):] == encode(
        QWEN3_RERANKER_ASSISTANT)
    (capped,) = pairs.pairs(QUERY, [LONG], max_tokens_per_doc=5)
    assert capped.token_ids == encode(head) + encode("<Document>: ") + encode(LONG)[:5] + encode(
        QWEN3_RERANKER_ASSISTANT)
    with pytest.raises(ValueError, match="adds no special tokens"):
        Qwen3RerankerPairs(hf_tokenizer, 512, "Find it")
