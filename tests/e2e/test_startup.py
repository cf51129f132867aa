"""Startup feedback: replicas log their startup steps with durations, and `serve status` says why an application
does not start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.serve_configs import app_from_serve_config, deploy

pytestmark = pytest.mark.e2e


def replica_lines(app: str, deployment: str) -> str:
    """The Serve log lines of one deployment's replicas, from the session's replica files and worker stderr (Serve
    also writes there, and `serve run` shows it)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    tag = f" {app}_{deployment} "
    files = [*logs.glob("worker-*.err"), *logs.glob(f"serve/replica_{app}_{deployment}_*.log")]
    return "".join(line for path in files for line in path.read_text(errors="replace").splitlines(True) if tag in line)


def test_encoder_logs_each_startup_step_with_its_duration(default_app):
    text = replica_lines("reranker", "Encoder-minilm-colbert")
    assert "Model minilm-colbert: starting the vLLM engine" in text
    assert "Model minilm-colbert: weights loaded and vLLM engine started in" in text
    assert "Encoder minilm-colbert ready in" in text and "warm-up encode" in text


def test_encoder_lines_after_the_engine_starts_reach_the_replica_log_file(default_app):
    """vLLM reconfigures logging when its engine starts; the replica's own file must keep receiving lines."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    files = list(logs.glob("replica_reranker_Encoder-minilm-colbert_*.log"))
    assert files
    text = "".join(path.read_text(errors="replace") for path in files)
    assert "weights loaded and vLLM engine started in" in text
    assert "Encoder minilm-colbert ready in" in text


def failed_status(app: str) -> dict[str, str]:
    """What `serve status` says once `app` has failed to deploy (waits for it): the application's message (key
    "application") and each deployment's."""
    from ray import serve

    def failed():
        status = serve.status().applications.get(app)
        return status is not None and status.status == "DEPLOY_FAILED" and status

    status = wait_until(failed, timeout=600, interval=1.0)
    return {"application": status.message, **{name: d.message for name, d in status.deployments.items()}}


def test_status_names_an_invalid_config_key(serve_instance):
    from ray import serve

    app = app_from_serve_config("bad-config", "/bad-config", {})
    app["args"]["limits"]["max_documentz"] = 10
    deploy(app)
    try:
        message = failed_status("bad-config")["application"]
        assert "max_documentz" in message
        # reported once, as our message: not a retried traceback with the error among Ray's frames
        assert "Traceback" not in message and "invalid application config" in message, message
    finally:
        serve.delete("bad-config")


def test_status_explains_a_replica_that_cannot_start(serve_instance):
    from ray import serve

    app = app_from_serve_config("no-weights", "/no-weights", {})
    app["args"]["models"][0]["model"] = "/nonexistent/weights-of-minilm"
    deploy(app)
    try:
        messages = failed_status("no-weights")
        assert "Encoder-minilm-colbert" in messages["application"]
        assert "/nonexistent/weights-of-minilm" in messages["Encoder-minilm-colbert"], messages
    finally:
        serve.delete("no-weights")
