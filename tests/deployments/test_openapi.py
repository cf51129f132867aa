"""What /docs shows: every route with a request example (POST) and a response example, each one valid."""

from __future__ import annotations

from pydantic import BaseModel

import scoring.api.protocol as protocol
from deployments.ingress import api

ROUTES = {
    ("post", "/v1/rerank"), ("post", "/rerank"), ("post", "/v2/rerank"), ("post", "/v1/score"), ("post", "/score"),
    ("post", "/generative_scoring"), ("get", "/v1/models"), ("get", "/health"),
}  # fmt: skip


def _schema(spec: dict, content: dict) -> dict:
    return spec["components"]["schemas"][content["application/json"]["schema"]["$ref"].split("/")[-1]]


def test_every_route_has_request_and_response_examples():
    spec = api.openapi()
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert ROUTES <= documented
    for method, path in ROUTES:
        operation = spec["paths"][path][method]
        assert _schema(spec, operation["responses"]["200"]["content"]).get("examples"), (method, path)
        if method == "post":
            assert _schema(spec, operation["requestBody"]["content"]).get("examples"), (method, path)
            assert {"413", "422"} <= operation["responses"].keys()


def test_examples_are_valid_instances():
    models = [m for m in vars(protocol).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    checked = 0
    for model in models:
        extra = model.model_config.get("json_schema_extra")
        for example in extra.get("examples", []) if isinstance(extra, dict) else []:
            model.model_validate(example)
            checked += 1
    assert checked >= 10


def test_long_document_record_and_instruction_fields_are_documented_with_examples():
    spec = api.openapi()
    schemas = spec["components"]["schemas"]
    for request in ("RerankRequest", "RerankV2Request", "ScoreRequest"):
        properties = schemas[request]["properties"]
        for name in ("long_documents", "max_chunks_per_doc", "rank_fields", "instruction"):
            assert properties[name].get("description") and properties[name].get("examples"), (request, name)
        shown = {key for example in schemas[request]["examples"] for key in example}
        assert {"long_documents", "rank_fields", "instruction"} <= shown, request
    for result in ("RerankResult", "ScoreData"):
        assert "chunk" in schemas[result]["properties"] and schemas[result]["properties"]["chunk"].get("description")
    assert any("chunk" in r for r in schemas["RerankResponse"]["examples"][0]["results"])
