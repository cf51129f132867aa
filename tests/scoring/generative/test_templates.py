"""Prompt templates and label tokens on the MiniLM tokenizer (no engine)."""

from __future__ import annotations

import pytest

from scoring.config.schema import EMBEDDED_MODEL, QWEN3_RERANKER_INSTRUCTION, resolve_model_path
from scoring.generative.templates import build_template, label_token_ids


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


def test_bge_gemma_template_is_flag_llm_rerankers_prompt(tokenizer):
    from scoring.generative.templates import BGE_GEMMA_PROMPT

    template = build_template("bge-reranker-v2-gemma", tokenizer, 512, BGE_GEMMA_PROMPT, max_length=8)
    long_query = " ".join(["capital"] * 20)
    (prompt,) = template.prompts(long_query, ["one two three four five six seven eight nine ten"])
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    sep, question = encode("\n"), encode(BGE_GEMMA_PROMPT)
    query = encode(f"A: {long_query}")[:6]  # 3/4 of max_length; MiniLM has no bos token, so none is put first
    passage = encode("B: one two three four five six seven eight nine ten")[:8]
    # the pair is cut to max_length + the separator and the question, the passage giving way
    pair = (query + sep + passage)[: 8 + len(sep) + len(question)]
    assert prompt == pair + sep + question
    (own,) = template.prompts("q", ["d"], instruction="Is it relevant?")
    assert own[-len(encode("Is it relevant?")):] == encode("Is it relevant?")
    # a request's max_tokens_per_doc is FlagEmbedding's max_length, which cuts the query to 3/4 of it too
    (tight,) = template.prompts("q", ["one two three four"], max_item_tokens=3)
    assert tight == encode("A: q")[:2] + sep + encode("B: one two three four")[:3] + sep + question


def test_mxbai_template_is_the_librarys_prompt(tokenizer):
    from scoring.generative.templates import MXBAI_ASSISTANT, MXBAI_SYSTEM, MXBAI_TASK

    template = build_template("mxbai-rerank-v2", tokenizer, 512, None)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    sep = encode("\n")
    (prompt,) = template.prompts("capital?", ["Paris."])
    assert prompt == (encode(MXBAI_SYSTEM) + encode("query: capital?") + sep + encode("document: Paris.") + sep
                      + encode(MXBAI_TASK) + encode(MXBAI_ASSISTANT))
    (instructed,) = template.prompts("capital?", ["Paris."], instruction="find cities")
    assert encode("instruction: find cities\nquery: capital?") == instructed[len(encode(MXBAI_SYSTEM)):][:len(
        encode("instruction: find cities\nquery: capital?"))]
    (cut,) = template.prompts("capital?", [" ".join(["word"] * 40)], max_item_tokens=10)
    pair = (encode("query: capital?") + sep + encode("document: " + " ".join(["word"] * 40)))[:10]
    assert cut == encode(MXBAI_SYSTEM) + pair + sep + encode(MXBAI_TASK) + encode(MXBAI_ASSISTANT)


def test_template_defaults_and_scores():
    import numpy as np

    from scoring.config.schema import ConfigError, parse_app_config
    from scoring.generative.labels import template_scores

    models = parse_app_config({"models": [
        {"name": "g", "kind": "generative", "model": "x", "template": "bge-reranker-v2-gemma"},
        {"name": "m", "kind": "generative", "model": "x", "template": "mxbai-rerank-v2", "normalize": True},
    ]}).models
    assert models[0].label_tokens == ["Yes"] and models[0].instruction.startswith("Given a query A and a passage B")
    assert models[1].label_tokens == ["1", "0"] and models[1].instruction is None
    with pytest.raises(ConfigError, match="normalize applies"):
        parse_app_config({"models": [{"name": "q", "kind": "generative", "model": "x", "normalize": True}]})
    values = np.array([[2.0, -1.0], [-3.0, 0.5]])
    assert template_scores("bge-reranker-v2-gemma", values) == pytest.approx([2.0, -3.0])
    assert template_scores("bge-reranker-v2-gemma", values, normalize=True) == pytest.approx(
        1 / (1 + np.exp(-np.array([2.0, -3.0]))))
    assert template_scores("mxbai-rerank-v2", values) == pytest.approx([3.0, -3.5])
    assert template_scores("qwen3-reranker", np.log([[0.2, 0.6], [0.3, 0.1]])) == pytest.approx([0.25, 0.75])
