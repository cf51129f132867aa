"""Probe of the host side of a cold write on a GPU: getting an encoder's packed buffer, in pageable memory (where a
deserialised Ray object lies), to the device, against one pinned H2D copy of its bytes. Each way runs the store's
algorithm (a ring of pinned slots: a host copy into the next slot while the previous ones' DMAs run) with one
thing changed: the slots' memory (pinned by torch, or write-combined pinned memory from the driver, which the CPU
writes without reading the lines first and the DMA reads without snooping the CPU's caches) and the host copy
(torch's threads, or glibc's memcpy from a pool of threads). Rounds interleaved, wall medians.

    python benchmarks/staging_probe.py --out OUT     # writes OUT/staging_probe.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from timing import request, wall_us  # noqa: E402 (benchmarks/timing.py)

_WRITECOMBINED = 0x04  # CU_MEMHOSTALLOC_WRITECOMBINED
_cuda = None


def host_alloc(nbytes: int, write_combined: bool) -> torch.Tensor:
    """nbytes of page-locked host memory from the driver (cuMemHostAlloc), as a uint8 CPU tensor (never freed:
    a probe's process)."""
    global _cuda
    if _cuda is None:
        _cuda = ctypes.CDLL("libcuda.so.1")
    torch.cuda.init()
    torch.empty(1, device="cuda")  # the primary context, current in this thread
    p = ctypes.c_void_p()
    err = _cuda.cuMemHostAlloc(ctypes.byref(p), ctypes.c_size_t(nbytes), ctypes.c_uint(_WRITECOMBINED if
                                                                                         write_combined else 0))
    if err:
        raise RuntimeError(f"cuMemHostAlloc: CUresult {err}")
    return torch.from_numpy(np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(p.value)))


class Ring:
    """The store's staging: slots of `slot` bytes (the first filled `first` deep), a slot reused once its DMA has
    finished; `fill(dst_slot, src_bytes)` is the host copy."""

    def __init__(self, slots: list[torch.Tensor], first: int, fill, stream):
        self.slots, self.first, self.fill, self.stream = slots, first, fill, stream
        self.done = [torch.cuda.Event() for _ in slots]
        self.used = [False] * len(slots)
        self.k = 0

    def __call__(self, src: torch.Tensor, dst: torch.Tensor, marks: list | None = None) -> None:
        at, depth, size = 0, self.first, self.slots[0].numel()
        with torch.cuda.stream(self.stream):
            while at < src.numel():
                n = min(depth, src.numel() - at)
                k = self.k
                t0 = time.perf_counter()
                if self.used[k]:
                    self.done[k].synchronize()
                t1 = time.perf_counter()
                slot = self.slots[k][:n]
                self.fill(slot, src[at:at + n])
                t2 = time.perf_counter()
                if marks is not None:
                    e0 = torch.cuda.Event(enable_timing=True)
                    e0.record(self.stream)
                dst[at:at + n].copy_(slot, non_blocking=True)
                self.done[k].record(self.stream)
                if marks is not None:
                    e1 = torch.cuda.Event(enable_timing=True)
                    e1.record(self.stream)
                    marks.append((n, t0, t1, t2, e0, e1))
                self.used[k] = True
                self.k = (k + 1) % len(self.slots)
                at, depth = at + n, size
        self.stream.synchronize()


def torch_fill(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src)


def memcpy_fill(pool: ThreadPoolExecutor, threads: int):
    def fill(dst: torch.Tensor, src: torch.Tensor) -> None:
        d, s = dst.numpy(), src.numpy()
        step = -(-(-(-d.size // threads)) // 4096) * 4096  # a thread's share, in whole pages
        list(pool.map(lambda a: np.copyto(d[a:a + step], s[a:a + step]), range(0, d.size, step)))
    return fill


def timeline(ring: Ring, src: torch.Tensor, dst: torch.Tensor) -> dict:
    """One call's steps: host time waiting for a slot, filling it; the DMAs' busy time and the link's idle time
    between them (µs)."""
    base = torch.cuda.Event(enable_timing=True)
    marks: list = []
    torch.cuda.synchronize()
    t_base = time.perf_counter()
    base.record(ring.stream)
    ring(src, dst, marks)
    end = time.perf_counter()
    dma = [(base.elapsed_time(e0) * 1e3, base.elapsed_time(e1) * 1e3) for *_, e0, e1 in marks]
    idle = dma[0][0] + sum(max(0.0, b[0] - a[1]) for a, b in zip(dma, dma[1:]))
    return {"slots": len(marks), "wall": round((end - t_base) * 1e6, 1),
            "waiting for a slot": round(sum(t1 - t0 for _, t0, t1, *_ in marks) * 1e6, 1),
            "filling": round(sum(t2 - t1 for _, _, t1, t2, *_ in marks) * 1e6, 1),
            "first fill": round((marks[0][3] - marks[0][2]) * 1e6, 1),
            "DMA busy": round(sum(b - a for a, b in dma), 1), "link idle before the last DMA": round(idle, 1),
            "last DMA ends": round(dma[-1][1], 1)}


def sweep(args) -> dict:
    """Ring shapes at 1,000 documents: (slot MB, first MB, slots, memory, copy threads), wall and timelines."""
    _, docs, _ = request(1000, seed=1000)
    src = torch.from_numpy(docs).view(torch.uint8).view(-1)
    dst = torch.empty(src.numel(), dtype=torch.uint8, device="cuda")
    pinned_src = torch.empty(src.numel(), dtype=torch.uint8, pin_memory=True)
    pinned_src.copy_(src)
    stream = torch.cuda.Stream()
    shapes = [tuple(t.split("/")) for t in args.sweep.split(",")]
    rings = {}
    for slot_mb, first_mb, nslots, mem, threads in shapes:
        slot = int(float(slot_mb) * (1 << 20))
        slots = [host_alloc(slot, True) if mem == "wc" else torch.empty(slot, dtype=torch.uint8, pin_memory=True)
                 for _ in range(int(nslots))]
        rings[f"slot {slot_mb} MB, first {first_mb}, {nslots} slots, {mem}, {threads} threads"] = (
            Ring(slots, int(float(first_mb) * (1 << 20)), torch_fill, stream), int(threads))
    rows: dict = {"one pinned H2D copy": []}
    lines: dict = {}
    for _ in range(args.rounds):
        torch.set_num_threads(args.threads)
        rows["one pinned H2D copy"].append(wall_us(lambda: dst.copy_(pinned_src, non_blocking=True), args.reps))
        for name, (ring, threads) in rings.items():
            torch.set_num_threads(threads)
            rows.setdefault(name, []).append(wall_us(lambda ring=ring: ring(src, dst), args.reps))
            tl_ = [timeline(ring, src, dst) for _ in range(5)]
            lines.setdefault(name, []).append(tl_[len(tl_) // 2])
    base = statistics.median(rows["one pinned H2D copy"])
    print("\nsweep, 1,000 documents: wall us (rounds), x the pinned copy; a median call's timeline (last round)")
    for name, us in rows.items():
        print(f"  {name:52s} {' '.join(f'{u:8.1f}' for u in us)}   {statistics.median(us) / base:5.2f}x")
        if name in lines:
            print(f"      {lines[name][-1]}")
    return {"wall": rows, "timelines": lines}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--documents", default="1000,10000")
    ap.add_argument("--sweep", default="", help="only the ring shapes slotMB/firstMB/slots/pinned|wc/threads,...")
    args = ap.parse_args()
    if args.sweep:
        with open(os.path.join(args.out, "staging_probe_sweep.json"), "w") as fh:
            json.dump(sweep(args), fh, indent=1)
        return
    torch.set_num_threads(args.threads)
    pool = ThreadPoolExecutor(args.threads)
    stream = torch.cuda.Stream()
    results: dict = {"device": torch.cuda.get_device_name(), "threads": args.threads, "rows": {}}
    for n in map(int, args.documents.split(",")):
        _, docs, _ = request(n, seed=n)
        src = torch.from_numpy(docs).view(torch.uint8).view(-1)
        nbytes = src.numel()
        dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        pinned_src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        pinned_src.copy_(src)
        wc_src = host_alloc(nbytes, True)
        wc_src.copy_(src)
        ways = {
            "one pinned H2D copy (the target's unit)": lambda: dst.copy_(pinned_src, non_blocking=True),
            "one H2D copy from write-combined memory": lambda: dst.copy_(wc_src, non_blocking=True),
        }
        host_pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        ways["host copy alone into pinned memory (torch)"] = lambda: host_pinned.copy_(src)
        ways["host copy alone into write-combined memory (torch)"] = lambda: wc_src.copy_(src)
        for first, slot in ((2 << 20, 8 << 20), (1 << 20, 4 << 20)):
            tag = f"slots {slot >> 20} MB (first {first >> 20})"
            pinned = [torch.empty(slot, dtype=torch.uint8, pin_memory=True) for _ in range(4)]
            wc = [host_alloc(slot, True) for _ in range(4)]
            for mem, slots in (("pinned", pinned), ("write-combined", wc)):
                for how, fill in (("torch", torch_fill), ("memcpy", memcpy_fill(pool, args.threads))):
                    ring = Ring(slots, first, fill, stream)
                    ways[f"ring, {tag}, {mem}, {how} copy"] = lambda ring=ring: ring(src, dst)
        check = torch.empty_like(dst)
        rows = results["rows"].setdefault(f"{n} documents ({nbytes / 1e6:.1f} MB)", {})
        for _ in range(args.rounds):
            for name, fn in ways.items():
                us = wall_us(fn, args.reps if n <= 1000 else max(3, args.reps // 4))
                if name.startswith("ring"):  # every byte arrived
                    dst.zero_()
                    fn()
                    torch.cuda.synchronize()
                    check.copy_(pinned_src)
                    assert torch.equal(dst, check), name
                rows.setdefault(name, []).append(us)
        base = statistics.median(rows["one pinned H2D copy (the target's unit)"])
        print(f"\n{n} documents, {nbytes / 1e6:.1f} MB: wall us (rounds) and x the pinned copy")
        for name, us in rows.items():
            print(f"  {name:62s} {' '.join(f'{u:8.1f}' for u in us)}   {statistics.median(us) / base:5.2f}x")
        del pinned_src, dst, check, host_pinned
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, "staging_probe.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
