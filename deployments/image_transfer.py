"""Page images go to the scorer by reference: their bytes are read only where an embedding is missing.

A request's images (a page is ~150 KB, 16 of them 2.4 MB) would otherwise be pickled into every scorer call and
copied into the scorer, which for a cached page needs its digest alone (the cache key). The ingress puts the
request's image bytes into Ray's object store once (`detach`); the scorer gets each image's digest and metadata
with a reference, and reads the bytes of the images whose embeddings it lacks (`attach`) before they go to the
encoders. The reference lives as long as the call that carries it (the ingress holds it until the scores are back).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from scoring.messages import DocumentSpec, ImageInput, Item, QuerySpec


@dataclass(frozen=True)
class ImageByReference(ImageInput):
    """An `ImageInput` whose bytes wait in the object store: `data` is empty until `attach` reads `ref`, a list of
    the request's image files, at `position`."""

    ref: Any = field(default=None, repr=False, compare=False)
    position: int = field(default=0, compare=False)


def detach(queries: list[QuerySpec], documents: list[DocumentSpec]) -> tuple[list[QuerySpec], list[DocumentSpec]]:
    """The specs with every image's bytes moved to one object of the request (unchanged when there is no image)."""
    images: dict[str, int] = {}  # digest -> position: a page sent twice in a request is put once
    payload: list[bytes] = []

    def position(image: ImageInput) -> int:
        if image.digest not in images:
            images[image.digest] = len(payload)
            payload.append(image.data)
        return images[image.digest]

    for item in (*(q.text for q in queries), *(t for d in documents for t in d.texts)):
        if isinstance(item, ImageInput):
            position(item)
    if not payload:
        return queries, documents
    ref = ray.put(payload)

    def by_reference(item: Item) -> Item:
        if not isinstance(item, ImageInput):
            return item
        return ImageByReference(data=b"", digest=item.digest, mime=item.mime, width=item.width, height=item.height,
                                source=item.source, ref=ref, position=images[item.digest])

    return (
        [replace(q, text=by_reference(q.text)) for q in queries],
        [replace(d, texts=[by_reference(t) for t in d.texts]) for d in documents],
    )


async def attach(items: list[Item]) -> list[Item]:
    """`items` with the bytes of each image by reference read back (each request's object read once)."""
    refs = list(dict.fromkeys(item.ref for item in items if isinstance(item, ImageByReference)))
    if not refs:
        return items
    payloads = dict(zip(refs, await asyncio.gather(*refs)))

    def attached(item: Item) -> Item:
        if not isinstance(item, ImageByReference):
            return item
        return ImageInput(data=payloads[item.ref][item.position], digest=item.digest, mime=item.mime,
                          width=item.width, height=item.height, source=item.source)

    return [attached(item) for item in items]
