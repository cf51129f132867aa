"""ColQwen3 checkpoints (TomoroAI/tomoro-colqwen3-embed-4b, `architectures: ["ColQwen3"]`): how their library
encodes queries, text documents and image documents, and what vLLM needs to run them as that library does.

The encoding is the model card's (its remote code's `ColQwen3Processor`, loaded with the card's
`max_num_visual_tokens=1280`), written out here; no code from the checkpoint's repository runs (vLLM has its own
ColQwen3 config and model classes), so `trust_remote_code` is not needed:
- an image document is `process_images`: the visual prompt
  `<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>`, its
  `<|image_pad|>` expanded to one token per merged patch of the image (Qwen2-VL's resize to multiples of
  patch x merge pixels, at most 1280 tokens);
- a query is `process_texts`: the query prefix (none), the stripped text, the augmentation token (the tokenizer's
  pad token, `<|endoftext|>`) ten times; a text document is `process_texts` too, the processor's one text path;
- every token's embedding is kept: `embedding_proj_layer` (a Linear with a bias) on Qwen3-VL's last hidden states,
  L2-normalised.
The encoder sends vLLM the prompt's ids with the one `<|image_pad|>`, which vLLM's Qwen3-VL processing expands as the
processor does, from the same image processor settings (the cap passed as `mm_processor_kwargs`). vLLM 0.32 loads no
projection bias (deployments/colqwen3_model.py): a checkpoint whose weights hold one runs as `BIASED_ARCHITECTURE`,
vLLM's ColQwen3 with that bias.
No Ray or vLLM import here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from scoring.api.requests import tightest
from scoring.checkpoints import CheckpointError, checkpoint_config
from scoring.chunking import WindowBudget
from scoring.late_interaction.vision import AUGMENTATION_COUNT, VisionEncoding, rgb_image

# ColQwen3Processor's defaults (its __init__ keywords, which a processor_config.json may set)
VISUAL_PROMPT_PREFIX = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
VISUAL_PROMPT_SUFFIX = "<|im_end|><|endoftext|>"
QUERY_PREFIX = ""
MAX_NUM_VISUAL_TOKENS = 1280  # the card's `AutoProcessor.from_pretrained(..., max_num_visual_tokens=1280)`
BIASED_ARCHITECTURE = "ColQwen3WithProjectionBias"  # registered by the vLLM plugin (deployments/qwen2_vl_compat.py)
PROJECTION_BIASES = ("embedding_proj_layer.bias", "custom_text_proj.bias")  # TomoroAI's name, ColPali's


def embedding_dim(path: Path) -> int:
    """The width of the checkpoint's token embeddings (`embed_dim`, 320 for Tomoro's checkpoints)."""
    config = checkpoint_config(path)
    dim = config.get("embed_dim")
    if not isinstance(dim, int) or dim <= 0:
        raise CheckpointError(f"{path}/config.json: a ColQwen3 checkpoint names its embedding width as `embed_dim`")
    return dim


@dataclass(frozen=True)
class ImageSettings:
    """The checkpoint's image processor with the card's cap: what vLLM's Qwen3-VL processing is given."""

    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def of(cls, path: Path) -> ImageSettings:
        image = _read_optional(path / "preprocessor_config.json")
        patch, merge = int(image.get("patch_size") or 16), int(image.get("merge_size") or 2)
        size = image.get("size") or {}
        min_pixels = int(size.get("shortest_edge") or image.get("min_pixels") or 56 * 56)
        return cls(patch, merge, min_pixels, MAX_NUM_VISUAL_TOKENS * (patch * merge) ** 2)

    def tokens(self, width: int, height: int) -> int:
        """The `<|image_pad|>` tokens of a `width` x `height` image: one per merged patch after the resize."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        tile = self.patch_size * self.merge_size
        h, w = smart_resize(height, width, factor=tile, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return (h // tile) * (w // tile)


def engine_args(path: Path) -> dict[str, Any]:
    """What vLLM's engine needs to run the checkpoint at `path` as the card does: one image a prompt, resized within
    the card's bounds, and the projection with its bias."""
    image = ImageSettings.of(path)
    args: dict[str, Any] = {
        "mm_processor_kwargs": {"min_pixels": image.min_pixels, "max_pixels": image.max_pixels},
        "limit_mm_per_prompt": {"image": 1},
    }
    if projection_has_bias(path):
        args["hf_overrides"] = {"architectures": [BIASED_ARCHITECTURE]}
    return args


def projection_has_bias(path: Path) -> bool:
    """Whether the checkpoint's weights (one file or an index of shards) hold a projection bias."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = set((_read_optional(index).get("weight_map") or {}).keys())
    else:
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{path}: a ColQwen3 checkpoint without model.safetensors")
        from safetensors import safe_open

        with safe_open(str(weights), "np") as f:
            names = set(f.keys())
    return any(name in names for name in PROJECTION_BIASES)


class ColQwen3Prompts:
    """Token ids the encoder sends vLLM for ColQwen3 queries and documents, as the card's `ColQwen3Processor`
    builds them, and the image settings vLLM's Qwen3-VL processing must use to expand an image as it does."""

    def __init__(self, path: str | Path, max_model_len: int, embedding_dim: int):
        from transformers import AutoTokenizer

        path = Path(path)
        # the tokenizer's own files only: config.json's auto_map names remote code this service never runs
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        self._max_model_len = max_model_len
        processor = _read_optional(path / "processor_config.json")
        self.image_settings = ImageSettings.of(path)
        self._prefix = processor.get("visual_prompt_prefix") or VISUAL_PROMPT_PREFIX
        self._suffix = processor.get("visual_prompt_suffix") or VISUAL_PROMPT_SUFFIX
        self._query_prefix = processor.get("query_prefix") or QUERY_PREFIX
        pad = self._tokenizer.pad_token
        if pad is None:
            raise CheckpointError(f"{path}: the tokenizer has no pad token, ColQwen3's query augmentation token")
        self._augmentation = [self._tokenizer.convert_tokens_to_ids(pad)] * AUGMENTATION_COUNT
        self._image_ids = self._tokenizer(self._prefix + self._suffix)["input_ids"]
        image_token = self._tokenizer.convert_tokens_to_ids("<|image_pad|>")
        if self._image_ids.count(image_token) != 1:
            raise CheckpointError(f"{path}: the visual prompt does not hold one <|image_pad|>")
        # the resize keeps every page within the cap: an engine that holds the largest holds them all
        largest = len(self._image_ids) - 1 + MAX_NUM_VISUAL_TOKENS
        if largest > max_model_len:
            raise CheckpointError(
                f"{path}: an image document takes up to {largest} tokens (its visual prompt and "
                f"{MAX_NUM_VISUAL_TOKENS} image tokens), over max_model_len {max_model_len}; raise max_model_len"
            )
        self.encoding = VisionEncoding(
            family="colqwen3",
            image_tokens=MAX_NUM_VISUAL_TOKENS,  # at most: a page's count follows its size
            image_document_tokens=largest,
            visual_prompt=self._prefix + self._suffix,
            query_prefix=self._query_prefix,
            query_augmentation=pad,
            query_augmentation_count=AUGMENTATION_COUNT,
            embedding_dim=embedding_dim,
        )

    def query_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """`process_texts`: prefix, stripped text, augmentation; the text cut so that the augmentation fits in
        `max_tokens` (or the engine's length)."""
        limit = tightest(max_tokens, self._max_model_len)
        room = max(limit - len(self._augmentation), 0)
        ids = self._tokenizer([self._query_prefix + text.strip() for text in texts])["input_ids"] if texts else []
        # the augmentation tokens are special: the text before them tokenizes the same alone
        return [list(row[:room]) + self._augmentation for row in ids]

    text_document_ids = query_ids  # the processor has one text path, augmentation included

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The text a text document's window holds: the engine's length less the augmentation, which a request's
        `max_tokens_per_doc` counts too."""
        overhead = len(self._augmentation)
        return WindowBudget(tokenizer, document_tokens=self._max_model_len - overhead, document_overhead=overhead)

    def image_document_ids(self) -> list[int]:
        """The visual prompt's ids with one `<|image_pad|>`, which vLLM expands to the image's tokens."""
        return list(self._image_ids)

    image = staticmethod(rgb_image)


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return value if isinstance(value, dict) else {}
