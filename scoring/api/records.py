"""Structured documents: a record of string fields scored by the request's `rank_fields`, echoed back unchanged.

The fields named are serialised in that order as `field: value` lines (the form Cohere recommends for records), and
that text is what the model scores; a result's `document` is the object as the client sent it.
"""

from __future__ import annotations

from typing import Sequence

from scoring.api.protocol import DocumentObject
from scoring.errors import ValidationFailed


def record_text(document: str | DocumentObject, rank_fields: Sequence[str], field: str) -> str:
    """The text a record is scored by; `field` names the document in errors (`documents[3]`)."""
    if not isinstance(document, DocumentObject):
        raise ValidationFailed(f"{field} is a string; with rank_fields every document is an object of string fields")
    values = document.fields()
    lines = []
    for name in rank_fields:
        if name not in values:
            raise ValidationFailed(f"{field} has no field {name!r} named in rank_fields")
        value = values[name]
        if not isinstance(value, str):
            raise ValidationFailed(
                f"{field}.{name} is {type(value).__name__}, not a string; rank_fields name string fields only"
            )
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def object_text(document: str | DocumentObject, field: str) -> str:
    """A document without rank_fields: a string, or an object's `text`."""
    if isinstance(document, str):
        return document
    if document.text is None:
        raise ValidationFailed(
            f"{field} has no `text` field; send the text as `text`, or name the fields to score in rank_fields"
        )
    return document.text

