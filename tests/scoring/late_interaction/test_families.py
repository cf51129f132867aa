"""Reading the non-BERT ColBERT families' checkpoints: the vLLM class, the encoding, remote code, Matryoshka widths."""

from __future__ import annotations

import string

import numpy as np
import pytest

from scoring.checkpoints import CheckpointError
from scoring.config.schema import LateInteractionModelConfig
from scoring.late_interaction.families import JINA, LFM2, MODERNBERT, Family, family_refusal, narrowed, remote_code_refusal
from scoring.late_interaction.formats import encoding_in_force, load_checkpoint
from scoring.late_interaction.tokens import LateInteractionTokenizer
from tests.tiny_colbert_families import build_jina_colbert, build_lfm2_colbert, build_modernbert_colbert


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {
        "jina": build_jina_colbert(root / "jina", query_maxlen=32, doc_maxlen=300),
        "modernbert": build_modernbert_colbert(root / "modernbert"),
        "lfm2": build_lfm2_colbert(root / "lfm2"),
    }


def test_jina_colbert_is_encoded_as_its_model_card_says(folders):
    checkpoint = load_checkpoint(str(folders["jina"]))
    assert checkpoint.family is JINA and checkpoint.engine_path == folders["jina"]  # no converted copy
    encoding = checkpoint.encoding
    # the card's PyLate arguments win over the Stanford defaults its artifact.metadata carries
    assert (encoding.query_prefix, encoding.document_prefix) == ("[QueryMarker]", "[DocumentMarker]")
    assert (encoding.query_expansion, encoding.attend_to_expansion_tokens) == (True, True)
    assert (encoding.query_length, encoding.document_length) == (32, 300)  # artifact.metadata's lengths
    assert encoding.skiplist_words == tuple(string.punctuation) and encoding.embedding_dim == 32


def test_remote_code_is_refused_unless_the_model_allows_it(folders):
    checkpoint = load_checkpoint(str(folders["jina"]))
    refusal = remote_code_refusal("jina", checkpoint.path, checkpoint.config, trusted=False)
    assert "trust_remote_code: true" in refusal and "configuration_xlm_roberta.XLMRobertaFlashConfig" in refusal
    assert remote_code_refusal("jina", checkpoint.path, checkpoint.config, trusted=True) is None
    plain = load_checkpoint(str(folders["modernbert"]))
    assert remote_code_refusal("mb", plain.path, plain.config, trusted=False) is None


@pytest.mark.parametrize(("name", "family"), [("modernbert", MODERNBERT), ("lfm2", LFM2)])
def test_pylate_families_run_on_vllms_colbert_class(folders, name, family):
    checkpoint = load_checkpoint(str(folders[name]))
    assert checkpoint.family is family and checkpoint.encoding.format == "pylate"
    assert (checkpoint.encoding.query_prefix, checkpoint.encoding.embedding_dim) == ("[Q] ", 48)


def test_every_family_is_served_and_lfm2_gets_the_rotary_plugin():
    assert all(family_refusal(f.name, f) is None for f in (JINA, LFM2, MODERNBERT))
    assert LFM2.cpu_rotary_plugin and not JINA.cpu_rotary_plugin and not MODERNBERT.cpu_rotary_plugin
    unsupported = Family("other", "SomeColBERT", transformers_forward=False, unsupported="its forward pass differs")
    assert family_refusal("m", unsupported) == "model 'm': a other ColBERT is not served: its forward pass differs"


def test_lfm2_queries_are_padded_with_its_end_of_sequence_token(folders):
    """LFM2's tokenizer has no mask token: PyLate pads queries with its end-of-sequence token."""
    from transformers import AutoTokenizer

    checkpoint = load_checkpoint(str(folders["lfm2"]))
    tokenizer = AutoTokenizer.from_pretrained(folders["lfm2"])
    assert tokenizer.mask_token_id is None
    ids = LateInteractionTokenizer(tokenizer, checkpoint.encoding, 64).query_ids(["hello"])[0]
    marker = tokenizer.convert_tokens_to_ids("[Q] ")
    assert ids[:2] == [tokenizer.bos_token_id, marker] and len(ids) == 12
    assert ids[-1] == tokenizer.eos_token_id == 7


def test_embedding_dim_narrows_within_the_checkpoint_width(folders):
    checkpoint = load_checkpoint(str(folders["jina"]))
    narrow = LateInteractionModelConfig(name="jina", model=str(folders["jina"]), embedding_dim=16)
    assert encoding_in_force(narrow, checkpoint.encoding).embedding_dim == 16
    wide = LateInteractionModelConfig(name="jina", model=str(folders["jina"]), embedding_dim=64)
    with pytest.raises(CheckpointError, match="embedding_dim 64 exceeds the 32"):
        encoding_in_force(wide, checkpoint.encoding)


def test_narrowed_equals_the_narrower_projection_normalised():
    """Matryoshka truncation of a normalised embedding = the normalised output of the projection's first rows."""
    rng = np.random.default_rng(0)
    hidden, projection = rng.standard_normal((5, 64)), rng.standard_normal((32, 64))
    full = hidden @ projection.T
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    expected = hidden @ projection[:16].T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    (got,) = narrowed([full], 16)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert narrowed([full], 32)[0] is full
