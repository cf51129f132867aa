"""The application builder `serve_config.yaml` points at: validates the config, binds the deployments."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.bi_encoder import BiEncoder
from deployments.cross_encoder import CrossEncoder
from deployments.encoder import Encoder
from deployments.generative import Generative
from deployments.ingress import Ingress
from deployments.scorer import Scorer
from scoring.config import AppConfig, parse_app_config


def encoder_deployment_name(model_name: str) -> str:
    return f"Encoder-{model_name}"


def generative_deployment_name(model_name: str) -> str:
    return f"Generative-{model_name}"


def cross_encoder_deployment_name(model_name: str) -> str:
    return f"CrossEncoder-{model_name}"


def bi_encoder_deployment_name(model_name: str) -> str:
    return f"BiEncoder-{model_name}"


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    """`import_path: deployments.app:build_app`; `args` is an `AppConfig` (see the README's reference)."""
    config = parse_app_config(args)
    encoders = {
        model.name: Encoder.options(name=encoder_deployment_name(model.name)).bind(
            model, config.cache.encoder_document_cache_bytes
        )
        for model in config.late_interaction_models
    }
    # a bi-encoder has the encoder's interface (one row per text): the scorer serves both kinds
    encoders |= {
        model.name: BiEncoder.options(name=bi_encoder_deployment_name(model.name)).bind(
            model, config.cache.encoder_document_cache_bytes
        )
        for model in config.bi_encoder_models
    }
    scorer = Scorer.bind(config, encoders)
    rankers = {
        model.name: Generative.options(name=generative_deployment_name(model.name)).bind(model)
        for model in config.generative_models
    } | {
        model.name: CrossEncoder.options(name=cross_encoder_deployment_name(model.name)).bind(model)
        for model in config.cross_encoder_models
    }
    return Ingress.bind(config, scorer, rankers)


# The default application as an object, for the Serve CLI forms that need one:
# `serve run deployments.app:app`, `serve build deployments.app:app -o config.yaml`.
app = build_app()
