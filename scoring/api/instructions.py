"""Per-request instructions (vLLM's `instruction` field): which models have a slot for one.

A generative template with an instruction line (qwen3-reranker's `<Instruct>`, bge-reranker-v2-gemma's question,
mxbai-rerank-v2's `instruction:` line), a cross-encoder with the qwen3-reranker template and a listwise model take it
in place of the model's configured instruction; a bi-encoder takes it as its query prompt, in place of the
checkpoint's or the config's. Late-interaction models and plain cross-encoders have no such slot: an instruction
sent to one is a 400, not ignored.
A cascade takes one when either stage does, and hands it to the stages that do.
"""

from __future__ import annotations

from scoring.api.requests import check_text
from scoring.config.schema import AppConfig, ModelConfig
from scoring.errors import InvalidRequest, PayloadTooLarge
from scoring.generative.templates import TEMPLATES_WITH_INSTRUCTION


def takes_instruction(model: ModelConfig) -> bool:
    if model.kind == "generative":
        return model.template in TEMPLATES_WITH_INSTRUCTION
    if model.kind == "cross_encoder":
        return model.template == "qwen3-reranker"  # the seq-cls conversions' `<Instruct>` line
    return model.kind in ("bi_encoder", "listwise")  # the query prompt; jina-reranker-v3's `<instruct>` block


def cascade_stages(config: AppConfig, model: ModelConfig) -> list[ModelConfig]:
    if model.kind != "cascade":
        return [model]
    return [config.model_by_name(model.first), config.model_by_name(model.then)]


def check_instruction(config: AppConfig, model: ModelConfig, instruction: str | None) -> None:
    """A request's instruction must have somewhere to go, and be text the tokenizer takes."""
    if instruction is None:
        return
    if not any(takes_instruction(stage) for stage in cascade_stages(config, model)):
        raise InvalidRequest(
            f"model {model.name!r} ({model.kind}) takes no instruction: instructions go to generative models whose "
            f"template has an instruction line ({', '.join(sorted(TEMPLATES_WITH_INSTRUCTION))}), cross-encoders with "
            "the qwen3-reranker template, listwise models and bi-encoders (as the query prompt)"
        )
    if len(instruction) > config.limits.max_query_chars:
        raise PayloadTooLarge(
            f"instruction has {len(instruction)} characters; the limit is {config.limits.max_query_chars}"
        )
    check_text(instruction, "instruction")
