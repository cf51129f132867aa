"""ColPali in vLLM as transformers' `ColPaliForRetrieval` runs it: a vLLM general plugin registering one model class.

vLLM 0.32's ColPali differs from the library in three ways, each of which moves scores (measured on a tiny
checkpoint, tests/tiny_colpali.py):
- its Gemma attends causally; PaliGemma attends bidirectionally over its whole prefix, and a ColPali input is all
  prefix (the processor's `token_type_ids` are 0 throughout), so every token sees every other;
- it builds the projection without a bias when the config names `embedding_dim` and then drops the checkpoint's
  `embedding_proj_layer.bias` (transformers' layer has one);
- it inserts the image's tokens itself at the start of the prompt; the encoder sends the ids `ColPaliProcessor`
  builds instead (scoring/late_interaction/colpali.py), which hold the image's `<image>` run already, and the processor registered
  here places the image's embeddings on that run (a replacement of the run by itself).
It also reads transformers 5's `save_pretrained` names of the vision tower (`vlm.vision_tower.embeddings...`, no
`vision_model.`), beside the hub's. The encoder asks for `ARCHITECTURE` through `hf_overrides`, so vLLM's own
`ColPaliForRetrieval` stays as it is. vLLM runs general plugins in every process it starts (the model inspection,
the engine core) and in the one creating the engine; `deployments.plugins.add_plugin_path` makes it visible there.
"""

from __future__ import annotations

from scoring.late_interaction.colpali import ARCHITECTURE

_MODEL = f"deployments.colpali_vllm_model:{ARCHITECTURE}"


def register() -> None:
    """The plugin: the model class, imported by vLLM only when a config names `ARCHITECTURE`."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _MODEL)
