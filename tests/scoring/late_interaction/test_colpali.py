"""The ColPali encoding rules (scoring/late_interaction/colpali.py) against transformers' ColPaliProcessor on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.api.protocol import LateInteractionEncoding
from scoring.checkpoints import CheckpointError
from scoring.late_interaction.colpali import ARCHITECTURE, ColPaliPrompts, colpali_engine_args
from scoring.late_interaction.vision import vision_family
from tests.tiny_colpali import build_tiny_colpali


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_colpali(tmp_path_factory.mktemp("colpali") / "ckpt")


@pytest.fixture(scope="module")
def processor(checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(checkpoint))


def _image(width: int, height: int):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(width).random((height, width, 3)) * 255).astype("uint8"))


def test_ids_are_the_processors(checkpoint, processor):
    prompts = ColPaliPrompts(checkpoint, max_model_len=128, embedding_dim=128)
    for size in [(48, 64), (200, 20), (8, 8)]:
        assert prompts.image_document_ids() == processor.process_images([_image(*size)])["input_ids"][0].tolist()
    queries = ["what does the chart show?", "red", "Übersicht: 3 × 4"]
    for query, ids in zip(queries, prompts.query_ids(queries)):
        assert ids == processor.process_queries([query])["input_ids"][0].tolist()
    texts = ["quarterly revenue grew", "a"]
    for text, ids in zip(texts, prompts.text_document_ids(texts)):
        assert ids == processor(text=[text])["input_ids"][0].tolist()


def test_the_image_run_prompt_and_augmentation_sit_where_the_processor_puts_them(checkpoint, processor):
    prompts = ColPaliPrompts(checkpoint, max_model_len=128, embedding_dim=128)
    tokens = processor.tokenizer.convert_ids_to_tokens(prompts.image_document_ids())
    assert tokens[:17] == ["<image>"] * 16 + ["<bos>"] and tokens[-1] == "\n"
    assert processor.tokenizer.decode(prompts.image_document_ids()[17:]) == "Describe the image.\n"
    query = processor.tokenizer.convert_ids_to_tokens(prompts.query_ids(["red"])[0])
    assert query[0] == "<bos>" and query[-11:] == ["<pad>"] * 10 + ["\n"]
    assert processor.tokenizer.decode(prompts.query_ids(["red"])[0][1:-11]) == "Question: red"
    shown = prompts.encoding.as_dict(128)
    assert (shown["format"], shown["image_tokens"], shown["image_document_tokens"]) == ("colpali", 16, len(tokens))
    assert (shown["visual_prompt"], shown["query_prefix"]) == ("Describe the image.", "Question: ")
    assert (shown["query_augmentation"], shown["query_augmentation_count"]) == ("<pad>", 10)
    assert LateInteractionEncoding(**shown).format == "colpali"  # what /v1/models serves


def test_texts_are_cut_at_max_tokens_and_the_engine_length(checkpoint):
    prompts = ColPaliPrompts(checkpoint, max_model_len=30, embedding_dim=128)
    long = " ".join(["revenue"] * 40)
    assert len(prompts.text_document_ids([long])[0]) == 30
    assert len(prompts.query_ids([long], max_tokens=15)[0]) == 15
    budget = prompts.window_budget(str(checkpoint))
    overhead = len(prompts.text_document_ids([""])[0])  # <bos>, "Question: ", ten <pad>, "\n"
    assert (budget.document_tokens, budget.document_overhead) == (30 - overhead, overhead)
    with pytest.raises(CheckpointError, match="image document takes 24 tokens"):
        ColPaliPrompts(checkpoint, max_model_len=20, embedding_dim=128)


def test_the_checkpoint_is_served_as_colpali_by_the_model_class_computing_what_transformers_does(checkpoint):
    assert vision_family(json.loads((checkpoint / "config.json").read_text())) == "colpali"
    assert colpali_engine_args(checkpoint) == {"weights": str(checkpoint),
                                               "hf_overrides": {"architectures": [ARCHITECTURE]}}
