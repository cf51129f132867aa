"""How the ingress scores a request's (query, documents) groups, one backend per kind of model.

Every route (rerank, score) turns a request into groups and hands them to the model's backend; the backend knows
which deployment to call and how, and returns one `ScoreOutcome` per group. A new kind of model is a module in
`scoring/`, a deployment, and a backend here.
- `EmbeddingBackend` (late_interaction, bi_encoder): the scorer replica that is the home of the query, which
  finds or makes the embeddings and scores them (MaxSim; for one vector per text, the cosine).
- `CrossEncoderBackend` (cross_encoder, listwise), `GenerativeBackend`: a replica that scores a query's documents
  itself, one call a group.
- `CascadeBackend`: a first backend over every document, a second one over the first's best `candidates`.
- `ChunkedBackend`: any of these over long documents' windows (scoring/chunking.py), built per request that chunks;
  a cascade chunks in its first stage and its second stage scores each candidate's winning window.
A request's `instruction` reaches a backend only for a model that takes one (scoring/api/instructions.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Awaitable, Callable, Protocol, TypeVar

from ray.serve.handle import DeploymentHandle

from deployments.image_transfer import detach
from scoring.api.instructions import takes_instruction
from scoring.api.ranking import cascade_order, rank
from scoring.api.requests import QueryGroup
from scoring.chunking import WindowedGroup
from scoring.config.schema import AppConfig, CascadeModelConfig, ModelConfig
from scoring.generative.labels import GenerativeJob
from scoring.messages import DocumentSpec, Item, QuerySpec, ScoreOutcome

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
        self,
        groups: list[QueryGroup],
        max_tokens_per_query: int | None,
        max_tokens_per_doc: int | None,
        instruction: str | None = None,
    ) -> list[ScoreOutcome]:
        """One outcome per group, in order."""


def instructed(instruction: str | None) -> dict:
    """The keyword a backend call takes for a request's instruction, only when there is one."""
    return {} if instruction is None else {"instruction": instruction}


@dataclass(frozen=True)
class EmbeddingBackend:
    model: str
    scorer: DeploymentHandle
    guard: Guard

    async def score(self, groups, max_tokens_per_query, max_tokens_per_doc, instruction=None):
        # One scorer call per request, routed to the home replica of its (first) query. Not one call per
        # query: Serve's custom-router path matches routed calls by the parent request's id, so concurrent
        # calls from one request to the Scorer would wait on each other.
        # images travel by reference: the scorer reads the bytes of those it has no embedding of
        queries, documents = detach(
            [
                QuerySpec(model=self.model, text=g.query, max_tokens=max_tokens_per_query, instruction=instruction)
                for g in groups
            ],
            [DocumentSpec(texts=g.documents, max_tokens=max_tokens_per_doc) for g in groups],
        )
        return await self.guard(
            self.scorer.score.remote(queries, documents),
            self.model,
            documents=sum(len(g.documents) for g in groups),
        )


class _GroupByGroup:
    """A backend that scores each group with one call of its own (at most 16 a request at a time)."""

    async def score(self, groups, max_tokens_per_query, max_tokens_per_doc, instruction=None):
        return await bounded(
            [
                partial(self._score, g, max_tokens_per_query, max_tokens_per_doc, **instructed(instruction))
                for g in groups
            ]
        )


@dataclass(frozen=True)
class CrossEncoderBackend(_GroupByGroup):
    model: str
    handle: DeploymentHandle
    guard: Guard

    async def _score(
        self, group: QueryGroup, max_tokens_per_query, max_tokens_per_doc, instruction: str | None = None
    ) -> ScoreOutcome:
        return await self.guard(
            self.handle.score.remote(
                group.query, group.documents, max_tokens_per_query, max_tokens_per_doc, **instructed(instruction)
            ),
            self.model,
            documents=len(group.documents),
        )


@dataclass(frozen=True)
class GenerativeBackend(_GroupByGroup):
    model: str
    handle: DeploymentHandle
    guard: Guard

    async def _score(
        self, group: QueryGroup, max_tokens_per_query, max_tokens_per_doc, instruction: str | None = None
    ) -> ScoreOutcome:
        """Relevance from a generative model: the configured first label's probability, renormalised."""
        job = GenerativeJob(
            query=group.query,
            items=list(group.documents),
            max_query_tokens=max_tokens_per_query,
            max_item_tokens=max_tokens_per_doc,
            instruction=instruction,
        )
        outcome = await self.guard(self.handle.score.remote(job), self.model, documents=len(job.items))
        return ScoreOutcome(
            scores=outcome.scores, query_tokens=0, document_tokens=outcome.prompt_tokens, query_cache_hit=False
        )


def window_of(document: Item, window: tuple[int, int] | None) -> Item:
    """A document's winning window (its text between the window's character offsets); a document not cut, or an
    image, whole."""
    return document if window is None else document[window[0] : window[1]]


@dataclass(frozen=True)
class CascadeBackend(_GroupByGroup):
    first: Backend
    then: Backend
    candidates: int
    # whether each stage takes a request's instruction (the ingress checked that one of them does)
    first_instructed: bool = False
    then_instructed: bool = False

    async def _score(
        self, group: QueryGroup, max_tokens_per_query, max_tokens_per_doc, instruction: str | None = None
    ) -> ScoreOutcome:
        """The first stage over every document, the second on its best `candidates`, the two orders merged. When
        the first stage chunked long documents, the second scores each candidate's winning window."""
        first_instruction = instruction if self.first_instructed else None
        (first,) = await self.first.score(
            [group], max_tokens_per_query, max_tokens_per_doc, **instructed(first_instruction)
        )
        candidates = rank(first.scores, self.candidates)
        windows = first.chunks or [None] * len(group.documents)
        shortlist = QueryGroup(
            query=group.query,
            documents=[window_of(group.documents[i], windows[i]) for i in candidates],
            positions=candidates,
        )
        then_instruction = instruction if self.then_instructed else None
        (second,) = await self.then.score(
            [shortlist], max_tokens_per_query, max_tokens_per_doc, **instructed(then_instruction)
        )
        order, scores = cascade_order(first.scores, candidates, second.scores)
        return ScoreOutcome(
            scores=scores,
            query_tokens=first.query_tokens + second.query_tokens,
            document_tokens=first.document_tokens + second.document_tokens,
            query_cache_hit=first.query_cache_hit,
            document_cache_hits=first.document_cache_hits,
            order=order,
            chunks=first.chunks,
        )


@dataclass(frozen=True)
class ChunkedBackend:
    """A backend over long documents' windows: `split` turns each group's documents into their windows, `inner`
    scores the windows as documents (its caches and batching unchanged), each document keeps its best window."""

    inner: Backend
    split: Callable[[QueryGroup], Awaitable[WindowedGroup]]

    async def score(self, groups, max_tokens_per_query, max_tokens_per_doc, instruction=None):
        windowed = [await self.split(group) for group in groups]
        outcomes = await self.inner.score(
            [w.group for w in windowed], max_tokens_per_query, max_tokens_per_doc, **instructed(instruction)
        )
        return [w.best(outcome) for w, outcome in zip(windowed, outcomes)]


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
        first, then = config.model_by_name(model.first), config.model_by_name(model.then)
        return CascadeBackend(
            backends[model.first],
            backends[model.then],
            model.candidates,
            first_instructed=takes_instruction(first),
            then_instructed=takes_instruction(then),
        )

    for model in sorted(config.models, key=lambda m: m.kind == "cascade"):
        backends[model.name] = backend(model)
    return backends
