"""The project as Ray and pip users handle it: `serve build` on the default application, `pip wheel` of the
project, and the handle API typed and documented."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def test_serve_build_writes_a_config_of_the_default_app(tmp_path):
    out = tmp_path / "built.yaml"
    run = subprocess.run(
        [str(BIN / "serve"), "build", "deployments.app:app", "-o", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (app,) = yaml.safe_load(out.read_text())["applications"]
    assert app["import_path"] == "deployments.app:app"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "Scorer", "Encoder-minilm-colbert"}
    router = deployments["Scorer"]["request_router_config"]["request_router_class"]
    assert router == "deployments.routing.QueryAffinityRouter"


def test_pip_wheel_holds_every_package(tmp_path):
    # built from a copy of what the project declares: a `build/` folder left in the tree by an earlier build would
    # hand its files on to this one
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("deployments", "scoring", "kernels"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=source,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = tmp_path.glob("rayrerank-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("deployments", "scoring", "kernels"):
        sources = {str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")}
        assert sources <= names, sources - names
    plugin = {str(p.relative_to(ROOT)) for p in (ROOT / "deployments" / "vllm_plugins").glob("*.dist-info/*")}
    assert {Path(p).name for p in plugin} == {"METADATA", "entry_points.txt"} and plugin <= names, plugin - names
    # installed from the wheel alone (no source tree, no site-packages): the plugin path the engine processes get
    # holds the entry point vLLM loads its general plugins by
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    probe = (
        "import importlib.metadata as m, json, deployments.plugins as c; c.add_plugin_path(); "
        "import importlib.util as u; "
        "print(json.dumps([c.__file__, c.PLUGIN_PATH, [[e.name, e.value, u.find_spec(e.module).origin] "
        "for e in m.entry_points(group='vllm.general_plugins')]]))"
    )
    run = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site)})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    module, plugin_path, entry_points = json.loads(run.stdout)
    assert module.startswith(str(site)) and plugin_path.startswith(str(site))
    assert sorted(entry_points) == [
        ["colmodernvbert_as_transformers", "deployments.colmodernvbert_vllm:register",
         f"{site}/deployments/colmodernvbert_vllm.py"],
        ["colpali_as_transformers", "deployments.colpali_vllm:register", f"{site}/deployments/colpali_vllm.py"],
        ["qwen2_vl_without_torchvision", "deployments.qwen2_vl_compat:register",
         f"{site}/deployments/qwen2_vl_compat.py"],
        ["rotary_cpu_3d_query", "deployments.rotary_cpu_compat:register", f"{site}/deployments/rotary_cpu_compat.py"],
    ]  # each entry point's module is the installed copy's (importing them needs vLLM, absent under -S)


def test_handle_api_is_typed_and_documented():
    from deployments.ingress import Ingress

    cls = Ingress.func_or_class
    for name in ("rerank", "rerank_v2", "score", "generative_scoring", "models", "health", "scorer_stats"):
        method = getattr(cls, name)
        assert inspect.getdoc(method), f"Ingress.{name} has no docstring"
        signature = inspect.signature(method)
        assert signature.return_annotation is not inspect.Signature.empty, f"Ingress.{name} has no return type"
        assert all(p.annotation is not inspect.Parameter.empty for p in list(signature.parameters.values())[1:])
