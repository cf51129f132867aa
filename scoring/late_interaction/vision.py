"""Vision late-interaction checkpoints (ColModernVBert): how their library encodes queries, text documents and image
documents, and the layout vLLM loads them in.

The encoding is the model's own library's (transformers' `ColModernVBertProcessor`), read from the checkpoint:
- an image document is the processor's visual prompt (`process_images`): `[CLS]`, the prompt's text with the image's
  block where the prompt names `<image>`, `[SEP]`. The block is `<fake_token_around_image><global-img><image>×N
  <fake_token_around_image>` for the page as one global image; where the image processor splits pages into tiles
  (`do_image_splitting`, as the released checkpoint's does), a page of r x c tiles is first r x c tile blocks
  (`<fake_token_around_image><row_i_col_j><image>×N`, a newline after each row), then the global image's. Each image
  (tile) gives the image tower's N embeddings, at its `<image>` positions;
- a query is `process_queries`: the query prefix, the text, the augmentation token (`<end_of_utterance>`) ten times;
- a text document is the processor's plain tokenization.
Every token's embedding is kept (MaxSim over all of them, as `score_retrieval` does). vLLM's own processing of these
checkpoints differs (the image tokens before `[CLS]`, no visual prompt, no augmentation): the encoder sends vLLM the
ids built here (an image document with one global image's block), and vLLM's processing as registered by this
service's plugin (deployments/colmodernvbert_vllm.py) makes the pixels with the checkpoint's image processor,
replaces that block by the page's own and places the embeddings on its `<image>` tokens.

transformers 5 saves ColModernVBert with its settings under `vlm_config` and weights under `vlm.*` /
`embedding_proj_layer`; vLLM 0.32 reads the original layout (model_type `modernvbert`, `text_config` /
`vision_config` at the top, `model.*` weights, `custom_text_proj`): a converted copy in the cache folder, as for
Stanford ColBERT. A checkpoint already in vLLM's layout is loaded as it is. No Ray or vLLM import here.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from scoring.api.requests import tightest
from scoring.checkpoints import CheckpointError, checkpoint_config, converted_copy
from scoring.chunking import WindowBudget

VISION_ARCHITECTURES = {"ColModernVBertForRetrieval": "colmodernvbert", "ColPaliForRetrieval": "colpali",
                        "ColQwen3": "colqwen3"}  # ColPali: scoring/late_interaction/colpali.py; ColQwen3: scoring/late_interaction/colqwen3.py
AUGMENTATION_COUNT = 10  # process_queries' default suffix: the augmentation token ten times
# the text-model keys vLLM's ColModernVBertConfig reads; it leaves every other ModernBERT setting at its default
_VLLM_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "mlp_bias", "max_position_embeddings")
_VLLM_VISION_KEYS = ("hidden_size", "image_size", "patch_size", "num_hidden_layers", "intermediate_size",
                     "num_attention_heads")
# transformers' weight names → the original checkpoint's, which vLLM's loader maps onto its modules
_WEIGHT_PREFIXES = (
    ("vlm.vision_model.", "model.vision_model.vision_model."),
    ("vlm.", "model."),
    ("embedding_proj_layer.", "model.custom_text_proj."),
)


@dataclass(frozen=True)
class VisionEncoding:
    """How a vision checkpoint encodes, for /v1/models and the batching estimates."""

    family: str
    image_tokens: int  # embeddings the image tower gives one image (`<image>` tokens)
    image_document_tokens: int  # tokens of an image document in all: the visual prompt with its image block
    visual_prompt: str
    query_prefix: str
    query_augmentation: str  # the token appended to every query
    query_augmentation_count: int
    embedding_dim: int

    def as_dict(self, max_model_len: int) -> dict[str, Any]:
        """The settings as /v1/models shows a late-interaction encoding: the processor's, in the text fields' terms
        (no markers, no skiplist, texts cut at the engine's length)."""
        settings = asdict(self)
        family = settings.pop("family")
        return {
            "format": family, "document_prefix": "", "query_length": max_model_len, "document_length": None,
            "query_expansion": self.query_augmentation_count > 0, "attend_to_expansion_tokens": True,
            "skiplist_words": [], **settings,
        }


ARCHITECTURE = "ColModernVBertAsTransformers"  # deployments/colmodernvbert_vllm.py's model class, by `hf_overrides`


# vision late-interaction models vLLM registers whose library encoding is not built here yet
NOT_SERVED = frozenset({"OpsColQwen3Model", "ColQwen3_5"})


def rgb_image(data: bytes):
    """An image file's pixels as the processors' `process_images` take them (RGB), upright: its EXIF Orientation
    applied, as transformers' `load_image` reads a file (vLLM turns what it is given upright too)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image.convert("RGB")


def vision_family(config: dict[str, Any]) -> str | None:
    """The vision family of a checkpoint's config.json (None: a text checkpoint); a vision model this service does
    not encode as its library does yet is refused rather than served with vLLM's own encoding."""
    for architecture in config.get("architectures") or []:
        if architecture in VISION_ARCHITECTURES:
            return VISION_ARCHITECTURES[architecture]
        if architecture in NOT_SERVED:
            raise CheckpointError(
                f"{architecture} checkpoints are not served yet: only "
                f"{', '.join(sorted(VISION_ARCHITECTURES))} among the vision late-interaction models"
            )
    return None


def vision_engine_layout(path: Path, cache_dir: str | Path | None = None) -> Path:
    """The folder vLLM loads the ColModernVBert checkpoint at `path` from: itself when it is in vLLM's layout,
    else a converted copy (written once per checkpoint version)."""
    config = checkpoint_config(path)
    if "vlm_config" not in config:
        return path
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: a ColModernVBert checkpoint without model.safetensors")
    return converted_copy(path, weights, lambda out: _write_vllm_layout(path, config, out), cache_dir)


def _write_vllm_layout(path: Path, config: dict[str, Any], out: Path) -> None:
    from safetensors.torch import load_file, save_file

    vlm = config["vlm_config"]
    text, vision = vlm.get("text_config") or {}, vlm.get("vision_config") or {}
    _check_defaults(path, text)
    engine_config = {
        "architectures": ["ColModernVBertForRetrieval"],
        "model_type": "modernvbert",  # the original checkpoint's, under which vLLM registers its config class
        "embedding_dim": config.get("embedding_dim", 128),
        "image_token_id": vlm.get("image_token_id", 50407),
        "pixel_shuffle_factor": vlm.get("pixel_shuffle_factor", 4),
        "text_config": {key: text[key] for key in _VLLM_TEXT_KEYS if key in text},
        "vision_config": {key: vision[key] for key in _VLLM_VISION_KEYS if key in vision},
        "torch_dtype": config.get("dtype") or config.get("torch_dtype") or "float32",
    }
    state = load_file(str(path / "model.safetensors"))
    renamed = {}
    for name, tensor in state.items():
        for old, new in _WEIGHT_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = tensor.contiguous()
    for item in path.iterdir():
        if item.is_file() and item.suffix in {".json", ".txt", ".model", ".jinja"} and item.name != "config.json":
            shutil.copy2(item, out / item.name)
    (out / "config.json").write_text(json.dumps(engine_config, indent=2))
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})


def _check_defaults(path: Path, text: dict[str, Any]) -> None:
    """vLLM builds the text model from `_VLLM_TEXT_KEYS` alone: a checkpoint whose other ModernBERT settings differ
    from the defaults would run another model there, so it is refused."""
    from transformers import ModernBertConfig

    ours, default = ModernBertConfig(**text), ModernBertConfig()
    for key in ("local_attention", "norm_eps", "norm_bias", "hidden_activation", "attention_bias", "layer_types",
                "rope_parameters"):
        if key == "layer_types":  # the pattern for the checkpoint's own layer count
            expected = ModernBertConfig(num_hidden_layers=ours.num_hidden_layers).layer_types
        else:
            expected = getattr(default, key)
        if getattr(ours, key) != expected:
            raise CheckpointError(
                f"{path}: text_config {key}={getattr(ours, key)!r} differs from ModernBERT's default, which "
                "vLLM's ColModernVBert model always uses"
            )


# the text ColBERT settings of a late_interaction model entry: a vision checkpoint's encoding is its processor's
TEXT_SETTINGS = ("query_prefix", "document_prefix", "max_tokens_per_query", "max_tokens_per_doc", "query_expansion",
                 "attend_to_expansion_tokens", "skiplist_words", "tokenizer")


def check_no_text_settings(model: Any) -> None:
    """A vision model entry that sets a text ColBERT setting is refused at start, not silently run without it."""
    set_keys = [key for key in TEXT_SETTINGS if getattr(model, key, None) is not None]
    if set_keys:
        raise CheckpointError(
            f"model {model.name!r}: {', '.join(set_keys)} do not apply to a vision checkpoint, which is encoded as "
            "its processor encodes (remove them)"
        )


class VisionProcessor:
    """Token ids (and the image) the encoder sends vLLM for ColModernVBert queries and documents, as the
    checkpoint's `ColModernVBertProcessor` builds them.

    An image document is sent as the visual prompt around one global image's block (`image_document_ids`); where
    the image processor splits images into tiles (`do_image_splitting`, as the released checkpoint's does), vLLM's
    processing (deployments/colmodernvbert_vllm_model.py) replaces that block by the processor's block for the
    page's tiles (`image_block_ids`), so vLLM runs exactly the library's sequence."""

    def __init__(self, path: str | Path, max_model_len: int, embedding_dim: int):
        from transformers import AutoProcessor

        self._processor = AutoProcessor.from_pretrained(str(path))
        self._tokenizer = self._processor.tokenizer
        self._max_model_len = max_model_len
        # the visual prompt around one global image (no tiles: ids that do not depend on the image)
        self._image_ids = global_image_document_ids(self._processor)
        image_token = self._tokenizer.convert_tokens_to_ids(self._processor.image_token)
        if self._image_ids.count(image_token) != int(self._processor.image_seq_len):
            raise CheckpointError(f"{path}: the visual prompt does not hold one image's {image_token} tokens")
        grid = max_tile_grid(self._processor.image_processor)
        largest = len(self._image_ids) - len(image_block_ids(self._processor, 0, 0)) + len(
            image_block_ids(self._processor, grid, grid))
        if largest > max_model_len:
            raise CheckpointError(
                f"{path}: an image document takes up to {largest} tokens ({grid}x{grid} tiles and the global "
                f"image), over max_model_len {max_model_len}; raise max_model_len"
            )
        self.encoding = VisionEncoding(
            family="colmodernvbert",
            image_tokens=max_image_tokens(self._processor),  # at most: a page's tiles follow its size
            image_document_tokens=largest,
            visual_prompt=self._processor.visual_prompt_prefix,
            query_prefix=self._processor.query_prefix,
            query_augmentation=self._processor.query_augmentation_token,
            query_augmentation_count=AUGMENTATION_COUNT,
            embedding_dim=embedding_dim,
        )

    def query_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """`process_queries`: prefix, text, augmentation; cut to `max_tokens` (or the engine's length)."""
        suffix = self._processor.query_augmentation_token * AUGMENTATION_COUNT
        return self._tokenize([self._processor.query_prefix + text + suffix for text in texts], max_tokens)

    def text_document_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """The processor's tokenization of a text, cut to `max_tokens` (or the engine's length)."""
        return self._tokenize(list(texts), max_tokens)

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The text a text document's window holds: the engine's length less the special tokens the processor adds,
        which a request's `max_tokens_per_doc` counts too."""
        specials = self._tokenizer.num_special_tokens_to_add()
        return WindowBudget(tokenizer, document_tokens=self._max_model_len - specials, document_overhead=specials)

    def image_document_ids(self) -> list[int]:
        """`process_images`' ids for one image without tiles: the visual prompt with the global image's block, which
        vLLM's processing replaces by the page's own block where the processor splits pages."""
        return list(self._image_ids)

    image = staticmethod(rgb_image)

    def _tokenize(self, texts: list[str], max_tokens: int | None) -> list[list[int]]:
        if not texts:
            return []
        limit = tightest(max_tokens, self._max_model_len)
        encoded = self._tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit)
        return [list(ids) for ids in encoded["input_ids"]]


def global_image_document_ids(processor) -> list[int]:
    """`process_images`' ids of one image as a single global image (no tiles), from the checkpoint's processor."""
    from PIL import Image

    blank = Image.new("RGB", (8, 8))
    return processor.process_images([blank], do_image_splitting=False)["input_ids"][0].tolist()


def image_block_text(processor, rows: int, cols: int) -> str:
    """An image's block as `ColModernVBertProcessor` writes it for a page of `rows` x `cols` tiles (0 x 0: the global
    image alone)."""
    return processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)


def image_block_ids(processor, rows: int, cols: int) -> list[int]:
    """`image_block_text`'s ids, tokenized as the processor tokenizes the prompt (its tags are special tokens, so the
    block tokenizes alone as it does inside the prompt)."""
    return processor.tokenizer(image_block_text(processor, rows, cols), add_special_tokens=False)["input_ids"]


def longest_edge(size) -> int:
    """`longest_edge` of an image processor's size setting (a dict, or transformers' `SizeDict`)."""
    return int(size["longest_edge"] if isinstance(size, dict) else size.longest_edge)


def max_tile_grid(image_processor) -> int:
    """Rows (= columns) of tiles of the largest page: pages are resized to `size.longest_edge` at most, then to
    multiples of the tile (`max_image_size.longest_edge`). 0 where the processor does not split pages."""
    if not getattr(image_processor, "do_image_splitting", False):
        return 0
    return -(-longest_edge(image_processor.size) // longest_edge(image_processor.max_image_size))


def max_image_tokens(processor) -> int:
    """The `<image>` tokens of the largest page: its tiles' and the global image's."""
    grid = max_tile_grid(processor.image_processor)
    return int(processor.image_seq_len) * (grid * grid + 1)
