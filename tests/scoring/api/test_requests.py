import numpy as np
import pytest

from scoring.api.protocol import RerankRequest, ScoreRequest
from scoring.api.ranking import rank
from scoring.api.requests import place_scores, rerank_group, rerank_results, resolve_model, score_groups
from scoring.config.schema import parse_app_config
from scoring.errors import ModelNotFound, PayloadTooLarge, ValidationFailed

CONFIG = parse_app_config({"limits": {"max_documents": 5, "max_query_chars": 20, "max_document_chars": 30}})


def test_rank_descending_stable_and_top_n():
    assert rank([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]
    assert rank([0.1, 0.9, 0.5], top_n=2) == [1, 2]
    assert rank([0.1, 0.9], top_n=0) == [1, 0]
    assert rank([0.3], top_n=10) == [0]


def test_resolve_model():
    assert resolve_model(CONFIG, None).name == "minilm-colbert"
    with pytest.raises(ModelNotFound, match="available: minilm-colbert"):
        resolve_model(CONFIG, "other")


@pytest.mark.parametrize(
    "query,docs,error",
    [
        ("", ["a"], ValidationFailed),
        ("q", [], ValidationFailed),
        ("q", ["a"] * 6, PayloadTooLarge),
        ("q" * 21, ["a"], PayloadTooLarge),
        ("q", ["a" * 31], PayloadTooLarge),
    ],
)
def test_rerank_limits(query, docs, error):
    with pytest.raises(error):
        rerank_group(query, docs, CONFIG)


def test_score_pairing_modes():
    groups, n = score_groups(ScoreRequest(queries="q", documents="d"), CONFIG)
    assert n == 1 and groups[0].documents == ["d"]
    groups, n = score_groups(ScoreRequest(queries="q", documents=["a", "b"]), CONFIG)
    assert n == 2 and len(groups) == 1 and groups[0].positions == [0, 1]
    groups, n = score_groups(ScoreRequest(queries=["x", "y", "x"], documents=["a", "b", "c"]), CONFIG)
    assert n == 3 and [(g.query, g.positions) for g in groups] == [("x", [0, 2]), ("y", [1])]
    scores = place_scores(groups, [np.array([1.0, 3.0]), np.array([2.0])], n)
    assert scores.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValidationFailed, match="equal length"):
        score_groups(ScoreRequest(queries=["x", "y"], documents=["a", "b", "c"]), CONFIG)


def test_rerank_results_top_n_and_documents():
    results = rerank_results(np.array([0.2, 0.7, 0.1]), ["a", "b", "c"], top_n=2, return_documents=True)
    assert [(r.index, r.document.text) for r in results] == [(1, "b"), (0, "a")]
    assert rerank_results(np.array([0.2]), ["a"], None, False)[0].document is None


@pytest.mark.parametrize("body", [
    {"queries": "q", "documents": ["a", "b"]},
    {"queries": "q", "items": ["a", "b"]},
    {"text_1": "q", "text_2": ["a", "b"]},
    {"data_1": "q", "data_2": ["a", "b"]},
])
def test_score_requests_take_every_spelling_vllm_takes(body):
    """vLLM's /score reads the pair as queries/documents, queries/items, text_1/text_2 or data_1/data_2."""
    request = ScoreRequest.model_validate(body)
    assert (request.queries, request.documents) == (["q"], ["a", "b"])  # one query alone is a list of one
    groups, n = score_groups(request, CONFIG)
    assert n == 2


def test_a_score_request_without_documents_names_the_field():
    with pytest.raises(ValueError, match="documents"):
        ScoreRequest.model_validate({"text_1": "q"})


def test_one_rerank_document_given_alone_is_a_list_of_one():
    """vLLM's /rerank takes `documents` as one string too; a number is still a 422."""
    assert RerankRequest.model_validate({"query": "q", "documents": "d"}).documents == ["d"]
    with pytest.raises(ValueError, match="valid list"):
        RerankRequest.model_validate({"query": "q", "documents": 3})
