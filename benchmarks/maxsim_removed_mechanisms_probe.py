"""Probe, run once for issue 18: what the mechanisms removed from kernels/ did in the scorer's own call.

Runs against the tree before the document store (commit 71f845c), on a GPU:
    mkdir old && git archive 71f845c kernels scoring | tar -x -C old
    PYTHONPATH=old python benchmarks/maxsim_removed_mechanisms_probe.py --out OUT
Rows (wall µs, median, synchronised, as the scorer calls the kernel: documents already on the GPU, one 32-token
query, 1,000 documents of 85-512 tokens, d 128, fp16): the grouped launch as shipped (L2 streaming window and
direct launch on), each turned off, `nsplit` 2/4/8, the persistent `flat` form; and `MaxSimScorer.score` as the
deployment fed it (one host array per document) at 100/1,000/4,000/10,000 documents, with the window and the direct
launch on and off. Writes maxsim_removed_mechanisms_probe.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import torch
import triton

import timing  # benchmarks/timing.py (the script's own folder)
from kernels import maxsim as km
from scoring.store import maxsim as sm


def wall_us(fn, n=50):
    return timing.wall_us(fn, n)


def flags(l2: bool, direct: bool, f):
    def g():
        km.L2_STREAMING, km.DIRECT_LAUNCH = l2, direct
        try:
            return f()
        finally:
            km.L2_STREAMING, km.DIRECT_LAUNCH = True, True
    return g


def documents(n, d=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(85, 513, (n,), generator=g)
    host = torch.nn.functional.normalize(torch.randn(int(lens.sum()), d, generator=g), dim=-1).half()
    query = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=-1)
    return lens, host, query


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "triton": triton.__version__}
    lens, host, query = documents(1000)
    D = host.cuda()
    cu = torch.zeros(1001, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.cuda()
    Q = query.cuda().half()
    cq = torch.tensor([0, 32], dtype=torch.int32, device="cuda")
    group = torch.zeros(1000, dtype=torch.int32, device="cuda")
    ref = km.maxsim_reference(Q, D, cu, torch.float64)
    base = km._config_bucketed(32, False, 128, 2)

    def grouped(cfg=None):
        return lambda: km.maxsim_grouped(Q, cq, D, cu, group, max_lq=32, config=cfg).cpu()

    kernel = {}
    for _ in range(3):  # interleaved repeats: the spread is the noise
        for name, f in (("shipped (window + direct)", grouped()), ("no L2 window", flags(False, True, grouped())),
                        ("no direct launch", flags(True, False, grouped())),
                        ("neither", flags(False, False, grouped())),
                        ("nsplit 2", grouped(dataclasses.replace(base, nsplit=2))),
                        ("nsplit 4", grouped(dataclasses.replace(base, nsplit=4))),
                        ("nsplit 8", grouped(dataclasses.replace(base, nsplit=8))),
                        ("flat 4/SM (packed form)", lambda: km.maxsim_packed(
                            Q, D, cu, config=dataclasses.replace(base, flat=4, num_stages=3)).cpu())):
            try:
                err = float(((f().double().cuda() - ref).norm() / ref.norm()).item())
                kernel.setdefault(name, {"err": float(f"{err:.1e}"), "wall_us": []})["wall_us"].append(wall_us(f))
            except Exception as e:  # a path that no longer runs is a finding
                kernel[name] = {"error": f"{type(e).__name__}: {str(e)[-300:]}"}
    res["kernel in the scorer's call, 1,000 docs on the GPU"] = kernel
    scorer = sm.MaxSimScorer(128, device="cuda")
    scorer.warmup()
    rows = {}
    for n in (100, 1000, 4000, 10000):
        lens_n, host_n, query_n = documents(n, seed=n)
        starts = np.concatenate([[0], np.cumsum(lens_n.numpy())])
        arr = host_n.numpy()
        per_doc = [np.array(arr[starts[i]:starts[i + 1]]) for i in range(n)]
        g = sm.ScoreGroup(query=query_n.numpy(), docs=per_doc, lengths=lens_n.numpy())
        reps = 20 if n <= 1000 else 5
        row = {"MB": round(arr.nbytes / 1e6, 1)}
        for name, l2, direct in (("shipped", True, True), ("no L2 window", False, True),
                                 ("no direct launch", True, False)):
            row[name] = [wall_us(flags(l2, direct, lambda: scorer.score([g])), n=reps) for _ in range(2)]
        pinned = torch.empty(arr.nbytes, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(arr.nbytes, dtype=torch.uint8, device="cuda")
        row["one pinned H2D copy"] = wall_us(lambda: dst.copy_(pinned, non_blocking=True), n=reps)
        rows[str(n)] = row
        print(n, json.dumps(row), flush=True)
    res["score() as the deployment fed it (one host array a document)"] = rows
    print(json.dumps(res, indent=1))
    with open(os.path.join(args.out, "maxsim_removed_mechanisms_probe.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
