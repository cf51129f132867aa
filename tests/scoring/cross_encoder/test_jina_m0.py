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
