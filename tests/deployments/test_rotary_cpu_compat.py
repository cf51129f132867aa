"""The rotary plugin (deployments/rotary_cpu_compat.py) against transformers' `apply_rotary_pos_emb`, on the query
shape LFM2's attention passes ([tokens, heads, head_size], heads > 1): vLLM's CPU kernel alone gets it wrong."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")


def test_a_three_dimensional_query_is_rotated_as_transformers_rotates_it():
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2RotaryEmbedding, apply_rotary_pos_emb
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.platforms import current_platform

    from deployments.rotary_cpu_compat import register

    if not current_platform.is_cpu():
        pytest.skip("the plugin changes vLLM's CPU path only")
    tokens, heads, head_size = 12, 2, 64
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(tokens, heads, head_size, generator=generator)
    key = torch.randn(tokens, 1, head_size, generator=generator)
    positions = torch.arange(tokens)
    config = Lfm2Config(hidden_size=heads * head_size, num_attention_heads=heads, num_key_value_heads=1,
                        max_position_embeddings=512)
    cos, sin = Lfm2RotaryEmbedding(config)(query, positions[None])
    want_query, want_key = (x[0].transpose(0, 1) for x in apply_rotary_pos_emb(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], cos, sin))
    with set_current_vllm_config(VllmConfig()):
        rope = get_rope(head_size, max_position=512, rope_parameters=config.rope_parameters, is_neox_style=True)
        before, _ = rope.forward_cpu(positions, query.clone(), key.clone())
        register()
        got_query, got_key = rope.forward_cpu(positions, query.clone(), key.clone())
    assert (before - want_query).abs().max() > 0.1  # the kernel's own answer (if vLLM fixes it, drop the plugin)
    assert got_query.shape == query.shape and got_key.shape == key.shape
    torch.testing.assert_close(got_query, want_query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_key, want_key, atol=1e-5, rtol=1e-5)
