"""Encoder deployment: a vLLM pooling engine producing per-token embeddings (`token_embed`).

Every call goes through vLLM's async engine, so concurrent calls to one replica are batched by vLLM.
The checkpoint's own encoding settings (PyLate, Stanford ColBERT, or none) with the config's overrides decide how
texts are tokenized here (markers, truncation, query expansion) and sent to vLLM as token ids; the skiplist's
token embeddings are dropped from documents before they leave. Queries of a checkpoint that does not attend to its
expansion tokens are encoded by `MaskedExpansionQueries` (vLLM's forward pass takes no attention mask).
A vision checkpoint (ColModernVBert: scoring/late_interaction/vision.py; ColPali: scoring/late_interaction/colpali.py) takes its processor's encoding
instead: image documents (`ImageInput`s) as its visual prompt with the image, queries with its augmentation, texts as
it tokenizes them.
Documents this replica encoded before come from its byte-bounded cache: the scorer replicas each cache the
documents of the queries routed to them, and this cache, shared by all of them, catches a document that another
scorer replica saw.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import asdict

import numpy as np
from ray import serve

from deployments.engine import EngineReplica, start_engine
from deployments.image_transfer import attach
from deployments.metrics import service_metrics
from deployments.plugins import add_plugin_path
from scoring.checkpoints import CheckpointError, checkpoint_config, local_checkpoint, sequence_limit
from scoring.chunking import WindowBudget
from scoring.config.schema import LateInteractionModelConfig, handoff_dtypes, resolve_model_path
from scoring.errors import InvalidRequest
from scoring.late_interaction import colqwen3
from scoring.late_interaction.colpali import ColPaliPrompts, colpali_engine_args
from scoring.late_interaction.expansion import MaskedExpansionQueries
from scoring.late_interaction.families import family_refusal, narrowed, remote_code_refusal
from scoring.late_interaction.formats import encoding_in_force, load_checkpoint
from scoring.late_interaction.tokens import LateInteractionTokenizer
from scoring.late_interaction.vision import ARCHITECTURE as VISION_ARCH
from scoring.late_interaction.vision import VisionProcessor, check_no_text_settings, vision_engine_layout, vision_family
from scoring.messages import ImageInput, Item
from scoring.store.document_cache import EncodedDocuments
from scoring.store.embeddings import PackedEmbeddings

logger = logging.getLogger("ray.serve")


def encoder_document_cache(model: str, capacity_bytes: int, dim: int, dtype: np.dtype) -> EncodedDocuments:
    """A replica's document cache, its lookups counted as `encoder_document` (the bi-encoder's too)."""
    return EncodedDocuments(
        model,
        capacity_bytes,
        dim,
        dtype,
        on_lookup=lambda hits, misses: service_metrics().cache_lookups("encoder_document", hits=hits, misses=misses),
    )


# A quarter CPU is what Ray reserves (a scheduling token), not what the engine uses: it runs on every core it may
# (`cpu_threads`), and the default app plus three more models fit on 2 cores. Reserve whole CPUs or a GPU per replica
# on a cluster with `ray_actor_options` (docs/deployment.md).
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10)
class Encoder(EngineReplica):
    async def __init__(self, model: LateInteractionModelConfig, document_cache_bytes: int = 0,
                       document_dtype: str = "float16"):
        """Start the engine (loading the weights), then encode one text: the replica is ready only once it can serve."""
        started = time.perf_counter()
        self._model = model
        # the query and document dtypes of the handoff: `document_dtype` is the scorer's storage, which the
        # documents' handoff dtype follows (`embedding_dtype: auto`)
        self._query_dtype, self._document_dtype = map(np.dtype, handoff_dtypes(model.embedding_dtype, document_dtype))
        self._vision: VisionProcessor | ColPaliPrompts | colqwen3.ColQwen3Prompts | None = None
        path = local_checkpoint(model.model)
        if family := vision_family(checkpoint_config(path)):
            await self._start_vision(path, family, document_cache_bytes, started)
            return
        checkpoint = load_checkpoint(model.model)
        refusal = family_refusal(model.name, checkpoint.family) or remote_code_refusal(
            model.name, checkpoint.path, checkpoint.config, model.trust_remote_code
        )
        if refusal:
            raise CheckpointError(refusal)
        encoding = encoding_in_force(model, checkpoint.encoding)
        masked_queries = encoding.query_expansion and not encoding.attend_to_expansion_tokens
        if masked_queries and checkpoint.family is not None and not checkpoint.family.transformers_forward:
            raise CheckpointError(
                f"model {model.name!r}: queries not attending to their expansion need a transformers forward pass "
                f"with an attention mask, and a {checkpoint.family.name} backbone has none offline; set "
                "`attend_to_expansion_tokens: true`"
            )
        family_args = {}
        if checkpoint.family is not None:  # vLLM's ColBERT class for this backbone, over the checkpoint's layout
            family_args["hf_overrides"] = {"architectures": [checkpoint.family.architecture]}
            if checkpoint.family.cpu_rotary_plugin:
                add_plugin_path()
        if model.trust_remote_code:
            family_args["trust_remote_code"] = True
        if checkpoint.encoding.format == "pylate":
            # vLLM would cap sequences at PyLate's sentence-transformers max_seq_length (the document length less
            # the marker); engine_max_model_len checks the length against the position embeddings instead
            os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        tokenizer_path = resolve_model_path(model.tokenizer) if model.tokenizer else str(checkpoint.path)
        self._engine = start_engine(
            model,
            weights=str(checkpoint.engine_path),
            tokenizer=tokenizer_path,
            max_model_len=checkpoint.engine_max_model_len(encoding, model.max_model_len),
            runner="pooling",
            pooler_config={"task": "token_embed"},
            **family_args,
        )
        from transformers import AutoTokenizer

        self._tokenizer_path = tokenizer_path
        model_config = self._engine.model_config
        self._dim = encoding.embedding_dim  # narrower than the checkpoint's with a Matryoshka `embedding_dim`
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=model.trust_remote_code)
        self._tokens = LateInteractionTokenizer(tokenizer, encoding, sequence_limit(model_config))
        self._masked_queries = (
            MaskedExpansionQueries(checkpoint.engine_path, checkpoint.projection, _torch_dtype(model.dtype))
            if masked_queries
            else None
        )
        self._documents = encoder_document_cache(model.name, document_cache_bytes, self._dim, self._document_dtype)
        warm_up = time.perf_counter()
        width = (await self._encode_one(self._tokens.document_ids(["warm-up"])[0])).shape[1]
        if width != checkpoint.encoding.embedding_dim:
            raise RuntimeError(f"model {model.name!r}: vLLM returns {width}-wide embeddings, the checkpoint says "
                               f"{checkpoint.encoding.embedding_dim}")
        await self.encode_queries(["warm-up"])
        logger.info(
            "Encoder %s ready in %.1fs (warm-up encode %.2fs, max_model_len=%d, encoding %s)",
            model.name,
            time.perf_counter() - started,
            time.perf_counter() - warm_up,
            model_config.max_model_len,
            encoding,
        )

    async def _start_vision(self, path, family: str, document_cache_bytes: int, started: float) -> None:
        """Start the engine on a vision checkpoint (converted to vLLM's layout if need be), with vLLM's processor
        taking the image's place from the prompt (deployments/colmodernvbert_vllm.py; ColQwen3: vLLM's Qwen3-VL
        processing through the plugin that runs it without torchvision, scoring/late_interaction/colqwen3.py)."""
        model = self._model
        check_no_text_settings(model)
        if family == "colqwen3":
            add_plugin_path()
            family_args, prompts = colqwen3.engine_args(path), colqwen3.ColQwen3Prompts
            self._dim = colqwen3.embedding_dim(path)
        elif family == "colpali":
            add_plugin_path()  # vLLM's processes load the ColPali model class (deployments/colpali_vllm.py)
            family_args, prompts = colpali_engine_args(path), ColPaliPrompts
            self._dim = int(checkpoint_config(path).get("embedding_dim", 128))
        else:
            add_plugin_path()  # vLLM's processes load the ColModernVBert model (deployments/colmodernvbert_vllm.py)
            family_args = {"weights": str(vision_engine_layout(path)), "hf_overrides": {"architectures": [VISION_ARCH]}}
            prompts = VisionProcessor
            self._dim = int(checkpoint_config(path).get("embedding_dim", 128))
        self._engine = start_engine(
            model,
            tokenizer=str(path),
            runner="pooling",
            pooler_config={"task": "token_embed"},
            **family_args,
        )
        max_model_len = self._engine.model_config.max_model_len
        self._vision = prompts(path, max_model_len, self._dim)
        self._documents = encoder_document_cache(model.name, document_cache_bytes, self._dim, self._document_dtype)
        warm_up = time.perf_counter()
        from PIL import Image

        blank = Image.new("RGB", (8, 8))
        width = (await self._encode_one(self._vision.image_document_ids(), blank)).shape[1]
        if width != self._dim:
            raise RuntimeError(f"model {model.name!r}: vLLM returns {width}-wide embeddings, the checkpoint says "
                               f"{self._dim}")
        await self.encode_queries(["warm-up"])
        logger.info("Encoder %s (vision) ready in %.1fs (warm-up encode %.2fs, max_model_len=%d, encoding %s)",
                    model.name, time.perf_counter() - started, time.perf_counter() - warm_up, max_model_len,
                    self._vision.encoding)

    async def encode_queries(self, texts: list[Item], max_tokens: int | None = None) -> PackedEmbeddings:
        """Token embeddings of each query (marker, truncation to `max_tokens`, expansion applied), packed."""
        if self._vision is not None:
            return PackedEmbeddings.pack(await self._vision_rows(texts, max_tokens, query=True), self._dim,
                                         self._query_dtype)
        _text_only(self._model.name, texts)
        queries = self._tokens.query_tokens(texts, max_tokens)
        if self._masked_queries is None:
            rows = await self._model_rows([query.ids for query in queries])
        else:
            with service_metrics().stage("encode", self._model.name):
                rows = narrowed(await asyncio.to_thread(self._masked_queries.encode, queries), self._dim)
        return PackedEmbeddings.pack(rows, self._dim, self._query_dtype)

    async def encode_documents(self, texts: list[Item], max_tokens: int | None = None) -> PackedEmbeddings:
        """Token embeddings of each document (marker, truncation to `max_tokens`, skiplist tokens dropped), packed;
        cached ones from the document cache, the rest from the model."""
        return await self._documents.encode(
            texts, max_tokens, lambda missing: self._encode_documents(missing, max_tokens)
        )

    def stats(self) -> dict:
        """Document cache counters of this replica."""
        return {"encoder_document_cache": asdict(self._documents.stats())}

    def window_budget(self) -> WindowBudget:
        """What the ingress needs to cut long documents into windows this model encodes whole."""
        if self._vision is not None:
            return self._vision.window_budget(str(local_checkpoint(self._model.model)))
        return self._tokens.window_budget(self._tokenizer_path)

    def encoding(self) -> dict:
        """The encoding settings in force (the checkpoint's, overridden by the config's keys), for /v1/models."""
        if self._vision is not None:
            return self._vision.encoding.as_dict(self._engine.model_config.max_model_len)
        return self._tokens.encoding.as_dict()

    async def _encode_documents(self, texts: list[Item], max_tokens: int | None) -> PackedEmbeddings:
        if self._vision is not None:
            rows = await self._vision_rows(texts, max_tokens, query=False)
            return PackedEmbeddings.pack(rows, self._dim, self._document_dtype)
        _text_only(self._model.name, texts)
        token_ids = self._tokens.document_ids(texts, max_tokens)
        rows = await self._model_rows(token_ids)
        kept = [r if (keep := self._tokens.document_keep(ids)) is None else r[keep] for ids, r in zip(token_ids, rows)]
        return PackedEmbeddings.pack(kept, self._dim, self._document_dtype)

    async def _model_rows(self, token_ids: list[list[int]]) -> list[np.ndarray]:
        """vLLM's token embeddings of each sequence, concurrently (vLLM batches them)."""
        with service_metrics().stage("encode", self._model.name):
            return narrowed(await asyncio.gather(*(self._encode_one(ids) for ids in token_ids)), self._dim)

    async def _vision_rows(self, items: list[Item], max_tokens: int | None, query: bool) -> list[np.ndarray]:
        """A vision checkpoint's token embeddings of each item: an image as its visual prompt with the image (query
        or document alike, as `process_images`), a text as a query or a text document."""
        vision = self._vision
        items = await attach(items)  # images come by reference (deployments/image_transfer.py): read their bytes
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        text_ids = (vision.query_ids if query else vision.text_document_ids)([items[i] for i in texts], max_tokens)
        prompts: list[tuple[list[int], object]] = [None] * len(items)  # type: ignore[list-item]
        for i, ids in zip(texts, text_ids):
            prompts[i] = (ids, None)
        images = [i for i, item in enumerate(items) if isinstance(item, ImageInput)]
        # decoding (and vLLM's resize) of many pages is CPU work: off the event loop
        pixels = await asyncio.to_thread(lambda: [vision.image(items[i].data) for i in images])
        for i, image in zip(images, pixels):
            prompts[i] = (vision.image_document_ids(), image)
        with service_metrics().stage("encode", self._model.name):
            return list(await asyncio.gather(*(self._encode_one(ids, image) for ids, image in prompts)))

    async def _encode_one(self, ids: list[int], image=None) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=ids)
        if image is not None:
            prompt["multi_modal_data"] = {"image": image}
        final = None
        async for output in self._engine.encode(
            prompt, PoolingParams(task="token_embed"), request_id=uuid.uuid4().hex
        ):
            final = output
        return final.outputs.data.numpy()


def _text_only(model: str, items: list[Item]) -> None:
    if any(not isinstance(item, str) for item in items):
        raise InvalidRequest(f"model {model!r} is a text model: it does not take images")


def _torch_dtype(dtype: str) -> str:
    """The torch dtype name of a vLLM `dtype` setting (`auto` and `float` are float32, `half` float16)."""
    return {"half": "float16", "float": "float32", "auto": "float32"}.get(dtype, dtype)
