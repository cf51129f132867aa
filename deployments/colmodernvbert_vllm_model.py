"""vLLM's ColModernVBert model and multimodal processor, made to run the ids `ColModernVBertProcessor` builds, tiles
included (deployments/colmodernvbert_vllm.py says what differs from vLLM's own and why). Imported by vLLM's model
registry only, in the processes where vLLM builds models and prompts."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import torch
from transformers import BatchFeature
from vllm.model_executor.models.colmodernvbert import (
    ColModernVBertDummyInputsBuilder,
    ColModernVBertForRetrieval,
    ColModernVBertMultiModalProcessor,
    ColModernVBertProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageSize
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

from scoring.late_interaction.vision import (
    image_block_ids,
    image_block_text,
    longest_edge,
    max_image_tokens,
    max_tile_grid,
)


class LibraryProcessingInfo(ColModernVBertProcessingInfo):
    @cached_property
    def library_processor(self):
        """The checkpoint's `ColModernVBertProcessor` (the tokenizer's folder holds it: the original checkpoint)."""
        from transformers import AutoProcessor

        config = self.ctx.model_config
        return AutoProcessor.from_pretrained(config.tokenizer or config.model)

    @cached_property
    def _blocks(self) -> dict[tuple[int, int], list[int]]:
        return {}

    def block_ids(self, rows: int, cols: int) -> list[int]:
        """`image_block_ids` of a page of `rows` x `cols` tiles, tokenized once per grid (not once per page)."""
        key = (rows, cols)
        if key not in self._blocks:
            self._blocks[key] = image_block_ids(self.library_processor, rows, cols)
        return self._blocks[key]

    def get_image_size_with_most_features(self) -> ImageSize:
        """A page at the resize's bound gives the most tiles (the bound is the tile's size without tiles)."""
        image_processor = self.library_processor.image_processor
        edge = max(max_tile_grid(image_processor), 1) * longest_edge(image_processor.max_image_size)
        return ImageSize(width=edge, height=edge)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        """The `<image>` tokens of the largest page (what vLLM sizes its encoder cache by)."""
        return max_image_tokens(self.library_processor)


class LibraryImageProcessor(ColModernVBertMultiModalProcessor):
    """The image's pixels as the checkpoint's image processor makes them (its tiles, if it splits), and its block
    in the prompt as the library writes it: the encoder sends the block of one global image, replaced here by the
    block of the page's rows x columns of tiles, the image's embeddings on its `<image>` tokens."""

    def _apply_hf_processor_main(self, mm_items, hf_kwargs) -> BatchFeature:
        mm_data, hf_kwargs, passthrough_data = self._get_hf_mm_inputs(mm_items, hf_kwargs)
        result = BatchFeature(data={})
        images = mm_data.get("images")
        if images:
            out = self.info.library_processor.image_processor(
                images=[[image] for image in images], return_row_col_info=True, return_tensors="pt"
            )
            rows, cols = [r[0] for r in out["rows"]], [c[0] for c in out["cols"]]
            tiles = [r * c + 1 if r else 1 for r, c in zip(rows, cols)]  # the tiles, then the global image
            # images of fewer tiles than the batch's most are padded with empty tiles: not sent
            result["pixel_values"] = torch.cat([out["pixel_values"][i, :n] for i, n in enumerate(tiles)])
            result["num_patches"] = torch.tensor(tiles)
            result["rows"], result["cols"] = torch.tensor(rows), torch.tensor(cols)
        return self._finalize_hf_mm_data(mm_data, hf_kwargs, passthrough_data, result)

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        num_patches = hf_inputs.get("num_patches", torch.empty(0))
        return dict(
            pixel_values=MultiModalFieldConfig.flat_from_sizes("image", num_patches),
            num_patches=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            rows=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            cols=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        info = self.info
        image_token = info.get_hf_config().image_token_id

        def block(item_idx: int) -> PromptUpdateDetails:
            item = out_mm_kwargs["image"][item_idx]
            ids = info.block_ids(int(item["rows"].data), int(item["cols"].data))
            return PromptUpdateDetails.select_token_id(ids, image_token)

        return [PromptReplacement(modality="image", target=info.block_ids(0, 0), replacement=block)]


class LibraryDummyInputs(ColModernVBertDummyInputsBuilder):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        """One global image's block per image: the text the processing above replaces."""
        return image_block_text(self.info.library_processor, 0, 0) * mm_counts.get("image", 0)


@MULTIMODAL_REGISTRY.register_processor(
    LibraryImageProcessor, info=LibraryProcessingInfo, dummy_inputs=LibraryDummyInputs
)
class ColModernVBertAsTransformers(ColModernVBertForRetrieval):
    """vLLM's ColModernVBert with one embedding block per image: the image's tiles (and its global image) through
    the vision tower and connector, their embeddings in the order the processor lays out their blocks."""

    def embed_multimodal(self, **kwargs: object):
        pixel_values = kwargs.pop("pixel_values", None)
        num_patches = kwargs.pop("num_patches", None)
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.cat(list(pixel_values))
        features = self._get_image_features(pixel_values)  # [tiles, image_seq_len, hidden]
        sizes = [int(n) for n in (num_patches.tolist() if isinstance(num_patches, torch.Tensor) else num_patches)]
        return [tiles.reshape(-1, tiles.shape[-1]) for tiles in torch.split(features, sizes)]
