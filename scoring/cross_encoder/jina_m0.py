"""jina-reranker-m0 (`JinaVLForRanking`): an image cross-encoder, scored as its model card's `compute_score` scores.

The card's computation, for a query and a document each either text or one image:
- the prompt is `**Document**:\\n{document}\\n**Query**:\\n{query}`, an image standing as
  `<|vision_start|><|image_pad|><|vision_end|>` (its `<|image_pad|>` expanded by the Qwen2-VL processor to one token
  per 28x28 pixels of the image resized within `min_pixels`..`max_pixels`, 3,136..602,112 pixels by the card);
- a text document is first cut to `max_doc_length` tokens (by default `max(max_length - 512, 512)` of the card's
  10,240), the whole prompt then to `max_length - 1` tokens (the end cut, as the processor truncates);
- the score token (id 100) is appended, and the last layer's hidden state at it goes through the score head
  (Linear, ReLU, Linear); the score is `sigmoid(logit - 2.65)`.

vLLM 0.32 runs the model (`JinaVLForSequenceClassification`: its pooler takes the last token and subtracts 2.65,
its processor expands `<|image_pad|>` from the image): this module builds each pair's prompt ids and images here,
the deployment applies the sigmoid (`CrossEncoderHead`). With two images vLLM's JinaVL processor reverses their
order (its scoring API hands them query first), so they are handed over query first too, to land document first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scoring.api.requests import tightest
from scoring.checkpoints import checkpoint_architectures
from scoring.chunking import WindowBudget
from scoring.config.schema import ModelConfig
from scoring.errors import PayloadTooLarge
from scoring.late_interaction.vision import rgb_image
from scoring.messages import ImageInput, Item

ARCHITECTURE = "JinaVLForRanking"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
SCORE_TOKEN_ID = 100
LOGIT_BIAS = 2.65  # what vLLM's JinaVL pooler subtracts (pooler_config.logit_mean); the card's bias
CARD_MAX_LENGTH = 10240
CARD_MAX_QUERY_LENGTH = 512
# the card's processor settings (`AutoProcessor.from_pretrained(..., min_pixels=3136, max_pixels=602112)`)
CARD_PROCESSOR_KWARGS = {"min_pixels": 3136, "max_pixels": 602112}
PIXELS_PER_TOKEN = 28 * 28  # 14-pixel patches, merged 2x2
# the engine's: at most two images a pair (an image query and an image document), resized as the card's processor
M0_ENGINE_ARGS = {"limit_mm_per_prompt": {"image": 2}, "mm_processor_kwargs": CARD_PROCESSOR_KWARGS}


@dataclass(frozen=True)
class M0Pair:
    """One pair as the engine takes it: prompt ids (one `<|image_pad|>` per image, the score token last) and the
    images in the order vLLM's JinaVL processor expects; `image_tokens`: what the images will expand to."""

    token_ids: list[int]
    images: list[Any]
    image_tokens: int

    @property
    def length(self) -> int:
        return len(self.token_ids) + self.image_tokens - len(self.images)


def checkpoint_is_jina_m0(model: ModelConfig) -> bool:
    """Whether the checkpoint (config.json, or the config's `hf_overrides`) is a jina-reranker-m0."""
    return ARCHITECTURE in checkpoint_architectures(model)


def processor_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The image resize the engine runs: the config's `engine_kwargs.mm_processor_kwargs`, else the card's."""
    return model.engine_kwargs.get("mm_processor_kwargs") or CARD_PROCESSOR_KWARGS


class M0Prompts:
    """Builds jina-reranker-m0 pairs as the card's `compute_score` does, within the engine's `max_model_len`."""

    def __init__(self, tokenizer: Any, max_model_len: int, processor_kwargs: dict[str, Any],
                 max_tokens_per_query: int | None = None, max_tokens_per_doc: int | None = None):
        self._tokenizer = tokenizer
        self._max_length = min(CARD_MAX_LENGTH, max_model_len)
        self._min_pixels = int(processor_kwargs.get("min_pixels", CARD_PROCESSOR_KWARGS["min_pixels"]))
        self._max_pixels = int(processor_kwargs.get("max_pixels", CARD_PROCESSOR_KWARGS["max_pixels"]))
        self._max_query = max_tokens_per_query
        self._max_doc = max_tokens_per_doc

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """A text document's window: the card's cut of a document (its own limit, else the pair's length less the
        card's query length), whatever the query."""
        return WindowBudget(tokenizer, document_tokens=self._max_doc or self._default_document_limit())

    def _default_document_limit(self) -> int:
        return max(self._max_length - CARD_MAX_QUERY_LENGTH, CARD_MAX_QUERY_LENGTH)

    def pairs(self, query: Item, documents: list[Item], max_tokens_per_query: int | None = None,
              max_tokens_per_doc: int | None = None) -> list[M0Pair]:
        query_limit = tightest(max_tokens_per_query, self._max_query)
        doc_limit = tightest(max_tokens_per_doc, self._max_doc)
        if doc_limit is None:
            doc_limit = self._default_document_limit()
        query_part = self._part(query, query_limit, "query")
        return [self._pair(query_part, self._part(d, doc_limit, f"documents[{i}]")) for i, d in
                enumerate(documents)]

    def _part(self, item: Item, limit: int | None, field: str) -> tuple[str, Any, int]:
        """(prompt text, image or None, image tokens) of a query or a document."""
        if isinstance(item, ImageInput):
            tokens = self.image_tokens(item.width, item.height)
            if tokens + 16 > self._max_length:
                raise PayloadTooLarge(f"{field}: the image takes {tokens} tokens here; the model's pairs hold "
                                      f"{self._max_length}")
            return IMAGE, decode_image(item), tokens
        if limit is not None:
            ids = self._tokenizer(item, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:  # the card cuts a text by its tokens and goes on with their decoded text
                item = self._tokenizer.decode(ids[:limit])
        return item, None, 0

    def _pair(self, query: tuple[str, Any, int], document: tuple[str, Any, int]) -> M0Pair:
        text = f"**Document**:\n{document[0]}\n**Query**:\n{query[0]}"
        images = [part[1] for part in (document, query) if part[1] is not None]
        image_tokens = document[2] + query[2]
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self._max_length - 1 - (image_tokens - len(images))
        ids = ids[:room]
        return M0Pair(token_ids=[*ids, SCORE_TOKEN_ID], images=images[::-1], image_tokens=image_tokens)

    def image_tokens(self, width: int, height: int) -> int:
        """The `<|image_pad|>` tokens of an image: one per 28x28 pixels after Qwen2-VL's resize."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        resized_height, resized_width = smart_resize(height, width, factor=28, min_pixels=self._min_pixels,
                                                     max_pixels=self._max_pixels)
        return resized_height * resized_width // PIXELS_PER_TOKEN


def decode_image(image: ImageInput):
    """The client's image as RGB pixels, as the card's `load_image` reads a file (upright)."""
    return rgb_image(image.data)
