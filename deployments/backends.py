"""How the ingress scores a request's (query, documents) groups, one backend per kind of model.

Every route (rerank, score) turns a request into groups and hands them to the model's backend; the backend knows
which deployment to call and how, and returns one `ScoreOutcome` per group. A new kind of model is a module in
`scoring/`, a deployment, and a backend here.
- `EmbeddingBackend` (late_interaction, bi_encoder): the scorer replica that is the home of the query, which
  finds or makes the embeddings and scores them (MaxSim; for one vector per text, the cosine).
- `CrossEncoderBackend` (cross_encoder, listwise), `GenerativeBackend`: a replica that scores a query's documents
  itself, one call a group.
- `CascadeBackend`: a first backend over every document, a second one over the first's best `candidates`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Awaitable, Callable, Protocol, TypeVar

from ray.serve.handle import DeploymentHandle

from scoring.config import AppConfig, CascadeModelConfig, ModelConfig
from scoring.generative import GenerativeJob
from scoring.messages import DocumentSpec, QuerySpec, ScoreOutcome
from scoring.ranking import cascade_order, rank
from scoring.requests import QueryGroup

T = TypeVar("T")
# the ingress's timeout and error mapping around a backend call: guard(call, model, documents=n) names the model's
# deployments (and the documents the call carries) in its errors
Guard = Callable[..., Awaitable[T]]

MAX_CALLS_PER_REQUEST = 16


async def bounded(calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """One request's backend calls, at most 16 at a time: an N:N /score request must not fill a queue alone."""
    gate = asyncio.Semaphore(MAX_CALLS_PER_REQUEST)

    async def run(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(run(call) for call in calls)))


class Backend(Protocol):
    async def score(
        self, groups: list[QueryGroup], max_tokens_per_query: int | None, max_tokens_per_doc: int | None
    ) -> list[ScoreOutcome]:
        """One outcome per group, in order."""


@dataclass(frozen=True)
class EmbeddingBackend:
    model: str
    scorer: DeploymentHandle
    guard: Guard

    async def score(self, groups, max_tokens_per_query, max_tokens_per_doc):
        # One scorer call per request, routed to the home replica of its (first) query. Not one call per
        # query: Serve's custom-router path matches routed calls by the parent request's id, so concurrent
        # calls from one request to the Scorer would wait on each other.
        return await self.guard(
            self.scorer.score.remote(
                [QuerySpec(model=self.model, text=g.query, max_tokens=max_tokens_per_query) for g in groups],
                [DocumentSpec(texts=g.documents, max_tokens=max_tokens_per_doc) for g in groups],
            ),
            self.model,
            documents=sum(len(g.documents) for g in groups),
        )


class _GroupByGroup:
    """A backend that scores each group with one call of its own (at most 16 a request at a time)."""

    async def score(self, groups, max_tokens_per_query, max_tokens_per_doc):
        return await bounded([partial(self._score, g, max_tokens_per_query, max_tokens_per_doc) for g in groups])


@dataclass(frozen=True)
class CrossEncoderBackend(_GroupByGroup):
    model: str
    handle: DeploymentHandle
    guard: Guard

    async def _score(self, group: QueryGroup, max_tokens_per_query, max_tokens_per_doc) -> ScoreOutcome:
        return await self.guard(
            self.handle.score.remote(group.query, group.documents, max_tokens_per_query, max_tokens_per_doc),
            self.model,
            documents=len(group.documents),
        )


@dataclass(frozen=True)
class GenerativeBackend(_GroupByGroup):
    model: str
    handle: DeploymentHandle
    guard: Guard

    async def _score(self, group: QueryGroup, max_tokens_per_query, max_tokens_per_doc) -> ScoreOutcome:
        """Relevance from a generative model: the configured first label's probability, renormalised."""
        job = GenerativeJob(
            query=group.query,
            items=list(group.documents),
            max_query_tokens=max_tokens_per_query,
            max_item_tokens=max_tokens_per_doc,
        )
        outcome = await self.guard(self.handle.score.remote(job), self.model, documents=len(job.items))
        return ScoreOutcome(
            scores=outcome.scores, query_tokens=0, document_tokens=outcome.prompt_tokens, query_cache_hit=False
        )


@dataclass(frozen=True)
class CascadeBackend(_GroupByGroup):
    first: Backend
    then: Backend
    candidates: int

    async def _score(self, group: QueryGroup, max_tokens_per_query, max_tokens_per_doc) -> ScoreOutcome:
        """The first stage over every document, the second on its best `candidates`, the two orders merged."""
        (first,) = await self.first.score([group], max_tokens_per_query, max_tokens_per_doc)
        candidates = rank(first.scores, self.candidates)
        shortlist = QueryGroup(
            query=group.query, documents=[group.documents[i] for i in candidates], positions=candidates
        )
        (second,) = await self.then.score([shortlist], max_tokens_per_query, max_tokens_per_doc)
        order, scores = cascade_order(first.scores, candidates, second.scores)
        return ScoreOutcome(
            scores=scores,
            query_tokens=first.query_tokens + second.query_tokens,
            document_tokens=first.document_tokens + second.document_tokens,
            query_cache_hit=first.query_cache_hit,
            document_cache_hits=first.document_cache_hits,
            order=order,
        )


def build_backends(
    config: AppConfig, scorer: DeploymentHandle, rankers: dict[str, DeploymentHandle], guard: Guard
) -> dict[str, Backend]:
    """The backend of every model of `config`, by name. `rankers`: the deployment of each generative,
    cross-encoder and listwise model."""
    backends: dict[str, Backend] = {}

    def backend(model: ModelConfig) -> Backend:
        if model.kind in ("late_interaction", "bi_encoder"):
            return EmbeddingBackend(model.name, scorer, guard)
        if model.kind in ("cross_encoder", "listwise"):
            # a listwise replica takes the same call: (query, documents, limits) -> one outcome for the list
            return CrossEncoderBackend(model.name, rankers[model.name], guard)
        if model.kind == "generative":
            return GenerativeBackend(model.name, rankers[model.name], guard)
        assert isinstance(model, CascadeModelConfig)
        # the config validated that both stages are models of other kinds, so they are built already
        return CascadeBackend(backends[model.first], backends[model.then], model.candidates)

    for model in sorted(config.models, key=lambda m: m.kind == "cascade"):
        backends[model.name] = backend(model)
    return backends
