"""jina-reranker-m0 (`JinaVLForRanking`) as a cross_encoder over HTTP: text and image documents, image queries,
scored as the model card's `compute_score` documents it, written out here with transformers' Qwen2-VL classes and
the score head in torch (float32, to 1e-4). One app with the tiny checkpoint (tests/tiny_jina_m0.py)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.tiny_jina_m0 import SERVICE_PIXELS, build_tiny_jina_m0, card_scorer

pytestmark = pytest.mark.e2e



def page(size: tuple[int, int], color: tuple[int, int, int], text: str = "") -> bytes:
    """A PNG drawn with PIL: a coloured page with a box and a line of text."""
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.rectangle([4, 4, size[0] // 2, size[1] // 2], outline=(255, 255, 255), width=3)
    draw.text((6, size[1] - 14), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def image_item(data: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


PAGES = [page((56, 84), (200, 30, 30), "revenue"), page((140, 112), (30, 90, 200), "table 3"),
         page((100, 70), (20, 160, 60), "map")]  # 100x70: not a multiple of 28, resized as the card resizes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_jina_m0(tmp_path_factory.mktemp("tiny-jina-m0"))


@pytest.fixture(scope="module")
def m0_app(serve_instance, checkpoint):
    from ray import serve

    from deployments.app import build_app

    args = {"models": [{"name": "tiny-m0", "kind": "cross_encoder", "model": str(checkpoint), "max_model_len": 256,
                        "cpu_kv_cache_bytes": 67108864, "engine_kwargs": {"mm_processor_kwargs": SERVICE_PIXELS}}]}
    handle = serve.run(build_app(args), name="image-cross-encoder", route_prefix="/m0")
    yield f"{serve_instance}/m0", handle
    serve.delete("image-cross-encoder")


@pytest.fixture(scope="module")
def client(m0_app):
    with httpx.Client(base_url=m0_app[0], timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def card_score(checkpoint):
    return card_scorer(checkpoint)


def test_checkpoint_takes_images(checkpoint):
    from scoring.api.media import takes_images
    from scoring.config.schema import parse_app_config

    config = parse_app_config({"models": [{"name": "m0", "kind": "cross_encoder", "model": str(checkpoint)}]})
    assert takes_images(config.models[0])


def test_rerank_image_and_text_documents_equal_the_card(client, card_score):
    query = "quarterly revenue table"
    documents = [PAGES[0], "Revenue rose 4% in the third quarter.", PAGES[1], "Bananas are yellow.", PAGES[2]]
    body = {"model": "tiny-m0", "query": query, "return_documents": False,
            "documents": [image_item(d) if isinstance(d, bytes) else d for d in documents]}
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = [card_score(query, d) for d in documents]
    served = {r["index"]: r["relevance_score"] for r in result["results"]}
    np.testing.assert_allclose([served[i] for i in range(len(documents))], [s for s, _ in expected], atol=1e-4)
    assert np.ptp([s for s, _ in expected]) > 0.05  # the documents' scores differ: the test can tell them apart
    assert [r["index"] for r in result["results"]] == list(np.argsort([-s for s, _ in expected], kind="stable"))
    assert result["usage"]["prompt_tokens"] == sum(tokens for _, tokens in expected)


def test_image_query_equals_the_card(client, card_score):
    """An image query against a text and an image document (two images in one pair: document first)."""
    query = page((84, 56), (240, 200, 20), "query")
    documents = ["A yellow page with a box.", PAGES[1]]
    response = client.post("/score", json={"model": "tiny-m0", "queries": image_item(query),
                                           "documents": [documents[0], image_item(documents[1])]})
    assert response.status_code == 200, response.text
    expected = [card_score(query, d)[0] for d in documents]
    np.testing.assert_allclose([d["score"] for d in response.json()["data"]], expected, atol=1e-4)


@pytest.mark.parametrize(
    "url, status, cause",
    [("data:image/png;base64,not base64!", 422, "base64"),
     ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), 422, "not an image"),
     ("data:image/png;base64," + base64.b64encode(PAGES[0][:60]).decode(), 422, "")],
)
def test_bad_images_are_4xx_naming_the_document(client, url, status, cause):
    body = {"model": "tiny-m0", "query": "q",
            "documents": ["text", {"content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert "documents[1]" in message and cause in message
    assert client.post("/v1/rerank", json={"model": "tiny-m0", "query": "q", "documents": [image_item(PAGES[0])]}
                       ).status_code == 200
