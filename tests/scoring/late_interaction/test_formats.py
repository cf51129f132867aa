"""Reading a checkpoint's encoding settings (PyLate, Stanford, plain), our overrides, and the layout vLLM loads."""

import json
import string
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from scoring.checkpoints import CheckpointError, position_table, sequence_limit
from scoring.config.schema import EMBEDDED_MODEL, LateInteractionModelConfig
from scoring.late_interaction.formats import encoding_in_force, load_checkpoint
from tests.tiny_colbert import build_pylate_colbert, build_stanford_colbert


@pytest.fixture(scope="module")
def pylate(tmp_path_factory):
    return build_pylate_colbert(tmp_path_factory.mktemp("pylate") / "ckpt", attend_to_expansion_tokens=False)


@pytest.fixture(scope="module")
def stanford(tmp_path_factory):
    return build_stanford_colbert(tmp_path_factory.mktemp("stanford") / "ckpt", attend_to_mask_tokens=True)


def test_pylate_settings_and_projection(pylate):
    checkpoint = load_checkpoint(str(pylate))
    e = checkpoint.encoding
    assert (e.format, e.query_prefix, e.document_prefix) == ("pylate", "[unused0]", "[unused1]")
    assert (e.query_length, e.document_length, e.query_expansion, e.attend_to_expansion_tokens) == (12, 20, True, False)
    assert e.skiplist_words == tuple(string.punctuation) and e.embedding_dim == 48
    assert checkpoint.engine_path == pylate and [d.out_features for d in checkpoint.projection] == [48]
    # vLLM's limit would be sentence-transformers' max_seq_length (19): the engine gets what the encoding needs
    assert checkpoint.engine_max_model_len(e, None) == 20 and checkpoint.engine_max_model_len(e, 64) == 64
    with pytest.raises(CheckpointError, match="position embeddings"):
        checkpoint.engine_max_model_len(e, 4096)


def test_pylate_defaults_for_absent_keys(pylate, tmp_path):
    """The keys answerai-colbert / GTE-ModernColBERT files carry, and PyLate's defaults for those left out."""
    for item in pylate.rglob("*"):
        target = tmp_path / item.relative_to(pylate)
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.is_file():
            target.write_bytes(item.read_bytes())
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"query_prefix": "[unused0]", "document_prefix": "[unused1]", "similarity_fn_name": "MaxSim"})
    )
    e = load_checkpoint(str(tmp_path)).encoding
    assert (e.query_length, e.document_length) == (32, 180)
    assert (e.query_expansion, e.attend_to_expansion_tokens) == (True, False)
    assert e.skiplist_words == tuple(string.punctuation)


def test_stanford_settings_and_engine_layout(stanford, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    before = {p.name: p.stat().st_mtime_ns for p in stanford.iterdir()}
    checkpoint = load_checkpoint(str(stanford))
    e = checkpoint.encoding
    assert (e.format, e.query_prefix, e.document_prefix) == ("stanford", "[unused0]", "[unused1]")
    assert (e.query_length, e.document_length, e.query_expansion, e.attend_to_expansion_tokens) == (10, 16, True, True)
    assert e.skiplist_words == tuple(string.punctuation) and e.embedding_dim == 32
    assert {p.name: p.stat().st_mtime_ns for p in stanford.iterdir()} == before  # the checkpoint is untouched

    layout = checkpoint.engine_path
    assert layout.parent == tmp_path / "cache"
    assert json.loads((layout / "config.json").read_text())["architectures"] == ["BertModel"]
    original = load_file(str(stanford / "model.safetensors"))
    root = load_file(str(layout / "model.safetensors"))
    assert set(root) == {k[len("bert.") :] for k in original if k.startswith("bert.")}
    assert torch.equal(root["encoder.layer.0.attention.self.query.weight"],
                       original["bert.encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(load_file(str(checkpoint.projection[0].weights))["linear.weight"], original["linear.weight"])
    assert (layout / "vocab.txt").is_file() and (layout / "tokenizer_config.json").is_file()
    assert load_checkpoint(str(stanford)).engine_path == layout  # written once


def test_mask_punctuation_off_means_no_skiplist(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    path = build_stanford_colbert(tmp_path / "ckpt")
    metadata = json.loads((path / "artifact.metadata").read_text())
    (path / "artifact.metadata").write_text(json.dumps({**metadata, "mask_punctuation": False}))
    assert load_checkpoint(str(path)).encoding.skiplist_words == ()


def test_plain_checkpoint_keeps_todays_behaviour():
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    e = checkpoint.encoding
    assert (e.format, e.query_prefix, e.query_expansion, e.skiplist_words) == ("plain", "", False, ())
    assert e.embedding_dim == 384
    assert checkpoint.engine_max_model_len(e, None) is None


def test_config_keys_override_the_checkpoint(pylate):
    model = LateInteractionModelConfig(
        name="m", model=str(pylate), max_tokens_per_doc=16, attend_to_expansion_tokens=True, skiplist_words=[]
    )
    e = encoding_in_force(model, load_checkpoint(model.model).encoding)
    assert (e.document_length, e.attend_to_expansion_tokens, e.skiplist_words) == (16, True, ())
    assert (e.query_length, e.query_prefix) == (12, "[unused0]")  # the checkpoint's, where the config says nothing


def test_a_roberta_table_holds_its_size_less_the_padding_id_and_one():
    """The length checks read the positions a token can take: an XLM-R ColBERT's 514-row table holds 512."""
    assert position_table("xlm-roberta", 514, 1) == 512 and position_table("roberta", 514, 1) == 512
    assert position_table("bert", 512, 0) == 512 and position_table("modernbert", 8192, 50283) == 8192
    assert position_table("qwen3", None, None) is None


@pytest.mark.parametrize(
    "hf_config, tokenizer_max, engine_max, expected",
    [
        # BERT: positions from 0, the tokenizer's limit equal to the table
        (SimpleNamespace(model_type="bert", max_position_embeddings=512, pad_token_id=0), 512, 512, 512),
        # bge-reranker-base saved by transformers 5 (no position_embedding_type: vLLM says 514)
        (SimpleNamespace(model_type="xlm-roberta", max_position_embeddings=514, pad_token_id=1), 512, 514, 512),
        # the same with no tokenizer limit (transformers' 1e30): the table alone
        (SimpleNamespace(model_type="xlm-roberta", max_position_embeddings=514, pad_token_id=1), int(1e30), 514, 512),
        # a tokenizer shorter than the table (sentence-transformers cuts to it), and an engine shorter than both
        (SimpleNamespace(model_type="roberta", max_position_embeddings=514, pad_token_id=1), 256, 514, 256),
        (SimpleNamespace(model_type="xlm-roberta", max_position_embeddings=8194, pad_token_id=1), 8192, 1024, 1024),
        # rotary positions (no table), no tokenizer limit
        (SimpleNamespace(model_type="qwen3"), None, 4096, 4096),
    ],
)
def test_sequence_limit_is_where_sentence_transformers_cuts(hf_config, tokenizer_max, engine_max, expected):
    engine = SimpleNamespace(hf_config=hf_config, max_model_len=engine_max)  # vLLM's model config, as read
    assert sequence_limit(engine, tokenizer_max) == expected
