"""ColPali checkpoints (`ColPaliForRetrieval`: PaliGemma with a projection): how transformers' `ColPaliProcessor`
encodes queries, text documents and image documents, as token ids the encoder sends vLLM.

- an image document is `process_images`: the image's `<image>` run (one token a SigLIP patch), `<bos>`, the visual
  prompt ("Describe the image."), a newline; the image tower's embeddings take the `<image>` positions;
- a query is `process_queries`: `<bos>`, the query prefix ("Question: "), the text, the augmentation token (the pad
  token) ten times, a newline;
- a text document is the processor's tokenization of a text, which for ColPali is the same as a query's (the
  processor has one text form).
Every token's embedding is kept (MaxSim over all of them, as `score_retrieval` does). vLLM loads the checkpoint in
transformers' `save_pretrained` layout or the hub's as it is, through the model class deployments/colpali_vllm.py
registers (`ARCHITECTURE`), which runs the forward pass as transformers does. No Ray or vLLM import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from scoring.api.requests import tightest
from scoring.checkpoints import CheckpointError
from scoring.chunking import WindowBudget
from scoring.late_interaction.vision import AUGMENTATION_COUNT, VisionEncoding, rgb_image

ARCHITECTURE = "ColPaliAsTransformers"  # deployments/colpali_vllm.py's model class, asked for by `hf_overrides`


def colpali_engine_args(path: str | Path) -> dict:
    """The engine settings of a ColPali checkpoint: its own folder (no conversion: the model class reads both
    layouts), run by the model class that computes what transformers does."""
    return {"weights": str(path), "hf_overrides": {"architectures": [ARCHITECTURE]}}


class ColPaliPrompts:
    """Token ids (and the image) the encoder sends vLLM for ColPali queries and documents, as the checkpoint's
    `ColPaliProcessor` builds them."""

    def __init__(self, path: str | Path, max_model_len: int, embedding_dim: int):
        from PIL import Image
        from transformers import AutoProcessor

        self._processor = processor = AutoProcessor.from_pretrained(str(path))
        self._tokenizer = processor.tokenizer
        self._max_model_len = max_model_len
        # PaliGemma resizes every image to one size: an image document's ids do not depend on the image
        self._image_ids = processor.process_images([Image.new("RGB", (8, 8))])["input_ids"][0].tolist()
        self._augmentation = processor.query_augmentation_token * AUGMENTATION_COUNT
        self.encoding = VisionEncoding(
            family="colpali",
            image_tokens=int(processor.image_seq_length),
            image_document_tokens=len(self._image_ids),
            visual_prompt=processor.visual_prompt_prefix,
            query_prefix=processor.query_prefix,
            query_augmentation=processor.query_augmentation_token,
            query_augmentation_count=AUGMENTATION_COUNT,
            embedding_dim=embedding_dim,
        )
        if self._image_ids.count(processor.image_token_id) != self.encoding.image_tokens:
            raise CheckpointError(f"{path}: the visual prompt does not hold one image's {processor.image_token} run")
        if len(self._image_ids) > max_model_len:
            raise CheckpointError(
                f"{path}: an image document takes {len(self._image_ids)} tokens, over max_model_len {max_model_len}"
            )
        self._overhead = len(self._text_ids([""], None)[0])

    def query_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """`process_queries`: `<bos>`, prefix, text, augmentation, newline; cut to `max_tokens` (or the engine's
        length)."""
        return self._text_ids(list(texts), max_tokens)

    text_document_ids = query_ids  # the processor's tokenization of a text is its query form

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The text a text document's window holds: the engine's length less the processor's prompt around it, which
        a request's `max_tokens_per_doc` counts too."""
        return WindowBudget(tokenizer, document_tokens=self._max_model_len - self._overhead,
                            document_overhead=self._overhead)

    def image_document_ids(self) -> list[int]:
        """`process_images`' ids for one image: the `<image>` run, `<bos>`, the visual prompt, a newline."""
        return list(self._image_ids)

    image = staticmethod(rgb_image)

    def _text_ids(self, texts: list[str], max_tokens: int | None) -> list[list[int]]:
        if not texts:
            return []
        processor = self._processor
        prompts = [f"{self._tokenizer.bos_token}{processor.query_prefix}{text}{self._augmentation}\n" for text in texts]
        limit = tightest(max_tokens, self._max_model_len)
        encoded = self._tokenizer(prompts, truncation=True, max_length=limit)
        return [list(ids) for ids in encoded["input_ids"]]
