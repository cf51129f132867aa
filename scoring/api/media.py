"""Images in requests: the media policy (which URLs may be read), reading them, and checking the bytes (no Ray).

The ingress turns every `ImageRef` of a request into an `ImageInput` here, before any model work:
- `data:image/...;base64,` URLs are always read; `file://` only under `media.allowed_local_media_dirs` (real path,
  symlinks resolved, checked again on the opened file); `http(s)://` only from `media.allowed_media_hosts`, a
  redirect only on the same host, in bounded time and bytes, without blocking the event loop.
- The bytes must be one still image in an allowed format, within `max_image_bytes` and `max_image_pixels` (read
  from the header before any pixel is decoded), and decode fully (a truncated file fails here, not in an encoder).
- The `ImageInput` keeps the client's file bytes and their SHA-256 (every cache's key for the image), not decoded
  pixels or a re-encoded copy: the file is usually far smaller than its pixels, its hash does not depend on how it
  was sent, and the encoder decodes it with PIL as the model's processor expects.

Errors name the item (`documents[3]`, `query`) and the cause: 400 for a URL the policy refuses or a download that
fails, 413 for too many bytes or pixels, 422 for bytes that are not an acceptable image.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import io
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import pybase64

from scoring.api.requests import ImageRef, QueryGroup
from scoring.checkpoints import checkpoint_architectures
from scoring.config.schema import AppConfig, MediaConfig, ModelConfig
from scoring.errors import InvalidRequest, PayloadTooLarge, ValidationFailed
from scoring.messages import ImageInput, Item
from scoring.store.cache import ByteBoundedLRU

logger = logging.getLogger(__name__)

# Architectures (config.json) that vLLM 0.32 registers with an image input for scoring: late-interaction
# (`token_embed`) and the image cross-encoder.
VISION_ARCHITECTURES = frozenset(
    {
        "ColModernVBertForRetrieval",
        "ColPaliForRetrieval",
        "ColQwen3",
        "OpsColQwen3Model",
        "ColQwen3_5",
        "JinaVLForRanking",
    }
)
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
        "TIFF": "image/tiff"}  # fmt: skip
MAX_REDIRECTS = 3
CHUNK_BYTES = 1 << 16
DECODES_AT_ONCE = 2  # full decodes in threads at once: each holds up to max_image_pixels x 4 bytes
READS_AT_ONCE = 8  # files and downloads of one request at once
CHECKED_CACHE_BYTES = 16 * 2**20  # digests of checked images: about 65,000 at ~256 bytes each


def takes_images(model: ModelConfig) -> bool:
    """Whether a late-interaction or cross-encoder model reads images: its checkpoint is one of the vision families.
    Reads config.json: call once per model (`image_models`)."""
    if model.kind not in ("late_interaction", "cross_encoder"):
        return False
    return bool(VISION_ARCHITECTURES.intersection(checkpoint_architectures(model)))


def image_models(config: AppConfig) -> frozenset[str]:
    """The names of the models that take images; a cascade does when both its stages do (both see the documents)."""
    names = {m.name for m in config.models if m.kind != "cascade" and takes_images(m)}
    names |= {m.name for m in config.models if m.kind == "cascade" and {m.first, m.then} <= names}
    return frozenset(names)


def check_image(data: bytes, field: str, media: MediaConfig, source: str, digest: str | None = None) -> ImageInput:
    """`data` as an `ImageInput` if it is one still image the policy accepts, fully decoded once to prove it;
    else the error naming `field` and the cause. CPU-bound: run it in a thread."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > media.max_image_bytes:
        raise PayloadTooLarge(f"{field}: the image has {len(data)} bytes; the limit is {media.max_image_bytes}")
    try:
        # only the allowed decoders are tried: a format nobody allowed never reaches its parser
        with Image.open(io.BytesIO(data), formats=media.allowed_formats) as image:
            width, height = image.size
            if width * height > media.max_image_pixels:
                raise PayloadTooLarge(
                    f"{field}: the image is {width}x{height} = {width * height} pixels; the limit is "
                    f"{media.max_image_pixels}"
                )
            if getattr(image, "is_animated", False):
                raise ValidationFailed(f"{field}: the image is animated; an image item is one still image")
            image_format = image.format
            image.load()
    except UnidentifiedImageError:
        known = _known_format(data)
        if known is not None:
            raise ValidationFailed(
                f"{field}: {known} images are not accepted here; allowed: {', '.join(media.allowed_formats)}"
            ) from None
        raise ValidationFailed(
            f"{field}: the data is not an image (or not one in a format this service reads)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{field}: {exc}") from None
    except (PayloadTooLarge, ValidationFailed):
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError... for broken files
        raise ValidationFailed(f"{field}: the image could not be decoded (truncated or corrupt: {exc})") from None
    return ImageInput(
        data=data,
        digest=digest or hashlib.sha256(data).hexdigest(),
        mime=MIME.get(image_format, "application/octet-stream"),
        width=width,
        height=height,
        source=source,
    )


def _known_format(data: bytes) -> str | None:
    """The format of an image that no allowed decoder read, for the error message (header only)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=list(MIME)) as image:
            return image.format
    except Exception:
        return None


def base64_size(payload: str) -> int:
    """The bytes a base64 text decodes to: exact for valid base64, so an image is refused before decoding."""
    return len(payload) // 4 * 3 - payload[-2:].count("=")


def decode_data_url(url: str, field: str, media: MediaConfig) -> bytes:
    """The bytes of a `data:image/...;base64,` URL."""
    header, comma, payload = url.partition(",")
    mime = header[len("data:") :].split(";")[0].strip().lower()
    if not comma or not header.lower().endswith(";base64") or not mime.startswith("image/"):
        raise ValidationFailed(f"{field}: a data URL must read data:image/<type>;base64,<data>; got {header[:64]!r}")
    size = base64_size(payload)
    if size > media.max_image_bytes:
        payload = "".join(payload.split())  # line breaks counted no bytes
        size = base64_size(payload)
    if size > media.max_image_bytes:
        raise PayloadTooLarge(f"{field}: the image has {size} bytes; the limit is {media.max_image_bytes}")
    # pybase64 (SIMD) decodes a 150 KB page in 10 µs where the standard library's validating decoder takes 500;
    # line breaks in base64 are common and harmless: stripped only when the strict decode fails
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return pybase64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed(f"{field}: the data URL is not valid base64 ({exc})") from None


def local_path(url: str, field: str, media: MediaConfig) -> str:
    """The real path of a `file://` URL, if it lies under an allowed directory (symlinks and `..` resolved)."""
    if not media.allowed_local_media_dirs:
        raise InvalidRequest(f"{field}: file:// URLs are not allowed here (media.allowed_local_media_dirs is empty)")
    rest = url[len("file://") :]
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost") or not slash:
        raise InvalidRequest(f"{field}: a file URL must read file:///<absolute path>")
    real = os.path.realpath("/" + unquote(path))
    if not _under_allowed_dir(real, media):
        raise InvalidRequest(f"{field}: {url[:200]} is not under an allowed media directory")
    return real


def _under_allowed_dir(real: str, media: MediaConfig) -> bool:
    for allowed in media.allowed_local_media_dirs:
        root = os.path.realpath(allowed)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def read_file(path: str, url: str, field: str, media: MediaConfig) -> bytes:
    """At most max_image_bytes + 1 bytes of a file `local_path` allowed. Blocking: run it in a thread."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InvalidRequest(f"{field}: {url[:200]} does not exist") from None
    except OSError as exc:
        raise InvalidRequest(f"{field}: {url[:200]} cannot be read ({exc.strerror})") from None
    try:
        # the file opened is the one checked: a path component swapped for a symlink after the check shows here
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.exists() and not _under_allowed_dir(os.path.realpath(opened), media):
            raise InvalidRequest(f"{field}: {url[:200]} is not under an allowed media directory")
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise InvalidRequest(f"{field}: {url[:200]} is not a regular file")
        if status.st_size > media.max_image_bytes:
            raise PayloadTooLarge(
                f"{field}: the image has {status.st_size} bytes; the limit is {media.max_image_bytes}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(media.max_image_bytes + 1)
    finally:
        os.close(fd)


def allowed_host(url, media: MediaConfig) -> bool:
    """Whether a `yarl.URL` names a host (and port) of `media.allowed_media_hosts`."""
    import yarl

    host = (url.host or "").lower()
    for entry in media.allowed_media_hosts:
        allowed = yarl.URL(f"http://{entry}")
        if allowed.host == host and (allowed.explicit_port is None or allowed.explicit_port == url.port):
            return True
    return False


def allowed_url(url: str, field: str, media: MediaConfig):
    """An http(s) URL as a `yarl.URL` (the one the download uses, so the host checked is the host contacted), if its
    host is allowed."""
    import yarl

    try:
        target = yarl.URL(url)
    except (ValueError, IndexError, TypeError):  # yarl's parser raises these for malformed hosts
        raise ValidationFailed(f"{field}: {url[:200]} is not a valid URL") from None
    if not allowed_host(target, media):
        raise InvalidRequest(
            f"{field}: downloads from {target.host or '(no host)'} are not allowed here (media.allowed_media_hosts)"
        )
    return target


async def download(url: str, field: str, media: MediaConfig) -> bytes:
    """The body of an http(s) URL from an allowed host: redirects followed on the same host only, at most
    max_image_bytes + 1 bytes read, everything within fetch_timeout_s."""
    import aiohttp
    import yarl

    target = allowed_url(url, field, media)
    timeout = aiohttp.ClientTimeout(total=media.fetch_timeout_s)
    try:
        # trust_env off: no proxy from the environment; identity encoding: the byte cap counts what is decoded
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False, auto_decompress=False) as session:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(target, allow_redirects=False, headers={"Accept-Encoding": "identity"}) as r:
                    if r.status in (301, 302, 303, 307, 308) and "Location" in r.headers:
                        try:
                            following = target.join(yarl.URL(r.headers["Location"]))
                        except (ValueError, IndexError, TypeError):
                            raise InvalidRequest(f"{field}: {url[:200]} redirects to a malformed URL") from None
                        if (following.scheme, following.host, following.port) != (target.scheme, target.host,
                                                                                   target.port):  # fmt: skip
                            raise InvalidRequest(
                                f"{field}: {url[:200]} redirects to another host or port ({following.host}:"
                                f"{following.port}); redirects are followed on the same host only"
                            )
                        target = following
                        continue
                    if r.status != 200:
                        raise InvalidRequest(f"{field}: fetching {url[:200]} gave HTTP {r.status}")
                    if (r.content_length or 0) > media.max_image_bytes:
                        raise PayloadTooLarge(
                            f"{field}: the image has {r.content_length} bytes; the limit is {media.max_image_bytes}"
                        )
                    body = bytearray()
                    async for chunk in r.content.iter_chunked(CHUNK_BYTES):
                        body += chunk
                        if len(body) > media.max_image_bytes:
                            raise PayloadTooLarge(
                                f"{field}: the image has more than {media.max_image_bytes} bytes (the limit)"
                            )
                    return bytes(body)
            raise InvalidRequest(f"{field}: {url[:200]} redirects more than {MAX_REDIRECTS} times")
    except asyncio.TimeoutError:
        raise InvalidRequest(f"{field}: fetching {url[:200]} took longer than {media.fetch_timeout_s:g}s") from None
    except aiohttp.ClientError as exc:
        raise InvalidRequest(f"{field}: fetching {url[:200]} failed ({type(exc).__name__})") from None


class MediaLoader:
    """Reads and checks the images of requests for one ingress replica, a few at a time."""

    def __init__(self, media: MediaConfig, image_models: frozenset[str] = frozenset(),
                 cascades: dict[str, tuple[str, str]] | None = None):
        self.media = media
        self.image_models = image_models
        self.cascades = cascades or {}  # a cascade's stages, for why it takes no images
        # a pool of its own bounds the decodes at once (and their memory) on whatever loop calls
        self._decoder = ThreadPoolExecutor(DECODES_AT_ONCE, thread_name_prefix="image-decode")
        # digests of images that passed check_image under this policy
        self._checked: ByteBoundedLRU[tuple[str, int, int]] = ByteBoundedLRU(CHECKED_CACHE_BYTES, lambda _: 256)

    @classmethod
    def for_app(cls, config: AppConfig) -> "MediaLoader":
        """The loader of an ingress: reads each model's config.json once, to know which take images."""
        cascades = {m.name: (m.first, m.then) for m in config.models if m.kind == "cascade"}
        return cls(config.media, image_models(config), cascades)

    async def resolve(self, model: str, groups: list[QueryGroup]) -> list[QueryGroup]:
        """A request's groups with their images loaded, in the order that reads nothing it need not: every URL
        through the policy and every data URL decoded and checked (no I/O: any model gets these errors); then an
        image for a model that takes none is refused, before a file is read or a host contacted; then the files
        and downloads. Each distinct URL is loaded once; the first failure is the request's error."""
        items = (item for g in groups for item in (g.query, *g.documents))
        refs = list(dict.fromkeys(item for item in items if isinstance(item, ImageRef)))
        if not refs:
            return groups
        schemes = {ref: self.admit(ref) for ref in refs}
        budget = [self.media.max_request_image_bytes]
        loaded = await self._load_all([ref for ref in refs if schemes[ref] == "data"], budget)
        if model not in self.image_models:
            raise InvalidRequest(self._text_only(model))
        loaded |= await self._load_all([ref for ref in refs if schemes[ref] != "data"], budget)

        def item(value) -> Item:
            return loaded[value] if isinstance(value, ImageRef) else value

        return [replace(g, query=item(g.query), documents=[item(d) for d in g.documents]) for g in groups]

    def _text_only(self, model: str) -> str:
        served = ", ".join(sorted(self.image_models)) or "none"
        stages = [stage for stage in self.cascades.get(model, ()) if stage not in self.image_models]
        why = (f"a cascade whose stage {' and '.join(map(repr, stages))} is not a vision model" if stages
               else "its checkpoint is not a vision model")
        return f"model {model!r} takes text only ({why}); models here that take images: {served}"

    def admit(self, ref: ImageRef) -> str:
        """The URL's scheme if the policy lets it be read (no file is opened, no host contacted); else the error."""
        try:
            ref.url.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationFailed(f"{ref.field}: the URL contains invalid unicode (a lone surrogate)") from None
        if "\0" in ref.url:
            raise ValidationFailed(f"{ref.field}: the URL contains a NUL character")
        scheme = ref.url.partition(":")[0].lower()
        if scheme == "file":
            local_path(ref.url, ref.field, self.media)
        elif scheme in ("http", "https"):
            allowed_url(ref.url, ref.field, self.media)
        elif scheme != "data":
            raise InvalidRequest(
                f"{ref.field}: image URLs are data:, file: or http(s): URLs; got {(scheme or ref.url)[:32]!r}"
            )
        return scheme

    async def load(self, ref: ImageRef) -> ImageInput:
        """One image, read under the policy and checked."""
        url, field, media = ref.url, ref.field, self.media
        scheme = self.admit(ref)
        if scheme == "data":
            # the base64 too is decoded off the event loop
            header = url.partition(",")[0]  # the image's source: its bytes travel as `data`
            return await self._in_pool(lambda: self.check(decode_data_url(url, field, media), field, header))
        if scheme == "file":
            data = await asyncio.to_thread(read_file, local_path(url, field, media), url, field, media)
        else:
            data = await download(url, field, media)
        return await self._in_pool(self.check, data, field, url)

    def check(self, data: bytes, field: str, source: str) -> ImageInput:
        """`check_image`, done once per distinct file: the checks depend on the bytes and the policy alone, so a
        digest seen before skips the decode (a page image takes tens of ms to decode, its SHA-256 well under one)."""
        if len(data) > self.media.max_image_bytes:
            raise PayloadTooLarge(
                f"{field}: the image has {len(data)} bytes; the limit is {self.media.max_image_bytes}"
            )
        digest = hashlib.sha256(data).hexdigest()
        known = self._checked.get(digest)
        if known is not None:
            return ImageInput(data=data, digest=digest, mime=known[0], width=known[1], height=known[2], source=source)
        image = check_image(data, field, self.media, source, digest)
        self._checked.put(digest, (image.mime, image.width, image.height))
        return image

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._decoder, fn, *args)

    async def _load_all(self, refs: list[ImageRef], budget: list[int]) -> dict[ImageRef, ImageInput]:
        """`refs` loaded, a few at a time; `budget[0]`: the bytes the request's images may still take."""
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def load(ref: ImageRef) -> ImageInput:
            async with gate:
                image = await self.load(ref)
            budget[0] -= len(image.data)
            if budget[0] < 0:
                raise PayloadTooLarge(
                    f"{ref.field}: the request's images pass {self.media.max_request_image_bytes} bytes together "
                    "(media.max_request_image_bytes)"
                )
            return image

        tasks = [asyncio.ensure_future(load(ref)) for ref in refs]
        try:
            return dict(zip(refs, await asyncio.gather(*tasks)))
        finally:
            for task in tasks:
                task.cancel()
