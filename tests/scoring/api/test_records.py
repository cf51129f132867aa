"""Records scored by their rank_fields, and which models take a request's instruction."""

from __future__ import annotations

import pytest

from scoring.api.instructions import check_instruction, takes_instruction
from scoring.api.protocol import RerankRequest, ScoreRequest
from scoring.api.requests import rerank_group, rerank_results, score_groups
from scoring.config.schema import parse_app_config
from scoring.errors import InvalidRequest, ValidationFailed

RECORD = {"title": "Paris", "text": "Capital of France.", "url": "https://example.org", "views": 3}


def test_rank_fields_are_serialised_in_their_order():
    request = RerankRequest.model_validate(
        {"query": "q", "documents": [RECORD, {"title": "B", "text": "Berlin."}], "rank_fields": ["title", "text"]}
    )
    group = rerank_group(request.query, request.documents, parse_app_config({}), request.rank_fields)
    assert group.documents == ["title: Paris\ntext: Capital of France.", "title: B\ntext: Berlin."]
    again = rerank_group("q", request.documents, parse_app_config({}), ["text", "title"])
    assert again.documents[0] == "text: Capital of France.\ntitle: Paris"
    # the object comes back as sent, its other fields (of any type) too
    results = rerank_results([0.5, 0.1], request.documents, None, True, as_records=True)
    assert results[0].document == RECORD and results[0].model_dump(exclude_none=True)["document"] == RECORD


def test_a_text_object_without_rank_fields_is_as_before():
    request = RerankRequest.model_validate({"query": "q", "documents": [{"text": "a", "title": "t"}, "b"]})
    assert rerank_group("q", request.documents, parse_app_config({})).documents == ["a", "b"]


@pytest.mark.parametrize(
    "documents,rank_fields,message",
    [
        ([RECORD], ["title", "summary"], "documents[0] has no field 'summary' named in rank_fields"),
        ([RECORD], ["views"], "documents[0].views is int, not a string"),
        ([RECORD, {"title": ["x"]}], ["title"], "documents[1].title is list"),
        ([RECORD, "plain"], ["title"], "documents[1] is a string"),
        ([{"title": "no text"}], None, "documents[0] has no `text` field"),
    ],
)
def test_bad_records_name_the_document_and_the_field(documents, rank_fields, message):
    request = ScoreRequest.model_validate({"queries": "q", "documents": documents, "rank_fields": rank_fields})
    with pytest.raises(ValidationFailed) as error:
        score_groups(request, parse_app_config({}))
    assert message in error.value.message


def test_empty_rank_fields_is_a_validation_error():
    with pytest.raises(ValueError, match="rank_fields"):
        RerankRequest.model_validate({"query": "q", "documents": [RECORD], "rank_fields": []})


def test_which_models_take_an_instruction():
    config = parse_app_config(
        {
            "models": [
                {"name": "li"},
                {"name": "bi", "kind": "bi_encoder"},
                {"name": "ce", "kind": "cross_encoder", "model": "x"},
                {"name": "raw", "kind": "generative", "model": "x"},
                {"name": "qwen", "kind": "generative", "model": "x", "template": "qwen3-reranker"},
                {"name": "li-ce", "kind": "cascade", "first": "li", "then": "ce"},
                {"name": "li-qwen", "kind": "cascade", "first": "li", "then": "qwen"},
            ]
        }
    )
    models = {m.name: m for m in config.models}
    assert [n for n in ("li", "bi", "ce", "raw", "qwen") if takes_instruction(models[n])] == ["bi", "qwen"]
    for name in ("bi", "qwen", "li-qwen"):
        check_instruction(config, models[name], "Find the answer")
    for name in ("li", "ce", "raw", "li-ce"):
        check_instruction(config, models[name], None)
        with pytest.raises(InvalidRequest, match=f"model '{name}' .* takes no instruction"):
            check_instruction(config, models[name], "Find the answer")
    with pytest.raises(ValidationFailed, match="instruction contains invalid unicode"):
        check_instruction(config, models["bi"], "\ud800")
