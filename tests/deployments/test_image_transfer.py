"""Images cross to the scorer by reference (deployments/image_transfer.py): the specs carry digests, and the bytes
come back only where `attach` asks for them."""

import asyncio
import hashlib
import pickle

import ray.cloudpickle

from deployments.image_transfer import ImageByReference, attach, detach
from scoring.messages import DocumentSpec, ImageInput, QuerySpec


def image(data: bytes) -> ImageInput:
    return ImageInput(data=data, digest=hashlib.sha256(data).hexdigest(), mime="image/png", width=4, height=3,
                      source="data:image/png;base64")


def test_specs_carry_digests_and_the_bytes_come_back(serve_instance):
    page, other, query_image = image(b"page" * 1000), image(b"other" * 1000), image(b"query" * 1000)
    queries = [QuerySpec(model="m", text=query_image), QuerySpec(model="m", text="a text query")]
    documents = [DocumentSpec(texts=[page, "a text", other], max_tokens=7), DocumentSpec(texts=[other, page])]
    sent_queries, sent_documents = detach(queries, documents)
    # what the scorer receives: pickled as Ray pickles a call's arguments
    got_queries, got_documents = pickle.loads(ray.cloudpickle.dumps((sent_queries, sent_documents)))

    assert [q.key for q in got_queries] == [q.key for q in queries]  # the cache keys hold without the bytes
    assert got_documents[0].max_tokens == 7 and got_documents[0].texts[1] == "a text"
    by_reference = [t for d in got_documents for t in d.texts if not isinstance(t, str)]
    assert all(isinstance(t, ImageByReference) and t.data == b"" for t in by_reference)
    assert len({t.ref for t in by_reference} | {got_queries[0].text.ref}) == 1  # one object a request
    assert sorted({t.position for t in by_reference} | {got_queries[0].text.position}) == [0, 1, 2]  # each once

    items = [got_queries[0].text, *got_documents[1].texts, "a text"]
    attached = asyncio.run(attach(items))
    assert attached == [query_image, other, page, "a text"]
    assert all(type(item) is ImageInput for item in attached[:3])


def test_a_request_without_images_is_passed_as_it_is():
    queries, documents = [QuerySpec(model="m", text="q")], [DocumentSpec(texts=["a", "b"])]
    assert detach(queries, documents) == (queries, documents)
    assert asyncio.run(attach(["a", "b"])) == ["a", "b"]
