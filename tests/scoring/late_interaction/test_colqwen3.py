"""ColQwen3's encoding rules (scoring/late_interaction/colqwen3.py) against the model card's processing written out
(tests/tiny_colqwen3.py), on a tiny checkpoint in TomoroAI's layout: the ids, the image token count of a page, the
engine settings, and which checkpoints are served."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from scoring.checkpoints import CheckpointError
from scoring.late_interaction.colqwen3 import (
    BIASED_ARCHITECTURE,
    ColQwen3Prompts,
    ImageSettings,
    embedding_dim,
    engine_args,
    projection_has_bias,
)
from scoring.late_interaction.vision import vision_engine_layout, vision_family
from tests.tiny_colqwen3 import CardReference, build_tiny_colqwen3

MAX_MODEL_LEN = 2048


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_colqwen3(tmp_path_factory.mktemp("colqwen3") / "ckpt")


@pytest.fixture(scope="module")
def card(checkpoint):
    return CardReference(checkpoint)


@pytest.fixture(scope="module")
def prompts(checkpoint):
    return ColQwen3Prompts(checkpoint, MAX_MODEL_LEN, embedding_dim(checkpoint))


def _image(width: int, height: int):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(width).random((height, width, 3)) * 255).astype("uint8"))


def test_query_and_text_ids_are_process_texts(prompts, card):
    texts = ["what does the chart show?", "  red ", "a", ""]
    expected = [card.query_ids(text) for text in texts]
    assert prompts.query_ids(texts) == expected
    assert prompts.text_document_ids(texts) == expected
    pad = card.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert all(ids[-10:] == [pad] * 10 for ids in expected)


def test_a_cut_text_keeps_its_augmentation(prompts, card):
    text = " ".join(["quarterly revenue grew by ten percent"] * 20)
    full = card.query_ids(text)
    cut = prompts.query_ids([text], max_tokens=24)[0]
    assert len(full) > 24 and len(cut) == 24
    assert cut == full[:14] + full[-10:]


def test_the_image_prompt_expands_to_the_cards_ids(prompts, card):
    """The encoder sends one `<|image_pad|>`; vLLM expands it to the image's count, which gives the card's ids."""
    ids = prompts.image_document_ids()
    pad = card.image_token_id
    assert ids.count(pad) == 1
    for size in [(48, 64), (200, 20), (8, 8), (2000, 1500), (5000, 40)]:
        expected = card.image_inputs(_image(*size))["input_ids"]
        count = prompts.image_settings.tokens(*size)
        at = ids.index(pad)
        assert ids[:at] + [pad] * count + ids[at + 1:] == expected, size


def test_a_large_page_is_capped_at_1280_image_tokens(prompts):
    settings = prompts.image_settings
    assert (settings.patch_size, settings.merge_size, settings.max_pixels) == (16, 2, 1280 * 32 * 32)
    assert settings.tokens(4000, 3000) <= 1280 < settings.tokens(4000, 3000) * 4  # resized down, not cut
    assert prompts.encoding.image_tokens == 1280
    assert prompts.encoding.image_document_tokens == len(prompts.image_document_ids()) - 1 + 1280


def test_engine_args_keep_the_projection_bias_and_the_cap(checkpoint, tmp_path):
    args = engine_args(checkpoint)
    assert args["hf_overrides"] == {"architectures": [BIASED_ARCHITECTURE]}
    assert args["mm_processor_kwargs"] == {"min_pixels": 32 * 32, "max_pixels": 1280 * 32 * 32}
    assert args["limit_mm_per_prompt"] == {"image": 1}


def test_encoding_shows_the_cards_settings(prompts):
    shown = prompts.encoding.as_dict(MAX_MODEL_LEN)
    assert shown["format"] == "colqwen3"
    assert shown["visual_prompt"] == CardReference.VISUAL_PROMPT
    assert (shown["query_augmentation"], shown["query_augmentation_count"]) == ("<|endoftext|>", 10)
    assert shown["embedding_dim"] == 32


def test_an_engine_too_short_for_a_capped_page_is_refused(checkpoint):
    with pytest.raises(CheckpointError, match="over max_model_len 512; raise max_model_len"):
        ColQwen3Prompts(checkpoint, 512, 32)


def test_the_tomoro_layout_is_loaded_as_it_is_and_ops_colqwen3_is_refused(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    assert vision_family(config) == "colqwen3"
    assert vision_engine_layout(checkpoint, tmp_path) == checkpoint  # vLLM reads TomoroAI's names
    with pytest.raises(CheckpointError, match="OpsColQwen3Model checkpoints are not served yet"):
        vision_family({"architectures": ["OpsColQwen3Model"]})


def test_a_checkpoint_without_embed_dim_is_refused(checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["embed_dim"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="embed_dim"):
        embedding_dim(copy)


def test_image_settings_read_the_preprocessor(checkpoint):
    assert ImageSettings.of(checkpoint).min_pixels == 32 * 32


def test_a_checkpoint_without_a_projection_bias_runs_as_vllms_colqwen3(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "nobias"
    shutil.copytree(checkpoint, copy)
    weights = load_file(str(copy / "model.safetensors"))
    del weights["embedding_proj_layer.bias"]
    save_file(weights, str(copy / "model.safetensors"))
    assert projection_has_bias(checkpoint) and not projection_has_bias(copy)
    assert "hf_overrides" not in engine_args(copy)
