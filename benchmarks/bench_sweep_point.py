"""A sweep point's cost against its floor, at ViT-B/32 scale (issue 10, "reuse across settings").

    python3 benchmarks/bench_sweep_point.py           # real scale (about 88M values per model; ~3 GB of RAM)
    python3 benchmarks/bench_sweep_point.py --small   # two transformer blocks: a quick check of the script

A sweep point is producing task t's tuned model at a new setting once the task's one-time work is done: a new m%
(Post-Pruning / PERU-FFT: the top-m% selection prepared once, the model written into one preallocated buffer) or a
new rank q (PERU-LoRA: one QR-core SVD per matrix, the targets written into one preallocated buffer). Its floor is
copying one model's weights once into existing memory (what loading any model into the evaluated network costs),
measured in the same run. Every figure is the median over the points; ratios, not seconds, are comparable (the
machine may be shared). For reference the script also times the one-time work and the path a sweep point took
before (m: a fresh buffer + a scatter of the kept entries, ``SparseDelta.apply``; q: fresh tensors per target).
Weights are random. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

KEEPS = [1.0, 2.0, 5.0, 10.0, 15.0, 20.0]  # new m% points after a first one
RANKS = [1, 2, 4, 8, 16]  # new q points after a first one
LORA_RANK = 128
TARGET = 3.0


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn, args) -> float:
    """Median seconds of ``fn(a)`` over ``args``, each result released before the next point (as evaluation
    does once the model is loaded)."""
    times = []
    for a in args:
        dt, out = timed(lambda: fn(a))
        del out
        times.append(dt)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="two transformer blocks instead of twelve")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    import torch

    from bench_engine import lora_targets, make_sd, vit_b32_shapes
    from peru_core.io import LoraAdapter, LoraFactors
    from peru_core.lowrank import apply_lowrank, truncate_adapter
    from peru_core.reuse import LoraReuse, SparseReuse

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = vit_b32_shapes(args.small)
    base = make_sd(shapes, 10)
    tuned = make_sd(shapes, 11, base)
    d = sum(v.numel() for v in base.values())
    print(f"ViT-B-32 image encoder{' (2 blocks)' if args.small else ''}: {d / 1e6:.1f}M values "
          f"({d * 4 / 2**20:.0f} MiB float32); torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"threads={args.threads or 'default'}")

    # floor: one model's weights copied once into existing memory (min of 5: the cheapest honest copy)
    dst = {k: torch.empty_like(v) for k, v in base.items()}

    def copy_once():
        for k, v in tuned.items():
            dst[k].copy_(v)
    copy_once()
    floor = min(timed(copy_once)[0] for _ in range(5))
    print(f"\nfloor: copy one model's weights once   {floor * 1e3:8.1f} ms")

    # new m: prepared selector, one preallocated buffer
    prep, reuse = timed(lambda: SparseReuse(base, tuned, "global", device="cpu"))
    first, out = timed(lambda: reuse.model(max(KEEPS)))  # the one-time sort, for the largest m
    del out
    point = median_time(reuse.model, KEEPS)
    old = median_time(lambda m: reuse.task_part(m).apply(base), KEEPS)  # fresh buffer + scatter (before)
    ms = ", ".join(f"{m:g}" for m in KEEPS)
    print(f"\nnew m% (Post-Pruning / PERU-FFT), median of {len(KEEPS)} points (m = {ms})")
    print(f"  one-time: difference vector {prep:.2f} s, top-m% preparation + first model {first:.2f} s")
    print(f"  sweep point {point * 1e3:8.1f} ms | {point / floor:5.2f}x the floor (target <= {TARGET:g}x)")
    print(f"  previous path (fresh buffer + scatter of the kept entries) {old * 1e3:8.1f} ms = {old / floor:5.2f}x")

    # new q: one QR-core SVD per matrix and task, one preallocated buffer for the targets
    g = torch.Generator().manual_seed(2)
    targets = lora_targets(shapes)
    adapter = LoraAdapter("task0", {k: LoraFactors(torch.randn(LORA_RANK, s[1], generator=g) / s[1] ** 0.5,
                                                   torch.randn(s[0], LORA_RANK, generator=g) * 0.01, 2.0)
                                    for k, s in targets.items()})
    svd, lora = timed(lambda: LoraReuse(base, adapter))
    first, out = timed(lambda: lora.model(RANKS[-1]))
    del out
    point_q = median_time(lora.model, RANKS)
    old_q = median_time(lambda q: apply_lowrank(base, truncate_adapter(lora.svds, q)), RANKS)  # fresh tensors
    print(f"\nnew q (PERU-LoRA, rank {LORA_RANK} adapters on {len(targets)} matrices), median of {len(RANKS)} points "
          f"(q = {', '.join(map(str, RANKS))})")
    print(f"  one-time: QR-core SVDs {svd:.2f} s, first model {first:.2f} s")
    print(f"  sweep point {point_q * 1e3:8.1f} ms | {point_q / floor:5.2f}x the floor (target <= {TARGET:g}x)")
    print(f"  previous path (fresh tensors per target) {old_q * 1e3:8.1f} ms = {old_q / floor:5.2f}x")


if __name__ == "__main__":
    main()
