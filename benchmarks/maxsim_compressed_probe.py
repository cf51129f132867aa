"""Probe of the paged kernel's block shapes for compressed storage on a GPU: float16, float8_e4m3 (against its
float8 pair query, and widened against a float16 query) and int8 (against its int8 query) documents in the store's
arena, 1,000 and 10,000 documents of 85-512 tokens at d 128, one 32-token query; each shape timed with triton's
do_bench (median, L2 flushed), rounds interleaved.

    python benchmarks/maxsim_compressed_probe.py --out OUT     # writes OUT/maxsim_compressed_probe.json

What picked the shapes of compressed tiles: float8 widened on 64-row tiles with 2 warps (v13) and 3 stages (v14);
int8 on 64-row tiles, 4 warps and 2 stages (v14, once each tile's rows were requested a tile ahead; `--lengths
300,300`); the float8 pair takes int8's (v15).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from timing import request  # noqa: E402 (benchmarks/timing.py)
from kernels import maxsim as km  # noqa: E402
from scoring.store import maxsim as sm  # noqa: E402

SHAPES = ((64, 3, 4), (64, 4, 4), (64, 5, 4), (64, 6, 4), (64, 4, 2), (64, 4, 8), (32, 4, 4), (32, 6, 4), (32, 8, 4),
          (32, 4, 2), (128, 3, 4), (128, 4, 8))  # block_d, stages, warps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="", help="block_d/stages/warps triples to try, e.g. 64/3/4,128/2/4 "
                    "(default: the sweep above)")
    ap.add_argument("--lengths", default="85,512", help="document tokens, lowest,highest (300,300: rr-10k's)")
    ap.add_argument("--tag", default="", help="prefix of this run's keys (and of its file's name)")
    args = ap.parse_args()
    shapes = tuple(tuple(map(int, t.split("/"))) for t in args.shapes.split(",")) if args.shapes else SHAPES
    results: dict = {"device": torch.cuda.get_device_name()}
    for n in (1000, 10000):
        lens, docs, query = request(n, seed=n, lengths=tuple(map(int, args.lengths.split(","))))
        for dtype, form in (("float16", ""), ("float8_e4m3", " pair"), ("float8_e4m3", " widened"), ("int8", "")):
            scorer = sm.MaxSimScorer(128, device="cuda", dtype=dtype, store_bytes=(1 if n <= 1000 else 8) << 30)
            store = scorer.store
            slots = store.insert([f"n{i}" for i in range(n)], [docs], lens)
            start, end = store.rows(slots)
            ds, de = torch.from_numpy(start).cuda(), torch.from_numpy(end).cuda()
            group = torch.zeros(n, dtype=torch.int32, device="cuda")
            cq = torch.tensor([0, 32], dtype=torch.int32, device="cuda")
            if dtype == "int8":  # the scorer's form: the query quantised like the documents
                q_int, q_scales = sm.quantize_int8(query)
                Q, q_scales = torch.from_numpy(q_int).cuda(), torch.from_numpy(q_scales).cuda()
            elif form == " pair":  # the scorer's float8 form
                Q, q_scales = km.float8_query(torch.from_numpy(query).cuda())
            else:
                Q, q_scales = torch.from_numpy(query).half().cuda(), None
            configs = {"default": km.paged_config(32, float(lens.mean()), 128, Q.element_size(), store.dtype)}
            for block_d, stages, warps in shapes if dtype != "float16" else shapes[:2]:
                configs[f"d{block_d} s{stages} w{warps}"] = km.KernelConfig(
                    block_q=32, block_d=block_d, block_k=128, swap=True, num_warps=warps, num_stages=stages)
            times: dict = {}
            ref = None
            for _ in range(args.rounds):
                for name, cfg in configs.items():
                    def call(cfg=cfg):
                        return km.maxsim_paged(Q, cq, store.arena, store.log, store.page_tokens, ds, de, group, 32,
                                               float(lens.mean()), scales=store.scales, config=cfg,
                                               q_scales=q_scales)
                    got = call()
                    ref = got if ref is None else ref
                    us = triton.testing.do_bench(call, warmup=25, rep=150, return_mode="median") * 1e3
                    row = times.setdefault(name, {"us": [], "max diff vs default": 0.0})
                    row["us"].append(round(us, 1))
                    row["max diff vs default"] = max(row["max diff vs default"], (got - ref).abs().max().item())
            for name, row in times.items():
                results[f"{args.tag}{n} {dtype}{form} {name}"] = row
                print(json.dumps({f"{args.tag}{n} {dtype}{form} {name}": row}), flush=True)
            store.release(slots)
            scorer = store = None  # the next store's arena replaces this one's
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, f"maxsim_compressed_probe{'_' + args.tag.strip() if args.tag else ''}.json"),
              "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
