"""Images in requests over HTTP, against the default app (text only, default media settings): the bad-input table
as 4xx JSON errors naming the item and the cause, an image for the text-only model a 400 naming it, file:// and
http:// refused with no connection made, vLLM's content objects of text parts served and echoed as vLLM does, and
the app serving text afterwards."""

from __future__ import annotations

import base64
import io
import socket
import struct
import zlib

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

QUERY = "what is the capital of France?"
PARIS = "Paris is the capital and largest city of France."
DOCUMENTS = ["Bananas are rich in potassium.", PARIS, "The stock market closed higher on Tuesday."]


def png(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def bomb_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's header, not its pixels)."""
    data = bytearray(png())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "BMP")
    return buf.getvalue()


def image(url: str) -> dict:
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.fixture(scope="module")
def client(default_app):
    url, _ = default_app
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture
def listener():
    """A socket on 127.0.0.1 that tells whether anyone connected to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def rerank(*documents) -> dict:
    return {"query": QUERY, "documents": [DOCUMENTS[0], *documents]}


PNG = png()
# (route, body, status, words the message holds): the bad-input table of issue 28 on a text-only model
BAD_IMAGES = [
    ("/v1/rerank", rerank(image("data:image/png;base64,!!notbase64")), 422, "documents[1]: the data URL is not valid"),
    ("/v1/rerank", rerank(image(data_url(b"plain text, not an image"))), 422, "documents[1]: the data is not an image"),
    ("/v1/rerank", rerank(image(data_url(PNG[:-30]))), 422, "documents[1]: the image could not be decoded (truncated"),
    ("/rerank", rerank(image(data_url(bmp(), "image/bmp"))), 422, "documents[1]: BMP images are not accepted here"),
    ("/v1/rerank", rerank(image(data_url(bomb_header(12_000, 12_000)))), 413, "documents[1]: the image is 12000x12000"),
    ("/v1/rerank", rerank(image("data:text/plain;base64,aGk=")), 422, "documents[1]: a data URL must read"),
    ("/v1/rerank", rerank(image("ftp://127.0.0.1/page.png")), 400, "documents[1]: image URLs are data:, file: or"),
    ("/v1/rerank", rerank(image("file:///etc/passwd")), 400, "documents[1]: file:// URLs are not allowed here"),
    ("/v1/score", {"queries": image(data_url(b"not an image")), "documents": DOCUMENTS}, 422,
     "queries[0]: the data is not an image"),
    # shapes: one image part alone, known part types, /v2/rerank text only
    ("/v1/rerank", rerank({"content": [{"type": "text", "text": "a"}, image(data_url(PNG))["content"][0]]}), 422,
     "documents[1] has 1 image_url and 1 text parts"),
    ("/v1/rerank", rerank({"content": [{"type": "video_url", "video_url": {"url": "x"}}]}), 422,
     "does not match any of the expected tags: 'text', 'image_url'"),
    ("/v1/rerank", rerank({"content": []}), 422, "at least 1 item"),
    ("/v2/rerank", rerank(image(data_url(PNG))), 422, "/v2/rerank (Cohere's shape) takes text documents only"),
    # a valid image to the text-only model: refused naming the model, before any model work
    ("/v1/rerank", rerank(image(data_url(PNG))), 400, "model 'minilm-colbert' takes text only"),
    ("/v1/score", {"queries": QUERY, "documents": [image(data_url(PNG))]}, 400, "model 'minilm-colbert' takes text"),
    ("/v1/rerank", {"query": image(data_url(PNG)), "documents": DOCUMENTS}, 400, "model 'minilm-colbert' takes text"),
]  # fmt: skip


@pytest.mark.parametrize("path,body,status,words", BAD_IMAGES)
def test_bad_images_are_clear_4xx(client, path, body, status, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and error["type"]
    assert words in error["message"], error["message"]


def test_file_and_http_urls_are_refused_with_no_connection(client, listener):
    port = listener.getsockname()[1]
    for url, words in (
        (f"http://127.0.0.1:{port}/page.png", "downloads from 127.0.0.1 are not allowed here"),
        (f"https://127.0.0.1:{port}/page.png", "downloads from 127.0.0.1 are not allowed here"),
        (f"http://localhost:{port}/page.png", "downloads from localhost are not allowed here"),
        (f"file://127.0.0.1:{port}/etc/passwd", "file:// URLs are not allowed here"),
    ):
        r = client.post("/v1/rerank", json=rerank(image(url)))
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert not connected(listener)


def test_text_content_objects_are_served_and_echoed_as_vllm_does(client):
    """`{"content": [text parts]}` is the parts' text joined by a newline (vLLM's rule): the same scores as the
    strings, and each such document comes back as its parts (`multi_modal`), as vLLM's RerankDocument does."""
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["results"]
    parts = [{"type": "text", "text": d} for d in DOCUMENTS]
    body = {
        "query": {"content": [{"type": "text", "text": QUERY}]},
        "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, {"content": [parts[2]]}],
    }
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    results = {x["index"]: x for x in r.json()["results"]}
    assert {x["index"]: x["relevance_score"] for x in plain} == pytest.approx(
        {i: x["relevance_score"] for i, x in results.items()}, rel=1e-5
    )
    assert results[0]["document"] == {"text": DOCUMENTS[0]} and results[1]["document"] == {"text": DOCUMENTS[1]}
    assert results[2]["document"] == {"multi_modal": [parts[2]]}

    split = {"content": [{"type": "text", "text": "Paris is the capital"}, {"type": "text", "text": "of France."}]}
    joined = "Paris is the capital\nof France."
    scores = [
        client.post("/v1/score", json={"queries": QUERY, "documents": [doc]}).json()["data"][0]["score"]
        for doc in (split, joined)
    ]
    assert scores[0] == pytest.approx(scores[1], rel=1e-6)


def test_the_app_serves_text_after_bad_images(client):
    for path, body, _, _ in BAD_IMAGES:
        client.post(path, json=body)
    assert client.get("/health").status_code == 200
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 1
