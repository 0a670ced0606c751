"""Evaluation at the speed of plain inference: our evaluation of one state dict on every task of a zoo against the
plain loop over the same preprocessed tensors, in one run.

    python3 benchmarks/bench_eval.py                                  # demo zoo, CPU (or $PERU_DEVICE)
    python3 benchmarks/bench_eval.py --precision bf16   # a GPU or a CPU with native bf16: also bf16 vs float32
                                                        # (accuracy per task and speed, in the same run)

Ours: ``ZooRuntime.accuracy`` per task (the state dict copied into the model in place, the cached test set, the
runtime's batch size and precision, normalised features, the frozen head, argmax, accuracy). Plain: the state dict
loaded once, then per task ``model.encode_image`` over the same tensors at the same batch size and precision, the
head matmul and argmax. Both run ``--repeats`` times, interleaved; the best time of each is compared (the machine may
be shared: compare ratios, not seconds). Target: ours within 1.2x of plain. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    from peru_core import experiments as ex
    from peru_core.device import configure_threads
    from peru_core.evaluate import autocast
    from peru_core.spec import Mode, RunSpec
    from peru_core.zoo import demo_zoo, load_zoo
    from peru_core.zoo.runtime import ZooRuntime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="demo")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="float32", choices=("float32", "bf16"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    threads = configure_threads()
    rt = ZooRuntime(demo_zoo() if args.zoo == "demo" else load_zoo(args.zoo), args.device, precision=args.precision)
    names = rt.zoo.task_names
    # one state dict: the Task Arithmetic merge (what every task of a merge row is evaluated with)
    sd = ex.task_model(rt, RunSpec.make(Mode.MERGE, merge="task_arithmetic"), 0)
    data = {t: rt.data(t) for t in names}  # preprocessed once, kept: excluded from both timings
    heads = {t: rt.head(t) for t in names}
    n_images = sum(len(y) for _, y in data.values())
    batch = rt.batch_size
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)

    def ours() -> list[float]:
        return [rt.accuracy(sd, t) for t in names]

    @torch.inference_mode()
    def plain() -> list[float]:
        model = rt.load(sd)
        accs = []
        for t in names:
            x, y = data[t]
            with autocast(rt.device, rt.precision):
                feats = torch.cat([model.encode_image(x[i:i + batch]) for i in range(0, len(x), batch)])
            pred = (feats.float() @ heads[t].T).argmax(dim=-1)
            accs.append(float((pred.cpu() == y).double().mean()))
        return accs

    a_ours, a_plain = ours(), plain()  # warm-up (model, heads, kernels)
    t_ours, t_plain = [], []
    for _ in range(args.repeats):
        for fn, times in ((ours, t_ours), (plain, t_plain)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    best_o, best_p = min(t_ours), min(t_plain)
    print(f"zoo {rt.zoo.name}: {len(names)} tasks, {n_images} test images; device {rt.device}, precision "
          f"{rt.precision}, batch {batch}, {threads} torch threads, best of {args.repeats}")
    print(f"ours  (ZooRuntime.accuracy per task): {best_o:.3f} s  ({n_images / best_o:,.0f} images/s)")
    print(f"plain (encode_image + head + argmax): {best_p:.3f} s  ({n_images / best_p:,.0f} images/s)")
    print(f"ratio ours / plain: {best_o / best_p:.3f}x (target <= 1.2x)")
    # the two measure the same model: the same predictions up to the argmax of the normalised features
    diff = max(abs(a - b) for a, b in zip(a_ours, a_plain))
    print(f"largest accuracy difference ours vs plain: {diff * 100:.2f} points")
    if rt.precision != "float32":
        ref = ZooRuntime(rt.zoo, str(rt.device), batch_size=batch)
        a_ref = [ref.accuracy(sd, t) for t in names]  # also the warm-up of the float32 runtime
        t_ref = []
        for _ in range(args.repeats):  # the float32 baseline, timed like ours above
            sync()
            t0 = time.perf_counter()
            [ref.accuracy(sd, t) for t in names]
            sync()
            t_ref.append(time.perf_counter() - t0)
        print(f"float32 (same runtime code, same batch): {min(t_ref):.3f} s; {rt.precision} is "
              f"{min(t_ref) / best_o:.2f}x as fast")
        deltas = [(a - r) * 100 for a, r in zip(a_ours, a_ref)]
        print(f"{rt.precision} minus float32 accuracy per task (points): "
              + ", ".join(f"{t} {d:+.2f}" for t, d in zip(names, deltas))
              + f"; mean {sum(deltas) / len(deltas):+.3f}, largest {max(map(abs, deltas)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
