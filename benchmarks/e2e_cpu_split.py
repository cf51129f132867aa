"""Where the CPU goes: CPU seconds per process (from /proc) while this service runs e2e_bench's workloads.

Usage:  .venv/bin/python -m benchmarks.e2e_cpu_split [--requests 320]

Starts our server as e2e_bench does (1 encoder, 1 scorer replica), runs the cold, warm and repeat workloads at
concurrency 16, and prints, per workload, each process group's CPU time per request (vLLM's engine core, the
Serve replicas, the proxy, Ray's own daemons, this client). Linux only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from benchmarks.e2e_bench import RESULTS, OurServer, build_workloads, drive, warm_up

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = ("Ingress", "Scorer", "Encoder", "ProxyActor", "ServeController", "raylet", "gcs_server", "EngineCore",
          "DashboardAgent", "e2e_cpu_split")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command line, user + system CPU seconds) of every process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ") or stat[stat.index("(") + 1 : stat.rindex(")")]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(pid)] = (cmd, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def group(cmd: str) -> str:
    return next((g for g in GROUPS if g in cmd), "other")


def split(before: dict, after: dict) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for pid, (cmd, t) in after.items():
        spent = t - before.get(pid, (cmd, 0.0))[1]
        if spent > 0:
            seconds[group(cmd)] = seconds.get(group(cmd), 0.0) + spent
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--out", type=Path, default=RESULTS / "e2e_cpu_split.json")
    args = parser.parse_args()
    settings = argparse.Namespace(seed=0, requests=args.requests, history=64, documents=10, query_words=8,
                                  document_words=16, warm_query_share=0.8, warm_document_share=0.5)  # fmt: skip
    cold, warm = build_workloads(settings)
    from tests.conftest import _free_port

    server = OurServer(_free_port(), args.out.with_suffix(".log"), 1)
    report = {}
    try:
        server.wait_ready()
        warm_up(server.url, 100, 16)
        for name, requests, history in (("cold", cold.requests, None), ("warm", warm.requests, warm.history),
                                        ("repeat", cold.requests, None)):  # fmt: skip
            if history:
                asyncio.run(drive(server.url, history, 16))
            before = cpu_seconds()
            _, errors, wall = asyncio.run(drive(server.url, requests, 16))
            per_group = split(before, cpu_seconds())
            n = len(requests)
            report[name] = {"requests_per_s": round(n / wall, 1), "errors": errors,
                            "cpu_ms_per_request": {g: round(s / n * 1000, 2) for g, s in per_group.items()}}  # fmt: skip
            print(f"{name}: {n / wall:.1f} req/s, errors {errors}, CPU {sum(per_group.values()) / n * 1000:.1f} ms a request")
            for g, s in per_group.items():
                print(f"   {g:<16} {s / n * 1000:7.2f} ms a request")
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
