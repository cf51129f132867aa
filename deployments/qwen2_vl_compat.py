"""vLLM's Qwen2-VL models (jina-reranker-m0's `JinaVLForRanking`) and Qwen3-VL ones (ColQwen3) without torchvision:
a vLLM general plugin.

This service installs no torchvision (the wheel pip pulls breaks `import vllm` on the CPU build), and transformers
5's Qwen2-VL code needs it in two places vLLM 0.32 reaches: `image_processing_qwen2_vl` (vLLM imports its
`smart_resize`) and the video processor `Qwen2VLProcessor` loads and type-checks. Both have torch-free equivalents
for images: transformers' PIL image processor (`Qwen2VLImageProcessorPil`, the same resize and normalisation) and
a processor that holds only the image processor and the tokenizer. `register()` puts them in place and registers
vLLM's own JinaVL and ColQwen3 processing on image-only processors (images only: a video is refused). ColQwen3's
`Qwen3VLProcessor` loads a video processor that needs torchvision too.

vLLM runs its general plugins in every process it starts (the model-inspection subprocess, the engine core), which
is where this must hold; the entry point naming `register` is found through `deployments.plugins.add_plugin_path`. With torchvision installed it only registers
ColQwen3 with its projection's bias (deployments/colqwen3_model.py).
"""

from __future__ import annotations

import importlib.util
import sys
import types

_TORCHVISION_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_registered = False


def register() -> None:
    """The plugin: once per process; the processors only when torchvision is missing."""
    global _registered
    if _registered:
        return
    _registered = True
    _register_colqwen3_projection_bias()
    if importlib.util.find_spec("torchvision") is not None:
        return
    _image_processing_module()
    _register_image_only_processor()
    _register_colqwen3_image_only_processor()


def _image_processing_module() -> None:
    """`image_processing_qwen2_vl` as the PIL module's names: vLLM imports `smart_resize` and the processor class
    from it, and the PIL module defines the same resize."""
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    module = types.ModuleType(_TORCHVISION_MODULE)
    module.smart_resize = pil.smart_resize
    module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    sys.modules.setdefault(_TORCHVISION_MODULE, module)


def _register_image_only_processor() -> None:
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin
    from vllm.model_executor.models.jina_vl import (
        JinaVLForSequenceClassification,
        JinaVLMultiModalProcessor,
    )
    from vllm.model_executor.models.qwen2_vl import Qwen2VLDummyInputsBuilder, Qwen2VLProcessingInfo
    from vllm.multimodal import MULTIMODAL_REGISTRY

    class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
        """Qwen2VLProcessor with an image processor and a tokenizer only (its video processor needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    class ImageOnlyInfo(Qwen2VLProcessingInfo):
        def get_hf_processor(self, **kwargs: object):
            return self.ctx.get_hf_processor(Qwen2VLImageProcessorOnly, **kwargs)

        def get_supported_mm_limits(self):
            return {"image": None}

    MULTIMODAL_REGISTRY.register_processor(
        JinaVLMultiModalProcessor, info=ImageOnlyInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
    )(JinaVLForSequenceClassification)


def _register_colqwen3_image_only_processor() -> None:
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin
    from vllm.model_executor.models.colqwen3 import ColQwen3Model, ColQwen3ProcessingInfo
    from vllm.model_executor.models.qwen3_vl import (
        Qwen3VLDummyInputsBuilder,
        Qwen3VLMultiModalProcessor,
        Qwen3VLProcessingInfo,
    )
    from vllm.multimodal import MULTIMODAL_REGISTRY

    class Qwen3VLImageProcessorOnly(Qwen3VLProcessor):
        """Qwen3VLProcessor with an image processor and a tokenizer only (its video processor needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.vision_start_token = getattr(tokenizer, "vision_start_token", "<|vision_start|>")
            self.vision_end_token = getattr(tokenizer, "vision_end_token", "<|vision_end|>")
            self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
            self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    class ImageOnlyInfo(ColQwen3ProcessingInfo):
        def get_hf_processor(self, **kwargs: object):
            return self.ctx.get_hf_processor(Qwen3VLImageProcessorOnly, **kwargs)

        def get_supported_mm_processor_kwargs(self):
            # Qwen3-VL's adds video keywords, which an image-only processor has none of
            return super(Qwen3VLProcessingInfo, self).get_supported_mm_processor_kwargs()

    class ImageOnlyDummyInputs(Qwen3VLDummyInputsBuilder):
        def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
            # Qwen3-VL's sizes a dummy video too, from the video processor there is none of
            width, height = self.info.get_image_size_with_most_features()
            return {"image": self._get_dummy_images(width=width, height=height, num_images=mm_counts.get("image", 0),
                                                    overrides=mm_options.get("image"))}

    MULTIMODAL_REGISTRY.register_processor(
        Qwen3VLMultiModalProcessor, info=ImageOnlyInfo, dummy_inputs=ImageOnlyDummyInputs
    )(ColQwen3Model)


def _register_colqwen3_projection_bias() -> None:
    """ColQwen3 with its projection's bias (deployments/colqwen3_model.py), by path: imported only where used."""
    from vllm import ModelRegistry

    from scoring.late_interaction.colqwen3 import BIASED_ARCHITECTURE

    ModelRegistry.register_model(BIASED_ARCHITECTURE, "deployments.colqwen3_model:ColQwen3WithProjectionBias")
