"""A vision late-interaction checkpoint (ColModernVBert, tiny and random, in transformers' `save_pretrained` layout)
given by path alone, through a real vLLM engine and Ray Serve, scored as its own library scores it.

The reference is transformers' own classes on the same checkpoint: `ColModernVBertProcessor.process_images` for image
documents, `process_queries` for queries, the processor's tokenization for text documents,
`ColModernVBertForRetrieval` for the embeddings and `processor.score_retrieval` for the scores (float32).
Images are sent over HTTP as data URLs and file URLs (the media branch's request shape), and to the deployments'
handles as the ingress hands them on (`ImageInput`: the file's bytes and their SHA-256).
A tiny ColPali (`ColPaliForRetrieval`, transformers' layout) is served in the same app and checked the same way
against `ColPaliProcessor` + `ColPaliForRetrieval`.
A tiny ColQwen3 in TomoroAI's layout shares the app: its reference is the model card's computation written out
(tests/tiny_colqwen3.py: its processor's prompts and image processing, transformers' Qwen3-VL, the projection with
its bias, L2 normalisation), its pages of a few image tokens each.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shutil

import httpx
import numpy as np
import pytest
import torch

from scoring.messages import DocumentSpec, ImageInput, QuerySpec
from tests.conftest import ROOT
from tests.tiny_colmodernvbert import build_tiny_colmodernvbert
from tests.tiny_colqwen3 import CardReference, build_tiny_colqwen3
from tests.tiny_jina_m0 import SERVICE_PIXELS, build_tiny_jina_m0, card_scorer, write_flat_config
from tests.tiny_colpali import build_tiny_colpali

pytestmark = pytest.mark.e2e

MODEL = "colmodernvbert-tiny"
COLQWEN3 = "colqwen3-tiny"
M0 = "tiny-m0"  # jina-reranker-m0 from its published (flat) config.json: the second stage of CASCADE
CASCADE = "vision-cascade"
COLPALI = "colpali-tiny"  # ColPaliForRetrieval in transformers' save_pretrained layout, served beside it
QUERIES = ["what does the chart on this page show?", "red"]
TEXTS = ["quarterly revenue grew by ten percent", "a"]


def page(seed: int, size: tuple[int, int] = (48, 64), fmt: str = "PNG") -> ImageInput:
    """A random image file, as the ingress decodes it from a URL."""
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    data = buffer.getvalue()
    return ImageInput(data=data, digest=hashlib.sha256(data).hexdigest(), mime=f"image/{fmt.lower()}",
                      width=size[0], height=size[1], source=f"data:{seed}")


class Reference:
    """transformers' processor + retrieval model on the checkpoint (ColModernVBert's unless `retrieval` names
    another), float32."""

    def __init__(self, path, retrieval: str = "ColModernVBertForRetrieval"):
        import transformers
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(path))
        self.model = getattr(transformers, retrieval).from_pretrained(str(path)).to(torch.float32).eval()

    def _embed(self, batch) -> list[torch.Tensor]:
        with torch.no_grad():
            out = self.model(**batch).embeddings
        mask = batch["attention_mask"].bool()
        return [out[i][mask[i]] for i in range(out.shape[0])]

    def document(self, item) -> torch.Tensor:
        if isinstance(item, str):
            return self._embed(self.processor(text=[item]))[0]
        from PIL import Image

        return self._embed(self.processor.process_images([Image.open(io.BytesIO(item.data))]))[0]

    def scores(self, query: str, documents: list) -> np.ndarray:
        """`score_retrieval` of each document on its own: given several, it pads the shorter ones with zero rows,
        which then enter the max (a short text's score would depend on the longest document beside it)."""
        q = self._embed(self.processor.process_queries([query]))
        return np.array([self.processor.score_retrieval(q, [self.document(d)])[0, 0].item() for d in documents])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_colmodernvbert(tmp_path_factory.mktemp("colmodernvbert") / "ckpt")


@pytest.fixture(scope="module")
def reference(checkpoint):
    return Reference(checkpoint)


@pytest.fixture(scope="module")
def colqwen3_checkpoint(tmp_path_factory):
    return build_tiny_colqwen3(tmp_path_factory.mktemp("colqwen3") / "ckpt")


@pytest.fixture(scope="module")
def card(colqwen3_checkpoint):
    return CardReference(colqwen3_checkpoint)


@pytest.fixture(scope="module")
def m0_checkpoint(tmp_path_factory):
    return write_flat_config(build_tiny_jina_m0(tmp_path_factory.mktemp("tiny-jina-m0-flat")))


@pytest.fixture(scope="module")
def m0_card(m0_checkpoint):
    """The m0 card's computation (tests/tiny_jina_m0.py): (score, prompt tokens) of a query and a document."""
    return card_scorer(m0_checkpoint)


@pytest.fixture(scope="module")
def colpali_checkpoint(tmp_path_factory):
    return build_tiny_colpali(tmp_path_factory.mktemp("colpali") / "ckpt")


@pytest.fixture(scope="module")
def colpali_reference(colpali_checkpoint):
    return Reference(colpali_checkpoint, "ColPaliForRetrieval")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A folder the app may read `file://` pages from."""
    return tmp_path_factory.mktemp("pages")


def data_url(image: ImageInput) -> dict:
    url = f"data:{image.mime};base64," + base64.b64encode(image.data).decode()
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


def file_url(image: ImageInput, folder) -> dict:
    path = folder / f"{image.digest[:12]}.{image.mime.split('/')[1]}"
    path.write_bytes(image.data)
    return {"content": [{"type": "image_url", "image_url": {"url": path.as_uri()}}]}


@pytest.fixture(scope="module")
def vision_app(serve_instance, checkpoint, m0_checkpoint, colpali_checkpoint, colqwen3_checkpoint, pages):
    """The checkpoint by path alone (plus this machine's memory settings), in one app that reads files from
    `pages`; beside it jina-reranker-m0 and a cascade from the vision model to it."""
    from ray import serve

    from deployments.app import build_app
    from scoring.late_interaction.vision import vision_engine_layout

    layout = vision_engine_layout(checkpoint)  # written here first, so the test removes it afterwards
    args = {
        "models": [{"name": MODEL, "kind": "late_interaction", "model": str(checkpoint),
                    "cpu_kv_cache_bytes": 67108864, "max_model_len": 128},
                   {"name": M0, "kind": "cross_encoder", "model": str(m0_checkpoint), "max_model_len": 256,
                    "cpu_kv_cache_bytes": 67108864, "engine_kwargs": {"mm_processor_kwargs": SERVICE_PIXELS}},
                   {"name": CASCADE, "kind": "cascade", "first": MODEL, "then": M0, "candidates": 2},
                   {"name": COLPALI, "kind": "late_interaction", "model": str(colpali_checkpoint),
                    "cpu_kv_cache_bytes": 67108864, "max_model_len": 128},
                   # a page of ColQwen3 takes up to 1280 image tokens: the engine's length holds one whole
                   {"name": COLQWEN3, "kind": "late_interaction", "model": str(colqwen3_checkpoint),
                    "cpu_kv_cache_bytes": 67108864, "max_model_len": 1536}],
        "cache": {"document_dtype": "float32"},  # fp16 storage would round scores past 1e-4
        "media": {"allowed_local_media_dirs": [str(pages)]},
    }
    try:
        serve.run(build_app(args), name="vision", route_prefix="/vision")
        yield f"{serve_instance}/vision"
        serve.delete("vision")
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def _handles():
    from ray import serve

    from deployments.app import SCORER_DEPLOYMENT, encoder_deployment_name

    return (serve.get_deployment_handle(SCORER_DEPLOYMENT, app_name="vision"),
            serve.get_deployment_handle(encoder_deployment_name(MODEL), app_name="vision"))


def _score(scorer, query, documents):
    return scorer.score.remote([QuerySpec(MODEL, query)], [DocumentSpec(documents)]).result()[0]


def test_image_and_text_documents_score_as_transformers_fresh_and_cached(vision_app, reference):
    scorer, _ = _handles()
    documents = [page(1), TEXTS[0], page(2, (90, 40), "JPEG"), TEXTS[1], page(3, (32, 32))]
    for query in QUERIES:
        expected = reference.scores(query, documents)
        fresh = _score(scorer, query, documents)
        cached = _score(scorer, query, documents)
        np.testing.assert_allclose(fresh.scores, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(cached.scores, expected, atol=1e-4, rtol=0)
        assert cached.document_cache_hits == len(documents)
    # an image a model gives 4 image tokens inside its 19-token visual prompt: usage counts them all
    assert fresh.document_tokens == sum(len(reference.document(d)) for d in documents)


def test_the_same_image_from_two_urls_is_one_cache_entry(vision_app, reference):
    scorer, encoder = _handles()
    image = page(10)
    as_file = ImageInput(data=image.data, digest=image.digest, mime=image.mime, width=image.width,
                         height=image.height, source="file:///pages/10.png")
    first = _score(scorer, QUERIES[0], [image])
    before = scorer.stats.remote().result()["document_cache"]
    second = _score(scorer, QUERIES[0], [as_file])
    after = scorer.stats.remote().result()["document_cache"]
    assert second.document_cache_hits == 1
    assert (after["entries"], after["bytes"], after["evictions"]) == (before["entries"], before["bytes"],
                                                                      before["evictions"])
    assert (after["hits"], after["misses"]) == (before["hits"] + 1, before["misses"])
    np.testing.assert_allclose(second.scores, first.scores, atol=0, rtol=0)
    # the encoder's own cache keys it by the digest too
    encoder.encode_documents.remote([image]).result()
    before = encoder.stats.remote().result()["encoder_document_cache"]
    encoder.encode_documents.remote([as_file]).result()
    encoder.encode_documents.remote([as_file], 8).result()  # a text truncation does not split an image's entry
    after = encoder.stats.remote().result()["encoder_document_cache"]
    assert after["hits"] == before["hits"] + 2 and after["misses"] == before["misses"]
    assert after["entries"] == before["entries"]


def test_concurrent_requests_image_documents_are_batched_and_score_as_transformers(vision_app, reference):
    scorer, _ = _handles()
    requests = [[page(100 + 3 * i), page(101 + 3 * i), TEXTS[0]] for i in range(8)]
    before = scorer.stats.remote().result()["encode_batches"]

    async def all_at_once():
        return await asyncio.gather(*(scorer.score.remote([QuerySpec(MODEL, QUERIES[0])], [DocumentSpec(docs)])
                                      for docs in requests))

    results = asyncio.run(all_at_once())
    after = scorer.stats.remote().result()["encode_batches"]
    for docs, result in zip(requests, results):
        np.testing.assert_allclose(result[0].scores, reference.scores(QUERIES[0], docs), atol=1e-4, rtol=0)
    # every request with documents to encode is one job; jobs arriving together share a batch
    jobs, batches = after["jobs"] - before["jobs"], after["batches"] - before["batches"]
    assert jobs == len(requests) and batches < jobs


def _rerank(url: str, query, documents: list, model: str = MODEL, **options) -> np.ndarray:
    r = httpx.post(f"{url}/v1/rerank", json={"model": model, "query": query, "documents": documents,
                                             "return_documents": False, **options}, timeout=120)
    assert r.status_code == 200, r.text
    got = {result["index"]: result["relevance_score"] for result in r.json()["results"]}
    return np.array([got[i] for i in range(len(documents))])


def test_image_rerank_over_http_scores_as_transformers_fresh_and_cached(vision_app, reference, pages):
    images = [page(20), page(21, (120, 30), "JPEG"), page(22, (16, 16))]
    documents = [data_url(images[0]), TEXTS[0], file_url(images[1], pages), data_url(images[2])]
    expected = reference.scores(QUERIES[0], [images[0], TEXTS[0], images[1], images[2]])
    for _ in range(2):  # fresh, then from the caches
        np.testing.assert_allclose(_rerank(vision_app, QUERIES[0], documents), expected, atol=1e-4, rtol=0)


def test_a_page_as_data_url_then_file_url_is_one_entry(vision_app, reference, pages):
    """The same page as a data URL, as an allowed file URL, and under a text truncation (`max_tokens_per_doc`, which
    does not change an image's embeddings): one entry in the scorer's store, asked of the encoder once."""
    scorer, encoder = _handles()
    image = page(30)
    encoded_before = encoder.stats.remote().result()["encoder_document_cache"]
    first = _rerank(vision_app, QUERIES[1], [data_url(image)])
    before = scorer.stats.remote().result()["document_cache"]
    second = _rerank(vision_app, QUERIES[1], [file_url(image, pages)])
    truncated = _rerank(vision_app, QUERIES[1], [file_url(image, pages)], max_tokens_per_doc=8)
    after = scorer.stats.remote().result()["document_cache"]
    encoded_after = encoder.stats.remote().result()["encoder_document_cache"]
    assert (after["entries"], after["bytes"]) == (before["entries"], before["bytes"])
    assert (after["hits"], after["misses"]) == (before["hits"] + 2, before["misses"])
    assert encoded_after["entries"] == encoded_before["entries"] + 1
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(truncated, first)
    np.testing.assert_allclose(first, reference.scores(QUERIES[1], [image]), atol=1e-4, rtol=0)


def test_an_image_query_is_encoded_as_process_images_encodes_it(vision_app, reference):
    image = page(40)
    query = reference.document(image).unsqueeze(0)  # a page as the query: the visual prompt, as process_images
    expected = [reference.processor.score_retrieval(query, [reference.document(t)])[0, 0].item() for t in TEXTS]
    np.testing.assert_allclose(_rerank(vision_app, data_url(image), TEXTS), expected, atol=1e-4, rtol=0)


def test_text_rerank_over_http_scores_as_transformers(vision_app, reference):
    r = httpx.post(f"{vision_app}/v1/rerank", json={"model": MODEL, "query": QUERIES[0], "documents": TEXTS},
                   timeout=120)
    assert r.status_code == 200, r.text
    got = {result["index"]: result["relevance_score"] for result in r.json()["results"]}
    expected = reference.scores(QUERIES[0], TEXTS)
    np.testing.assert_allclose([got[i] for i in range(len(TEXTS))], expected, atol=1e-4, rtol=0)


def test_models_show_the_processor_encoding(vision_app, reference):
    r = httpx.get(f"{vision_app}/v1/models", timeout=60)
    assert r.status_code == 200, r.text
    encoding = next(card for card in r.json()["data"] if card["id"] == MODEL)["encoding"]
    processor = reference.processor
    assert encoding["format"] == "colmodernvbert"
    # at most: a page of 2 x 2 tiles (48 x 64 pixels, resized to a longest edge of 64) and its global image
    assert encoding["image_tokens"] == processor.image_seq_len * (2 * 2 + 1) == 20
    assert encoding["image_document_tokens"] == len(reference.document(page(0))) == 43
    assert encoding["visual_prompt"] == processor.visual_prompt_prefix
    assert (encoding["query_augmentation"], encoding["query_augmentation_count"]) == ("<end_of_utterance>", 10)


def test_long_text_documents_chunk_beside_whole_images(vision_app, reference):
    """`long_documents: chunk` on a vision model: a text document past the engine's length is cut into windows of
    the processor's tokenizer and scores as its best window sent alone; an image is one input (no `chunk`)."""
    long_text = " ".join(f"section {i}: the quarterly revenue table lists region {i}." for i in range(40))
    image = page(50)
    r = httpx.post(f"{vision_app}/v1/rerank", json={
        "model": MODEL, "query": QUERIES[0], "documents": [long_text, data_url(image)],
        "long_documents": "chunk", "return_documents": False}, timeout=120)
    assert r.status_code == 200, r.text
    results = {x["index"]: x for x in r.json()["results"]}
    assert "chunk" not in results[1]
    assert results[1]["relevance_score"] == pytest.approx(reference.scores(QUERIES[0], [image])[0], abs=1e-4)
    start, end = results[0]["chunk"]["start"], results[0]["chunk"]["end"]
    assert 0 <= start < end <= len(long_text) and end - start < len(long_text)
    window = long_text[start:end]
    assert results[0]["relevance_score"] == pytest.approx(reference.scores(QUERIES[0], [window])[0], abs=1e-4)


def _pil(image: ImageInput):
    from PIL import Image

    return Image.open(io.BytesIO(image.data))


def _colqwen3_expected(card: CardReference, query, documents: list) -> np.ndarray:
    def embed(item):
        return card.embed_text(item) if isinstance(item, str) else card.embed_image(_pil(item))

    q = embed(query)
    return np.array([card.score(q, embed(d)) for d in documents])


def test_colqwen3_scores_as_its_model_card_fresh_and_cached(vision_app, card, pages):
    """Image documents (data and file URLs, several sizes: each its own image token count), text documents (the
    card's `process_texts`, augmentation included) and an image query, over HTTP, fresh then from the caches."""
    images = [page(60), page(61, (120, 30), "JPEG"), page(62, (16, 16)), page(63, (100, 70))]
    documents = [data_url(images[0]), TEXTS[0], file_url(images[1], pages), data_url(images[2]), TEXTS[1],
                 data_url(images[3])]
    items = [images[0], TEXTS[0], images[1], images[2], TEXTS[1], images[3]]
    expected = _colqwen3_expected(card, QUERIES[0], items)
    scorer, _ = _handles()
    before = scorer.stats.remote().result()["document_cache"]
    for _ in range(2):  # fresh, then from the caches
        got = _rerank(vision_app, QUERIES[0], documents, COLQWEN3)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    after = scorer.stats.remote().result()["document_cache"]
    assert after["hits"] - before["hits"] == len(documents)
    as_query = _rerank(vision_app, data_url(images[3]), TEXTS, COLQWEN3)
    np.testing.assert_allclose(as_query, _colqwen3_expected(card, images[3], TEXTS), atol=1e-4, rtol=0)


def test_colqwen3_models_show_the_cards_encoding(vision_app):
    r = httpx.get(f"{vision_app}/v1/models", timeout=60)
    assert r.status_code == 200, r.text
    encoding = next(card for card in r.json()["data"] if card["id"] == COLQWEN3)["encoding"]
    assert encoding["format"] == "colqwen3"
    assert encoding["visual_prompt"] == CardReference.VISUAL_PROMPT
    assert (encoding["query_augmentation"], encoding["query_augmentation_count"]) == ("<|endoftext|>", 10)
    assert (encoding["image_tokens"], encoding["embedding_dim"]) == (1280, 32)


def test_colqwen3_vllm_processing_gives_the_cards_ids_and_pixels(colqwen3_checkpoint, card):
    """vLLM's Qwen3-VL processing (through this service's plugin, without torchvision) of the prompt the encoder
    sends: the card's ids and pixels exactly, a page over the 1280-token cap resized down as the card resizes it."""
    from pathlib import Path

    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    from deployments.qwen2_vl_compat import register
    from scoring.late_interaction.colqwen3 import ColQwen3Prompts, engine_args

    register()
    path = Path(colqwen3_checkpoint)
    config = ModelConfig(model=str(path), runner="pooling", dtype="float32", max_model_len=1536, **engine_args(path))
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    ids = ColQwen3Prompts(path, 1536, 32).image_document_ids()
    for size in [(48, 64), (120, 30), (16, 16), (2000, 1500)]:
        image = _pil(page(size[0], size))
        items = processor.info.parse_mm_data({"image": [image]})
        out = processor.apply(ProcessorInputs(prompt=ids, mm_data_items=items), TimingContext())
        expected = card.image_inputs(image)
        item = out["mm_kwargs"]["image"][0]
        assert out["prompt_token_ids"] == expected["input_ids"], size
        assert item["image_grid_thw"].data.tolist() == expected["image_grid_thw"][0].tolist(), size
        assert torch.equal(item["pixel_values"].data, expected["pixel_values"]), size
    assert expected["input_ids"].count(card.image_token_id) == 60 * 82 // 4 <= 1280


def test_m0_from_its_published_flat_config_scores_as_the_card(vision_app, m0_card):
    """jina-reranker-m0's config.json as published (transformers 4's flat form: no text_config) serves as the
    nested one does: image and text documents, an image query, each the card's score."""
    image = page(70, (84, 56))
    body = {"model": M0, "query": QUERIES[0], "documents": [data_url(image), TEXTS[0]], "return_documents": False}
    r = httpx.post(f"{vision_app}/v1/rerank", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    expected = [m0_card(QUERIES[0], image.data)[0], m0_card(QUERIES[0], TEXTS[0])[0]]
    np.testing.assert_allclose([got[0], got[1]], expected, atol=1e-4, rtol=0)
    r = httpx.post(f"{vision_app}/v1/score", json={"model": M0, "queries": data_url(image), "documents": TEXTS[:1]},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["score"] == pytest.approx(m0_card(image.data, TEXTS[0])[0], abs=1e-4)


def test_a_cascade_from_the_vision_model_ranks_images_as_its_stages_references(vision_app, reference, m0_card, pages):
    """A cascade whose first stage is the vision late-interaction model: it ranks image documents (data and file
    URLs) and texts as transformers' ColModernVBert scores them; jina-reranker-m0 rescores its best two, each as the
    card scores it; the two come first in m0's order, the rest in the first stage's."""
    images = [page(60), page(61, (90, 40), "JPEG"), page(62, (32, 32)), page(63)]
    documents = [images[0], TEXTS[0], images[1], images[2], TEXTS[1], images[3]]
    wire = [data_url(images[0]), TEXTS[0], file_url(images[1], pages), data_url(images[2]), TEXTS[1],
            data_url(images[3])]
    first = reference.scores(QUERIES[0], documents)
    by_first = [int(i) for i in np.argsort(-first, kind="stable")]
    candidates = by_first[:2]
    second = {i: m0_card(QUERIES[0], getattr(documents[i], "data", documents[i]))[0] for i in candidates}
    r = httpx.post(f"{vision_app}/v1/rerank", json={"model": CASCADE, "query": QUERIES[0], "documents": wire,
                                                    "return_documents": False}, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == sorted(candidates, key=lambda i: -second[i]) + by_first[2:]
    for x in results:
        assert x["relevance_score"] == pytest.approx(second.get(x["index"], first[x["index"]]), abs=1e-4)


def test_colpali_over_http_scores_as_transformers_fresh_and_cached(vision_app, colpali_reference, pages):
    """ColPali's page images (data and file URLs, any size: PaliGemma resizes them) and text documents, scored as
    `ColPaliProcessor` + `ColPaliForRetrieval` score them, first encoded, then from the caches."""
    scorer, _ = _handles()
    images = [page(60), page(61, (120, 30), "JPEG"), page(62, (16, 16))]
    documents = [data_url(images[0]), TEXTS[0], file_url(images[1], pages), TEXTS[1], data_url(images[2])]
    for query in QUERIES:
        expected = colpali_reference.scores(query, [images[0], TEXTS[0], images[1], TEXTS[1], images[2]])
        fresh = _rerank(vision_app, query, documents, COLPALI)
        before = scorer.stats.remote().result()["document_cache"]
        cached = _rerank(vision_app, query, documents, COLPALI)
        after = scorer.stats.remote().result()["document_cache"]
        np.testing.assert_allclose(fresh, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(cached, expected, atol=1e-4, rtol=0)
        assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (len(documents), 0)


def test_a_colpali_image_query_is_encoded_as_process_images_encodes_it(vision_app, colpali_reference):
    reference = colpali_reference
    image = page(70)
    query = reference.document(image).unsqueeze(0)
    expected = [reference.processor.score_retrieval(query, [reference.document(t)])[0, 0].item() for t in TEXTS]
    np.testing.assert_allclose(_rerank(vision_app, data_url(image), TEXTS, COLPALI), expected, atol=1e-4, rtol=0)


def test_models_show_colpalis_processor_encoding(vision_app, colpali_reference):
    r = httpx.get(f"{vision_app}/v1/models", timeout=60)
    assert r.status_code == 200, r.text
    encoding = next(card for card in r.json()["data"] if card["id"] == COLPALI)["encoding"]
    processor = colpali_reference.processor
    assert encoding["format"] == "colpali"
    assert encoding["image_tokens"] == processor.image_seq_length == 16
    assert encoding["image_document_tokens"] == len(colpali_reference.document(page(0)))
    assert (encoding["visual_prompt"], encoding["query_prefix"]) == ("Describe the image.", "Question: ")
    assert (encoding["query_augmentation"], encoding["query_augmentation_count"]) == ("<pad>", 10)


def rotated_photo(seed: int, size: tuple[int, int], orientation: int) -> ImageInput:
    """A JPEG as phones and scanners write it: pixels stored sideways, an EXIF Orientation tag saying how to turn
    them upright (a dark band marks one edge, so a turn changes every model's input)."""
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    pixels[:, : size[0] // 4] = 0
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    data = buffer.getvalue()
    return ImageInput(data=data, digest=hashlib.sha256(data).hexdigest(), mime="image/jpeg", width=size[0],
                      height=size[1], source=f"data:{seed}")


def test_a_photo_with_an_exif_orientation_is_encoded_upright_by_every_family(vision_app, reference,
                                                                             colpali_reference, card, m0_card):
    """A page photographed sideways is encoded as every viewer shows it: its EXIF Orientation applied, as
    transformers' `load_image` reads a file for the processors (and the m0 card reads its pages). Each family's
    scores equal its reference on the upright page, and differ from the raw pixels' (the check can fail)."""
    from PIL import Image, ImageOps

    photos = [rotated_photo(80 + o, (96, 40), o) for o in (6, 8, 3)]
    upright = [ImageOps.exif_transpose(Image.open(io.BytesIO(p.data))).convert("RGB") for p in photos]
    as_upright = [ImageInput(data=_png(u), digest="", mime="image/png", width=u.width, height=u.height,
                             source="upright") for u in upright]
    documents = [data_url(p) for p in photos]
    raw = reference.scores(QUERIES[0], photos)
    for model, expected in [
        (MODEL, reference.scores(QUERIES[0], as_upright)),
        (COLPALI, colpali_reference.scores(QUERIES[0], as_upright)),
        (COLQWEN3, _colqwen3_expected(card, QUERIES[0], as_upright)),
        (M0, [m0_card(QUERIES[0], u.data)[0] for u in as_upright]),
    ]:
        np.testing.assert_allclose(_rerank(vision_app, QUERIES[0], documents, model), expected, atol=1e-4, rtol=0,
                                   err_msg=model)
    assert np.abs(reference.scores(QUERIES[0], as_upright) - raw).max() > 1e-2


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_transparent_png_scores_as_the_processor_reads_it(vision_app, reference):
    """An RGBA page (a screenshot with transparent margins): the processor's `convert_to_rgb` keeps the colour under
    a transparent pixel and drops the alpha; so does the service (vLLM, given RGBA, would paint it white)."""
    from PIL import Image

    rng = np.random.default_rng(90)
    pixels = (rng.random((40, 72, 4)) * 255).astype("uint8")
    pixels[:, :30, 3] = 0  # transparent left part, colours underneath
    rgba = Image.fromarray(pixels, "RGBA")
    image = ImageInput(data=_png(rgba), digest="", mime="image/png", width=72, height=40, source="rgba")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    on_white = ImageInput(data=_png(white), digest="", mime="image/png", width=72, height=40, source="white")
    expected = reference.scores(QUERIES[0], [image])  # Image.open gives RGBA: the processor converts it
    np.testing.assert_allclose(_rerank(vision_app, QUERIES[0], [data_url(image)]), expected, atol=1e-4, rtol=0)
    assert abs(reference.scores(QUERIES[0], [on_white])[0] - expected[0]) > 1e-2


@pytest.mark.parametrize("splitting", [True, False])
def test_colmodernvbert_vllm_processing_gives_the_processors_ids_and_pixels(tmp_path, splitting):
    """vLLM's processing (through this service's plugin) of the prompt the encoder sends: `process_images`' ids and
    pixels exactly, for a checkpoint whose image processor splits pages into tiles and one whose does not (in a
    process of its own: tests/e2e/colmodernvbert_processing.py says why)."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tests.e2e.colmodernvbert_processing", str(tmp_path)]
                         + ([] if splitting else ["--no-splitting"]), capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    pages = json.loads(run.stdout.strip().splitlines()[-1])
    for page_ in pages:
        assert page_["ids_equal"] and page_["pixels_equal"], page_
        assert page_["tiles"] == page_["library_tiles"], page_
    assert {p["tiles"] for p in pages} == ({5, 3} if splitting else {1})
