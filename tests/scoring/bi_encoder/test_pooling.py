"""Reading a sentence-transformers checkpoint's layout (the packaged MiniLM and variants written here)."""

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from scoring.bi_encoder.pooling import BiEncoderTokenizer, l2_normalized, read_layout
from scoring.config.schema import EMBEDDED_MODEL, BiEncoderModelConfig, resolve_model_path

MINILM = resolve_model_path(EMBEDDED_MODEL)


def test_the_packaged_minilm_is_a_mean_pooled_normalised_bi_encoder():
    layout = read_layout(MINILM, "m")
    assert (layout.pooling, layout.normalize, layout.similarity, layout.max_seq_length) == ("MEAN", True, "cosine", 256)
    assert layout.query_prompt == layout.document_prompt == ""


def write_layout(root, modules, pooling=None, settings=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (root / "1_Pooling").mkdir(exist_ok=True)
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if settings is not None:
        (root / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return root


TRANSFORMER = {"type": "sentence_transformers.models.Transformer", "path": ""}
POOLING = {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}


@pytest.mark.parametrize(
    "pooling,expected",
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "CLS"),
        ({"pooling_mode_lasttoken": True}, "LAST"),
        ({"pooling_mode": "mean"}, "MEAN"),
        ({"pooling_mode": "cls"}, "CLS"),
    ],
)
def test_pooling_modes(tmp_path, pooling, expected):
    root = write_layout(tmp_path, [TRANSFORMER, POOLING], pooling, {"similarity_fn_name": "dot", "prompts": {
        "query": "query: ", "document": "passage: "}})
    layout = read_layout(root, "m")
    assert layout.pooling == expected and layout.similarity == "dot" and not layout.normalize
    assert (layout.query_prompt, layout.document_prompt) == ("query: ", "passage: ")


@pytest.mark.parametrize(
    "modules,pooling,settings,mentions",
    [
        ([TRANSFORMER, POOLING, {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}], {}, None, "Dense"),
        ([TRANSFORMER, POOLING], {"pooling_mode_max_tokens": True}, None, "'max'"),
        ([TRANSFORMER, POOLING], {"pooling_mode": ["mean", "cls"]}, None, "mean+cls"),
        ([TRANSFORMER, POOLING], {}, {"similarity_fn_name": "euclidean"}, "euclidean"),
    ],
)
def test_unsupported_layouts_are_refused_naming_what(tmp_path, modules, pooling, settings, mentions):
    with pytest.raises(ValueError, match="model 'm'") as err:
        read_layout(write_layout(tmp_path, modules, pooling, settings), "m")
    assert mentions in str(err.value)


def test_a_plain_checkpoint_reads_as_mean_pooling(tmp_path):
    shutil.copy(f"{MINILM}/config.json", tmp_path / "config.json")
    layout = read_layout(tmp_path, "m")
    assert (layout.pooling, layout.normalize, layout.max_seq_length) == ("MEAN", True, None)


def test_tokens_use_prompts_and_the_checkpoints_length():
    hf = AutoTokenizer.from_pretrained(MINILM)
    layout = read_layout(MINILM, "m")
    tokens = BiEncoderTokenizer(hf, BiEncoderModelConfig(name="m", kind="bi_encoder", query_prefix="q: "), layout, 512)
    long = " ".join(["word"] * 400)
    (document,) = tokens.document_ids([long])
    assert len(document) == 256 and document == hf(long, truncation=True, max_length=256)["input_ids"]
    assert tokens.query_ids(["hi"]) == [hf("q: hi")["input_ids"]]
    assert len(tokens.query_ids([long], max_tokens=10)[0]) == 10


def test_l2_normalized_rows():
    rows = l2_normalized(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert rows[0] == pytest.approx([0.6, 0.8]) and not np.isnan(rows).any()
