"""vLLM's ColPali model and multimodal processor, made to compute what transformers' `ColPaliForRetrieval` computes
on the ids `ColPaliProcessor` builds (deployments/colpali_vllm.py says what differs and why). Imported by vLLM's
model registry only, in the processes where vLLM builds models and prompts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping

from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import EncoderOnlyAttention
from vllm.model_executor.models import gemma
from vllm.model_executor.models.colpali import ColPaliModel, ColPaliMultiModalProcessor, ColPaliProcessingInfo
from vllm.model_executor.models.paligemma import PaliGemmaDummyInputsBuilder
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement


class LibraryPromptInfo(ColPaliProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        """SigLIP's patches of the one fixed-size image PaliGemma takes (what `image_seq_length` says), found without
        vLLM's vision-encoder lookup, which imports torchvision through its Pixtral model."""
        vision = self.get_hf_config().vision_config
        return (vision.image_size // vision.patch_size) ** 2


class PlacedImageProcessor(ColPaliMultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        run = [self.info.get_hf_config().image_token_index] * self.info.get_num_image_tokens(
            image_width=0, image_height=0
        )
        return [PromptReplacement(modality="image", target=run, replacement=run)]


class PlacedImageDummyInputs(PaliGemmaDummyInputsBuilder):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        info = self.info
        image = info.get_tokenizer().convert_ids_to_tokens(info.get_hf_config().image_token_index)
        return image * info.get_num_image_tokens(image_width=0, image_height=0) * mm_counts.get("image", 0)


@contextlib.contextmanager
def _bidirectional_gemma():
    """Gemma's attention layers built while this holds attend both ways: vLLM's encoder-only attention layer (as
    its Llama builds under `is_causal: false`; an `attn_type` alone leaves the metadata causal)."""
    causal = gemma.Attention
    gemma.Attention = EncoderOnlyAttention
    try:
        yield
    finally:
        gemma.Attention = causal


@MULTIMODAL_REGISTRY.register_processor(
    PlacedImageProcessor, info=LibraryPromptInfo, dummy_inputs=PlacedImageDummyInputs
)
class ColPaliAsTransformers(ColPaliModel):
    hf_to_vllm_mapper = WeightsMapper(
        # transformers 5 saves the SigLIP tower without its `vision_model.` level
        orig_to_new_regex={re.compile(r"^vlm\.vision_tower\.(?!vision_model\.)"): "vlm.vision_tower.vision_model."},
        orig_to_new_prefix=dict(ColPaliModel.hf_to_vllm_mapper.orig_to_new_prefix),
    )

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        text_model = vllm_config.model_config.hf_config.text_config.model_type
        if text_model != "gemma":
            raise ValueError(f"ColPali on a {text_model} text model: only Gemma (PaliGemma 1) is served")
        with _bidirectional_gemma():
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        projection = self.custom_text_proj
        if projection is not None and projection.bias is None:
            # transformers' projection has a bias (zero where a checkpoint has none): load it
            with_bias = nn.Linear(projection.in_features, projection.out_features, bias=True,
                                  dtype=projection.weight.dtype)
            nn.init.zeros_(with_bias.bias)
            self.custom_text_proj = with_bias
            self.pooler.head.projector = with_bias
