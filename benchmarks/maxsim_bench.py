"""MaxSim on one GPU: torch eager, flash-maxsim 0.3.0, late-interaction-kernels 0.4.5 and ours, side by side.

Usage (on the GPU machine, peers installed):  python benchmarks/maxsim_bench.py [--out DIR] [--sweep]
    [--shapes rr-1k,colpali-1k] [--dtype fp16|bf16] [--skip-scorer] [--read-floor]

Each row: median µs (triton.testing.do_bench, L2 flushed), the fraction of the floor max(bytes/BW, flops/PEAK)
reached, and ‖out − ref‖/‖ref‖ against a float64 reference over every document. The floor uses the ceilings
measured on our H100 (ANCHORS.md: 3.0 TB/s copy, 696 TFLOP/s bf16), so rows compare with the peer table there;
the ceilings measured in this run are printed too. `--sweep` also times a set of block configurations of our
kernel per shape. The scorer path (documents as a list of GPU tensors; documents in host memory) follows.
Writes maxsim_bench.json and maxsim_bench.png to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernels import maxsim as km  # noqa: E402
from scoring import maxsim as sm  # noqa: E402

BW = 3.0e12  # B/s, device-to-device copy on our H100 (ANCHORS.md)
PEAK = 696e12  # FLOP/s, bf16 matrix product on our H100 (ANCHORS.md)
DEV = "cuda"

SHAPES = [  # name, Nq, B, Lq, Ld (max when varlen), d, varlen
    ("serve-64", 1, 64, 32, 300, 128, False),
    ("rr-1k", 1, 1000, 32, 300, 128, False),
    ("rr-1k-var", 1, 1000, 32, 512, 128, True),
    ("rr-1k-Ld1024-Lq128", 1, 1000, 128, 1024, 128, False),
    ("colpali-1k", 1, 1000, 1024, 1024, 128, False),
    ("rr-10k", 1, 10000, 32, 300, 128, False),
    ("rr-10k-var", 1, 10000, 32, 512, 128, True),
    ("multi-128x128", 128, 128, 32, 300, 128, False),
    ("rr-1k-d64", 1, 1000, 32, 300, 64, False),
    ("rr-1k-d96", 1, 1000, 32, 300, 96, False),
]
TARGET_US = {"rr-1k": 32, "rr-1k-var": 35, "serve-64": 10, "colpali-1k": 500, "multi-128x128": 80,
             "rr-1k-d64": 25, "rr-1k-d96": 30}
TARGET_FLOOR_FRAC = {"rr-10k": 0.9, "rr-10k-var": 0.9}

SWEEP = {  # (block_q, block_d, swap, num_warps, num_stages, nsplit[, block_k]); block_q None: the query's bucket
    "short": [(None, 64, True, 4, 4, 1), (None, 64, True, 4, 5, 1), (None, 128, True, 4, 3, 1),
              (None, 128, True, 8, 3, 1), (None, 32, True, 4, 6, 1), (None, 64, True, 8, 4, 1)],
    "long": [(128, 64, False, 8, 3, 1), (128, 64, False, 4, 3, 1), (128, 32, False, 4, 4, 1),
             (256, 64, False, 8, 3, 1), (256, 64, False, 8, 4, 1), (256, 32, False, 8, 3, 1),
             (64, 64, False, 4, 3, 1), (128, 64, False, 4, 4, 1)],
    "colpali-1k": [(256, 64, False, 8, 3, 1), (256, 64, True, 8, 3, 1), (256, 128, False, 8, 3, 1),
                   (256, 64, False, 8, 4, 1), (256, 32, False, 8, 4, 1), (128, 128, False, 8, 3, 1),
                   (128, 64, True, 8, 3, 1), (256, 128, True, 8, 3, 1)],
    "multi-128x128": [(128, 64, False, 4, 3, 1), (128, 64, True, 4, 3, 1), (128, 64, True, 8, 3, 1),
                      (256, 64, False, 8, 3, 1), (256, 64, True, 8, 3, 1), (128, 128, True, 8, 3, 1),
                      (256, 32, True, 8, 4, 1), (128, 32, True, 4, 4, 1), (64, 64, True, 4, 3, 1)],
    "rr-1k-d96": [(None, 64, True, 4, 4, 1, 128), (None, 64, True, 4, 4, 1, 32), (None, 128, True, 4, 3, 1, 32),
                  (None, 128, True, 8, 3, 1, 128), (None, 64, True, 4, 5, 1, 32), (None, 128, True, 4, 4, 1, 32),
                  (None, 64, True, 4, 6, 1, 32)],
}
FLAT_SWEEP = [  # persistent form (v4): (programs per SM, block_d, num_warps, num_stages)
    (3, 64, 4, 4), (2, 64, 4, 4), (4, 64, 4, 3), (6, 64, 4, 2), (8, 64, 4, 2), (2, 128, 4, 3), (2, 128, 8, 3),
    (1, 128, 8, 4), (4, 32, 4, 4)]
VARIANT_EXTRA = {  # --variants: block shapes tried on top of the default config
    "multi-128x128": [dict(num_stages=4), dict(dpp=2)],
    "colpali-1k": [dict(num_stages=4)],
    "rr-1k": [dict(block_d=128, num_stages=3)],
    "rr-1k-var": [dict(block_d=128, num_stages=3)],
    "rr-1k-d96": [dict(block_k=32)],
}
# --variants, every shape (v9): less document data in flight. Under the L2 streaming window each of our lines in
# flight in an L2 set displaces one of the flush's dirty lines (written back), and 4 stages x 16 KB tiles x the
# programs of 132 SMs hold ~20 MB in flight, ~10x what HBM latency needs. (v8's evict_first / num_stages=1 rows:
# docs/kernel_notes.md v8.)
VARIANT_ALL = [dict(num_stages=3), dict(num_stages=2), dict(block_d=32), dict(block_d=32, num_stages=3)]
SWEEP["rr-1k-d64"] = [(None, 64, True, 4, 4, 1), (None, 128, True, 4, 3, 1), (None, 128, True, 4, 4, 1),
                      (None, 128, True, 8, 4, 1)]


def floor_us(nq, lq, tokens, d, esize=2):
    return max(tokens * d * esize / BW, 2.0 * nq * lq * tokens * d / PEAK) * 1e6


def make(nq, B, lq, ld, d, varlen, dtype, gen):
    Q = torch.nn.functional.normalize(torch.randn(nq, lq, d, device=DEV, generator=gen), dim=-1).to(dtype)
    lens = torch.randint(max(8, ld // 6), ld + 1, (B,), generator=torch.Generator().manual_seed(B)) if varlen \
        else torch.full((B,), ld)
    total = int(lens.sum())
    D = torch.nn.functional.normalize(torch.randn(total, d, device=DEV, generator=gen), dim=-1).to(dtype)
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.to(DEV)
    maxld = int(lens.max())
    idx = torch.arange(maxld, device=DEV)
    lens_d = lens.to(DEV)
    mask = idx[None, :] < lens_d[:, None]
    Dpad = torch.zeros(B, maxld, d, device=DEV, dtype=dtype)
    Dpad[mask] = D
    return Q, D, cu, maxld, Dpad, mask, lens_d.to(torch.int32), total


def rel_err(out, ref):
    out = out.double().reshape(ref.shape)
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1000


_FLUSH = {}


def _sleep_cycles_per_ms() -> float:
    if "cycles_per_ms" not in _FLUSH:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.cuda._sleep(10_000_000)
        e.record()
        torch.cuda.synchronize()
        _FLUSH["cycles_per_ms"] = 10_000_000 / s.elapsed_time(e)
    return _FLUSH["cycles_per_ms"]


def bench_queued(fn, n=60):
    """GPU time alone, in do_bench's cache state: the same 256 MB zeroing before each call, but every call is
    queued behind a GPU sleep longer than the host needs to launch them all, so the GPU never waits for the host
    (do_bench's median includes those waits whenever one flush + call launches slower than the GPU runs them)."""
    if "z" not in _FLUSH:
        _FLUSH["z"] = torch.empty(int(256e6 // 4), dtype=torch.int32, device=DEV)
    z = _FLUSH["z"]
    fn()
    torch.cuda.synchronize()
    sleep_ms = 20.0
    while True:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda._sleep(int(sleep_ms * _sleep_cycles_per_ms()))
        t0 = time.perf_counter()
        for i in range(n):
            z.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        host_ms = (time.perf_counter() - t0) * 1000
        torch.cuda.synchronize()
        if host_ms < 0.8 * sleep_ms:
            return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1000
        sleep_ms *= 2  # the host fell behind the sleep: longer sleep, again


def host_us(fn, n=100):
    """Host time to launch one call (µs), measured while the GPU is busy, so launches never wait for it."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(40 * _sleep_cycles_per_ms()))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return t


def peers():
    found = {}
    try:
        import flash_maxsim as fm
        from flash_maxsim.flash_maxsim_rerank import flash_maxsim_rerank
        found["fm"] = (fm, flash_maxsim_rerank)
    except ImportError as e:
        print(f"flash-maxsim missing: {e}")
    try:
        import late_interaction_kernels as lik
        found["lik"] = lik
    except ImportError as e:
        print(f"late-interaction-kernels missing: {e}")
    return found


def eager(Q, Dpad, mask):
    s = torch.einsum("qld,bmd->qblm", Q, Dpad)
    s = s.masked_fill(~mask[None, :, None, :], float("-inf"))
    return s.amax(-1).float().sum(-1)


def candidates(name, nq, lq, varlen, Q, D, cu, maxld, Dpad, mask, lens, found):
    c = {"torch eager": lambda: eager(Q, Dpad, mask)}
    if "fm" in found:
        fm, rerank = found["fm"]
        if nq == 1:
            c["flash-maxsim"] = (lambda: rerank(Q[0], D, cu, maxld)) if varlen else (lambda: fm.flash_maxsim(Q[0], Dpad, lens))
        else:
            c["flash-maxsim"] = lambda: fm.flash_maxsim_batched(Q, Dpad, lens)
    if "lik" in found:
        lik = found["lik"]
        if nq == 1 and varlen:
            cq = torch.tensor([0, lq], dtype=torch.int32, device=DEV)
            c["late-interaction-kernels"] = lambda: lik.maxsim_varlen(Q[0], D, cq, cu, lq, maxld)
        else:
            c["late-interaction-kernels"] = lambda: lik.maxsim(Q, Dpad, None, mask)
    c["ours"] = (lambda: km.maxsim_packed(Q[0], D, cu)) if nq == 1 else (lambda: km.maxsim_packed(Q, D, cu))
    c["ours, no L2 window"] = without_l2_window(c["ours"])  # v8's launch, side by side (v9)
    return c


def without_l2_window(f):
    """`f` with the documents' L2 streaming window turned off (and cleared from the stream)."""
    def g():
        km.L2_STREAMING = False
        try:
            return f()
        finally:
            km.L2_STREAMING = True
    return g


def sweep_shape(row, nq, lq, Q, D, cu, ref, d):
    res = []
    kind = row["shape"] if row["shape"] in SWEEP else ("short" if lq <= 64 else "long")
    for bq, bd, swap, w, s, ns, *bk in (SWEEP[kind] if not os.environ.get("FLAT_ONLY") else []):
        if ns > 1 and nq > 1:
            continue
        rows = bq or max(16, min(128, (1 << (lq - 1).bit_length()) * (128 // max(lq, 1) if nq > 1 else 1)))
        block_k = bk[0] if bk else min(128, 1 << (d - 1).bit_length())
        cfg = km.KernelConfig(block_q=rows, block_d=bd, block_k=block_k, swap=swap,
                              num_warps=w, num_stages=s, nsplit=ns)
        try:
            f = (lambda: km.maxsim_packed(Q[0], D, cu, config=cfg)) if nq == 1 else \
                (lambda: km.maxsim_packed(Q, D, cu, config=cfg))
            err = rel_err(f(), ref)
            t = bench(f)
            res.append({"cfg": [rows, bd, swap, w, s, ns, block_k], "us": round(t, 1), "err": float(f"{err:.1e}")})
        except Exception as e:  # a config that does not compile is a finding, keep sweeping
            res.append({"cfg": [rows, bd, swap, w, s, ns, block_k], "error": f"{type(e).__name__}: {str(e)[:100]}"})
        torch.cuda.empty_cache()
    if nq == 1 and lq <= 64:
        base = km._config(lq, D.shape[0] / max(1, cu.numel() - 1), d, D.element_size())
        for per_sm, bd, w, s in FLAT_SWEEP:
            cfg = km.KernelConfig(block_q=base.block_q, block_d=bd, block_k=base.block_k, swap=True, num_warps=w,
                                  num_stages=s, flat=per_sm)
            tag = ["flat", per_sm, bd, w, s, base.block_k]
            try:
                f = lambda: km.maxsim_packed(Q[0], D, cu, config=cfg)  # noqa: E731
                km._POISON_OUTPUTS = True
                err = rel_err(f(), ref)
                km._POISON_OUTPUTS = False
                err2 = rel_err(f(), ref)  # second launch: counters and row buffers restored
                res.append({"cfg": tag, "us": round(bench(f), 1), "err": float(f"{max(err, err2):.1e}")})
            except Exception as e:
                km._POISON_OUTPUTS = False
                res.append({"cfg": tag, "error": f"{type(e).__name__}: {str(e)[:100]}"})
    ok = [r for r in res if "us" in r and r["err"] < 1e-4]
    row["sweep"] = res
    if ok:
        best = min(ok, key=lambda r: r["us"])
        print(f"  sweep best {row['shape']}: {best}", flush=True)
    for r in res:
        if r["cfg"][0] == "flat":
            print(f"  {row['shape']} {r}", flush=True)


def variant_sweep(row, nq, lq, Q, D, cu, ref):
    """The default config of this shape, the same with masked last tiles (no clamp), and VARIANT_EXTRA's changes."""

    base = km._plan(nq, lq, D.shape[0] / max(1, cu.numel() - 1), D.shape[1], D.element_size(), None)[0]
    variants = {"default": base, "masked": dataclasses.replace(base, clamp=False)}
    for extra in VARIANT_EXTRA.get(row["shape"], []) + VARIANT_ALL:
        variants[",".join(f"{k}={v}" for k, v in extra.items())] = dataclasses.replace(base, **extra)
    res = {}
    for tag, cfg in variants.items():
        f = (lambda: km.maxsim_packed(Q[0], D, cu, config=cfg)) if nq == 1 else \
            (lambda: km.maxsim_packed(Q, D, cu, config=cfg))
        try:
            km._POISON_OUTPUTS = True
            err = rel_err(f(), ref)
            km._POISON_OUTPUTS = False
            res[tag] = {"us": round(bench(f), 1), "gpu_us": round(bench_queued(f), 1), "err": float(f"{err:.1e}")}
        except Exception as e:  # a variant that does not compile is a finding, keep going
            km._POISON_OUTPUTS = False
            res[tag] = {"error": f"{type(e).__name__}: {str(e)[:100]}"}
        torch.cuda.empty_cache()
    row["variants"] = res
    print(f"  variants {row['shape']} (do_bench / gpu µs): "
          + ", ".join(f"{t} {r.get('us', 'ERR')}/{r.get('gpu_us', '')}" for t, r in res.items()), flush=True)


def kernel_table(args, dtype, found):
    rows = []
    gen = torch.Generator(device=DEV).manual_seed(0)
    for name, nq, B, lq, ld, d, varlen in SHAPES:
        if args.shapes and name not in args.shapes.split(","):
            continue
        Q, D, cu, maxld, Dpad, mask, lens, total = make(nq, B, lq, ld, d, varlen, dtype, gen)
        ref = km.maxsim_reference(Q, D, cu, dtype=torch.float64)  # [Nq, B], every document
        fl = floor_us(nq, lq, total, d)
        row = {"shape": name, "Nq": nq, "B": B, "Lq": lq, "Ld": ld, "d": d, "varlen": varlen, "tokens": total,
               "floor_us": round(fl, 1)}
        for k, f in candidates(name, nq, lq, varlen, Q, D, cu, maxld, Dpad, mask, lens, found).items():
            try:
                if k == "ours":
                    km._POISON_OUTPUTS = True
                out = f()
                km._POISON_OUTPUTS = False
                torch.cuda.synchronize()
                err = rel_err(out, ref)
                t = bench(f)
                row[k] = {"us": round(t, 1), "err": float(f"{err:.1e}"), "floor_frac": round(fl / t, 3),
                          "gpu_us": round(bench_queued(f), 1), "host_us": round(host_us(f), 1)}
            except Exception as e:  # a peer that fails a shape is a finding
                row[k] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            km._POISON_OUTPUTS = False
            torch.cuda.empty_cache()
        if args.sweep:
            sweep_shape(row, nq, lq, Q, D, cu, ref, d)
        if args.variants:
            variant_sweep(row, nq, lq, Q, D, cu, ref)
        if args.read_floor:  # the fastest pure read of the same bytes, same timing
            row["read floor"] = read_floor(D)
        if args.probe:  # what reading the documents once costs under the same timing (torch's own reduction)
            row["probe: D.amax() us"] = round(bench(lambda: D.amax()), 1)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
        del Q, D, Dpad, mask, ref
        torch.cuda.empty_cache()
    return rows


def flush_probe(dtype, found):
    """Same kernels, three cache states before each timed call: `dirty` = do_bench's flush (zeroing 256 MB leaves
    up to the L2's 50 MB of dirty lines, written back while the timed kernel runs), `clean` = that flush followed
    by reading another 256 MB (the write-back happens before the timed call, the L2 holds clean lines), `none`."""
    gen = torch.Generator(device=DEV).manual_seed(0)
    z = torch.empty(int(256e6 // 4), dtype=torch.int32, device=DEV)
    rd = torch.ones(int(256e6 // 4), dtype=torch.int32, device=DEV)
    res = {}
    for name, nq, B, lq, ld, d, varlen in SHAPES:
        if name not in ("rr-1k", "rr-1k-var", "rr-1k-d96", "rr-1k-d64", "rr-10k"):
            continue
        Q, D, cu, maxld, Dpad, mask, lens, total = make(nq, B, lq, ld, d, varlen, dtype, gen)
        v3 = km._config(lq, D.shape[0] / B, d, D.element_size())
        flat = km.KernelConfig(**{**v3.__dict__, "flat": 4, "num_stages": 3})
        cands = {"ours (v3 grid)": lambda: km.maxsim_packed(Q[0], D, cu, config=v3),
                 "ours flat 4/SM": lambda: km.maxsim_packed(Q[0], D, cu, config=flat),
                 "D.amax()": lambda: D.amax()}
        if "fm" in found:
            fm, rerank = found["fm"]
            cands["flash-maxsim"] = (lambda: rerank(Q[0], D, cu, maxld)) if varlen else \
                (lambda: fm.flash_maxsim(Q[0], Dpad, lens))
        row = {"floor_us": round(floor_us(nq, lq, total, d), 1)}
        for k, f in cands.items():
            f()
            for mode in ("dirty", "clean", "none"):
                ts = []
                for _ in range(60):
                    if mode != "none":
                        z.zero_()
                    if mode == "clean":
                        rd.sum()
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    f()
                    e.record()
                    torch.cuda.synchronize()
                    ts.append(s.elapsed_time(e) * 1000)
                row[f"{k} [{mode}]"] = round(statistics.median(ts), 1)
        res[name] = row
        print(name, json.dumps(row), flush=True)
        del Q, D, Dpad, mask
        torch.cuda.empty_cache()
    return res


def wall_us(fn, n=30):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6)
    return round(statistics.median(ts), 1)


def scorer_path(dtype):
    """1,000 documents of 85-512 tokens, d 128, one 32-token query: the scorer around the kernel."""
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(85, 513, (1000,), generator=g)
    total, d = int(lens.sum()), 128
    host_docs = torch.nn.functional.normalize(torch.randn(total, d, generator=g), dim=-1).to(torch.float16)
    query = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=-1)
    res = {"docs": 1000, "tokens": total, "MB": round(total * d * 2 / 1e6, 1)}
    Dg = host_docs.to(DEV)
    cu = torch.zeros(1001, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.to(DEV)
    Qg = query.to(DEV, torch.float16)
    ref = km.maxsim_reference(Qg, Dg, cu, dtype=torch.float64)
    res["kernel alone (do_bench)"] = round(bench(lambda: km.maxsim_packed(Qg, Dg, cu)), 1)
    res["kernel alone (wall)"] = wall_us(lambda: km.maxsim_packed(Qg, Dg, cu))

    views = list(torch.split(Dg, lens.tolist()))
    separate = [v.clone() for v in views]

    def from_list(docs):
        D, c = sm.pack_device_documents(docs)
        return km.maxsim_packed(Qg, D, c)

    res["err list"] = float(f"{rel_err(from_list(separate), ref):.1e}")
    res["GPU list, separate tensors: cat + kernel (do_bench)"] = round(bench(lambda: from_list(separate)), 1)
    res["GPU list, separate tensors: cat + kernel (wall)"] = wall_us(lambda: from_list(separate))
    res["GPU list, views of one buffer: zero-copy + kernel (do_bench)"] = round(bench(lambda: from_list(views)), 1)
    res["GPU list, views of one buffer: zero-copy + kernel (wall)"] = wall_us(lambda: from_list(views))
    res["err maxsim_list"] = float(f"{rel_err(km.maxsim_list(Qg, separate), ref):.1e}")
    res["GPU list, separate tensors: maxsim_list (do_bench)"] = round(bench(lambda: km.maxsim_list(Qg, separate)), 1)
    res["GPU list, separate tensors: maxsim_list (wall)"] = wall_us(lambda: km.maxsim_list(Qg, separate))
    res["GPU list, views of one buffer: maxsim_list (wall)"] = wall_us(lambda: km.maxsim_list(Qg, views))
    res["GPU list: layout gather alone (wall)"] = wall_us(lambda: km._list_layout(separate, d))

    # host side: the encoder's packed fp16 buffer in shared memory (as Ray's object store maps it)
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=host_docs.numel() * 2)
    try:
        arr = np.ndarray((total, d), dtype=np.float16, buffer=shm.buf)
        arr[:] = host_docs.numpy()
        pinned = torch.empty(total * d * 2, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(total * d * 2, dtype=torch.uint8, device=DEV)
        res["floor: one pinned H2D copy"] = wall_us(lambda: dst.copy_(pinned, non_blocking=True))
        res["pageable .cuda() of the packed buffer"] = wall_us(lambda: torch.from_numpy(arr).cuda())
        try:  # pinning the arriving buffer in place instead of staging it
            src = torch.from_numpy(arr)
            cudart = torch.cuda.cudart()

            def register_copy():
                cudart.cudaHostRegister(src.data_ptr(), src.numel() * 2, 0)
                dst.view(torch.float16).view(total, d).copy_(src, non_blocking=True)
                torch.cuda.synchronize()
                cudart.cudaHostUnregister(src.data_ptr())
            res["cudaHostRegister + copy + unregister"] = wall_us(register_copy, n=10)
        except Exception as e:  # an alternative that fails here is a finding, not a stop
            res["cudaHostRegister + copy + unregister"] = f"{type(e).__name__}: {e}"[:120]
        res["torch threads"] = torch.get_num_threads()
        scorer = sm.MaxSimScorer(d, device="cuda")
        res["scorer warmup s"] = round(scorer.warmup(), 2)
        group = sm.ScoreGroup(query=query.numpy(), docs=arr, lengths=lens.numpy().astype(np.int32))
        out = scorer.score([group])[0]
        res["err scorer"] = float(f"{rel_err(torch.from_numpy(out).to(DEV), ref):.1e}")
        default_chunks = sm._FIRST_CHUNK_BYTES, sm._STAGE_CHUNK_BYTES, sm._RING_SLOTS
        for first_mb, chunk_mb, slots in ((2, 8, 4), (2, 8, 3), (1, 8, 4), (2, 4, 6), (2, 16, 3)):
            sm._FIRST_CHUNK_BYTES, sm._STAGE_CHUNK_BYTES, sm._RING_SLOTS = first_mb << 20, chunk_mb << 20, slots
            res[f"host packed -> scorer.score (first chunk {first_mb} MB, then {chunk_mb} MB, {slots} slots)"] = \
                wall_us(lambda: scorer.score([group]), n=30)
        sm._FIRST_CHUNK_BYTES, sm._STAGE_CHUNK_BYTES, sm._RING_SLOTS = default_chunks
        # the staging alone (no kernel), ring beside v7's one pinned buffer of the request's size, interleaved
        stream = torch.cuda.Stream()
        src_t = torch.from_numpy(arr).view(-1).view(torch.uint8)
        slots = [torch.empty(8 << 20, dtype=torch.uint8, pin_memory=True) for _ in range(4)]

        def stage(ring: bool):
            done = [None] * len(slots)
            with torch.cuda.stream(stream):
                a, size, i = 0, 2 << 20, 0
                while a < src_t.numel():
                    z = min(src_t.numel(), a + size)
                    if ring:
                        k = i % len(slots)
                        if done[k] is not None:
                            done[k].synchronize()
                        slots[k][:z - a].copy_(src_t[a:z])
                        dst.narrow(0, a, z - a).copy_(slots[k][:z - a], non_blocking=True)
                        done[k] = torch.cuda.Event()
                        done[k].record(stream)
                    else:
                        pinned[a:z].copy_(src_t[a:z])
                        dst[a:z].copy_(pinned[a:z], non_blocking=True)
                    a, size, i = z, 8 << 20, i + 1
            stream.synchronize()
        for rep in range(3):
            res[f"staging alone, one pinned buffer of the request's size (v7) #{rep}"] = wall_us(lambda: stage(False), n=30)
            res[f"staging alone, ring of 4 x 8 MB #{rep}"] = wall_us(lambda: stage(True), n=30)
        one = sm.MaxSimScorer(d, device="cuda", staging_threads=1)  # what a Ray actor of num_cpus 1 had (v6)
        res["host packed -> scorer.score, 1 staging thread (v6 in a Ray actor)"] = wall_us(
            lambda: one.score([group]), n=10)
        torch.set_num_threads(1)  # as in a Ray actor of num_cpus 1: the scorer sets its staging threads itself
        res["host packed -> scorer.score (default)"] = wall_us(lambda: scorer.score([group]), n=30)
        # the scorer deployment's real input: one array per document (its cache's rows), scored in place (v9)
        # against packing them into one buffer first (what the deployment did up to v8)
        from scoring.embeddings import PackedEmbeddings
        starts = np.concatenate([[0], np.cumsum(lens.numpy())])
        rows = [np.array(arr[starts[i]:starts[i + 1]]) for i in range(len(starts) - 1)]
        rows_group = sm.ScoreGroup(query=query.numpy(), docs=rows, lengths=lens.numpy())
        res["err scorer, per-document arrays"] = float(
            f"{rel_err(torch.from_numpy(scorer.score([rows_group])[0]).to(DEV), ref):.1e}")
        for rep in range(2):
            res[f"host per-document arrays -> scorer.score #{rep}"] = wall_us(lambda: scorer.score([rows_group]), n=10)
            res[f"host per-document arrays -> pack + scorer.score (v8 deployment) #{rep}"] = wall_us(
                lambda: scorer.score([sm.ScoreGroup(query=query.numpy(), lengths=lens.numpy(),
                                                    docs=PackedEmbeddings.pack(rows, d, np.float16).data)]), n=10)
        groups = [sm.ScoreGroup(query=query.numpy(), docs=arr[int(cu[i * 125]):int(cu[(i + 1) * 125])],
                                lengths=lens[i * 125:(i + 1) * 125].numpy()) for i in range(8)]
        res["err scorer, 8 groups"] = float(f"{rel_err(torch.from_numpy(np.concatenate(scorer.score(groups))).to(DEV), ref):.1e}")
        res["host packed, 8 requests of 125 docs, one score() call"] = wall_us(lambda: scorer.score(groups), n=20)
        del arr
    finally:
        shm.close()
        shm.unlink()
    return res


def cpu_scorer():
    """MaxSimScorer on the CPU (run under `taskset -c 0,1`: the service's 2 cores): 1,000 documents x 300 tokens,
    d 384, fp16, one 32-token fp32 query; the previous path (the float64-capable reference in fp32) beside it."""
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    d = 384
    res = {"torch threads": torch.get_num_threads()}
    for name, lens in (("equal 300", np.full(1000, 300, dtype=np.int32)),
                       ("85-512", rng.integers(85, 513, 1000).astype(np.int32))):
        g = sm.ScoreGroup(rng.standard_normal((32, d)).astype(np.float32),
                          rng.standard_normal((int(lens.sum()), d)).astype(np.float16), lens)
        cu = torch.from_numpy(sm._cu_seqlens(lens))
        ref = km.maxsim_reference(torch.from_numpy(g.query), torch.from_numpy(g.docs), cu, dtype=torch.float64)
        scorer = sm.MaxSimScorer(dim=d, device="cpu")
        t = []
        for _ in range(3):
            t0 = time.perf_counter()
            km.maxsim_reference(torch.from_numpy(g.query), torch.from_numpy(g.docs), cu)
            t.append((time.perf_counter() - t0) * 1e3)
        res[f"{name}: previous path (reference, fp32) ms"] = round(min(t), 1)
        default = sm._CPU_CHUNK_ROWS
        for rows in (1024, 2048, 4096, 8192, 32768):
            sm._CPU_CHUNK_ROWS = rows
            t = []
            for _ in range(3):
                t0 = time.perf_counter()
                out = scorer.score([g])[0]
                t.append((time.perf_counter() - t0) * 1e3)
            err = float(np.abs(out - ref.numpy()).max() / np.abs(ref.numpy()).max())
            res[f"{name}: chunk {rows} rows ms"] = round(min(t), 1)
            res[f"{name}: chunk {rows} rows max err"] = float(f"{err:.1e}")
        sm._CPU_CHUNK_ROWS = default
        # the scorer deployment's input since v9: one array per document, read in place, against packing them
        # into one buffer first (the deployment up to v8); interleaved, medians of 5
        from scoring.embeddings import PackedEmbeddings
        starts = sm._cu_seqlens(lens)
        rows = [np.array(g.docs[starts[i]:starts[i + 1]]) for i in range(len(lens))]
        as_rows = sm.ScoreGroup(g.query, rows, lens)
        assert np.array_equal(scorer.score([as_rows])[0], scorer.score([g])[0])
        t_rows, t_pack = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            scorer.score([as_rows])
            t_rows.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            scorer.score([sm.ScoreGroup(g.query, PackedEmbeddings.pack(rows, d, np.float16).data, lens)])
            t_pack.append((time.perf_counter() - t0) * 1e3)
        res[f"{name}: per-document arrays, read in place ms"] = round(statistics.median(t_rows), 1)
        res[f"{name}: per-document arrays, packed first (v8 deployment) ms"] = round(statistics.median(t_pack), 1)
    return res


@triton.jit
def _read_max_kernel(X, out, n_rows, rows_per_prog, D_MODEL: tl.constexpr, BLOCK: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """The max over each program's run of rows: reads every byte of X once and does nothing else."""
    pid = tl.program_id(0)
    r0 = pid * rows_per_prog
    r1 = tl.minimum(r0 + rows_per_prog, n_rows)
    cols = tl.arange(0, BLOCK_K)
    acc = tl.full([BLOCK, BLOCK_K], float("-inf"), tl.float32)
    for r in range(r0, r1, BLOCK):
        rows = r + tl.arange(0, BLOCK)
        m = (rows[:, None] < r1) & (cols[None, :] < D_MODEL)
        x = tl.load(X + rows[:, None].to(tl.int64) * D_MODEL + cols[None, :], mask=m, other=float("-inf"))
        acc = tl.maximum(acc, x.to(tl.float32))
    tl.store(out + pid, tl.max(tl.max(acc, 1), 0))


# programs × rows a tile × warps; in the v10 probe (24 configs, 132-4,224 programs) the fastest reads had the most
# programs, and TMA reads (72 configs) were slower than all of these (docs/kernel_notes.md v10)
READ_FLOOR_CONFIGS = [(p, b, w) for p in (1056, 2112, 4224) for b, w in ((64, 4), (64, 8), (128, 8))]


def read_floor(D):
    """The fastest pure read of the documents among READ_FLOOR_CONFIGS, with the same L2 window and timing as ours:
    what reading them once costs in do_bench's cache state. A reference, not a proof: on rr-10k ours ran faster
    than all of these (docs/benchmarks.md v10)."""
    n, d = D.shape
    ref = D.float().max().item()
    best = None
    for progs, block, warps in READ_FLOOR_CONFIGS:
        out = torch.empty(progs, device=DEV)

        def f(progs=progs, block=block, warps=warps, out=out):
            km._stream_documents(D)
            _read_max_kernel[(progs,)](D, out, n, -(-n // progs), D_MODEL=d, BLOCK=block,
                                       BLOCK_K=triton.next_power_of_2(d), num_warps=warps)

        f()
        if out.max().item() != ref:
            raise AssertionError(f"read kernel wrong: {out.max().item()} != {ref}")
        gpu = bench_queued(f)
        if best is None or gpu < best["gpu_us"]:
            best = {"us": round(bench(f), 1), "gpu_us": round(gpu, 1), "programs": progs, "block": block,
                    "warps": warps}
    return best


def ceilings():
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    t = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=100, return_mode="median") * 1e-3
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    tm = triton.testing.do_bench(lambda: a @ a, warmup=10, rep=100, return_mode="median") * 1e-3
    del x, y, a
    torch.cuda.empty_cache()
    return {"copy TB/s": round(2 * (1 << 30) / t / 1e12, 2), "bf16 TFLOP/s": round(2 * 8192 ** 3 / tm / 1e12, 0)}


def verdict(row):
    ours = row.get("ours", {}).get("us")
    if ours is None:
        return "ERR"
    best = min((row[k]["us"] for k in ("flash-maxsim", "late-interaction-kernels") if "us" in row.get(k, {})),
               default=float("inf"))
    ok = ours < best
    if row["shape"] in TARGET_US:
        ok = ok and ours <= TARGET_US[row["shape"]]
    if row["shape"] in TARGET_FLOOR_FRAC:
        ok = ok and row["ours"]["floor_frac"] >= TARGET_FLOOR_FRAC[row["shape"]]
    return "met" if ok else "MISSED"


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["torch eager", "flash-maxsim", "late-interaction-kernels", "ours"]
    fig, ax = plt.subplots(figsize=(12, 5))
    w = 0.2
    for i, k in enumerate(keys):
        vals = [r[k]["floor_frac"] if "us" in r.get(k, {}) else 0 for r in rows]
        ax.bar(np.arange(len(rows)) + (i - 1.5) * w, vals, w, label=k)
    ax.set_xticks(np.arange(len(rows)), [r["shape"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("fraction of roofline floor (higher is better)")
    ax.set_title("MaxSim on H100, fp16: fraction of floor")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--shapes", default="")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--variants", action="store_true", help="time the tile-loop flags of the default configs")
    ap.add_argument("--skip-scorer", action="store_true")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--read-floor", action="store_true",
                    help="also time the fastest of nine kernels that only read each shape's documents")
    ap.add_argument("--flush-probe", action="store_true", help="only the cache-state probe (flush_probe)")
    ap.add_argument("--skip-ceilings", action="store_true")
    ap.add_argument("--cpu-scorer", action="store_true", help="only the CPU scorer timing (use taskset -c 0,1)")
    args = ap.parse_args()
    if args.cpu_scorer:
        res = cpu_scorer()
        print(json.dumps(res, indent=1))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "maxsim_cpu_scorer.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        return
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    os.makedirs(args.out, exist_ok=True)
    if args.flush_probe:
        res = flush_probe(dtype, peers())
        with open(os.path.join(args.out, "maxsim_flush_probe.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "dtype": args.dtype, "floor_constants": {"BW": BW, "PEAK": PEAK}}
    if not args.skip_ceilings:
        result["ceilings_measured"] = ceilings()
        print(result["ceilings_measured"], flush=True)
    found = peers()
    rows = kernel_table(args, dtype, found)
    result["rows"] = rows
    if not args.skip_scorer:
        result["scorer_path"] = scorer_path(dtype)
        print(json.dumps(result["scorer_path"], indent=1), flush=True)
    with open(os.path.join(args.out, "maxsim_bench.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    try:
        chart(rows, os.path.join(args.out, "maxsim_bench.png"))
    except Exception as e:  # the table matters more than the picture
        print(f"chart failed: {e}")
    keys = ["torch eager", "flash-maxsim", "late-interaction-kernels", "ours, no L2 window", "ours"]
    print("\nµs: do_bench (fraction of the floor) / GPU alone, queued behind a sleep (`bench_queued`) / host launch")
    print("\n| shape | floor µs | " + " | ".join(keys) + " | ours err | target |")
    print("|---|---|" + "---|" * len(keys) + "---|---|")
    for r in rows:
        cells = [f"{r[k]['us']:.1f} ({r[k]['floor_frac']:.2f}) / {r[k]['gpu_us']:.1f} / {r[k]['host_us']:.0f}"
                 if "us" in r.get(k, {}) else ("-" if k not in r else "ERR") for k in keys]
        err = r.get("ours", {}).get("err", "-")
        print(f"| {r['shape']} | {r['floor_us']:.1f} | " + " | ".join(cells) + f" | {err} | {verdict(r)} |")
    for r in rows:
        if "read floor" in r:
            f, ours = r["read floor"], r.get("ours", {})
            print(f"read floor {r['shape']}: {f['us']:.1f} / {f['gpu_us']:.1f} µs ({f['programs']} programs, "
                  f"{f['block']}-row tiles, {f['warps']} warps); ours {ours.get('us', '-')} / {ours.get('gpu_us', '-')}")


if __name__ == "__main__":
    main()
