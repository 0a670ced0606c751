"""Scale benchmark: a real-size zoo (ViT-B/32 by default, 8 tasks) from random weights, on this machine.

Builds ``open_clip.create_model(arch, pretrained=None)`` weights, perturbs the image tower once per task, writes the
zoo with :func:`peru_core.zoo.writer.write_zoo` (deep validation included), then times Task Arithmetic, TIES, a
PERU-FFT sweep over m (PERU, https://arxiv.org/abs/2310.01886) and the evaluation of a handful of images, printing
seconds and peak resident memory (VmHWM, reset before each stage) per stage. Fine-tuned checkpoints are streamed
from disk one tensor at a time (plain reads, no mmap), so merges hold the base, the output and one tensor per task.

    python benchmarks/bench_scale.py                          # ViT-B-32, then ViT-L-14 (each in its own process)
    python benchmarks/bench_scale.py --arch ViT-B-32 --tasks 8 --images 16
    python benchmarks/bench_scale.py --arch ViT-B-32 --device cuda --baseline-device cpu   # GPU speed-up per stage

With ``--baseline-device`` every stage also runs on that device (its own process, same machine, same run) and a table
of speed-ups against it is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peru_core.device import default_device  # noqa: E402
from peru_core.io import read_file_header, save_state_dict  # noqa: E402
from peru_core.merging import get_method  # noqa: E402
from peru_core.models import create_clip  # noqa: E402
from peru_core.reuse import SparseReuse  # noqa: E402
from peru_core.zoo.runtime import ZooRuntime  # noqa: E402
from peru_core.zoo.validate import zoo_problems  # noqa: E402
from peru_core.zoo.writer import TaskInput, write_zoo  # noqa: E402

BUDGET_GIB = 24.0
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class StreamedStateDict(Mapping):
    """A safetensors file read one tensor at a time with plain reads (no mmap, so nothing stays resident);
    the last tensor is cached because merges touch a key several times in a row."""

    def __init__(self, path: Path, keys: Optional[Sequence[str]] = None) -> None:
        self.path = Path(path)
        self.header = read_file_header(self.path, self.path.name)
        self.start = self.header["__data_start__"]
        self._keys = list(keys) if keys is not None else [k for k in self.header if not k.startswith("__")]
        self._last: tuple[Optional[str], Optional[torch.Tensor]] = (None, None)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._last[0] == key:
            return self._last[1]  # type: ignore[return-value]
        info = self.header[key]
        a, b = info["data_offsets"]
        buf = bytearray(b - a)
        with open(self.path, "rb") as f:
            f.seek(self.start + a)
            f.readinto(buf)
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]).reshape(info["shape"]) if b > a else \
            torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
        self._last = (key, t)
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def stage(rows: list[dict], name: str, fn: Callable[[], Any], **extra: Any) -> Any:
    """Run ``fn`` as one timed stage; record seconds and peak RSS (GiB) in ``rows``."""
    _reset_peak()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    row = {"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_gib": _status("VmHWM"), **extra}
    if isinstance(out, dict) and "accuracy" in out:
        row.update(out)
    rows.append(row)
    print(f"  {name:<18} {row['seconds']:8.2f} s  peak RSS {row['peak_rss_gib']:6.2f} GiB"
          + "".join(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}" for k, v in row.items()
                    if k not in ("stage", "seconds", "peak_rss_gib")), flush=True)
    return out


def build_random_zoo(workdir: Path, arch: str, tasks: int, images: int, seed: int = 0) -> tuple[Path, list[TaskInput]]:
    """Random base (full CLIP) + ``tasks`` perturbed image towers + one image folder, written to ``workdir/src``."""
    src = workdir / "src"
    torch.manual_seed(seed)
    model = create_clip(arch, device="cpu")
    base = {k: v.detach() for k, v in model.state_dict().items()}
    save_state_dict(base, src / "base.safetensors")
    del model
    visual = {k: v for k, v in base.items() if k.startswith("visual.")}
    specs = []
    classes = tuple(f"class {c}" for c in range(4))
    rng = np.random.default_rng(seed)
    folder = src / "images"
    for i in range(images):
        d = folder / classes[i % 4]
        d.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{i}.png")
    for t in range(tasks):
        g = torch.Generator().manual_seed(seed + 1 + t)
        # a fine-tune-like update: small relative to each tensor's scale, different per task
        ft = {k: v + (0.02 * (v.float().std() if v.numel() > 1 else 1.0)) * torch.randn(v.shape, generator=g)
              for k, v in visual.items()}
        save_state_dict(ft, src / f"task{t}.safetensors")
        del ft
        specs.append(TaskInput(f"task{t}", classes, finetuned=src / f"task{t}.safetensors", test=folder))
    return src / "base.safetensors", specs


@torch.no_grad()
def run_scale(arch: str = "ViT-B-32", tasks: int = 8, images: int = 16, workdir: Optional[Path] = None,
              keeps: Sequence[float] = (1.0, 5.0, 10.0, 25.0), device: Optional[str] = None) -> list[dict]:
    """All stages for one architecture; returns one row per stage (also printed)."""
    device = device or default_device()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="peru_bench_"))
    rows: list[dict] = []
    print(f"{arch}: {tasks} tasks, {images} images, device {device}, work dir {workdir}", flush=True)
    base_path, specs = stage(rows, "build zoo", lambda: build_random_zoo(workdir, arch, tasks, images))
    zoo = stage(rows, "write_zoo", lambda: write_zoo(workdir / "zoo", arch, base_path, specs, copy=False))
    problems = stage(rows, "validate", lambda: zoo_problems(workdir / "zoo"))
    assert problems == [], problems

    def load() -> ZooRuntime:
        rt = ZooRuntime(zoo, device=device)
        for t in zoo.task_names:  # heads and test tensors once, so later stages time only the reuse work
            rt.head(t), rt.data(t)
        return rt

    rt = stage(rows, "load runtime", load)
    base = rt.base_state()
    fts = [StreamedStateDict(s.finetuned, rt.tuned_keys) for s in zoo.tasks]
    d = sum(v.numel() for v in base.values())
    merged = stage(rows, "task arithmetic",
                   lambda: get_method("task_arithmetic")(base, fts, lam=0.3, device=device), values=d)

    def ties() -> None:
        get_method("ties")(base, fts, k=20.0, lam=1.0, device=device)  # result dropped: only its cost matters

    stage(rows, "ties", ties, values=d)

    def sweep() -> dict:
        eval_s, accs = 0.0, []
        for t, ft in enumerate(fts):
            for _, model in SparseReuse(merged, ft, device=device).sweep(keeps, reuse_buffer=True):
                t0 = time.perf_counter()
                accs.append(rt.accuracy(model, t))
                eval_s += time.perf_counter() - t0
        points = len(fts) * len(keeps)
        return {"accuracy": float(np.mean(accs)), "points": points, "eval_seconds": eval_s}

    stage(rows, "peru-fft sweep", sweep)
    rows[-1]["seconds_per_point_excl_eval"] = (rows[-1]["seconds"] - rows[-1]["eval_seconds"]) / rows[-1]["points"]

    def evaluate() -> dict:
        accs = [rt.accuracy(merged, t) for t in range(len(zoo.tasks))]
        return {"accuracy": float(np.mean(accs)), "images": len(zoo.tasks) * images}

    stage(rows, "evaluate", evaluate)
    rows[-1]["images_per_second"] = rows[-1]["images"] / rows[-1]["seconds"]
    peak = max(r["peak_rss_gib"] for r in rows)
    print(f"  peak RSS over all stages {peak:.2f} GiB (budget {BUDGET_GIB:g} GiB); "
          f"per sweep point {rows[-2]['seconds_per_point_excl_eval']:.2f} s excl. evaluation; "
          f"{rows[-1]['images_per_second']:.1f} images/s", flush=True)
    return rows


def run_each(args: argparse.Namespace) -> int:
    """Each architecture (and, with a baseline, each device) in its own process; then the speed-up table."""
    status = 0
    devices = [args.device or default_device()] + ([args.baseline_device] if args.baseline_device else [])
    with tempfile.TemporaryDirectory(prefix="peru_bench_rows_") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        for arch in args.arch:
            for device in devices:
                cmd = [sys.executable, __file__, "--arch", arch, "--tasks", str(args.tasks), "--images",
                       str(args.images), "--keeps", *map(str, args.keeps), "--device", device,
                       "--json", str(rows_file)]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                rc = subprocess.call(cmd)
                if rc != 0:
                    print(f"{arch} on {device}: did not complete (exit {rc}); the largest model that fits is the "
                          "one before it.")
                    status = rc
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if args.baseline_device:
        print_speedups(rows, devices[0], args.baseline_device)
    return status


def print_speedups(rows: list[dict], device: str, baseline: str) -> None:
    """Per architecture and stage: seconds on ``baseline``, on ``device``, and the ratio (baseline / device)."""
    timed = {(r["arch"], r["device"], r["stage"]): r["seconds"] for r in rows}
    print(f"\nspeed-up of {device} over {baseline} (baseline, measured in this run; seconds per stage):")
    print(f"  {'arch':<10} {'stage':<18} {baseline:>10} {device:>10} {'speed-up':>9}")
    for arch, dev, name in timed:
        if dev == baseline and (arch, device, name) in timed:
            b, d = timed[(arch, baseline, name)], timed[(arch, device, name)]
            print(f"  {arch:<10} {name:<18} {b:10.2f} {d:10.2f} {b / d:8.1f}x")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["ViT-B-32", "ViT-L-14"],
                   help="open_clip architectures, each run in its own process (largest last)")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--images", type=int, default=16, help="test images per task (random pixels, 4 classes)")
    p.add_argument("--keeps", type=float, nargs="+", default=[1.0, 5.0, 10.0, 25.0], help="PERU-FFT m values (%%)")
    p.add_argument("--device", default=None, help="default: peru_core.device.default_device()")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 is far steadier on a machine shared with "
                        "other jobs, where 2-thread pools spin against each other (TIES measured 30x slower)")
    p.add_argument("--baseline-device", default=None,
                   help="also run every stage on this device (e.g. cpu) and print --device's speed-up over it")
    p.add_argument("--json", default=None, help="append result rows (JSON lines) to this file")
    args = p.parse_args(argv)
    if len(args.arch) > 1 or args.baseline_device:  # one process per run: peak memory never hides in another's
        return run_each(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="peru_bench_") as tmp:
        rows = run_scale(args.arch[0], args.tasks, args.images, Path(tmp), args.keeps, args.device)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({"arch": args.arch[0], "device": args.device or default_device(), **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
