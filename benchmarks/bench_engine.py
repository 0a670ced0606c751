"""Engine benchmark at real scale: open_clip ViT-B-32 image-encoder shapes, 8 tasks, LoRA rank 128.

    python3 benchmarks/bench_engine.py            # real scale (about 88M values per checkpoint; several GB of RAM)
    python3 benchmarks/bench_engine.py --small    # two transformer blocks: a quick check of the script

Each stage runs in its own subprocess so its peak memory (``ru_maxrss``) is its own. Every figure is compared with a
named baseline measured in the same run; where a baseline would take minutes or more memory than the machine has,
it runs on part of the work and is scaled linearly (printed as such). Weights are random (no download).
Compare ratios, not seconds: the machine may be shared. Everything runs on the CPU, baselines included (the GPU
comparison is ``bench_scale.py --device cuda --baseline-device cpu``). PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = 8
KEEPS = [float(m) for m in range(1, 21)]  # a 20-value m sweep: 1%, 2%, ..., 20%
LORA_RANK, LORA_Q = 128, 16
REPEATS = 5  # Task Arithmetic and its floor: the fastest of 5 runs each (the machine is shared; both sides alike)
LORA_REPEATS = 3  # PERU-LoRA and each dense-SVD matrix of its baseline: the fastest of 3 runs each, both sides alike
MB = 2**20


# ---------------------------------------------------------------------------------------------------- shapes
_TOP = {"class_embedding": [768], "positional_embedding": [50, 768], "proj": [768, 512],
        "conv1.weight": [768, 3, 32, 32], "ln_pre.weight": [768], "ln_pre.bias": [768]}
_BLOCK = {"ln_1.weight": [768], "ln_1.bias": [768], "attn.in_proj_weight": [2304, 768], "attn.in_proj_bias": [2304],
          "attn.out_proj.weight": [768, 768], "attn.out_proj.bias": [768], "ln_2.weight": [768],
          "ln_2.bias": [768], "mlp.c_fc.weight": [3072, 768], "mlp.c_fc.bias": [3072],
          "mlp.c_proj.weight": [768, 3072], "mlp.c_proj.bias": [768]}


def vit_b32_shapes(small: bool) -> dict[str, list[int]]:
    """Shapes of open_clip ViT-B-32's image encoder (``small``: only its first two transformer blocks).

    Taken from ``open_clip.create_model('ViT-B-32', pretrained=None).visual`` when open_clip is installed, else
    from the same table written out (checked equal where open_clip exists), so the script runs on bare machines.
    """
    shapes = dict(_TOP)
    for i in range(12):
        shapes.update({f"transformer.resblocks.{i}.{k}": s for k, s in _BLOCK.items()})
    shapes.update({"ln_post.weight": [768], "ln_post.bias": [768]})
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import open_clip

        model = open_clip.create_model("ViT-B-32", pretrained=None)
        real = {k: list(v.shape) for k, v in model.visual.state_dict().items()}
        assert real == shapes, "open_clip's ViT-B-32 shapes changed"
    except ImportError:
        pass
    if small:
        shapes = {k: s for k, s in shapes.items() if ".resblocks." not in k or
                  k.split(".resblocks.")[1].split(".")[0] in ("0", "1")}
    return shapes


def lora_targets(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Every attention and MLP matrix: in_proj, out_proj, c_fc, c_proj of each block."""
    ends = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return {k: s for k, s in shapes.items() if k.endswith(ends)}


def make_sd(shapes, seed: int, base=None, scale: float = 0.01):
    import torch

    g = torch.Generator().manual_seed(seed)
    if base is None:
        return {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    return {k: base[k] + scale * torch.randn(base[k].shape, generator=g) for k in shapes}


def peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's peak over fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------------------------------- stages
def stage_sweep(shapes, args) -> dict:
    """20-value m sweep for 8 tasks: TopM (one partition + one sort per task) vs one torch.topk per m."""
    import numpy as np
    import torch

    from peru_core.sparse import TopM, keep_count
    from peru_core.statedict import Layout

    layout = Layout.of({k: torch.empty(s) for k, s in shapes.items()})
    d = layout.size
    vec = torch.empty(d)
    g = torch.Generator().manual_seed(1)
    if args.baseline:
        calls = [(t, m) for t in range(TASKS) for m in KEEPS]
        if not args.small:  # 160 topk calls take minutes: measure a spread of them, scale to all 160
            calls = [(0, KEEPS[i]) for i in np.linspace(0, len(KEEPS) - 1, args.topk_calls).round().astype(int)]
        total, last_t = 0.0, -1
        ok = True
        for t, m in calls:
            if t != last_t:
                torch.randn(d, generator=g, out=vec)
                last_t = t
            k = keep_count(d, m)
            dt, (idx, vals) = timed(lambda: (lambda r: (r.indices, vec[r.indices]))(torch.topk(vec.abs(), k,
                                                                                                sorted=False)))
            total += dt
            if m == calls[-1][1]:  # same kept magnitudes (which of tied values is kept may differ)
                mine = TopM(vec, layout, device="cpu").select(m)
                ok = ok and np.array_equal(np.sort(np.abs(mine.values)), np.sort(np.abs(vals.numpy())))
        return {"seconds": total * TASKS * len(KEEPS) / len(calls), "measured_calls": len(calls),
                "same_selection": ok, "peak_mb": peak_mb()}
    total = 0.0
    scratch = np.empty(d, dtype=np.float32)  # one |v| work buffer for all tasks
    for t in range(TASKS):
        torch.randn(d, generator=g, out=vec)
        sel = TopM(vec, layout, scratch=scratch, device="cpu")

        def run():
            return sum(part.nnz + int(part.values.size) for _, part in sel.sweep(KEEPS))
        dt, _ = timed(run)
        total += dt
    return {"seconds": total, "peak_mb": peak_mb(), "inputs_mb": 2 * d * 4 / MB}  # a base + one fine-tune


def stage_lora(shapes, args) -> dict:
    """PERU-LoRA truncation (QR-core SVD) of every matrix of 8 rank-128 adapters vs a dense torch.linalg.svd."""
    import torch

    from peru_core.io import LoraAdapter, LoraFactors
    from peru_core.lowrank import adapter_svd, truncate_adapter

    targets = lora_targets(shapes)
    g = torch.Generator().manual_seed(2)

    def adapter(t):
        fac = {k: LoraFactors(torch.randn(LORA_RANK, s[1], generator=g) / s[1] ** 0.5,
                              torch.randn(s[0], LORA_RANK, generator=g) * 0.01, 2.0) for k, s in targets.items()}
        return LoraAdapter(f"task{t}", fac)

    adapters = [adapter(t) for t in range(TASKS)]
    factor_mb = sum(f.A.numel() + f.B.numel() for a in adapters for f in a.values()) * 4 / MB
    if args.baseline:
        # one block's four matrices (every shape once), scaled to all matrices of all tasks: dense SVDs take
        # seconds each
        keys = [k for k in targets if ".resblocks.0." in k]
        total, worst = 0.0, 0.0
        for k in keys:
            f = adapters[0][k]
            runs = [timed(lambda: torch.linalg.svd(f.delta(), full_matrices=False)) for _ in range(LORA_REPEATS)]
            dt, (_, s, _) = min(runs, key=lambda r: r[0])  # form + SVD, the fastest of LORA_REPEATS
            total += dt
            ours = adapter_svd(LoraAdapter("x", {k: f}))[k].S
            worst = max(worst, float((ours - s[: ours.numel()].double()).abs().max() / s[0]))
        per_matrix = total / len(keys)
        return {"seconds": per_matrix * len(targets) * TASKS, "measured_matrices": len(keys),
                "max_rel_sv_error": worst, "peak_mb": peak_mb(), "inputs_mb": factor_mb}

    def run():
        return [truncate_adapter(adapter_svd(a), LORA_Q, dtype=torch.float32) for a in adapters]
    # warm: LAPACK's one-time set-up (threads, workspaces) on one extra matrix of each shape, not timed, as for
    # Task Arithmetic; the baseline's one set-up is spread over its seconds-long SVDs
    warm = {k: LoraFactors(torch.randn(LORA_RANK, s[1]), torch.randn(s[0], LORA_RANK), 1.0)
            for k, s in targets.items() if ".resblocks.0." in k or "." not in k}
    truncate_adapter(adapter_svd(LoraAdapter("warm", warm)), LORA_Q, dtype=torch.float32)
    dt = min(timed(run)[0] for _ in range(LORA_REPEATS))
    return {"seconds": dt, "matrices": len(targets) * TASKS, "peak_mb": peak_mb(), "inputs_mb": factor_mb}


def _checkpoints(shapes):
    base = make_sd(shapes, 10)
    return base, [make_sd(shapes, 11 + t, base) for t in range(TASKS)]


def stage_task_arithmetic(shapes, args) -> dict:
    """One Task Arithmetic merge of 8 tasks vs one read of the 9 checkpoints (the memory floor)."""
    import torch

    from peru_core.merging.task_arithmetic import task_arithmetic_merge

    base, fts = _checkpoints(shapes)
    size_mb = sum(v.numel() for v in base.values()) * 4 * (TASKS + 1) / MB

    def read_once():  # every byte of the 9 checkpoints read once (a reduction per tensor)
        return sum(float(torch.sum(v)) for sd in [base, *fts] for v in sd.values())
    read_once()  # warm
    if args.baseline:
        dt = min(timed(read_once)[0] for _ in range(REPEATS))
        return {"seconds": dt, "peak_mb": peak_mb(), "inputs_mb": size_mb}
    task_arithmetic_merge(base, fts, 0.3)  # warm
    ours, floor = [], []
    for _ in range(REPEATS):  # interleaved with the floor in this process: both see the same machine load
        ours.append(timed(lambda: task_arithmetic_merge(base, fts, 0.3))[0])
        floor.append(timed(read_once)[0])  # allocates nothing: this process's peak stays the merge's
    return {"seconds": min(ours), "floor_seconds": min(floor), "peak_mb": peak_mb(), "inputs_mb": size_mb}


def stage_ties(shapes, args) -> dict:
    """One TIES merge of 8 tasks (k=20, lam=1) vs straightforward code; the baseline runs on the share of the
    tensors that fits in memory and is scaled by size."""
    from peru_core.merging._reference import naive_ties
    from peru_core.merging.ties import ties_merge

    d = sum(int(__import__("math").prod(s)) for s in shapes.values())
    size_mb = d * 4 * (TASKS + 1) / MB
    if args.baseline:
        # inputs 9 x d, plus about 5 x 8 x d of stacked temporaries
        frac = min(1.0, max(0.05, (0.6 * available_bytes() - 9 * d * 4) / (5 * TASKS * d * 4)))
        keep, total = {}, 0
        for k, s in shapes.items():
            n = int(__import__("math").prod(s))
            if total + n <= frac * d or not keep:
                keep[k], total = s, total + n
        base, fts = _checkpoints(keep)
        dt, _ = timed(lambda: naive_ties(base, fts, 20.0, 1.0))
        return {"seconds": dt * d / total, "fraction": total / d, "peak_mb": peak_mb(),
                "inputs_mb": total * 4 * (TASKS + 1) / MB}
    base, fts = _checkpoints(shapes)
    dt, merged = timed(lambda: ties_merge(base, fts, 20.0, 1.0, device="cpu"))
    out = {"seconds": dt, "peak_mb": peak_mb(), "inputs_mb": size_mb}
    if args.small:  # the fast path equals the reference on the whole (small) model
        ref = naive_ties(base, fts, 20.0, 1.0)
        out["max_abs_diff_vs_naive"] = max(float((merged[k] - ref[k]).abs().max()) for k in ref)
    return out


STAGES = {"sweep": stage_sweep, "lora": stage_lora, "task_arithmetic": stage_task_arithmetic, "ties": stage_ties}


# ---------------------------------------------------------------------------------------------------- driver
def child(args) -> None:
    shapes = json.loads(Path(args.shapes).read_text())
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    before = peak_mb()
    result = STAGES[args.stage](shapes, args)
    result["startup_mb"] = before
    print("RESULT " + json.dumps(result))


def run_child(stage: str, baseline: bool, shapes_file: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--shapes", str(shapes_file),
           "--topk-calls", str(args.topk_calls)] + (["--baseline"] if baseline else []) + \
          (["--small"] if args.small else []) + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"stage {stage} ({'baseline' if baseline else 'ours'}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="two transformer blocks instead of twelve")
    p.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--topk-calls", type=int, default=5, help="torch.topk calls measured for the sweep baseline")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every stage (0: torch's default)")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--shapes", help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        return child(args)
    import tempfile

    import torch

    shapes = vit_b32_shapes(args.small)
    d = sum(int(torch.Size(s).numel()) for s in shapes.values())
    shapes_file = Path(tempfile.mkstemp(suffix=".json")[1])
    shapes_file.write_text(json.dumps(shapes))
    print(f"ViT-B-32 image encoder{' (2 blocks)' if args.small else ''}: {d / 1e6:.1f}M values per checkpoint "
          f"({d * 4 / MB:.0f} MiB float32), {TASKS} tasks, {len(lora_targets(shapes))} LoRA matrices per task "
          f"(rank {LORA_RANK}); torch {torch.__version__}, {os.cpu_count()} CPUs, threads={args.threads or 'default'}")
    rows = []
    names = {"sweep": ("20-value m sweep, 8 tasks", "one torch.topk per m", "faster", 50),
             "lora": (f"PERU-LoRA truncation (q={LORA_Q}), all matrices", "dense torch.linalg.svd", "faster", 50),
             "task_arithmetic": ("Task Arithmetic merge, 8 tasks", "read the 9 checkpoints once", "x floor", 3),
             "ties": ("TIES merge (k=20), 8 tasks", "stack + kthvalue + temporaries", "faster", 10)}
    try:
        for stage in args.stages:
            ours = run_child(stage, False, shapes_file, args)
            base = run_child(stage, True, shapes_file, args)
            label, bname, kind, target = names[stage]
            if "floor_seconds" in ours:  # the floor timed interleaved with ours: the ratio of one machine state
                base["own_process_seconds"], base["seconds"] = base["seconds"], ours["floor_seconds"]
            if kind == "faster":
                ratio = base["seconds"] / ours["seconds"]
                verdict = f"{ratio:7.1f}x faster (target >= {target}x)"
            else:
                ratio = ours["seconds"] / base["seconds"]
                verdict = f"{ratio:7.2f}x the floor (target <= {target}x)"
            note = []
            if "measured_calls" in base and not args.small:
                note.append(f"baseline: {base['measured_calls']} calls measured, scaled to {TASKS * len(KEEPS)}")
            if "measured_matrices" in base:
                note.append(f"baseline: {base['measured_matrices']} matrices measured, scaled to {ours['matrices']}")
            if "own_process_seconds" in base:
                note.append(f"floor timed interleaved with ours, best of {REPEATS} each; in its own process "
                            f"{base['own_process_seconds']:.3f} s")
            if "fraction" in base and base["fraction"] < 1:
                note.append(f"baseline: {base['fraction']:.0%} of the tensors, scaled by size")
            for key in ("same_selection", "max_rel_sv_error", "max_abs_diff_vs_naive"):
                if key in base or key in ours:
                    note.append(f"{key}={base.get(key, ours.get(key))}")
            note.append(f"baseline peak RSS {base['peak_mb']:.0f} MiB")
            work = ours["peak_mb"] - ours["startup_mb"]
            mem = (f"peak RSS {ours['peak_mb']:.0f} MiB (process start {ours['startup_mb']:.0f}); "
                   f"checkpoints involved {ours['inputs_mb']:.0f} MiB; growth {work / ours['inputs_mb']:.2f}x them")
            rows.append((label, ours["seconds"], bname, base["seconds"], verdict, mem, note))
            print(f"\n{label}\n  ours {ours['seconds']:8.3f} s | {bname} {base['seconds']:8.3f} s | {verdict}\n"
                  f"  {mem}" + "".join(f"\n  {n}" for n in note), flush=True)
    finally:
        shapes_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
