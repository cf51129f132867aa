"""Generative scoring without an engine: what the ingress sends the generative replica, what comes back,
the label-probability arithmetic, and the shared prompt prefix that is worth computing once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scoring.api.protocol import GenerativeScoringRequest, GenerativeScoringResponse, GenerativeUsage, ScoreData
from scoring.api.requests import check_documents, check_query, resolve_model
from scoring.config.schema import AppConfig, GenerativeModelConfig
from scoring.errors import InvalidRequest, ValidationFailed
from scoring.generative.templates import Text, TokenIds

@dataclass(frozen=True)
class GenerativeJob:
    """Score `items` against `query`: the probability of the first label token as the next token.

    `raw_prompt`: query and item ids concatenated as vLLM's /generative_scoring does, whatever the model's
    template; otherwise the model's template builds the prompt (rerank and score).
    """

    query: Text
    items: list[Text]
    label_token_ids: list[int] | None = None  # None: the model's configured labels
    apply_softmax: bool = True
    item_first: bool = False
    add_special_tokens: bool = True
    max_query_tokens: int | None = None
    max_item_tokens: int | None = None
    raw_prompt: bool = False
    instruction: str | None = None  # the template's instruction line for this job; None: the model's


@dataclass(frozen=True)
class GenerativeOutcome:
    scores: np.ndarray  # [B] float64, one per item in input order
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GenerativeModelInfo:
    vocab_size: int
    max_model_len: int
    label_token_ids: list[int]
    kv_block_size: int  # the engine's KV-cache block: the granularity of prefix reuse
    raw_logits: bool = False  # the engine returns the labels' logits, not log-probabilities (a logit template)


def first_label_probability(label_logprobs: np.ndarray, apply_softmax: bool) -> np.ndarray:
    """`label_logprobs` [B, L]: full-vocabulary log-probabilities of the label tokens.

    With `apply_softmax` the probability is renormalised over the labels only (Qwen3-Reranker's
    P(yes) / (P(yes) + P(no))); without, it is the model's probability over the whole vocabulary.
    """
    logprobs = np.asarray(label_logprobs, dtype=np.float64)
    if not apply_softmax:
        return np.exp(logprobs[:, 0])
    shifted = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    return shifted[:, 0] / shifted.sum(axis=1)


def template_scores(template: str, label_values: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Relevance as the template's model library computes it from the label tokens' values ([B, L]: raw logits for
    the logit templates, log-probabilities for the others): bge-reranker-v2-gemma the first label's logit,
    mxbai-rerank-v2 the first's less the second's (each through a sigmoid with `normalize`); otherwise the first
    label's probability renormalised over the labels."""
    values = np.asarray(label_values, dtype=np.float64)
    if template == "bge-reranker-v2-gemma":
        scores = values[:, 0]
    elif template == "mxbai-rerank-v2":
        scores = values[:, 0] - values[:, 1]
    else:
        return first_label_probability(values, apply_softmax=True)
    return 1.0 / (1.0 + np.exp(-scores)) if normalize else scores


def shared_prefix_length(prompts: Sequence[TokenIds]) -> int:
    """Length of the token prefix every prompt starts with (0 for fewer than two prompts)."""
    if len(prompts) < 2:
        return 0
    # commonprefix compares only the smallest and largest sequence, which bound all the others.
    return len(os.path.commonprefix([list(p) for p in prompts]))


def check_label_token_ids(label_token_ids: Sequence[int], vocab_size: int) -> str | None:
    """Why these label ids cannot be read from a model with `vocab_size` tokens, or None when they can."""
    outside = [t for t in label_token_ids if not 0 <= t < vocab_size]
    if outside:
        return f"label_token_ids {outside} are outside the vocabulary [0, {vocab_size})"
    return None


def resolve_generative_model(config: AppConfig, name: str | None) -> GenerativeModelConfig:
    """The generative model `name` names, or the first one; a model of another kind is a 400."""
    if name is None:
        generative = config.generative_models
        if not generative:
            raise InvalidRequest("no generative model is served here; /generative_scoring needs one")
        return generative[0]
    model = resolve_model(config, name)
    if model.kind != "generative":
        raise InvalidRequest(f"model {name!r} is a {model.kind} model; /generative_scoring needs a generative model")
    return model


def generative_job(
    request: GenerativeScoringRequest, config: AppConfig, vocab_size: int, raw_logits: bool = False
) -> GenerativeJob:
    """Check a /generative_scoring request against the limits and the model's vocabulary; the work it asks for."""
    if not request.items:
        raise ValidationFailed("items must not be empty")
    if isinstance(request.query, str):
        check_query(request.query, config)
    elif not request.query:
        raise ValidationFailed("query must not be empty")
    # Token-id items count against the document limit; only text has characters.
    check_documents([item if isinstance(item, str) else "" for item in request.items], config)
    problem = check_label_token_ids(request.label_token_ids, vocab_size)
    if problem:
        raise ValidationFailed(problem)
    if raw_logits and not request.apply_softmax:
        raise InvalidRequest(
            "this model's engine returns label logits (its template scores a logit), not full-vocabulary "
            "probabilities: apply_softmax=false is not available; use apply_softmax=true"
        )
    return GenerativeJob(
        query=request.query,
        items=list(request.items),
        label_token_ids=list(request.label_token_ids),
        apply_softmax=request.apply_softmax,
        item_first=request.item_first,
        add_special_tokens=request.add_special_tokens,
        raw_prompt=True,
    )


def generative_scoring_response(model: str, outcome: GenerativeOutcome) -> GenerativeScoringResponse:
    return GenerativeScoringResponse(
        model=model,
        data=[ScoreData(index=i, score=float(s)) for i, s in enumerate(outcome.scores)],
        usage=GenerativeUsage(
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
        ),
    )
