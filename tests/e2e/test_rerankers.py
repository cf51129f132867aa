"""The rerankers of issue 29 beyond ColBERT, end to end through real vLLM engines in real Ray Serve, one app:
jina-reranker-v3 (kind `listwise`) on a tiny `JinaForRanking` checkpoint written here.

Reference: the model's documented computation written out below, outside vLLM: its prompt, its truncation and
block split, transformers' `Qwen3Model` and the projector in torch, the cosines and the blocks' weighted query.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from tests.tiny_jina_reranker import build_tiny_jina_reranker, load_reference

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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {"jina": build_tiny_jina_reranker(tmp_path_factory.mktemp("tiny-jina"), max_positions=JINA["max_model_len"])}


@pytest.fixture(scope="module")
def rerankers_app(serve_instance, checkpoints):
    from ray import serve

    from deployments.app import build_app

    small = {"cpu_kv_cache_bytes": 64 * 2**20, "gpu_memory_utilization": 0.1}
    args = {
        "models": [
            {"name": "tiny-jina", "kind": "listwise", "model": str(checkpoints["jina"]), **JINA, **small},
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

    def prompt(self, query: str, docs: list[str]) -> str:
        clean = lambda t: t.replace("<|embed_token|>", "").replace("<|rerank_token|>", "")  # noqa: E731
        query, docs = clean(query), [clean(d) for d in docs]
        body = (f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
                f"Rank the passages based on their relevance to query: {query}\n")
        body += "\n".join(f'<passage id="{i}">\n{d}<|embed_token|>\n</passage>' for i, d in enumerate(docs)) + "\n"
        body += f"<query>\n{query}<|rerank_token|>\n</query>"
        return self.SYSTEM + body + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    def truncate(self, text: str, limit: int) -> tuple[str, int]:
        ids = self.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
        return (self.tokenizer.decode(ids) if len(ids) >= limit else text), len(ids)

    def block(self, query: str, docs: list[str]):
        ids = self.tokenizer(self.prompt(query, docs))["input_ids"]
        with torch.no_grad():
            hidden = self.decoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
            markers = torch.tensor(ids)
            docs_rows = self.projector(hidden[markers == 151670]).double().numpy()
            query_row = self.projector(hidden[markers == 151671]).double().numpy()[0]
        return query_row, docs_rows, len(ids)

    def rerank(self, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
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
            q, d, n = self.block(query, docs)
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
