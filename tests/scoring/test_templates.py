"""Prompt templates and label tokens on the MiniLM tokenizer (no engine)."""

from __future__ import annotations

import pytest

from scoring.config import EMBEDDED_MODEL, QWEN3_RERANKER_INSTRUCTION, resolve_model_path
from scoring.templates import build_template, label_token_ids


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))


def test_raw_is_vllm_generative_scoring(tokenizer):
    raw = build_template("raw", tokenizer, max_model_len=512)
    query = tokenizer.encode("capital of France?")  # with [CLS] ... [SEP]
    item = tokenizer.encode("Paris", add_special_tokens=False)
    assert raw.prompts("capital of France?", ["Paris"]) == [query + item]
    assert raw.prompts("capital of France?", ["Paris"], item_first=True) == [item + query]
    bare = tokenizer.encode("capital of France?", add_special_tokens=False)
    assert raw.prompts("capital of France?", ["Paris"], add_special_tokens=False) == [bare + item]
    assert raw.prompts([7, 8], [[9], "Paris"]) == [[7, 8, 9], [7, 8] + item]


def test_raw_truncates_like_vllm(tokenizer):
    raw = build_template("raw", tokenizer, max_model_len=16)
    (prompt,) = raw.prompts("capital of France?", [" ".join(["word"] * 40)])
    assert len(prompt) == 15  # max_model_len - 1: room for the token that is read
    (short,) = raw.prompts("capital of France?", ["one two three four"], max_item_tokens=2)
    assert short == tokenizer.encode("capital of France?") + tokenizer.encode("one two", add_special_tokens=False)


def qwen3_reference_text(query: str, document: str, instruction: str = QWEN3_RERANKER_INSTRUCTION) -> str:
    """The prompt as the Qwen3-Reranker model card writes it, typed out independently of the template."""
    return (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_reranker_prompt(tokenizer):
    template = build_template("qwen3-reranker", tokenizer, max_model_len=512, instruction="Find the answer")
    prompts = template.prompts("capital of France?", ["Paris is the capital.", "Bananas."])
    for prompt, doc in zip(prompts, ["Paris is the capital.", "Bananas."]):
        expected = qwen3_reference_text("capital of France?", doc, "Find the answer")
        assert prompt == tokenizer.encode(expected, add_special_tokens=False)


def test_qwen3_reranker_cuts_the_document_not_the_frame(tokenizer):
    template = build_template("qwen3-reranker", tokenizer, 128, QWEN3_RERANKER_INSTRUCTION)
    (prompt,) = template.prompts("capital of France?", [" ".join(["filler"] * 200)])
    assert len(prompt) == 127
    frame_end = tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", add_special_tokens=False)
    assert prompt[-len(frame_end) :] == frame_end
    (capped,) = template.prompts("capital of France?", ["one two three four"], max_item_tokens=2)
    assert capped == tokenizer.encode(qwen3_reference_text("capital of France?", "one two"), add_special_tokens=False)


def test_label_tokens_must_be_single_tokens(tokenizer):
    assert label_token_ids(tokenizer, ["yes", "no"], "m") == [2748, 2053]
    with pytest.raises(ValueError, match="'unbelievably' is"):
        label_token_ids(tokenizer, ["yes", "unbelievably"], "m")
