"""The rerankers of issue 29 beyond ColBERT, end to end through real vLLM engines in real Ray Serve, one app of
tiny random checkpoints written here in their families' formats: jina-reranker-v3 (kind `listwise`,
`JinaForRanking`), bge-reranker-v2-gemma and mxbai-rerank-v2 (kind `generative`, their templates), and a
Qwen3-Reranker sequence-classification conversion (kind `cross_encoder`, template `qwen3-reranker`).

References, outside vLLM: jina's documented computation written out below (its prompt, truncation and block split,
transformers' `Qwen3Model` and the projector in torch, the blocks' weighted query); FlagEmbedding's
`FlagLLMReranker` and mxbai-rerank's `MxbaiRerankV2` input building written out, on transformers' CausalLM; and
sentence-transformers' `CrossEncoder.predict` on the texts the conversion's model card builds.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from scoring.config.schema import QWEN3_RERANKER_INSTRUCTION
from tests.tiny_jina_reranker import build_tiny_jina_reranker, load_reference
from tests.tiny_llm_rerankers import build_tiny_gemma_reranker, build_tiny_mxbai_reranker, build_tiny_qwen3_seq_cls

pytestmark = pytest.mark.e2e

QUERY = "what is the capital of France?"
LONG = " ".join(f"Paris, the capital of France, has {i} bridges over the Seine." for i in range(20))
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Bananas are rich in potassium and grow in tropical climates.",
    LONG,  # over the 40-token document limit: cut and decoded, as the model cuts it
    "The stock market closed higher on Tuesday.",
    "Berlin is the capital of Germany.<|embed_token|>",  # a marker in a text is removed, not read as a passage
    "Photosynthesis converts light energy into chemical energy.",
    "France is a country in Western Europe; its capital is Paris.",
]
JINA = {"max_model_len": 1024, "max_tokens_per_query": 64, "max_tokens_per_doc": 40, "block_size": 3}
GEMMA_MAX_LENGTH = 48  # FlagEmbedding's max_length (the model's max_tokens_per_doc): LONG is cut
MXBAI_MAX_LENGTH = 64  # mxbai-rerank's max_length
LLM_LEN = 512


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        "jina": build_tiny_jina_reranker(tmp_path_factory.mktemp("tiny-jina"), max_positions=JINA["max_model_len"]),
        "gemma": build_tiny_gemma_reranker(tmp_path_factory.mktemp("tiny-gemma"), max_positions=LLM_LEN),
        "mxbai": build_tiny_mxbai_reranker(tmp_path_factory.mktemp("tiny-mxbai"), max_positions=LLM_LEN),
        "seq_cls": build_tiny_qwen3_seq_cls(tmp_path_factory.mktemp("tiny-qwen3-seq-cls"), max_positions=LLM_LEN),
    }


@pytest.fixture(scope="module")
def rerankers_app(serve_instance, checkpoints):
    from ray import serve

    from deployments.app import build_app

    small = {"cpu_kv_cache_bytes": 64 * 2**20, "gpu_memory_utilization": 0.1}
    args = {
        "models": [
            {"name": "tiny-jina", "kind": "listwise", "model": str(checkpoints["jina"]), **JINA, **small},
            {"name": "tiny-bge-gemma", "kind": "generative", "model": str(checkpoints["gemma"]),
             "template": "bge-reranker-v2-gemma", "max_model_len": LLM_LEN, "max_tokens_per_doc": GEMMA_MAX_LENGTH,
             **small},
            {"name": "tiny-mxbai", "kind": "generative", "model": str(checkpoints["mxbai"]),
             "template": "mxbai-rerank-v2", "max_model_len": LLM_LEN, "max_tokens_per_doc": MXBAI_MAX_LENGTH,
             **small},
            {"name": "tiny-qwen3-seq-cls", "kind": "cross_encoder", "model": str(checkpoints["seq_cls"]),
             "template": "qwen3-reranker", "max_model_len": LLM_LEN, **small},
        ]
    }
    handle = serve.run(build_app(args), name="rerankers", route_prefix="/rerankers")
    yield f"{serve_instance}/rerankers", handle
    serve.delete("rerankers")


@pytest.fixture(scope="module")
def client(rerankers_app):
    with httpx.Client(base_url=rerankers_app[0], timeout=300) as c:
        yield c


class JinaReference:
    """jina-reranker-v3's `rerank` as its model card's code documents it, on transformers' Qwen3Model."""

    SYSTEM = (
        "<|im_start|>system\nYou are a search relevance expert who can determine a ranking of the passages based on "
        "how relevant they are to the query. If the query is a question, how relevant a passage is depends on how "
        "well it answers the question. If not, try to analyze the intent of the query and assess how well each "
        "passage satisfies the intent. If an instruction is provided, you should follow the instruction when "
        "determining the ranking.<|im_end|>\n<|im_start|>user\n"
    )

    def __init__(self, path, max_length: int, max_query: int, max_doc: int, block_size: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.decoder, self.projector = load_reference(path)
        self.max_length, self.max_query, self.max_doc, self.block_size = max_length, max_query, max_doc, block_size

    def prompt(self, query: str, docs: list[str], instruction: str | None = None) -> str:
        clean = lambda t: t.replace("<|embed_token|>", "").replace("<|rerank_token|>", "")  # noqa: E731
        query, docs = clean(query), [clean(d) for d in docs]
        body = (f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
                f"Rank the passages based on their relevance to query: {query}\n")
        if instruction:  # the model's code puts a task instruction after the task line, before the passages
            body += f"<instruct>\n{clean(instruction)}\n</instruct>\n"
        body += "\n".join(f'<passage id="{i}">\n{d}<|embed_token|>\n</passage>' for i, d in enumerate(docs)) + "\n"
        body += f"<query>\n{query}<|rerank_token|>\n</query>"
        return self.SYSTEM + body + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    def truncate(self, text: str, limit: int) -> tuple[str, int]:
        ids = self.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
        return (self.tokenizer.decode(ids) if len(ids) >= limit else text), len(ids)

    def block(self, query: str, docs: list[str], instruction: str | None = None):
        ids = self.tokenizer(self.prompt(query, docs, instruction))["input_ids"]
        with torch.no_grad():
            hidden = self.decoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
            markers = torch.tensor(ids)
            docs_rows = self.projector(hidden[markers == 151670]).double().numpy()
            query_row = self.projector(hidden[markers == 151671]).double().numpy()[0]
        return query_row, docs_rows, len(ids)

    def rerank(self, query: str, documents: list[str], instruction: str | None = None) -> tuple[np.ndarray, int]:
        """Scores in input order and the prompts' tokens."""
        query, query_length = self.truncate(query, self.max_query)
        cut = [self.truncate(d, self.max_doc) for d in documents]
        blocks, block, room = [], [], self.max_length - 2 * query_length
        for doc, length in cut:
            block.append(doc)
            room -= length
            if len(block) >= self.block_size or room <= self.max_doc:
                blocks.append(block)
                block, room = [], self.max_length - 2 * query_length
        if block:
            blocks.append(block)
        queries, rows, weights, tokens = [], [], [], 0
        for docs in blocks:
            q, d, n = self.block(query, docs, instruction)
            cosines = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
            queries.append(q), rows.append(d), weights.append(((1 + cosines) / 2).max())
            tokens += n
        q = np.average(np.stack(queries), axis=0, weights=weights)
        d = np.concatenate(rows)
        return d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q)), tokens


@pytest.fixture(scope="module")
def jina(checkpoints):
    return JinaReference(checkpoints["jina"], JINA["max_model_len"], JINA["max_tokens_per_query"],
                         JINA["max_tokens_per_doc"], JINA["block_size"])


def test_listwise_rerank_matches_the_model_across_blocks(client, jina):
    expected, tokens = jina.rerank(QUERY, DOCUMENTS)
    order = list(np.argsort(-expected, kind="stable"))
    r = client.post("/v1/rerank", json={"model": "tiny-jina", "query": QUERY, "documents": DOCUMENTS, "top_n": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == order[:4]
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-4)
        assert x["document"]["text"] == DOCUMENTS[x["index"]]
    assert body["usage"]["prompt_tokens"] == tokens  # three blocks of the 3-document block size

    plain = client.post("/rerank", json={"model": "tiny-jina", "query": QUERY, "documents": DOCUMENTS}).json()
    assert [x["index"] for x in plain["results"]] == order
    v2 = client.post("/v2/rerank", json={"model": "tiny-jina", "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert [x["index"] for x in v2.json()["results"]] == order[:2]
    assert v2.json()["meta"]["tokens"]["input_tokens"] == tokens


def test_listwise_score_forms_as_vllm_defines_them(client, rerankers_app, jina):
    """1:N is one list; 1:1 a list of one; N:N one list of one document a pair, even for a repeated query."""
    one_to_n = client.post("/v1/score", json={"model": "tiny-jina", "queries": QUERY, "documents": DOCUMENTS[:3]})
    assert one_to_n.status_code == 200, one_to_n.text
    expected, _ = jina.rerank(QUERY, DOCUMENTS[:3])
    assert [d["score"] for d in one_to_n.json()["data"]] == pytest.approx(list(expected), abs=1e-4)

    one = client.post("/score", json={"model": "tiny-jina", "queries": QUERY, "documents": DOCUMENTS[0]}).json()
    assert one["data"][0]["score"] == pytest.approx(jina.rerank(QUERY, DOCUMENTS[:1])[0][0], abs=1e-4)

    queries = [QUERY, "where do bananas grow?", QUERY]
    pairs = {"model": "tiny-jina", "queries": queries, "documents": DOCUMENTS[:3]}
    n_to_n = client.post("/v1/score", json=pairs)
    assert n_to_n.status_code == 200, n_to_n.text
    expected = [jina.rerank(q, [d])[0][0] for q, d in zip(queries, DOCUMENTS[:3])]
    assert [d["score"] for d in n_to_n.json()["data"]] == pytest.approx(expected, abs=1e-4)
    assert n_to_n.json()["usage"]["prompt_tokens"] == sum(jina.rerank(q, [d])[1] for q, d in zip(queries, DOCUMENTS))

    handle = rerankers_app[1]
    from_handle = handle.rerank.remote({"model": "tiny-jina", "query": QUERY, "documents": DOCUMENTS[:3]}).result()
    by_index = {x.index: x.relevance_score for x in from_handle.results}
    assert [by_index[i] for i in range(3)] == pytest.approx([d["score"] for d in one_to_n.json()["data"]], abs=1e-6)


def test_listwise_model_card_says_nothing_is_cached(client):
    card = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == "tiny-jina")
    assert card["kind"] == "listwise"
    assert card["document_cache"] is False


class CausalLMReference:
    """transformers' CausalLM: the logits of the token after a prompt."""

    def __init__(self, path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def last_logits(self, ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0, -1].double().numpy()


def only_second(first: list[int], second: list[int], max_length: int) -> list[int]:
    """What both libraries' `tokenizer.prepare_for_model(first, second, truncation="only_second", max_length=...,
    add_special_tokens=False)` returns (transformers 5's fast tokenizers no longer have it): the pair, the second
    sequence cut from its end so the pair has at most `max_length` tokens."""
    return first + second[: max(max_length - len(first), 0)]


BGE_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
              "providing a prediction of either 'Yes' or 'No'.")


def flag_llm_reranker(
    ref: CausalLMReference, query: str, passage: str, max_length: int, prompt: str = BGE_PROMPT
) -> tuple[float, int]:
    """FlagEmbedding's FlagLLMReranker.compute_score for one pair (its defaults: "A: " / "B: ", the yes/no prompt,
    the query cut to 3/4 of max_length), normalize=False: the "Yes" logit; and the prompt's tokens. `prompt`: its
    `prompt` argument (the default yes/no question)."""
    tok = ref.tokenizer
    prompt = ref.ids(prompt)
    sep = ref.ids("\n")
    query_ids = tok(f"A: {query}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
    passage_ids = tok(f"B: {passage}", add_special_tokens=False, max_length=max_length, truncation=True)
    ids = only_second([tok.bos_token_id] + query_ids["input_ids"], sep + passage_ids["input_ids"],
                      max_length + len(sep) + len(prompt)) + sep + prompt
    return float(ref.last_logits(ids)[ref.ids("Yes")[0]]), len(ids)


def mxbai_rerank_v2(ref: CausalLMReference, query: str, document: str, max_length: int) -> tuple[float, int]:
    """mxbai-rerank's MxbaiRerankV2.predict for one pair: logit("1") - logit("0"); and the prompt's tokens."""
    tok = ref.tokenizer
    prefix = ref.ids("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                     "<|im_end|>\n<|im_start|>user\n")
    suffix = ref.ids("<|im_end|>\n<|im_start|>assistant\n")
    task = ref.ids("You are a search relevance expert who evaluates how well documents match search queries. For "
                   "each query-document pair, carefully analyze the semantic relationship between them, then provide "
                   "your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
    sep = ref.ids("\n")
    if max_length + len(prefix) + len(task) + len(suffix) + len(sep) > tok.model_max_length:
        max_length = tok.model_max_length - len(prefix) - len(task) - len(suffix) - len(sep)
    query_ids = tok(f"query: {query}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
    document_ids = tok(f"document: {document}", add_special_tokens=False, truncation=True,
                       max_length=min(tok.model_max_length - len(query_ids["input_ids"]), max_length))
    pair = only_second(query_ids["input_ids"], sep + document_ids["input_ids"], max_length)
    ids = prefix + pair + sep + task + suffix
    logits = ref.last_logits(ids)
    return float(logits[ref.ids("1")[0]] - logits[ref.ids("0")[0]]), len(ids)


@pytest.mark.parametrize(
    ("model", "library", "max_length"),
    [("tiny-bge-gemma", flag_llm_reranker, GEMMA_MAX_LENGTH), ("tiny-mxbai", mxbai_rerank_v2, MXBAI_MAX_LENGTH)],
)
def test_llm_rerankers_score_as_their_libraries(client, checkpoints, model, library, max_length):
    ref = CausalLMReference(checkpoints["gemma" if model == "tiny-bge-gemma" else "mxbai"])
    ref.tokenizer.model_max_length = LLM_LEN - 1  # prompts the engine takes: one position is kept for the token read
    expected = [library(ref, QUERY, d, max_length) for d in DOCUMENTS]
    r = client.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i][0])
    assert [x["index"] for x in results] == order[:3]
    for x in results:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]][0], abs=1e-4)
    assert r.json()["usage"]["prompt_tokens"] == sum(n for _, n in expected)
    score = client.post("/v1/score", json={"model": model, "queries": QUERY, "documents": DOCUMENTS[:2]})
    assert [d["score"] for d in score.json()["data"]] == pytest.approx([e for e, _ in expected[:2]], abs=1e-4)


def test_a_logit_template_refuses_full_vocabulary_probabilities(client):
    body = {"model": "tiny-bge-gemma", "query": QUERY, "items": DOCUMENTS[:1], "label_token_ids": [5, 6]}
    assert client.post("/generative_scoring", json=body).status_code == 200
    refused = client.post("/generative_scoring", json={**body, "apply_softmax": False})
    assert refused.status_code == 400, refused.text
    assert "apply_softmax" in refused.json()["error"]["message"]


def test_qwen3_seq_cls_conversion_scores_as_its_model_card(client, checkpoints):
    """The conversion's card: CrossEncoder.predict on (system + <Instruct> + <Query>, <Document> + assistant). A
    document too long for the model is cut inside the template (the card's texts would lose the assistant turn the
    score is read after): transformers' forward pass on those ids + sigmoid."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    prefix = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
              'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    head = f"{prefix}<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n<Query>: {QUERY}\n"
    fitting = [i for i, d in enumerate(DOCUMENTS) if d != LONG]
    cross_encoder = CrossEncoder(str(checkpoints["seq_cls"]), device="cpu")
    card_pairs = [(head, f"<Document>: {DOCUMENTS[i]}{suffix}") for i in fitting]
    expected = dict(zip(fitting, cross_encoder.predict(card_pairs)))
    ids = lambda text: cross_encoder.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    room = LLM_LEN - len(ids(head)) - len(ids("<Document>: ")) - len(ids(suffix))
    long_ids = ids(head) + ids("<Document>: ") + ids(LONG)[:room] + ids(suffix)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints["seq_cls"], dtype=torch.float32).eval()
    with torch.no_grad():
        expected[DOCUMENTS.index(LONG)] = torch.sigmoid(model(torch.tensor([long_ids])).logits[0, 0]).item()

    r = client.post("/v1/rerank", json={"model": "tiny-qwen3-seq-cls", "query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert [got[i] for i in range(len(DOCUMENTS))] == pytest.approx([expected[i] for i in range(len(DOCUMENTS))],
                                                                     abs=1e-4)
    assert len({round(float(v), 4) for v in expected.values()}) == len(DOCUMENTS)  # they score apart


INSTRUCTION = "Given a question about a city, find the passage naming its country"


def test_a_request_instruction_reaches_each_kind_with_a_slot(client, checkpoints, jina):
    """vLLM's `instruction` field, per request: the listwise prompt's instruct block, bge-reranker-v2-gemma's
    question (FlagEmbedding's `prompt`), the seq-cls conversion's `<Instruct>` line; each as its reference with
    that instruction."""
    documents = [d for d in DOCUMENTS if d != LONG]
    expected, _ = jina.rerank(QUERY, documents, INSTRUCTION)
    r = client.post("/v1/rerank", json={"model": "tiny-jina", "query": QUERY, "documents": documents,
                                        "instruction": INSTRUCTION})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert [got[i] for i in range(len(documents))] == pytest.approx(list(expected), abs=1e-4)
    assert not np.allclose(expected, jina.rerank(QUERY, documents)[0], atol=1e-4)  # the instruction mattered

    ref = CausalLMReference(checkpoints["gemma"])
    ref.tokenizer.model_max_length = LLM_LEN - 1
    gemma = [flag_llm_reranker(ref, QUERY, d, GEMMA_MAX_LENGTH, prompt=INSTRUCTION)[0] for d in documents[:3]]
    r = client.post("/v1/score", json={"model": "tiny-bge-gemma", "queries": QUERY, "documents": documents[:3],
                                       "instruction": INSTRUCTION})
    assert r.status_code == 200, r.text
    assert [d["score"] for d in r.json()["data"]] == pytest.approx(gemma, abs=1e-4)

    from sentence_transformers import CrossEncoder

    prefix = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
              'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    head = f"{prefix}<Instruct>: {INSTRUCTION}\n<Query>: {QUERY}\n"
    card = CrossEncoder(str(checkpoints["seq_cls"]), device="cpu").predict(
        [(head, f"<Document>: {d}{suffix}") for d in documents[:3]]
    )
    r = client.post("/v2/rerank", json={"model": "tiny-qwen3-seq-cls", "query": QUERY, "documents": documents[:3],
                                        "instruction": INSTRUCTION})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert [got[i] for i in range(3)] == pytest.approx(list(card), abs=1e-4)


def test_long_documents_chunked_on_the_listwise_and_seq_cls_models(client):
    """`long_documents: chunk` on the kinds this round added: every document scored, each result with the span of
    its best window; the seq-cls cross-encoder's score of a long document is its best window's, sent alone."""
    documents = [LONG, DOCUMENTS[0], DOCUMENTS[1]]
    for model in ("tiny-jina", "tiny-qwen3-seq-cls"):
        r = client.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": documents,
                                            "long_documents": "chunk", "max_tokens_per_doc": 24})
        assert r.status_code == 200, (model, r.text)
        results = {x["index"]: x for x in r.json()["results"]}
        assert sorted(results) == [0, 1, 2]
        start, end = results[0]["chunk"]["start"], results[0]["chunk"]["end"]
        assert 0 <= start < end <= len(LONG) and end - start < len(LONG)  # a window, not the whole document
        assert results[1]["chunk"] == {"start": 0, "end": len(DOCUMENTS[0])}
    window = LONG[start:end]
    # the same limit, so the window goes through the same cut inside the template (a whole document is tokenized
    # with the template's text around it, a cut one apart from it)
    alone = client.post("/v1/rerank", json={"model": "tiny-qwen3-seq-cls", "query": QUERY, "documents": [window],
                                            "max_tokens_per_doc": 24})
    assert results[0]["relevance_score"] == pytest.approx(alone.json()["results"][0]["relevance_score"], abs=1e-5)
