"""The Serve CLI commands of docs/deployment.md, run as a user runs them, against `serve run` in a subprocess (its
own Ray cluster on this machine's cores, as `serve run serve_config.yaml` starts it).

With token authentication on (Ray's default for a cluster `serve run` starts): serve_config.yaml with its
commented entries uncommented (a tiny Qwen3 as the generative model, a tiny cross-encoder as the cross-encoder), the
default model and three more of other kinds, four engines with the default `ray_actor_options`. /health is 503, naming what still starts, until every deployment can serve; then
200, and every model answers. `serve status`, `serve deploy`, `serve shutdown` work with docs/deployment.md's
`export RAY_AUTH_MODE=token`. With it off (`RAY_AUTH_MODE=disabled` for both), the default config and the same
commands, behind Serve's HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY=1`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, _free_port, wait_until
from tests.e2e.serve_configs import uncommented_serve_config
from tests.tiny_cross_encoder import build_tiny_cross_encoder
from tests.tiny_qwen3 import build_tiny_qwen3

pytestmark = pytest.mark.e2e

SERVE = str(Path(sys.executable).with_name("serve"))
QUERY, DOCUMENTS = "what is the capital of France?", ["Berlin is in Germany.", "Paris is the capital of France."]
ENGINE_START_S = 1500  # four engines starting at once on 2 cores: 10 min seen on a busy machine
STOP_S = 30  # `serve run` exits a few seconds after Ctrl-C; past this, its group is killed


class ServeRun:
    """`serve run <config>` in its own session (so its Ray cluster goes when it is stopped); output to a file."""

    def __init__(self, config: dict, tmp: Path, auth_mode: str | None, env_extra: dict[str, str] | None = None):
        self.port = _free_port()
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        self.config_path = tmp / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = tmp / "serve_run.log"
        # RAY_ADDRESS=local: a cluster of its own even when another one runs on this machine (serve run would
        # otherwise join a `ray start` cluster it finds).
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "VLLM_CPU_KVCACHE_SPACE")}
        env.update({"RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)})
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ["VLLM_CPU_KVCACHE_SPACE"]
        if auth_mode is not None:
            env["RAY_AUTH_MODE"] = auth_mode
        self.env_extra = env_extra or {}
        env.update(self.env_extra)
        self.auth_mode = auth_mode
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [SERVE, "run", str(self.config_path)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))

    def dashboard(self) -> str:
        """The dashboard address the cluster prints (8265 unless another cluster holds it)."""

        def printed():
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited:\n{self.output()[-4000:]}")
            match = re.search(r"View the dashboard at (?:http://)?([\w.]+:\d+)", self.output())
            return match and f"http://{match.group(1)}"

        return wait_until(printed, timeout=300, interval=0.5)

    def cli(self, *args: str, auth_mode: str | None) -> subprocess.CompletedProcess:
        """A `serve` command as docs/deployment.md writes it, in a shell with `RAY_AUTH_MODE` as given; the dashboard
        address through the variable the CLI reads (another cluster may hold the default port)."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
        env["RAY_DASHBOARD_ADDRESS"] = self.dashboard()
        if auth_mode is not None:
            env["RAY_AUTH_MODE"] = auth_mode
        return subprocess.run([SERVE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    def interrupt(self) -> None:
        """What Ctrl-C does: SIGINT to the foreground group (Ray's own processes block it); `serve run` shuts Serve
        down and its exit takes the cluster it started."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)

    def wait_stopped(self) -> None:
        """`serve run` gone (a few seconds after Ctrl-C here), then whatever of its group is left: SIGKILL, as a
        terminal closing does, so no engine outlives the test."""
        try:
            self.process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            print(f"serve run still running {STOP_S} s after Ctrl-C:\n{self.output()[-2000:]}")
        with contextlib.suppress(ProcessLookupError):  # nothing left of the group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _haproxy_env() -> dict[str, str]:
    """docs/deployment.md's high-throughput ingress: Serve's HAProxy (the binary ray[serve] ships) in front of the
    ingress replicas, with files and ports of this run's own (the defaults are fixed per machine). The files go to a
    short folder: Ray adds the node id below it, and HAProxy refuses a socket path over 97 characters."""
    files = Path(tempfile.mkdtemp(prefix="haproxy-", dir="/tmp"))
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }


def _health(client: httpx.Client) -> tuple[int, dict | None]:
    try:
        response = client.get("/health")
    except httpx.TransportError:
        return 0, None
    is_json = response.headers.get("content-type") == "application/json"
    return response.status_code, response.json() if is_json else None


def _status_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def serve_runs(tmp_path_factory):
    """Both clusters of this file, started together: a cluster's start is much waiting, which the other's fills.
    "token": Ray's default, token authentication on for a new cluster; serve_config.yaml uncommented, four engines.
    "disabled": `RAY_AUTH_MODE=disabled` exported for `serve run` and the commands alike; the default config."""
    tmp = tmp_path_factory.mktemp("cli-token")
    tiny = build_tiny_qwen3(tmp / "tiny-qwen3", max_positions=4096)
    cross = build_tiny_cross_encoder(tmp / "tiny-cross-encoder", max_positions=512)
    config = uncommented_serve_config(
        {"Qwen/Qwen3-Reranker-0.6B": str(tiny), "cross-encoder/ms-marco-MiniLM-L6-v2": str(cross)}
    )
    runs = {
        "token": ServeRun(config, tmp, auth_mode=None),
        "disabled": ServeRun(yaml.safe_load((ROOT / "serve_config.yaml").read_text()),
                             tmp_path_factory.mktemp("cli-auth-off"), auth_mode="disabled", env_extra=_haproxy_env()),
    }
    yield runs
    for run in runs.values():
        run.interrupt()
    for run in runs.values():
        run.wait_stopped()
        if "RAY_SERVE_HAPROXY_SERVER_STATE_BASE" in run.env_extra:
            shutil.rmtree(run.env_extra["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)


@pytest.fixture(scope="module")
def four_engines(serve_runs):
    return serve_runs["token"]


def test_health_is_503_until_every_model_can_serve_then_each_answers(four_engines):
    run = four_engines
    rerank = {"model": "minilm-colbert", "query": QUERY, "documents": DOCUMENTS}
    seen_starting, early_reranks = [], []
    with httpx.Client(base_url=run.url, timeout=60) as client:

        def ready():
            if run.process.poll() is not None:
                raise RuntimeError(f"serve run exited:\n{run.output()[-4000:]}")
            status, body = _health(client)
            if body is None:
                return False  # the proxy or the ingress is not up yet
            if status == 200:
                return body
            assert status == 503 and body["status"] in ("starting", "unavailable"), body
            not_ready = {name: m for name, m in body["models"].items() if m["state"] != "ready"}
            assert not_ready and all(m["message"] for m in not_ready.values()), body
            seen_starting.append(not_ready)
            if "minilm-colbert" in not_ready and len(early_reranks) < 3:
                started = time.perf_counter()
                early = client.post("/v1/rerank", json=rerank)
                early_reranks.append((early.status_code, time.perf_counter() - started, early.text))
            return False

        health = wait_until(ready, timeout=ENGINE_START_S, interval=0.5)
        print(f"503 looks before ready: {len(seen_starting)}; early reranks: {early_reranks}")
        assert seen_starting, "the app was never seen starting"
        assert {"minilm-colbert", "qwen3-reranker", "colbert-then-qwen3", "minilm-bi", "ms-marco-minilm"} <= set(
            seen_starting[0]
        ) | {name for look in seen_starting for name in look}
        for status, elapsed, text in early_reranks:  # refused at once with the reason, not held until a timeout
            assert status == 503 and "cannot serve yet" in text and elapsed < 5, (status, elapsed, text)
        assert health["status"] == "ok" and {m["state"] for m in health["models"].values()} == {"ready"}

        started = time.perf_counter()
        first = client.post("/v1/rerank", json=rerank)
        elapsed = time.perf_counter() - started
        print(f"first rerank after /health 200: {elapsed:.2f} s")
        assert first.status_code == 200, first.text
        assert first.json()["results"][0]["index"] == 1
        assert elapsed < 5

        for model in ("minilm-bi", "ms-marco-minilm", "qwen3-reranker", "colbert-then-qwen3"):
            answer = client.post("/v1/rerank", json={**rerank, "model": model})
            assert answer.status_code == 200, (model, answer.text)
            assert sorted(r["index"] for r in answer.json()["results"]) == [0, 1]
        labels = [2748, 2053]  # "yes", "no" in the MiniLM vocabulary the tiny Qwen3 uses
        generative = {"model": "qwen3-reranker", "query": QUERY, "items": DOCUMENTS, "label_token_ids": labels}
        scored = client.post("/generative_scoring", json=generative)
        assert scored.status_code == 200, scored.text
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        assert {card["state"] for card in models.json()["data"]} == {"ready"}


def test_serve_status_deploy_and_shutdown_with_token_auth(four_engines):
    run = four_engines
    with httpx.Client(base_url=run.url, timeout=30) as client:
        wait_until(lambda: _health(client)[0] == 200, timeout=ENGINE_START_S, interval=0.5)
    status = _status_of(run.cli("status", auth_mode="token"))
    app = status["applications"]["reranker"]
    assert app["status"] == "RUNNING"
    assert {
        "Ingress", "Scorer", "Encoder-minilm-colbert", "Generative-qwen3-reranker", "BiEncoder-minilm-bi",
        "CrossEncoder-ms-marco-minilm",
    } <= set(
        app["deployments"]
    )
    deployed = run.cli("deploy", str(run.config_path), auth_mode="token")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert _status_of(run.cli("status", auth_mode="token"))["applications"]["reranker"]["status"] in (
        "RUNNING",
        "DEPLOYING",
    )
    shutdown = run.cli("shutdown", "-y", auth_mode="token")
    assert shutdown.returncode == 0, shutdown.stdout + shutdown.stderr
    assert _status_of(run.cli("status", auth_mode="token")).get("applications") in ({}, None)


def test_haproxy_ingress_serves_the_app_and_its_errors(serve_runs):
    """The auth-off cluster runs with `RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy listens on the Serve port, and requests,
    /health and the 4xx JSON errors come through it as through Serve's own proxy."""
    run = serve_runs["disabled"]
    with httpx.Client(base_url=run.url, timeout=60) as client:
        wait_until(lambda: run.process.poll() is None and _health(client)[0] == 200, timeout=600, interval=0.5)
        files = Path(run.env_extra["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
        config = "".join(p.read_text() for p in files.rglob("haproxy.cfg"))  # below a folder named by the node id
        assert re.search(rf"bind \S*:{run.port}\b", config), config  # HAProxy, not Serve's proxy, holds the port
        answer = client.post("/v1/rerank", json={"model": "minilm-colbert", "query": QUERY, "documents": DOCUMENTS})
        assert answer.status_code == 200 and answer.json()["results"][0]["index"] == 1, answer.text
        broken = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "not valid JSON" in broken.json()["error"]["message"]
        image = {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
        refused = client.post("/v1/rerank", json={"model": "minilm-colbert", "query": QUERY, "documents": [image]})
        assert 400 <= refused.status_code < 500 and refused.json()["error"]["message"], refused.text


def test_serve_status_deploy_and_shutdown_with_auth_off(serve_runs):
    """`RAY_AUTH_MODE=disabled` exported for `serve run` and the commands alike: the default serve_config.yaml."""
    run = serve_runs["disabled"]
    with httpx.Client(base_url=run.url, timeout=30) as client:
        wait_until(lambda: run.process.poll() is None and _health(client)[0] == 200, timeout=600, interval=0.5)
    app = _status_of(run.cli("status", auth_mode="disabled"))["applications"]["reranker"]
    assert app["status"] == "RUNNING" and "Encoder-minilm-colbert" in app["deployments"]
    deployed = run.cli("deploy", str(run.config_path), auth_mode="disabled")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    shutdown = run.cli("shutdown", "-y", auth_mode="disabled")
    assert shutdown.returncode == 0, shutdown.stdout + shutdown.stderr
