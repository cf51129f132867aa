"""Every shipped Serve config passes Ray Serve's own schema and our application-args model.

serve_config.yaml, serve_config.gpu.yaml and the serveConfigV2 of deploy/rayservice.yaml; no Ray cluster, no
model loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from deployments.app import (
    bi_encoder_deployment_name,
    cross_encoder_deployment_name,
    encoder_deployment_name,
    generative_deployment_name,
)
from scoring.config import parse_app_config

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIGS = ["serve_config.yaml", "serve_config.gpu.yaml", "serve_config.kinds.yaml"]


def rayservice() -> dict:
    return yaml.safe_load((ROOT / "deploy/rayservice.yaml").read_text())


def serve_config(name: str) -> dict:
    if name == "rayservice":
        return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    return yaml.safe_load((ROOT / name).read_text())


def deployment_names(args: dict) -> set[str]:
    """The deployments `build_app(args)` creates, named as `deployments:` entries must name them."""
    config = parse_app_config(args)
    return (
        {"Ingress", "Scorer"}
        | {encoder_deployment_name(m.name) for m in config.late_interaction_models}
        | {generative_deployment_name(m.name) for m in config.generative_models}
        | {cross_encoder_deployment_name(m.name) for m in config.cross_encoder_models}
        | {bi_encoder_deployment_name(m.name) for m in config.bi_encoder_models}
    )


@pytest.mark.parametrize("name", SERVE_CONFIGS + ["rayservice"])
def test_config_passes_serve_schema_and_app_args(name):
    config = ServeDeploySchema.model_validate(serve_config(name))
    assert config.applications
    for app in config.applications:
        assert app.import_path == "deployments.app:build_app"
        known = deployment_names(app.args)
        overridden = {d.name for d in app.deployments}
        assert overridden <= known, f"{name}: deployments not in the app: {sorted(overridden - known)}"


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_encoders_and_scorers_autoscale(name):
    (app,) = ServeDeploySchema.model_validate(serve_config(name)).applications
    deployments = {d.name: d for d in app.deployments}
    engines = ("Encoder-", "Generative-", "CrossEncoder-", "BiEncoder-")
    scaled = [n for n in deployments if n == "Scorer" or n.startswith(engines)]
    assert scaled
    for deployment in scaled:
        settings = deployments[deployment].autoscaling_config
        assert settings, f"{name}: {deployment} has no autoscaling_config"
        autoscaling = AutoscalingConfig.model_validate(settings)  # Serve checks it only at deploy time
        assert 1 <= autoscaling.min_replicas <= autoscaling.max_replicas


def test_gpu_config_gives_each_deployment_gpus_and_the_scorer_a_fraction():
    (app,) = serve_config("serve_config.gpu.yaml")["applications"]
    gpus = {d["name"]: d.get("ray_actor_options", {}).get("num_gpus", 0) for d in app["deployments"]}
    assert 0 < gpus["Scorer"] < 1
    assert all(gpus[n] >= 1 for n in gpus if n.startswith(("Encoder-", "Generative-")))
    kinds = {m["kind"] for m in app["args"]["models"]}
    assert kinds == {"late_interaction", "generative", "cascade"}


def test_rayservice_embeds_the_gpu_config_and_matches_ray():
    service = rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert serve_config("rayservice") == serve_config("serve_config.gpu.yaml")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    images = [c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster["workerGroupSpecs"]:
        containers = group["template"]["spec"]["containers"]
        images += [c["image"] for c in containers]
        assert any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in containers)
    assert len(set(images)) == 1
