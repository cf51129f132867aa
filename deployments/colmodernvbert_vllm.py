"""ColModernVBert in vLLM as transformers' `ColModernVBertProcessor` + `ColModernVBertForRetrieval` run it: a vLLM
general plugin registering one model class (deployments/colmodernvbert_vllm_model.py).

vLLM 0.32's ColModernVBert differs from the library in how it builds the input:
- it inserts one image's `<image>` tokens at the start of the prompt; the encoder sends the ids the library builds
  (the visual prompt, scoring/late_interaction/vision.py), and the processor registered here places the image's
  embeddings on the image's block in it;
- it never splits a page into tiles (it calls the image processor with `do_image_splitting=False`, and its model
  returns one embedding block per tile, not per image); the library splits pages where the checkpoint's image
  processor says so, as the released checkpoint's does: a page of r x c tiles is r x c tile blocks (each
  `<fake_token_around_image><row_i_col_j>` and the tile's `<image>` tokens) and the global image's block. Here the
  checkpoint's own image processor makes the pixels, the library's processor writes the block, and the model class
  returns one block per image.
The encoder asks for `ARCHITECTURE` through `hf_overrides`, so vLLM's own `ColModernVBertForRetrieval` stays as it
is. vLLM runs general plugins in every process it starts and in the one creating the engine;
`deployments.plugins.add_plugin_path` makes it visible there.
"""

from __future__ import annotations

from scoring.late_interaction.vision import ARCHITECTURE

_MODEL = f"deployments.colmodernvbert_vllm_model:{ARCHITECTURE}"


def register() -> None:
    """The plugin: the model class, imported by vLLM only when a config names `ARCHITECTURE`."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _MODEL)
