"""The application builder `serve_config.yaml` points at: validates the config, binds the deployments."""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.exceptions import RayServeException

from deployments.bi_encoder import BiEncoder
from deployments.cross_encoder import CrossEncoder
from deployments.encoder import Encoder
from deployments.generative import Generative
from deployments.ingress import Ingress
from deployments.listwise import Listwise
from deployments.scorer import Scorer
from scoring.config.schema import AppConfig, ConfigError, parse_app_config


class InvalidAppConfig(ConfigError, RayServeException):
    """Invalid application args. Serve's build task reports a RayServeException by its message alone, once; any
    other exception is retried three times and printed as a traceback each time, the error buried in Ray's frames
    (`serve status` then shows the message as it is)."""


def encoder_deployment_name(model_name: str) -> str:
    return f"Encoder-{model_name}"


def generative_deployment_name(model_name: str) -> str:
    return f"Generative-{model_name}"


def cross_encoder_deployment_name(model_name: str) -> str:
    return f"CrossEncoder-{model_name}"


def bi_encoder_deployment_name(model_name: str) -> str:
    return f"BiEncoder-{model_name}"


def listwise_deployment_name(model_name: str) -> str:
    return f"Listwise-{model_name}"


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    """`import_path: deployments.app:build_app`; `args` is an `AppConfig` (docs/configuration.md)."""
    try:
        config = parse_app_config(args)
    except ConfigError as exc:
        raise InvalidAppConfig(str(exc)) from None
    late_interaction = {
        model.name: Encoder.options(name=encoder_deployment_name(model.name)).bind(
            model, config.cache.encoder_document_cache_bytes, config.cache.document_dtype
        )
        for model in config.late_interaction_models
    }
    # a bi-encoder has the encoder's interface (one row per text): the scorer serves both kinds
    bi_encoders = {
        model.name: BiEncoder.options(name=bi_encoder_deployment_name(model.name)).bind(
            model, config.cache.encoder_document_cache_bytes
        )
        for model in config.bi_encoder_models
    }
    scorer = Scorer.bind(config, late_interaction | bi_encoders)
    rankers = {
        model.name: Generative.options(name=generative_deployment_name(model.name)).bind(model)
        for model in config.generative_models
    } | {
        model.name: CrossEncoder.options(name=cross_encoder_deployment_name(model.name)).bind(model)
        for model in config.cross_encoder_models
    } | {
        model.name: Listwise.options(name=listwise_deployment_name(model.name)).bind(model)
        for model in config.listwise_models
    }
    needs = {name: (encoder_deployment_name(name), SCORER_DEPLOYMENT) for name in late_interaction}
    needs |= {name: (bi_encoder_deployment_name(name), SCORER_DEPLOYMENT) for name in bi_encoders}
    needs |= {m.name: (generative_deployment_name(m.name),) for m in config.generative_models}
    needs |= {m.name: (cross_encoder_deployment_name(m.name),) for m in config.cross_encoder_models}
    needs |= {m.name: (listwise_deployment_name(m.name),) for m in config.listwise_models}
    return Ingress.bind(
        config,
        scorer,
        rankers,
        late_interaction,
        model_deployments=model_deployments(config, needs),
        windowed=late_interaction | bi_encoders | rankers,
    )


SCORER_DEPLOYMENT = "Scorer"


def model_deployments(config: AppConfig, needs: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The deployments each model needs to serve (for /health and the per-model check): `needs` for the models
    served by deployments of their own; a cascade needs its stages' deployments."""
    deployments = dict(needs)
    for model in config.models:
        if model.kind == "cascade":
            deployments[model.name] = tuple(dict.fromkeys(needs[model.first] + needs[model.then]))
    return deployments


# The default application as an object, for the Serve CLI forms that need one:
# `serve run deployments.app:app`, `serve build deployments.app:app -o config.yaml`.
app = build_app()
