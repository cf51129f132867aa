"""jina-reranker-m0's prompts (scoring/cross_encoder/jina_m0.py) as the model card builds them, on the tiny checkpoint's tokenizer."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from scoring.cross_encoder.jina_m0 import IMAGE, SCORE_TOKEN_ID, M0Prompts
from scoring.errors import PayloadTooLarge
from scoring.messages import ImageInput
from tests.tiny_jina_m0 import qwen2_tokenizer

PIXELS = {"min_pixels": 3136, "max_pixels": 602112}


@pytest.fixture(scope="module")
def tokenizer():
    return qwen2_tokenizer()


def image(width: int, height: int, color: str = "red") -> ImageInput:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    data = buf.getvalue()
    return ImageInput(data=data, digest=hashlib.sha256(data).hexdigest(), mime="image/png", width=width,
                      height=height)


def card_ids(tokenizer, query: str, document: str) -> list[int]:
    return tokenizer(f"**Document**:\n{document}\n**Query**:\n{query}")["input_ids"] + [SCORE_TOKEN_ID]


def test_text_and_image_pairs_are_the_card_prompt(tokenizer):
    prompts = M0Prompts(tokenizer, 1024, PIXELS)
    page = image(100, 70)
    text, with_page = prompts.pairs("quarterly revenue", ["Revenue rose.", page])
    assert text.token_ids == card_ids(tokenizer, "quarterly revenue", "Revenue rose.") and text.images == []
    assert with_page.token_ids == card_ids(tokenizer, "quarterly revenue", IMAGE)
    assert [im.size for im in with_page.images] == [(100, 70)]
    # 100x70 is resized to 112x56: 4 x 2 tokens of 28x28 pixels
    assert with_page.image_tokens == 8 and with_page.length == len(with_page.token_ids) - 1 + 8


def test_an_image_query_with_an_image_document_hands_the_query_image_first(tokenizer):
    """vLLM's JinaVL processor reverses a pair's images (its scoring API gives them query first): handed over
    query first, they land in the prompt's order, document first."""
    (pair,) = M0Prompts(tokenizer, 1024, PIXELS).pairs(image(56, 56, "blue"), [image(84, 56, "green")])
    assert pair.token_ids == card_ids(tokenizer, IMAGE, IMAGE)
    assert [im.size for im in pair.images] == [(56, 56), (84, 56)]


def test_documents_are_cut_as_the_card_cuts_them(tokenizer):
    long = "word " * 400
    ids = tokenizer(long, add_special_tokens=False)["input_ids"]
    (cut,) = M0Prompts(tokenizer, 1024, PIXELS).pairs("q", [long], max_tokens_per_doc=10)
    assert cut.token_ids == card_ids(tokenizer, "q", tokenizer.decode(ids[:10]))
    (whole,) = M0Prompts(tokenizer, 128, PIXELS).pairs("q", [long])
    assert whole.token_ids == card_ids(tokenizer, "q", long)[:127] + [SCORE_TOKEN_ID]


def test_an_image_larger_than_the_model_takes_is_413_naming_it(tokenizer):
    with pytest.raises(PayloadTooLarge, match=r"documents\[1\]"):
        M0Prompts(tokenizer, 256, PIXELS).pairs("q", ["text", image(600, 600)])


def test_the_published_flat_config_loads_as_the_nested_one(tmp_path):
    """jina-reranker-m0's config.json as published (transformers 4's flat form: the language model's settings at the
    top level, rotary settings as rope_theta / rope_scaling) is recognised, and transformers (whose config class
    vLLM loads too) reads the same model from it as from transformers 5's nested form; its weights load."""
    import json
    import shutil

    from transformers import Qwen2VLConfig

    from scoring.config.schema import parse_app_config
    from scoring.cross_encoder.jina_m0 import checkpoint_is_jina_m0
    from tests.tiny_jina_m0 import build_tiny_jina_m0, transformers_model, write_flat_config

    nested = build_tiny_jina_m0(tmp_path / "nested")
    flat = write_flat_config(shutil.copytree(nested, tmp_path / "flat"))
    raw = json.loads((flat / "config.json").read_text())
    assert "text_config" not in raw and raw["hidden_size"] == 128 and raw["rope_scaling"]["type"] == "mrope"
    config = parse_app_config({"models": [{"name": "m0", "kind": "cross_encoder", "model": str(flat)}]})
    assert checkpoint_is_jina_m0(config.models[0])
    ours, theirs = Qwen2VLConfig.from_pretrained(flat), Qwen2VLConfig.from_pretrained(nested)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act"):
        assert getattr(ours.text_config, key) == getattr(theirs.text_config, key), key
    for key in ("rope_theta", "mrope_section", "rope_type"):
        assert ours.text_config.rope_parameters[key] == theirs.text_config.rope_parameters[key], key
    assert ours.tie_word_embeddings and ours.image_token_id == theirs.image_token_id
    assert ours.vision_config.to_dict() == theirs.vision_config.to_dict()
    transformers_model(flat)  # every published weight name has its place
