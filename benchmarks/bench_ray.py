"""Ray sweep benchmark: the demo zoo's full table serial vs ``--ray`` with 1 and 2 local workers, and a scaling model.

Each run is the real command in its own process with a fresh ``$PERU_HOME`` (cold: nothing stored), timed from
start to exit; the Ray runs' progress lines give each worker's start-up and each spec's seconds. Every CSV is
compared byte for byte with the serial one. The scaling model then predicts the wall time of a table on N workers
by replaying the driver's own plan (:func:`peru_core.raysweep.group_specs`, next group to the first free worker):
first against the 2-worker run, from the 1-worker run's measured group times; then for the paper's ViT-B/32 and
ViT-L/14 tables (PERU, https://arxiv.org/abs/2310.01886, Table 1) on N GPUs from per-stage costs, printed with
where each comes from.

    nice -n 10 python3 benchmarks/bench_ray.py                 # demo zoo: serial, 1 and 2 workers, then the model
    python3 benchmarks/bench_ray.py --model-only               # the cluster model alone (seconds)
"""
from __future__ import annotations

import argparse
import heapq
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peru_core.merging import list_methods  # noqa: E402
from peru_core.raysweep import Group, group_specs  # noqa: E402
from peru_core.spec import Mode, RunSpec  # noqa: E402

# The paper's eight test sets (task-arithmetic benchmark splits): 87,433 images evaluated per spec.
TEST_IMAGES = {"SUN397": 19850, "Cars": 8041, "RESISC45": 6300, "EuroSAT": 2700, "SVHN": 26032, "GTSRB": 12630,
               "MNIST": 10000, "DTD": 1880}
# Per-GPU costs, seconds. Measured on one H100 (README "Performance", bench_scale.py), else scaled by parameter count
# (ViT-L/14 / ViT-B/32 = 304M / 87.8M = 3.46) and marked "scaled" or "assumed".
ARCHS = {
    "ViT-B/32": {"images_per_s": 2633, "ta": 1.4, "ties": 2.95, "per_m": 1.13 / 3.46, "svd": 3.99, "per_q": 0.3,
                 "checkpoint_gb": 0.351, "stats_images": 2048},
    "ViT-L/14": {"images_per_s": 166, "ta": 1.4 * 3.46, "ties": 10.8, "per_m": 1.13, "svd": 3.99 * 3.46,
                 "per_q": 1.0, "checkpoint_gb": 1.216, "stats_images": 2048},
}
SOURCES = ("measured on the H100: eval images/s, TA (B/32), TIES, per-m (L/14); CPU bench_engine: SVD (B/32); "
           "scaled x3.46: TA (L/14), per-m (B/32), SVD (L/14); assumed: per-q reconstruction, Fisher/RegMean "
           "statistics = 3 passes over 256 validation images per task")


def _run(cmd: Sequence[str], home: Path) -> tuple[float, list[tuple[float, str]], int]:
    """Wall seconds, time-stamped stderr lines and the exit code of ``cmd`` (a fresh PERU_HOME)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PERU_HOME": str(home)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    lines = [(time.perf_counter() - t0, line.rstrip()) for line in p.stderr]  # type: ignore[union-attr]
    return time.perf_counter() - t0, lines, p.wait()


def _parse(lines: list[tuple[float, str]]) -> dict:
    """Start-ups, per-spec seconds and when the first worker was ready, from the driver's progress lines."""
    out: dict = {"startup": {}, "spec_s": {}, "first_ready": None, "last_done": 0.0}
    for t, line in lines:
        ready = re.search(r"worker (\d+) ready on .* after ([\d.]+) s of start-up", line)
        done = re.match(r"\[[ \d.]+%\] (.+?): ([\d.]+) s on worker \d+", line)
        if ready:
            out["startup"][int(ready.group(1))] = float(ready.group(2))
            out["first_ready"] = t if out["first_ready"] is None else out["first_ready"]
        elif done:
            out["spec_s"][done.group(1)] = float(done.group(2))
            out["last_done"] = t
    return out


def makespan(groups: Sequence[Group], cost: Callable[[Group], float], workers: int, startup: float) -> float:
    """The driver's dispatch replayed: every worker starts after ``startup``; each next group goes to the worker
    that frees up first (groups in the planned order)."""
    free = [startup] * workers
    heapq.heapify(free)
    for g in groups:
        heapq.heappush(free, heapq.heappop(free) + cost(g))
    return max(free)


def paper_table_specs(every_merge: bool) -> list[RunSpec]:
    """The paper's Table 1 (Task Arithmetic, Fisher, RegMean, TIES on full and LoRA fine-tunes, Post-Pruning and
    PERU-FFT at m = 1, 5, 10%, PERU-LoRA at q = 4, 8, 16), or with every registered merge and our default grids."""
    merges = [m.name for m in list_methods()] if every_merge else ["task_arithmetic", "fisher", "regmean", "ties"]
    keeps, ranks = ((1, 5, 10, 20), (1, 2, 4, 8, 16)) if every_merge else ((1, 5, 10), (4, 8, 16))
    specs = [RunSpec.make("pretrained"), RunSpec.make("single-task", "full"), RunSpec.make("single-task", "lora")]
    specs += [RunSpec.make("merge", s, m) for s in ("full", "lora") for m in merges]
    specs += [RunSpec.make("post-pruning", "full", keep=k) for k in keeps]
    specs += [RunSpec.make("peru-fft", "full", "task_arithmetic", keep=k) for k in keeps]
    return specs + [RunSpec.make("peru-lora", "lora", rank=q) for q in ranks]


def group_cost(arch: dict, g: Group) -> float:
    """Seconds for one group on one GPU: its shared work once, then each spec's construction and evaluation."""
    evaluate = sum(TEST_IMAGES.values()) / arch["images_per_s"]
    kind = g.shared[0]
    if kind == "merged":
        from peru_core.merging import get_method

        method = get_method(g.shared[2])
        shared = arch["ties"] if "ties" in method.name else arch["ta"]
        shared += 3 * arch["stats_images"] / arch["images_per_s"] if method.needs else 0.0
    else:
        shared = arch["svd"] if kind == "lora-svd" else 0.0
    per = {Mode.POST_PRUNING: arch["per_m"], Mode.PERU_FFT: arch["per_m"], Mode.PERU_LORA: arch["per_q"]}
    return shared + sum(evaluate + per.get(s.mode, 0.0) for s in g.specs)


def startup_cost(arch: dict, disk_gb_s: float, decode_per_s: float, base_s: float) -> float:
    """One worker's start-up: the interpreter and model (``base_s``, measured here), the base and 16 fine-tunes
    read from shared storage, and the test sets decoded and resized."""
    return base_s + 17 * arch["checkpoint_gb"] / disk_gb_s + sum(TEST_IMAGES.values()) / decode_per_s


def local_runs(zoo: str, workers: Sequence[int]) -> Optional[dict]:
    rows, base = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in [("serial", [])] + [(f"ray x{w}", ["--ray", "--workers", str(w)]) for w in workers]:
            out = Path(tmp) / f"{name.replace(' ', '_')}.csv"
            load = os.getloadavg()[0]
            cmd = [sys.executable, "-m", "peru_core", "sweep", "--zoo", zoo, *extra, "--out", str(out)]
            wall, lines, rc = _run(cmd, Path(tmp) / f"home_{name.replace(' ', '_')}")
            if rc:
                sys.exit(f"{name} failed:\n" + "\n".join(line for _, line in lines[-20:]))
            same = base is None or out.read_bytes() == base
            base = base or out.read_bytes()
            rows[name] = {"wall": wall, "load": (load + os.getloadavg()[0]) / 2, "same": same, **_parse(lines)}
            print(f"{name:8s} {wall:7.1f} s  load ~{rows[name]['load']:.1f}  CSV identical to serial: {same}",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="demo")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--model-only", action="store_true", help="skip the local runs; print the cluster model")
    ap.add_argument("--gpus", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--disk-gb-s", type=float, default=1.0, help="shared storage read speed per worker (assumed)")
    ap.add_argument("--decode-per-s", type=float, default=1500.0, help="test images decoded per s (assumed)")
    args = ap.parse_args()
    base_s = 10.0  # a worker's interpreter, torch, open_clip and model build; replaced by the measured value below
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start\n")
    if not args.model_only:
        runs = local_runs(args.zoo, args.workers)
        one = runs[f"ray x{args.workers[0]}"]
        base_s = max(one["startup"].values())
        serial_specs = sum(one["spec_s"].values())
        print(f"\nper-spec cost (1 worker): {serial_specs / len(one['spec_s']):.2f} s mean over "
              f"{len(one['spec_s'])} specs; worker start-up {base_s:.1f} s; driver + Ray start until the first "
              f"worker is ready {one['first_ready']:.1f} s")
        from peru_core.raysweep.plan import shared_work
        from peru_core.zoo import demo_zoo, load_zoo
        from peru_core.zoo.runtime import ZooRuntime
        from peru_core import experiments

        rt = ZooRuntime(demo_zoo() if args.zoo == "demo" else load_zoo(args.zoo), device="cpu")
        specs = experiments.paper_specs(rt)
        assert {s.label for s in specs} == set(one["spec_s"]), "the runs computed other specs than the plan"
        for w in args.workers[1:]:
            run = runs[f"ray x{w}"]
            overhead = one["wall"] - (one["last_done"] - one["first_ready"]) - base_s  # driver, Ray, table, exit
            pred = overhead + makespan(group_specs(specs, w), lambda g: sum(one["spec_s"][s.label] for s in g.specs),
                                       w, base_s)
            print(f"model check, {w} workers: predicted {pred:.1f} s from the 1-worker run, measured "
                  f"{run['wall']:.1f} s ({len({shared_work(s) for s in specs})} groups)")
    print(f"\ncluster model: one worker per GPU, start-up = {base_s:.1f} s (this machine) + 17 checkpoints at "
          f"{args.disk_gb_s} GB/s + 87,433 test images decoded at {args.decode_per_s:.0f}/s; {SOURCES}")
    print(f"{'table':34s} {'specs':>5s} {'start-up':>9s} " + " ".join(f"{n:>7d} GPU" for n in args.gpus))
    for every in (False, True):
        specs = paper_table_specs(every)
        for name, arch in ARCHS.items():
            start = startup_cost(arch, args.disk_gb_s, args.decode_per_s, base_s)
            cells = [makespan(group_specs(specs, n), lambda g: group_cost(arch, g), n, start) / 60 for n in args.gpus]
            label = f"{name} {'every merge' if every else 'paper Table 1'}"
            print(f"{label:34s} {len(specs):5d} {start:8.0f}s " + " ".join(f"{c:7.1f} min" for c in cells))


if __name__ == "__main__":
    main()
