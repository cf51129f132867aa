"""vLLM's ColQwen3 model with its projection's bias: what TomoroAI's checkpoints hold (`embedding_proj_layer` is a
Linear with a bias).

vLLM 0.32 builds `custom_text_proj` without a bias when config.json names `embed_dim`, and then skips the
checkpoint's bias; sized from the weights instead, it creates the layer on the first projection weight it meets,
which in a checkpoint's sorted names is the bias, so the bias is never loaded either way. This class builds the
layer with a bias from the start. The service names it (`hf_overrides: architectures`) only for a checkpoint whose
weights hold that bias (scoring/late_interaction/colqwen3.py); the vLLM plugin (deployments/qwen2_vl_compat.py) registers it, lazily,
by this module's path. Everything else, the multimodal processing included, is vLLM's ColQwen3.
"""

from __future__ import annotations

from torch import nn

from deployments.qwen2_vl_compat import register

register()  # vLLM's model-inspection subprocess runs no plugins: the torchvision-free modules before vLLM's Qwen-VL
from vllm.model_executor.models.colqwen3 import ColQwen3Model  # noqa: E402


class ColQwen3WithProjectionBias(ColQwen3Model):
    def __init__(self, *, vllm_config, prefix: str = "model"):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        projection = self.custom_text_proj
        if projection is None:
            raise ValueError("a ColQwen3 checkpoint with a projection bias names its width (`embed_dim`)")
        self.custom_text_proj = nn.Linear(
            projection.in_features, projection.out_features, bias=True, dtype=projection.weight.dtype
        )
