"""vLLM's multimodal processing of ColModernVBert, made to take the prompt as the model's library builds it.

vLLM 0.32's ColModernVBert processor inserts the image's `<image>` tokens at the start of every prompt. The encoder
instead sends the ids `ColModernVBertProcessor` builds (scoring/late_interaction/vision.py), which hold the image's `<image>` run
already: the processor registered here finds that run and places the image's embeddings on it (a replacement of
the run by itself), so vLLM runs the forward pass on exactly the library's sequence. The image's pixels are vLLM's
(`Idefics3ImageProcessor` from the checkpoint's settings, no tiles), the same processor the library runs.

The registration is vLLM's own (`MULTIMODAL_REGISTRY.register_processor` on the model class) and takes effect in
the process that prepares the inputs (the replica's, where `AsyncLLM` processes prompts); the engine core only
profiles with dummy inputs, which here carry the run too.
"""

from __future__ import annotations

from collections.abc import Mapping

_registered = False


def register_prompt_placeholders() -> None:
    """Once per process: ColModernVBert prompts keep their `<image>` runs where they are."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.models.colmodernvbert import (
        ColModernVBertDummyInputsBuilder,
        ColModernVBertForRetrieval,
        ColModernVBertMultiModalProcessor,
        ColModernVBertProcessingInfo,
    )
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import PromptReplacement

    class PlacedImageProcessor(ColModernVBertMultiModalProcessor):
        def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
            config = self.info.get_hf_config()
            run = [config.image_token_id] * config.image_seq_len
            return [PromptReplacement(modality="image", target=run, replacement=run)]

    class PlacedImageDummyInputs(ColModernVBertDummyInputsBuilder):
        def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
            config = self.info.get_hf_config()
            image = self.info.get_tokenizer().convert_ids_to_tokens(config.image_token_id)
            return image * config.image_seq_len * mm_counts.get("image", 0)

    MULTIMODAL_REGISTRY.register_processor(
        PlacedImageProcessor, info=ColModernVBertProcessingInfo, dummy_inputs=PlacedImageDummyInputs
    )(ColModernVBertForRetrieval)
    _registered = True
