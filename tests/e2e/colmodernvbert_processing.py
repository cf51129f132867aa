"""vLLM's processing of a ColModernVBert image document (through this service's plugin) beside `process_images`',
for tests/e2e/test_vision.py, in a process of its own: creating vLLM's config of the model registers vLLM's own
ColModernVBert config class with transformers, after which transformers' classes no longer build in that process.

    python -m tests.e2e.colmodernvbert_processing <folder> [--no-splitting]

writes a tiny checkpoint to <folder> and prints, as JSON, one entry a page size: whether vLLM's prompt ids and
pixels equal the library's, and the page's tile count (the global image included) by each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SIZES = [(48, 64), (120, 30), (16, 16), (90, 40), (33, 200)]


def compare(folder: Path, splitting: bool) -> list[dict]:
    from PIL import Image
    from transformers import AutoProcessor

    from tests.tiny_colmodernvbert import build_tiny_colmodernvbert

    path = build_tiny_colmodernvbert(folder / "ckpt", image_splitting=splitting)
    library = AutoProcessor.from_pretrained(str(path))  # before vLLM's config exists: transformers' own classes

    import torch
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    from deployments.colmodernvbert_vllm import register
    from scoring.late_interaction.vision import ARCHITECTURE, VisionProcessor, vision_engine_layout

    register()
    config = ModelConfig(model=str(vision_engine_layout(path, folder / "cache")), tokenizer=str(path),
                         runner="pooling", dtype="float32", max_model_len=128,
                         hf_overrides={"architectures": [ARCHITECTURE]})
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    ids = VisionProcessor(path, 128, 128).image_document_ids()
    out = []
    for width, height in SIZES:
        pixels = (np.random.default_rng(width).random((height, width, 3)) * 255).astype("uint8")
        image = Image.fromarray(pixels)
        items = processor.info.parse_mm_data({"image": [image]})
        ours = processor.apply(ProcessorInputs(prompt=ids, mm_data_items=items), TimingContext())
        expected = library.process_images([image])
        item = ours["mm_kwargs"]["image"][0]
        tiles = int(item["num_patches"].data)
        out.append({
            "size": [width, height],
            "ids_equal": ours["prompt_token_ids"] == expected["input_ids"][0].tolist(),
            "pixels_equal": bool(torch.equal(item["pixel_values"].data, expected["pixel_values"][0, :tiles])),
            "tiles": tiles,
            "library_tiles": int(expected["pixel_values"].shape[1]),
        })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--no-splitting", action="store_true")
    args = parser.parse_args()
    print(json.dumps(compare(args.folder, not args.no_splitting)))
