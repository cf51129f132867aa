"""The vision encoding rules (scoring/late_interaction/vision.py) against transformers' ColModernVBertProcessor on a tiny checkpoint, the
conversion to vLLM's layout, and the batching estimate of an image."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from safetensors import safe_open

from scoring.checkpoints import CheckpointError
from scoring.late_interaction.vision import (
    VisionProcessor,
    check_no_text_settings,
    image_block_ids,
    vision_engine_layout,
    vision_family,
)
from scoring.messages import EncodeJob, ImageInput
from scoring.store.batching import DEFAULT_IMAGE_TOKENS, estimate_tokens, plan_encode_calls
from tests.tiny_colmodernvbert import build_tiny_colmodernvbert


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_colmodernvbert(tmp_path_factory.mktemp("cmv") / "ckpt")


@pytest.fixture(scope="module")
def processor(checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(checkpoint))


def _image(width: int, height: int):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(width).random((height, width, 3)) * 255).astype("uint8"))


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tiled(processor, ids: list[int], image) -> list[int]:
    """`ids` with the global image's block replaced by `image`'s block of tiles, as vLLM's processing does it
    (deployments/colmodernvbert_vllm_model.py)."""
    out = processor.image_processor(images=[[image]], return_row_col_info=True)
    block = image_block_ids(processor, 0, 0)
    start = next(i for i in range(len(ids)) if ids[i:i + len(block)] == block)
    return ids[:start] + image_block_ids(processor, out["rows"][0][0], out["cols"][0][0]) + ids[start + len(block):]


def test_ids_are_the_processors(checkpoint, processor):
    vision = VisionProcessor(checkpoint, max_model_len=128, embedding_dim=128)
    ids = vision.image_document_ids()
    assert ids == processor.process_images([_image(8, 8)], do_image_splitting=False)["input_ids"][0].tolist()
    lengths = set()
    for size in [(48, 64), (200, 20), (8, 8), (64, 30)]:
        expected = processor.process_images([_image(*size)])["input_ids"][0].tolist()
        assert _tiled(processor, ids, _image(*size)) == expected, size
        lengths.add(len(expected))
    assert len(lengths) == 2  # pages of 2 x 2 tiles and of 1 x 2: each its own block
    queries = ["what does the chart show?", "red"]
    expected = processor.process_queries(queries, padding=False, return_tensors=None)["input_ids"]
    assert vision.query_ids(queries) == [list(ids) for ids in expected]
    texts = ["quarterly revenue grew", "a"]
    plain = processor(text=texts, padding=False, return_tensors=None)["input_ids"]
    assert vision.text_document_ids(texts) == [list(ids) for ids in plain]


def test_the_image_block_and_augmentation_sit_where_the_processor_puts_them(checkpoint, processor):
    vision = VisionProcessor(checkpoint, max_model_len=128, embedding_dim=128)
    tokens = processor.tokenizer.convert_ids_to_tokens(vision.image_document_ids())
    block = ["<fake_token_around_image>", "<global-img>", *["<image>"] * 4, "<fake_token_around_image>"]
    start = tokens.index("<fake_token_around_image>")
    assert tokens[0] == "[CLS]" and tokens[1] == "<|begin_of_text|>" and tokens[-1] == "[SEP]"
    assert tokens[start:start + len(block)] == block
    query = processor.tokenizer.convert_ids_to_tokens(vision.query_ids(["red"])[0])
    assert query[-11:] == ["<end_of_utterance>"] * 10 + ["[SEP]"]
    encoding = vision.encoding
    largest = len(processor.process_images([_image(64, 64)])["input_ids"][0])  # 2 x 2 tiles and the global image
    assert (encoding.image_tokens, encoding.image_document_tokens) == (20, largest)
    assert encoding.as_dict(128)["format"] == "colmodernvbert"


def test_texts_are_cut_at_max_tokens_and_the_engine_length(checkpoint):
    vision = VisionProcessor(checkpoint, max_model_len=44, embedding_dim=128)
    long = " ".join(["word"] * 80)
    assert len(vision.text_document_ids([long])[0]) == 44
    assert len(vision.text_document_ids([long], max_tokens=6)[0]) == 6
    assert len(vision.query_ids([long], max_tokens=8)[0]) == 8
    # the largest page (2 x 2 tiles and the global image) must fit the engine's length
    with pytest.raises(CheckpointError, match="image document takes up to 43 tokens"):
        VisionProcessor(checkpoint, max_model_len=42, embedding_dim=128)


def test_image_is_decoded_to_rgb():
    image = _image(10, 6).convert("RGBA")
    assert VisionProcessor.image(_png(image)).mode == "RGB"


def test_a_processor_without_tiles_sends_each_page_as_one_global_image(tmp_path):
    from transformers import AutoProcessor

    plain = build_tiny_colmodernvbert(tmp_path / "plain", image_splitting=False)
    processor = AutoProcessor.from_pretrained(str(plain))
    vision = VisionProcessor(plain, max_model_len=128, embedding_dim=128)
    for size in [(48, 64), (200, 20)]:
        assert vision.image_document_ids() == processor.process_images([_image(*size)])["input_ids"][0].tolist()
    assert (vision.encoding.image_tokens, vision.encoding.image_document_tokens) == (4, 19)


def test_family_from_architectures(checkpoint):
    assert vision_family(json.loads((checkpoint / "config.json").read_text())) == "colmodernvbert"
    assert vision_family({"architectures": ["BertModel"]}) is None
    assert vision_family({}) is None
    assert vision_family({"architectures": ["ColPaliForRetrieval"]}) == "colpali"
    assert vision_family({"architectures": ["ColQwen3"]}) == "colqwen3"
    with pytest.raises(CheckpointError, match="OpsColQwen3Model checkpoints are not served yet"):
        vision_family({"architectures": ["OpsColQwen3Model"]})


def test_engine_layout_is_vllms(checkpoint, tmp_path):
    out = vision_engine_layout(checkpoint, tmp_path)
    assert out != checkpoint and vision_engine_layout(checkpoint, tmp_path) == out  # written once
    config = json.loads((out / "config.json").read_text())
    source = json.loads((checkpoint / "config.json").read_text())["vlm_config"]
    assert config["model_type"] == "modernvbert" and config["architectures"] == ["ColModernVBertForRetrieval"]
    assert config["image_token_id"] == source["image_token_id"]
    assert config["pixel_shuffle_factor"] == source["pixel_shuffle_factor"] == 2
    assert config["text_config"]["hidden_size"] == 128 and config["vision_config"]["image_size"] == 32
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        theirs = {name: f.get_tensor(name) for name in f.keys()}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        ours = {name: f.get_tensor(name) for name in f.keys()}
    assert len(ours) == len(theirs)
    assert (ours["model.custom_text_proj.weight"] == theirs["embedding_proj_layer.weight"]).all()
    assert (ours["model.text_model.final_norm.weight"] == theirs["vlm.text_model.final_norm.weight"]).all()
    assert (ours["model.vision_model.vision_model.post_layernorm.weight"]
            == theirs["vlm.vision_model.post_layernorm.weight"]).all()
    assert (out / "processor_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert vision_engine_layout(out, tmp_path) == out  # already vLLM's layout: as it is


def test_a_text_setting_vllm_ignores_is_refused(checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "window"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["vlm_config"]["text_config"]["local_attention"] = 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="local_attention"):
        vision_engine_layout(copy, tmp_path / "cache")


def test_text_colbert_settings_are_refused_for_a_vision_model(checkpoint):
    from scoring.config.schema import LateInteractionModelConfig

    check_no_text_settings(LateInteractionModelConfig(name="v", model=str(checkpoint)))
    with pytest.raises(CheckpointError, match="query_prefix, max_tokens_per_doc do not apply"):
        check_no_text_settings(LateInteractionModelConfig(name="v", model=str(checkpoint), query_prefix="[Q] ",
                                                          max_tokens_per_doc=64))


def test_an_image_counts_its_models_image_document_tokens():
    data = b"\x89PNG..."
    image = ImageInput(data=data, digest=hashlib.sha256(data).hexdigest(), mime="image/png", width=1, height=1)
    assert estimate_tokens(image, None) == DEFAULT_IMAGE_TOKENS
    assert estimate_tokens(image, 4, image_tokens=19) == 19  # an image is never cut
    jobs = [EncodeJob("vision", [image] * 5, None, 0), EncodeJob("text", ["x" * 40] * 2, None, 0)]
    calls = plan_encode_calls(jobs, chunk_tokens=40, image_tokens={"vision": 19})
    assert [len(call.texts) for call in calls if call.model == "vision"] == [2, 2, 1]
    assert [len(call.texts) for call in calls if call.model == "text"] == [2]
