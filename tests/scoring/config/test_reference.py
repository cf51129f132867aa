"""docs/configuration.md's reference is the one generated from the pydantic config."""

from __future__ import annotations

from scoring.config.reference import REFERENCE_PAGE, page_section, render
from scoring.config.schema import AppConfig, Limits


def test_reference_page_is_generated_from_the_config():
    assert page_section(REFERENCE_PAGE.read_text()) == render(), "run: python -m scoring.config.reference"


def test_reference_lists_every_section_and_key():
    text = render()
    for section in ("`args.limits`", "`args.cache`", "`args.batching`", "`args.auth`", "Generative model", "Cascade"):
        assert f"#### {section}" in text
    for name in (*AppConfig.model_fields, *Limits.model_fields, "query_prefix", "label_tokens", "candidates"):
        assert f"| `{name}` |" in text, name
    assert "| `max_documents` | int | `1000` |" in text
