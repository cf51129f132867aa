"""Generative scoring arithmetic, request checks, cascade merge and config cross-references (no engine)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scoring.config.schema import ConfigError, parse_app_config
from scoring.errors import InvalidRequest, ModelNotFound, PayloadTooLarge, ValidationFailed
from scoring.generative.labels import (
    first_label_probability,
    generative_job,
    resolve_generative_model,
    shared_prefix_length,
)
from scoring.api.protocol import GenerativeScoringRequest
from scoring.api.ranking import cascade_order
from scoring.api.requests import rerank_results

MODELS = [
    {"name": "colbert", "kind": "late_interaction"},
    {"name": "llm", "kind": "generative", "model": "/nowhere", "template": "qwen3-reranker"},
    {"name": "both", "kind": "cascade", "first": "colbert", "then": "llm", "candidates": 2},
]


def test_first_label_probability():
    logprobs = np.log([[0.2, 0.6, 0.1], [0.01, 0.01, 0.5]])
    assert first_label_probability(logprobs, apply_softmax=False) == pytest.approx([0.2, 0.01])
    assert first_label_probability(logprobs, apply_softmax=True) == pytest.approx([0.2 / 0.9, 0.01 / 0.52])
    tiny = np.array([[-900.0, -901.0]])  # renormalised without underflow
    assert first_label_probability(tiny, True)[0] == pytest.approx(1 / (1 + math.exp(-1)))


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2]]) == 0
    assert shared_prefix_length([[1, 2], [1, 2]]) == 2
    assert shared_prefix_length([[3], [1, 2]]) == 0


def test_cascade_order():
    first = np.array([0.5, 3.0, 1.0, 2.0, 0.1])
    candidates = [1, 3, 2]  # first stage's best three
    order, scores = cascade_order(first, candidates, [0.2, 0.9, 0.5])
    assert order == [3, 2, 1, 0, 4]
    assert scores.tolist() == [0.5, 0.2, 0.5, 0.9, 0.1]
    results = rerank_results(scores, ["a", "b", "c", "d", "e"], top_n=2, return_documents=False, order=order)
    assert [(r.index, r.relevance_score) for r in results] == [(3, 0.9), (2, 0.5)]


def test_cascade_config_cross_references():
    config = parse_app_config({"models": MODELS})
    assert [m.kind for m in config.models] == ["late_interaction", "generative", "cascade"]
    assert config.generative_models[0].label_tokens == ["yes", "no"]
    swapped = MODELS[:2] + [{**MODELS[2], "first": "llm", "then": "colbert"}]
    first_kinds = "late_interaction, bi_encoder or cross_encoder"
    with pytest.raises(ConfigError, match=rf"models\.2\.first: 'llm' must name a {first_kinds} model"):
        parse_app_config({"models": swapped})
    missing = MODELS[:2] + [{**MODELS[2], "then": "gpt"}]
    with pytest.raises(ConfigError, match=r"models\.2\.then: 'gpt' must name a cross_encoder or generative model"):
        parse_app_config({"models": missing})
    with pytest.raises(ConfigError, match="template"):
        parse_app_config({"models": [{**MODELS[1], "template": "llama"}]})
    with pytest.raises(ConfigError, match="candidates"):
        parse_app_config({"models": MODELS[:2] + [{**MODELS[2], "candidates": 0}]})


def test_generative_requests_are_checked():
    config = parse_app_config({"models": MODELS, "limits": {"max_documents": 3}})
    assert resolve_generative_model(config, None).name == "llm"
    for name, error in [("colbert", InvalidRequest), ("both", InvalidRequest), ("gpt", ModelNotFound)]:
        with pytest.raises(error, match=name):
            resolve_generative_model(config, name)
    with pytest.raises(InvalidRequest, match="no generative model"):
        resolve_generative_model(parse_app_config(None), None)

    def job(**fields):
        body = {"query": "q", "items": ["a"], "label_token_ids": [1, 2], **fields}
        return generative_job(GenerativeScoringRequest(**body), config, vocab_size=100)

    assert job(item_first=True).raw_prompt and job().label_token_ids == [1, 2]
    assert job(query=[5, 6], items=[[7], [8]]).items == [[7], [8]]
    with pytest.raises(ValidationFailed, match=r"label_token_ids \[100, -1\] are outside"):
        job(label_token_ids=[3, 100, -1])
    with pytest.raises(ValidationFailed, match="items must not be empty"):
        job(items=[])
    with pytest.raises(PayloadTooLarge, match="4 documents"):
        job(items=["a"] * 4)
    with pytest.raises(ValidationFailed, match="query"):
        job(query="  ")


def test_generative_example_config_is_valid():
    from pathlib import Path

    import yaml

    from deployments.app import encoder_deployment_name, generative_deployment_name

    root = Path(__file__).resolve().parents[3]
    app = yaml.safe_load((root / "serve_config.generative.yaml").read_text())["applications"][0]
    config = parse_app_config(app["args"])
    assert [m.kind for m in config.models] == ["late_interaction", "generative", "cascade"]
    expected = {"Ingress", "Scorer"}
    expected |= {encoder_deployment_name(m.name) for m in config.late_interaction_models}
    expected |= {generative_deployment_name(m.name) for m in config.generative_models}
    assert {d["name"] for d in app["deployments"]} == expected
