"""The media policy and the image checks (scoring/api/media.py): every bad input a 4xx naming the item and the cause, no
file outside the allowed directories read, no host outside the allowed ones contacted. Images drawn with PIL; the
allowed-host cases against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from scoring.api.media import MediaLoader, image_models, takes_images
from scoring.api.protocol import RerankRequest, ScoreRequest
from scoring.api.requests import ImageRef, rerank_group, rerank_results, score_groups
from scoring.config.schema import MediaConfig, parse_app_config
from scoring.errors import InvalidRequest, PayloadTooLarge, ValidationFailed
from scoring.messages import ImageInput
from scoring.store.cache import item_key

APP = parse_app_config({})


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30), color: str = "red") -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.putpixel((1, 1), (0, 0, 255))
    image.save(buf, fmt)
    return buf.getvalue()


def noise_png(height: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (40, height), os.urandom(40 * height * 3)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb's header, without its pixels)."""
    png = bytearray(image_bytes())
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(png)


def animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def load(url: str, media: MediaConfig | None = None, field: str = "documents[3]") -> ImageInput:
    loader = MediaLoader(media or MediaConfig())
    return asyncio.run(loader.load(ImageRef(url=url, field=field)))


# bad data URLs and bytes: (url, error, words the message must hold)
PNG = image_bytes()
BAD_DATA = [
    ("data:image/png;base64,not*base64!", ValidationFailed, "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo", ValidationFailed, "not valid base64"),  # padding cut
    ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), ValidationFailed, "data:image/<type>;base64"),
    ("data:image/png," + "abc", ValidationFailed, "data:image/<type>;base64"),
    (data_url(b"hello, not an image at all"), ValidationFailed, "not an image"),
    (data_url(PNG[: len(PNG) - 30]), ValidationFailed, "truncated"),
    (data_url(image_bytes("JPEG", (64, 64))[:300], "image/jpeg"), ValidationFailed, "truncated"),
    (data_url(image_bytes("BMP"), "image/bmp"), ValidationFailed, "BMP images are not accepted"),
    (data_url(image_bytes("GIF"), "image/gif"), ValidationFailed, "GIF images are not accepted"),
    (data_url(png_claiming(12_000, 12_000)), PayloadTooLarge, "12000x12000 = 144000000 pixels; the limit is 50000000"),
    (data_url(png_claiming(200_000, 200_000)), PayloadTooLarge, "documents[3]"),  # past PIL's own bomb limit
    ("ftp://example.com/a.png", InvalidRequest, "data:, file: or http(s)"),
    ("gopher://127.0.0.1/", InvalidRequest, "data:, file: or http(s)"),
    ("no scheme at all", InvalidRequest, "data:, file: or http(s)"),
    ("file:///etc/passwd\0.png", ValidationFailed, "NUL"),
    ("http://127.0.0.1/\ud800", ValidationFailed, "lone surrogate"),
]


@pytest.mark.parametrize("url,error,words", BAD_DATA)
def test_bad_image_data_is_a_4xx_naming_item_and_cause(url, error, words):
    with pytest.raises(error) as caught:
        load(url)
    assert caught.value.message.startswith("documents[3]: ")
    assert words in caught.value.message
    assert 400 <= caught.value.status_code < 500


def test_base64_with_line_breaks_is_the_same_image_and_counts_no_bytes():
    noise = noise_png(30)
    header, _, payload = data_url(noise).partition(",")
    wrapped = header + "," + "\r\n".join(payload[i:i + 76] for i in range(0, len(payload), 76))  # MIME's 76 a line
    image = load(wrapped, MediaConfig(max_image_bytes=len(noise)))
    assert image.data == noise and image.digest == load(data_url(noise)).digest


def test_byte_and_pixel_limits():
    noise = noise_png(30)
    with pytest.raises(PayloadTooLarge, match=f"has {len(noise)} bytes; the limit is {len(noise) - 1}"):
        load(data_url(noise), MediaConfig(max_image_bytes=len(noise) - 1))
    assert load(data_url(noise), MediaConfig(max_image_bytes=len(noise))).height == 30
    with pytest.raises(PayloadTooLarge, match="40x30 = 1200 pixels; the limit is 1199"):
        load(data_url(PNG), MediaConfig(max_image_pixels=1199))
    assert load(data_url(PNG), MediaConfig(max_image_pixels=1200)).width == 40


def test_a_good_image_keeps_the_clients_bytes_and_their_digest():
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        data = image_bytes(fmt)
        image = load(data_url(data, mime))
        assert (image.data, image.digest) == (data, hashlib.sha256(data).hexdigest())
        assert (image.mime, image.width, image.height) == (mime, 40, 30)
    # the media type of a data URL is not trusted: the content says what it is
    assert load(data_url(PNG, "image/jpeg")).mime == "image/png"
    # base64 wrapped over lines (MIME style) is read
    wrapped = base64.encodebytes(PNG).decode()
    assert load("data:image/png;base64," + wrapped).digest == hashlib.sha256(PNG).hexdigest()


def test_formats_are_the_configured_ones_and_animation_is_refused():
    gif = MediaConfig(allowed_formats=["GIF"])
    assert load(data_url(image_bytes("GIF"), "image/gif"), gif).mime == "image/gif"
    with pytest.raises(ValidationFailed, match="animated"):
        load(data_url(animated_gif(), "image/gif"), gif)
    with pytest.raises(ValidationFailed, match="PNG images are not accepted here; allowed: GIF"):
        load(data_url(PNG), gif)


# files


@pytest.fixture
def media_dir(tmp_path):
    allowed = tmp_path / "pages"
    allowed.mkdir()
    (allowed / "page.png").write_bytes(PNG)
    (allowed / "sub").mkdir()
    (allowed / "sub" / "page two.png").write_bytes(PNG)
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    (allowed / "escape.png").symlink_to(outside)
    (allowed / "inside-link.png").symlink_to(allowed / "page.png")
    (tmp_path / "pages-sibling").mkdir()  # a prefix of the allowed dir's name is not inside it
    (tmp_path / "pages-sibling" / "x.png").write_bytes(PNG)
    return allowed


def test_file_urls_are_off_by_default(media_dir):
    with pytest.raises(InvalidRequest, match="file:// URLs are not allowed here"):
        load(f"file://{media_dir}/page.png")


def test_file_urls_read_only_under_allowed_dirs(media_dir):
    media = MediaConfig(allowed_local_media_dirs=[str(media_dir)])
    image = load(f"file://{media_dir}/page.png", media)
    assert image.digest == load(data_url(PNG)).digest  # one image, however it is sent
    assert image.source == f"file://{media_dir}/page.png"
    assert load(f"file://localhost{media_dir}/sub/page%20two.png", media).digest == image.digest
    assert load(f"file://{media_dir}/inside-link.png", media).digest == image.digest  # a link that stays inside
    for url in (
        f"file://{media_dir}/escape.png",  # a symlink out of the dir
        f"file://{media_dir}/../secret.png",
        f"file://{media_dir}/sub/../../secret.png",
        f"file://{media_dir.parent}/pages-sibling/x.png",
        "file:///etc/passwd",
        f"file://{media_dir.parent}/does-not-exist.png",  # outside: the same answer whether it exists or not
    ):
        with pytest.raises(InvalidRequest, match="is not under an allowed media directory"):
            load(url, media)
    with pytest.raises(InvalidRequest, match="does not exist"):
        load(f"file://{media_dir}/missing.png", media)
    with pytest.raises(InvalidRequest, match="not a regular file"):
        load(f"file://{media_dir}/sub", media)
    with pytest.raises(InvalidRequest, match="file:///<absolute path>"):
        load(f"file://otherhost{media_dir}/page.png", media)


def test_file_byte_cap_is_checked_before_reading(media_dir):
    (media_dir / "big.png").write_bytes(PNG + b"\0" * 5000)
    media = MediaConfig(allowed_local_media_dirs=[str(media_dir)], max_image_bytes=4096)
    with pytest.raises(PayloadTooLarge, match="the limit is 4096"):
        load(f"file://{media_dir}/big.png", media)


def test_allowed_dirs_must_be_absolute():
    with pytest.raises(ValueError, match="absolute"):
        MediaConfig(allowed_local_media_dirs=["pages"])
    with pytest.raises(ValueError, match=r"media.allowed_hosts: unknown key \(did you mean .allowed_media_hosts.\?\)"):
        parse_app_config({"media": {"allowed_hosts": ["x"]}})  # unknown keys are an error
    with pytest.raises(ValueError, match="without scheme"):
        MediaConfig(allowed_media_hosts=["http://x"])


# downloads


class Pages(BaseHTTPRequestHandler):
    """/page.png; /redirect?to=URL; /slow (headers, then nothing); /big (streams past any cap, no length);
    /declared (claims a huge Content-Length); /missing (404)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path == "/page.png":
            self._send(PNG)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG[:10])
            self.wfile.flush()
            time.sleep(3)
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no length: the body ends when the connection closes
            try:
                for _ in range(200):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass  # the client stopped reading at its cap
            self.close_connection = True
        elif self.path == "/declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    httpd.daemon_threads = True
    httpd.paths = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()


class Listener:
    """A socket listening on 127.0.0.1 that records whether anyone connected."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self):
        self.sock.close()


@pytest.fixture
def listener():
    sock = Listener()
    yield sock
    sock.close()


def allowed(**kwargs) -> MediaConfig:
    return MediaConfig(allowed_media_hosts=["127.0.0.1"], fetch_timeout_s=kwargs.pop("fetch_timeout_s", 5), **kwargs)


def test_downloads_are_off_by_default_and_nothing_is_contacted(listener):
    for url in (f"http://127.0.0.1:{listener.port}/page.png", f"https://127.0.0.1:{listener.port}/page.png"):
        with pytest.raises(InvalidRequest, match="downloads from 127.0.0.1 are not allowed here"):
            load(url)
    # another host than the allowed one, and a host hidden behind userinfo
    for url in (f"http://localhost:{listener.port}/page.png", f"http://127.0.0.1@localhost:{listener.port}/x"):
        with pytest.raises(InvalidRequest, match="downloads from localhost are not allowed"):
            load(url, allowed())
    with pytest.raises(InvalidRequest, match="not allowed"):
        load(f"http://127.0.0.1:{listener.port}/page.png", MediaConfig(allowed_media_hosts=["127.0.0.1:1"]))
    assert not listener.connected()


def test_an_allowed_host_is_downloaded_from(server):
    url, httpd = server
    image = load(f"{url}/page.png", allowed())
    assert image.digest == hashlib.sha256(PNG).hexdigest() and image.source == f"{url}/page.png"
    port = url.rsplit(":", 1)[1]
    assert load(f"{url}/page.png", MediaConfig(allowed_media_hosts=[f"127.0.0.1:{port}"])).width == 40
    # a redirect on the same host is followed
    assert load(f"{url}/redirect?to=/page.png", allowed()).digest == image.digest


def test_a_redirect_to_another_host_is_refused_unfetched(server, listener):
    url, _ = server
    for target in (f"http://localhost:{listener.port}/page.png", f"http://127.0.0.1:{listener.port}/page.png"):
        with pytest.raises(InvalidRequest, match="redirects to another host"):
            load(f"{url}/redirect?to={target}", allowed())
    assert not listener.connected()


def test_download_failures_are_4xx(server):
    url, _ = server
    with pytest.raises(InvalidRequest, match="gave HTTP 404"):
        load(f"{url}/missing", allowed())
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="took longer than 0.5s"):
        load(f"{url}/slow", allowed(fetch_timeout_s=0.5))
    assert time.monotonic() - started < 2.5  # the timeout cut it, not the server's end
    with pytest.raises(PayloadTooLarge, match="more than 100000 bytes"):
        load(f"{url}/big", allowed(max_image_bytes=100_000))
    with pytest.raises(PayloadTooLarge, match="1000000000 bytes; the limit is 100000"):
        load(f"{url}/declared", allowed(max_image_bytes=100_000))
    with pytest.raises(InvalidRequest, match="failed"):
        load("http://127.0.0.1:1/page.png", allowed())  # nothing listens there


# requests: item shapes, loading, the model check


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_content_items_text_parts_joined_or_one_image_alone():
    request = RerankRequest.model_validate(
        {
            "query": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            "documents": ["x", {"text": "y"}, {"content": [image_part(data_url(PNG))]}],
        }
    )
    group = rerank_group(request.query, request.documents, APP)
    assert group.query == "a\nb" and group.documents[:2] == ["x", "y"]
    assert group.documents[2] == ImageRef(url=data_url(PNG), field="documents[2]")
    for content, counts in (
        ([{"type": "text", "text": "look"}, image_part(data_url(PNG))], "1 image_url and 1 text parts"),
        ([image_part(data_url(PNG)), image_part(data_url(PNG))], "2 image_url and 0 text parts"),
    ):
        request = RerankRequest.model_validate({"query": "q", "documents": ["x", {"content": content}]})
        with pytest.raises(ValidationFailed, match=rf"documents\[1\] has {counts}"):
            rerank_group(request.query, request.documents, APP)


def test_rerank_echoes_image_documents_as_vllm_does():
    request = RerankRequest.model_validate(
        {"query": "q", "documents": ["x", {"content": [image_part("data:image/png;base64,AAAA")]}]}
    )
    import numpy as np

    results = rerank_results(np.array([0.1, 0.9]), request.documents, None, True)
    results = [r.model_dump(exclude_none=True) for r in results]
    assert results[0]["document"] == {"multi_modal": [image_part("data:image/png;base64,AAAA")]}
    assert results[1]["document"] == {"text": "x"}


def test_an_image_for_a_text_model_is_refused_before_anything_is_read(listener):
    request = RerankRequest.model_validate(
        {"query": "q", "documents": [{"content": [image_part(f"http://127.0.0.1:{listener.port}/p.png")]}]}
    )
    group = rerank_group(request.query, request.documents, APP)
    loader = MediaLoader(allowed(), image_models=frozenset({"colpali"}))
    with pytest.raises(InvalidRequest, match="model 'minilm-colbert' takes text only.*take images: colpali"):
        asyncio.run(loader.resolve("minilm-colbert", [group]))
    assert not listener.connected()
    text = rerank_group("q", ["a"], APP)
    assert asyncio.run(MediaLoader(MediaConfig()).resolve("minilm-colbert", [text])) == [text]


def test_what_needs_no_io_is_checked_for_any_model(listener):
    """A bad data URL or a URL the policy refuses gets its own error whatever the model (nothing was read for it);
    only then is a text-only model's refusal the answer."""
    loader = MediaLoader(MediaConfig(), image_models=frozenset())

    def resolve(*urls):
        documents = [{"content": [image_part(u)]} for u in urls]
        request = RerankRequest.model_validate({"query": "q", "documents": documents})
        return asyncio.run(loader.resolve("text", [rerank_group(request.query, request.documents, APP)]))

    with pytest.raises(ValidationFailed, match=r"documents\[1\]: the data is not an image"):
        resolve(data_url(PNG), data_url(b"not an image"))
    with pytest.raises(InvalidRequest, match=r"documents\[1\]: downloads from 127.0.0.1 are not allowed"):
        resolve(data_url(PNG), f"http://127.0.0.1:{listener.port}/p.png")
    with pytest.raises(InvalidRequest, match="model 'text' takes text only"):
        resolve(data_url(PNG))
    assert not listener.connected()


def test_groups_load_each_image_once_and_key_it_by_its_digest(media_dir):
    loader = MediaLoader(MediaConfig(allowed_local_media_dirs=[str(media_dir)]), frozenset({"colpali"}))
    file_url = f"file://{media_dir}/page.png"
    request = ScoreRequest.model_validate(
        {
            "queries": "q",
            "documents": [{"content": [image_part(data_url(PNG))]}, "text", {"content": [image_part(file_url)]}],
        }
    )
    groups, count = score_groups(request, APP)
    (group,) = asyncio.run(loader.resolve("colpali", groups))
    as_data, text, as_file = group.documents
    assert text == "text" and isinstance(as_data, ImageInput) and isinstance(as_file, ImageInput)
    # one key for the page however it came and whatever the text truncation; not the key of its digest as text
    assert item_key("colpali", as_data, None) == item_key("colpali", as_file, None) == item_key("colpali", as_file, 8)
    assert item_key("colpali", as_data, None) != item_key("colpali", as_data.digest, None)
    assert item_key("colpali", as_data, None) != item_key("other", as_data, None)
    assert as_data.source == "data:image/png;base64" and as_file.source == file_url


def test_the_images_of_a_request_are_bounded_together():
    pngs = [noise_png(30 + i) for i in range(3)]
    request = RerankRequest.model_validate(
        {"query": "q", "documents": [{"content": [image_part(data_url(p))]} for p in pngs]}
    )
    group = rerank_group(request.query, request.documents, APP)
    total = sum(len(p) for p in pngs)
    tight = MediaLoader(MediaConfig(max_request_image_bytes=total - 1), frozenset({"m"}))
    with pytest.raises(PayloadTooLarge, match=f"pass {total - 1} bytes together"):
        asyncio.run(tight.resolve("m", [group]))
    exact = MediaLoader(MediaConfig(max_request_image_bytes=total), frozenset({"m"}))
    (loaded,) = asyncio.run(exact.resolve("m", [group]))
    assert [d.height for d in loaded.documents] == [30, 31, 32]


def write_checkpoint(path, architectures):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": architectures}))
    return str(path)


def test_takes_images_reads_the_checkpoints_architectures(tmp_path):
    colpali = write_checkpoint(tmp_path / "colpali", ["ColPaliForRetrieval"])
    jina = write_checkpoint(tmp_path / "jina-m0", ["JinaVLForRanking"])
    bert = write_checkpoint(tmp_path / "bert", ["BertModel"])
    config = parse_app_config(
        {
            "models": [
                {"name": "text", "kind": "late_interaction"},  # the packaged MiniLM
                {"name": "colpali", "kind": "late_interaction", "model": colpali},
                {"name": "m0", "kind": "cross_encoder", "model": jina},
                {"name": "bert-ce", "kind": "cross_encoder", "model": bert},
                {"name": "overridden", "kind": "late_interaction", "model": bert,
                 "engine_kwargs": {"hf_overrides": {"architectures": ["ColQwen3"]}}},
                {"name": "missing", "kind": "late_interaction", "model": str(tmp_path / "nowhere")},
                {"name": "vision-cascade", "kind": "cascade", "first": "colpali", "then": "m0"},
                {"name": "mixed-cascade", "kind": "cascade", "first": "colpali", "then": "bert-ce"},
            ]
        }
    )  # fmt: skip
    assert takes_images(config.model_by_name("colpali")) and not takes_images(config.model_by_name("text"))
    assert image_models(config) == {"colpali", "m0", "overridden", "vision-cascade"}
    # a cascade with a text-only stage names that stage as the reason, not its own checkpoint
    request = RerankRequest.model_validate({"query": "q", "documents": [{"content": [image_part(data_url(PNG))]}]})
    image = rerank_group(request.query, request.documents, APP)
    with pytest.raises(InvalidRequest, match="'mixed-cascade' takes text only .a cascade whose stage 'bert-ce' is not"):
        asyncio.run(MediaLoader.for_app(config).resolve("mixed-cascade", [image]))


def test_an_image_is_decoded_once_per_loader(monkeypatch):
    """The checks depend on the bytes and the policy alone: a page seen before is not decoded again (its digest is
    computed each time), whatever URL brings it; a bad image is refused every time."""
    import scoring.api.media as media_module

    decoded = []
    real = media_module.check_image
    monkeypatch.setattr(media_module, "check_image", lambda data, *args: decoded.append(data) or real(data, *args))
    loader = MediaLoader(MediaConfig())
    first = asyncio.run(loader.load(ImageRef(data_url(PNG), "documents[0]")))
    again = asyncio.run(loader.load(ImageRef(data_url(PNG, "image/jpeg"), "documents[1]")))
    assert decoded == [PNG] and again == first and again.source == "data:image/jpeg;base64"
    for _ in range(2):
        with pytest.raises(ValidationFailed, match="truncated"):
            asyncio.run(loader.load(ImageRef(data_url(PNG[:-30]), "documents[2]")))
    assert len(decoded) == 3
    with pytest.raises(PayloadTooLarge, match="1200 pixels; the limit is 100"):  # another policy checks again
        asyncio.run(MediaLoader(MediaConfig(max_image_pixels=100)).load(ImageRef(data_url(PNG), "query")))


# any input: a 4xx or an image, never another exception

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scoring.errors import ServiceError  # noqa: E402

SEEDS = [PNG, image_bytes("JPEG"), image_bytes("WEBP"), image_bytes("GIF"), animated_gif()]
URL_PREFIXES = ["http://", "https://", "HTTP://", "file://", "file:///tmp/", "data:", "data:image/png;base64,",
                "http://127.0.0.1:1", "http://[", "ftp://", ""]  # fmt: skip


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_images())
def test_mutated_images_are_checked_or_refused_with_a_4xx(data):
    try:
        image = load(data_url(data), MediaConfig(allowed_formats=["PNG", "JPEG", "WEBP", "GIF"]))
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500 and exc.message.startswith("documents[3]: ")
    else:
        assert image.digest == hashlib.sha256(data).hexdigest() and image.width * image.height > 0


@settings(max_examples=300, deadline=None)
@given(url=st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(URL_PREFIXES), st.text(max_size=30)))
def test_any_url_is_a_4xx(url):
    media = MediaConfig(allowed_media_hosts=["example.invalid"], allowed_local_media_dirs=["/nonexistent-media"],
                        fetch_timeout_s=0.2)  # fmt: skip
    with pytest.raises(ServiceError) as caught:
        load(url, media)
    assert 400 <= caught.value.status_code < 500
