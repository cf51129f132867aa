"""Ingress deployment: HTTP routes (FastAPI) and the same operations as handle methods.

The ingress validates requests, routes them by model name and assembles responses; it handles text
and scores only. The scorer (chosen by query key) finds embeddings in its caches or gets them from the
encoders, so embeddings never pass through this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, TypeVar

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.backends import Backend, CascadeBackend, ChunkedBackend, build_backends, instructed
from deployments.guard import GuardSettings, RequestGuard
from deployments.metrics import request_recorder
from deployments.readiness import ReadinessTracker, health_of
from scoring.readiness import timeout_message

from scoring.api.auth import ApiKeys
from scoring.config.schema import AppConfig, ModelConfig
from scoring.errors import (
    Overloaded,
    ServiceError,
    Unavailable,
    UpstreamTimeout,
    ValidationFailed,
    describe_validation_errors,
    error_body,
)
from scoring.api.media import MediaLoader
from scoring.messages import ScoreOutcome
from scoring.api.protocol import (
    ChunkSpan,
    DocumentOptions,
    Health,
    LateInteractionEncoding,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
    RerankV2Meta,
    RerankV2Request,
    RerankV2Response,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    Tokens,
    Usage,
)
from scoring.api.requests import (
    QueryGroup,
    place_chunks,
    place_scores,
    rerank_group,
    rerank_results,
    resolve_model,
    score_groups,
)
from scoring.api.instructions import check_instruction, takes_instruction
from scoring.chunking import Chunker, WindowedGroup
from scoring.errors import InvalidRequest
from scoring.listwise.prompt import listwise_score_groups
from scoring.generative.labels import (
    GenerativeModelInfo,
    generative_job,
    generative_scoring_response,
    resolve_generative_model,
)
from scoring.api.protocol import GenerativeScoringRequest, GenerativeScoringResponse

logger = logging.getLogger("ray.serve")

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


class _JSONBodyRequest(Request):
    """A request whose JSON body msgspec decodes: 2.9 ms to 1.1 ms for a 3.3 MB body of 16 page images, the largest
    cost of a cached image request in this process. What msgspec refuses (invalid JSON, NaN, 1e400, lone surrogates)
    goes to `json.loads`, which decides as before and names the error."""

    async def json(self) -> Any:
        if not hasattr(self, "_decoded"):
            body = await self.body()
            try:
                self._decoded = msgspec.json.decode(body)
            except msgspec.DecodeError:
                self._decoded = json.loads(body)
        return self._decoded


class _JSONBodyRoute(APIRoute):
    """FastAPI's custom route class (its docs: "Custom Request and APIRoute class"): routes get a `_JSONBodyRequest`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JSONBodyRequest(request.scope, request.receive))

        return route


api = FastAPI(
    title="Reranking service",
    description="Late-interaction (ColBERT / MaxSim) reranking on Ray Serve and vLLM.",
    version="0.1.0",
)
api.router.route_class = _JSONBodyRoute

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": description, "content": {"application/json": {"example": error_body(description, kind, code)}}}
    for code, kind, description in [
        (400, "invalid_request_error", "The request asks for something that cannot be done."),
        (401, "authentication_error", "Missing or invalid API key (when keys are configured)."),
        (404, "model_not_found", "The model is not served here."),
        (413, "payload_too_large", "Too many documents or characters, or too large a body."),
        (422, "validation_error", "A field is missing, of the wrong type, or out of range."),
        (
            503,
            "overloaded",
            "At capacity, a replica is being replaced, or the model's deployments cannot serve yet (starting, cannot "
            "be placed, failing to start: the message names them); retry after `Retry-After` seconds.",
        ),
        (504, "timeout", "No answer within the request timeout; the message names what it waited for."),
    ]
}


api.add_middleware(RequestGuard)


@api.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _service_error(request, ValidationFailed(describe_validation_errors(exc.errors())))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method, unparsable body) in the same JSON shape."""
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
    return JSONResponse(
        error_body(str(exc.detail), kind, exc.status_code), status_code=exc.status_code, headers=exc.headers
    )


@api.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s", request.url.path)
    return JSONResponse(error_body("internal error", "internal_error", 500), status_code=500)


def _parse(model: type[R], request: R | dict) -> R:
    """Handle calls accept the pydantic request or a plain dict."""
    if isinstance(request, model):
        return request
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_errors(exc.errors())) from None


def _root(model: ModelConfig) -> str:
    """What a model serves: its weights, or a cascade's two stages."""
    return f"{model.first} -> {model.then}" if model.kind == "cascade" else model.model


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        config: AppConfig,
        scorer: DeploymentHandle,
        rankers: dict[str, DeploymentHandle] | None = None,
        encoders: dict[str, DeploymentHandle] | None = None,
        model_deployments: dict[str, tuple[str, ...]] | None = None,
        windowed: dict[str, DeploymentHandle] | None = None,
    ):
        """`rankers`: the deployment of each generative and cross-encoder model, by model name; `encoders`: the
        late-interaction encoders (asked for their encoding); `model_deployments`: the deployments each model needs
        (app.py knows what it binds), for readiness; `windowed`: the deployment of every model served by an engine,
        asked once for its window budget when a request first chunks long documents for it."""
        self._windowed = windowed or {}
        self._chunkers: dict[str, Chunker] = {}
        self._readiness = ReadinessTracker(model_deployments or {})
        self._rankers = rankers or {}
        self._encoders = encoders or {}
        self._encodings: dict[str, LateInteractionEncoding] = {}
        self._generative_info: dict[str, GenerativeModelInfo] = {}
        self._config = config
        api.state.guard = GuardSettings(
            api_keys=ApiKeys(config.auth.keys()),
            max_body_bytes=config.limits.max_body_bytes,
            max_concurrent_requests=config.limits.max_concurrent_requests,
            on_response=request_recorder(frozenset(route.path for route in api.routes)),
        )
        self._scorer = scorer
        self._media = MediaLoader.for_app(config)
        self._backends = build_backends(config, scorer, self._rankers, self._backend)
        self._created = int(time.time())

    # Handle API: pydantic request or dict in, pydantic response out.

    async def rerank(self, request: RerankRequest | dict) -> RerankResponse:
        """Rerank documents for a query (Jina / vLLM shape)."""
        request = _parse(RerankRequest, request)
        model = resolve_model(self._config, request.model)
        group = rerank_group(request.query, request.documents, self._config, request.rank_fields)
        (group,) = await self._media.resolve(model.name, [group])
        (outcome,) = await self._score(
            model, [group], request.max_tokens_per_query, request.max_tokens_per_doc, request
        )
        tokens = outcome.query_tokens + outcome.document_tokens
        return RerankResponse(
            model=model.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            results=rerank_results(
                outcome.scores, request.documents, request.top_n, request.return_documents, outcome.order,
                outcome.chunks, request.rank_fields is not None,
            ),
        )

    async def rerank_v2(self, request: RerankV2Request | dict) -> RerankV2Response:
        """Rerank documents for a query (Cohere v2 shape)."""
        request = _parse(RerankV2Request, request)
        model = resolve_model(self._config, request.model)
        group = rerank_group(request.query, request.documents, self._config, request.rank_fields)
        (outcome,) = await self._score(model, [group], None, request.max_tokens_per_doc, request)
        return RerankV2Response(
            results=rerank_results(
                outcome.scores, request.documents, request.top_n, request.return_documents, outcome.order,
                outcome.chunks, request.rank_fields is not None,
            ),
            meta=RerankV2Meta(tokens=Tokens(input_tokens=outcome.query_tokens + outcome.document_tokens)),
        )

    async def score(self, request: ScoreRequest | dict) -> ScoreResponse:
        """Score query-document pairs (vLLM shape: 1:1, 1:N or N:N)."""
        request = _parse(ScoreRequest, request)
        model = resolve_model(self._config, request.model)
        if model.kind == "cascade":
            raise InvalidRequest(f"model {model.name!r} is a cascade, which ranks; use /v1/rerank or /v2/rerank")
        pairing = listwise_score_groups if model.kind == "listwise" else score_groups
        groups, count = pairing(request, self._config)
        groups = await self._media.resolve(model.name, groups)
        outcomes = await self._score(
            model, groups, request.max_tokens_per_query, request.max_tokens_per_doc, request
        )
        scores = place_scores(groups, [o.scores for o in outcomes], count)
        chunks = place_chunks(groups, [o.chunks for o in outcomes], count)
        tokens = sum(o.query_tokens + o.document_tokens for o in outcomes)
        return ScoreResponse(
            model=model.name,
            data=[
                ScoreData(index=i, score=float(s), chunk=None if c is None else ChunkSpan(start=c[0], end=c[1]))
                for i, (s, c) in enumerate(zip(scores, chunks))
            ],
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def generative_scoring(self, request: GenerativeScoringRequest | dict) -> GenerativeScoringResponse:
        """Probability of `label_token_ids[0]` after query + item, per item (vLLM's /generative_scoring)."""
        request = _parse(GenerativeScoringRequest, request)
        model = resolve_generative_model(self._config, request.model)
        await self._readiness.require(model.name)
        info = await self._model_info(model.name)
        job = generative_job(request, self._config, info.vocab_size, info.raw_logits)
        outcome = await self._backend(
            self._rankers[model.name].score.remote(job), model.name, documents=len(request.items)
        )
        return generative_scoring_response(model.name, outcome)

    async def models(self) -> ModelList:
        """The models served, first one the default, each with whether it can serve now; late-interaction ones with
        the encoding in force (asked of the encoder once it is ready, so this never waits on a starting replica)."""
        states = (await self._readiness.current()).models
        cards = []
        for m in self._config.models:
            state = states.get(m.name)
            cards.append(
                ModelCard(
                    id=m.name,
                    created=self._created,
                    kind=m.kind,
                    root=_root(m),
                    encoding=await self._encoding(m.name) if state is None or state.state == "ready" else None,
                    **({"document_cache": False} if m.kind == "listwise" else {}),
                    **({"state": state.state, "message": state.reason} if state is not None else {}),
                )
            )
        return ModelList(data=cards)

    async def health(self) -> Health:
        """Whether every deployment can serve (status `ok`), else what is still starting or cannot start, per
        model and per deployment (`GET /health`: 200 when `ok`, else 503)."""
        return health_of(await self._readiness.current())

    async def scorer_stats(self) -> dict:
        """Query-cache counters of the scorer replica that answers."""
        return await self._scorer.stats.remote()

    # HTTP routes: thin wrappers over the handle API.

    @api.post("/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True)
    async def _http_rerank_v1(self, body: RerankRequest) -> RerankResponse:
        return await self.rerank(body)

    @api.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True)
    async def _http_rerank(self, body: RerankRequest) -> RerankResponse:
        return await self.rerank(body)

    @api.post("/v2/rerank", response_model=RerankV2Response, responses=ERROR_RESPONSES, response_model_exclude_none=True)
    async def _http_rerank_v2(self, body: RerankV2Request) -> RerankV2Response:
        return await self.rerank_v2(body)

    @api.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True)
    async def _http_score_v1(self, body: ScoreRequest) -> ScoreResponse:
        return await self.score(body)

    @api.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True)
    async def _http_score(self, body: ScoreRequest) -> ScoreResponse:
        return await self.score(body)

    @api.post("/generative_scoring", response_model=GenerativeScoringResponse, responses=ERROR_RESPONSES)
    async def _http_generative_scoring(self, body: GenerativeScoringRequest) -> GenerativeScoringResponse:
        return await self.generative_scoring(body)

    @api.get("/v1/models", response_model=ModelList)
    async def _http_models(self) -> ModelList:
        return await self.models()

    @api.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Not ready yet."}})
    async def _http_health(self) -> JSONResponse:
        health = await self.health()
        return JSONResponse(health.model_dump(mode="json"), status_code=200 if health.status == "ok" else 503)

    async def _score(
        self,
        model: ModelConfig,
        groups: list[QueryGroup],
        max_tokens_per_query: int | None,
        max_tokens_per_doc: int | None,
        options: DocumentOptions | None = None,
    ) -> list[ScoreOutcome]:
        """`options`: the request's long-document handling and instruction (none: the model's)."""
        instruction = options.instruction if options is not None else None
        check_instruction(self._config, model, instruction)
        await self._readiness.require(model.name)
        backend = self._backends[model.name]
        if options is not None and (options.long_documents or model.long_documents) == "chunk":
            backend = await self._chunked(model, backend, options, max_tokens_per_query, max_tokens_per_doc)
        return await backend.score(groups, max_tokens_per_query, max_tokens_per_doc, **instructed(instruction))

    async def _chunked(
        self,
        model: ModelConfig,
        backend: Backend,
        options: DocumentOptions,
        max_tokens_per_query: int | None,
        max_tokens_per_doc: int | None,
    ) -> Backend:
        """`backend` over the windows of long documents: those of the model, or a cascade's first stage (whose
        second stage then scores each candidate's winning window)."""
        stage = self._config.model_by_name(model.first) if model.kind == "cascade" else model
        chunker = await self._chunker(stage.name)
        instruction = options.instruction if takes_instruction(stage) else None
        max_chunks = options.max_chunks_per_doc or model.max_chunks_per_doc

        def split(group: QueryGroup) -> WindowedGroup:
            size = chunker.window_size(group.query, max_tokens_per_query, max_tokens_per_doc, instruction)
            return chunker.split(group, size, model.chunk_overlap, max_chunks)

        async def split_off_the_loop(group: QueryGroup) -> WindowedGroup:
            # tokenizing long documents takes milliseconds: not on the event loop every request shares
            return await asyncio.to_thread(split, group)

        if isinstance(backend, CascadeBackend):
            return replace(backend, first=ChunkedBackend(backend.first, split_off_the_loop))
        return ChunkedBackend(backend, split_off_the_loop)

    async def _chunker(self, model: str) -> Chunker:
        """The model's tokenizer and window budget (asked of its deployment once, fixed for the app's life)."""
        chunker = self._chunkers.get(model)
        if chunker is None:
            budget = await self._backend(self._windowed[model].window_budget.remote(), model)
            from transformers import AutoTokenizer

            tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, budget.tokenizer)
            chunker = self._chunkers[model] = Chunker(tokenizer, budget)
        return chunker

    async def _encoding(self, model: str) -> LateInteractionEncoding | None:
        """What the model's encoder replicas read from the checkpoint (fixed for the app's life), asked once."""
        if model not in self._encoders:
            return None
        encoding = self._encodings.get(model)
        if encoding is None:
            settings = await self._backend(self._encoders[model].encoding.remote())
            encoding = self._encodings[model] = LateInteractionEncoding.model_validate(settings)
        return encoding

    async def _model_info(self, model: str) -> GenerativeModelInfo:
        info = self._generative_info.get(model)
        if info is None:
            info = self._generative_info[model] = await self._backend(self._rankers[model].info.remote(), model)
        return info

    async def _backend(self, work: Awaitable[T], model: str | None = None, documents: int = 0) -> T:
        """Await calls to other deployments under the request timeout, mapping their failures to typed errors that
        name the deployments of `model` the call waited on (`documents`: how many the call carries)."""
        try:
            return await asyncio.wait_for(work, timeout=self._config.limits.request_timeout_s)
        except ServiceError:
            raise
        except asyncio.TimeoutError:
            raise UpstreamTimeout(self._timeout_message(model, documents)) from None
        except BackPressureError as exc:
            logger.warning("backpressure: %s", exc.message)
            raise Overloaded(f"at capacity: a queue of {self._waited_on(model)} is full; retry shortly") from None
        except (RayActorError, DeploymentUnavailableError) as exc:
            logger.warning("backend replica failed: %s", type(exc).__name__)
            raise Unavailable(
                f"a replica of {self._waited_on(model)} failed and is being replaced; retry shortly"
            ) from None

    def _waited_on(self, model: str | None) -> str:
        deployments = self._readiness.deployments_of(model) if model else ()
        return ", ".join(deployments) or "a backend deployment"

    def _timeout_message(self, model: str | None, documents: int) -> str:
        reason = self._readiness.last_reason(model) if model else None
        return timeout_message(self._config.limits.request_timeout_s, self._waited_on(model), reason, documents)
