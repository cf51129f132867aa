"""Runs the interpreter cases (interpreted_cases.py) in a fresh process with TRITON_INTERPRET=1."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         str(Path(__file__).with_name("interpreted_cases.py"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_launch_retries_with_fewer_stages_until_shared_memory_fits(monkeypatch):
    """On a GPU a configuration can need more shared memory than the GPU has (Triton raises OutOfResources when it
    loads the kernel, before anything runs): the launch retries with fewer pipeline stages and remembers what fit."""
    from triton.runtime.errors import OutOfResources

    from kernels import maxsim as km

    monkeypatch.setattr(km, "_FITTING_STAGES", {})
    tried = []

    def launch(stages):
        tried.append(stages)
        if stages > 2:
            raise OutOfResources(245760, 232448, "shared memory")

    km._with_fitting_stages("key", 4, launch)
    assert tried == [4, 3, 2]
    tried.clear()
    km._with_fitting_stages("key", 4, launch)  # the next launch of the same configuration starts at what fit
    assert tried == [2]

    def never_fits(stages):
        raise OutOfResources(1 << 20, 232448, "shared memory")

    with pytest.raises(OutOfResources):
        km._with_fitting_stages("other", 2, never_fits)
