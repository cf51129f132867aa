"""This service's vLLM general plugins, and how vLLM's processes find them.

`deployments/vllm_plugins` holds one dist-info whose `vllm.general_plugins` entry points name each plugin's
`register`: the Qwen2-VL / Qwen3-VL processing without torchvision (deployments/qwen2_vl_compat.py), the CPU rotary
fix for LFM2 (deployments/rotary_cpu_compat.py) and ColPali as transformers runs it (deployments/colpali_vllm.py).
vLLM runs general plugins in every process it starts (the model-inspection subprocess, the engine core) and in the
one creating the engine: a deployment whose model needs one calls `add_plugin_path()` before starting its engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGIN_PATH = str(Path(__file__).parent / "vllm_plugins")


def add_plugin_path() -> None:
    """Make the plugins visible to this process and to the processes it starts (vLLM's subprocesses)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PLUGIN_PATH not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, PLUGIN_PATH])
    if PLUGIN_PATH not in sys.path:
        sys.path.append(PLUGIN_PATH)
