"""This service in a child process of a benchmark, up until the parent closes the child's stdin.

The parent starts `python -m benchmarks.<script> --serve PORT ...` with a piped stdin; the child calls
`serve_until_stdin_closes` with the application to deploy. Closing the pipe (`StopsWhenStdinCloses.stop`) lets the
child shut Serve and its Ray cluster down itself before the process group is signalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve_until_stdin_closes(
    port: int,
    app: dict,
    *,
    num_cpus: int = 8,
    timeout_s: float = 1800,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Child process: a Ray cluster of its own, Serve on `port`, `app` (one application of a Serve config, deployed
    from config as `serve run` does) until it runs, then each line the parent sends to `on_line` until stdin closes.
    `num_cpus`: logical CPUs, above the physical ones so every replica of the app fits; they share the real cores."""
    import ray
    from ray import serve

    from tests.conftest import wait_until
    from tests.e2e.serve_configs import app_running, deploy

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # address="local": a new cluster of its own, even when another Ray runs on this machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(app)
    wait_until(lambda: app_running(app["name"]), timeout=timeout_s, interval=1)
    for line in sys.stdin:
        if on_line is not None:
            on_line(line)
    serve.shutdown()
    ray.shutdown()


class StopsWhenStdinCloses:
    """Mixin for a benchmark's server class whose child runs `serve_until_stdin_closes`: `stop` closes the pipe and
    gives the child time to shut down before the server class's own stop signals what is left."""

    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        super().stop()
