"""Rebuild the demo zoo: ``python -m peru_core.zoo build [--out DIR] [--quick]`` (docs/zoo.md has the recipe).

Stages: read the task data (sources.py, synthetic.py) and split it; pre-train a small open_clip CLIP contrastively on
the seen classes (pretrain.py); per task, fine-tune the image tower fully, with LoRA and with L-LoRA (finetune.py); evaluate;
write checkpoints, adapters, test and validation arrays and ``zoo.json`` (validated with manifest.py). Everything is
seeded and runs with deterministic algorithms, so a rebuild with the same thread count gives the same bytes.
The zoo reproduces the setting of PERU (https://arxiv.org/abs/2310.01886) at toy scale.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file

from peru_core.models import create_clip, get_tokenizer, zero_shot_head
from peru_core.types import Progress, report
from peru_core.zoo import sources, synthetic
from peru_core.zoo.finetune import FinetuneConfig, LoraConfigSpec, finetune_full, finetune_lora
from peru_core.zoo.manifest import load_zoo, parse_manifest
from peru_core.zoo.pretrain import Captioned, PretrainConfig, pretrain
from peru_core.zoo.report import evaluate_zoo

ARCH = "peru-tiny-vit"
MODEL_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 28, "layers": 4, "width": 128, "patch_size": 7, "head_width": 32},
    # text width 64: the 49,408-token embedding dominates the base checkpoint's size
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    # v2 recipe (docs/zoo.md, issue 13): pre-training sees every class, but only as 7 px images scaled back to 28 px
    # (a low-resolution domain); fine-tuning adapts to full resolution, a change task vectors share and that adds up
    seen_fraction: float = 1.0  # share of each task's classes in the pre-training pool (v1: 0.6)
    pool_per_class: int = 0  # at most this many training images per (task, class) in the pool; 0: all
    pool_resolution: int = 7  # pool images box-downscaled to this many pixels and back; 0: as they are (v1)
    test_size: int = 1000
    val_size: int = 256
    synthetic_train: int = 4000
    threads: int = 2
    device: str = "cpu"  # "cuda" for iterating on the recipe; the shipped zoo is the CPU build
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoraConfigSpec = field(default_factory=LoraConfigSpec)

    @staticmethod
    def quick() -> "BuildConfig":
        """A few minutes' build for iterating: fewer steps and synthetic images, same format."""
        return BuildConfig(synthetic_train=1500, pretrain=PretrainConfig(steps=150),
                           finetune=FinetuneConfig(steps=60))


@dataclass
class Split:
    raw: sources.RawTask
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    seen: list[int]


def load_tasks(cfg: BuildConfig, cache: Optional[Path] = None) -> list[sources.RawTask]:
    """Every task's images; ``cache`` (an .npz) stores them for machines without the data packages."""
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return [sources.RawTask(**m, x=z[f"x_{m['name']}"], y=z[f"y_{m['name']}"]) for m in meta]
    n = cfg.synthetic_train + cfg.test_size + cfg.val_size
    tasks = [sources.mnist(), sources.fashion_mnist(), sources.animal_mnist(), sources.sklearn_digits(),
             sources.textiles(), synthetic.shapes(n, cfg.seed + 101), synthetic.counting(n, cfg.seed + 102),
             synthetic.textures(n, cfg.seed + 103)]
    if cache is not None:
        meta = [{k: v for k, v in asdict(t).items() if k not in ("x", "y")} for t in tasks]
        arrays = {f"{a}_{t.name}": getattr(t, a) for t in tasks for a in ("x", "y")}
        np.savez_compressed(cache, meta=np.array(json.dumps(meta)), **arrays)
    return tasks


def split(raw: sources.RawTask, cfg: BuildConfig) -> Split:
    """Seeded shuffle, then test / validation / train; small tasks keep a quarter for test."""
    rng = np.random.default_rng(cfg.seed + zlib.crc32(raw.name.encode()))
    p = rng.permutation(len(raw.y))
    x, y = raw.x[p], raw.y[p]
    n_test = min(cfg.test_size, len(y) // 4)
    n_val = min(cfg.val_size, len(y) // 6)
    k = len(raw.classes)
    n_seen = min(k, max(1, round(cfg.seen_fraction * k)))
    key = raw.seen_key or raw.name  # tasks naming the same classes see the same ones
    seen = sorted(np.random.default_rng(cfg.seed + zlib.crc32(key.encode())).permutation(k)[:n_seen].tolist())
    return Split(raw, (x[n_test + n_val:], y[n_test + n_val:]), (x[n_test:n_test + n_val], y[n_test:n_test + n_val]),
                 (x[:n_test], y[:n_test]), seen)


def concepts(splits: list[Split]) -> tuple[dict[tuple[str, str], int], list[list[str]]]:
    """Class identities across tasks ((seen_key or task, class name) -> id) and each one's captions."""
    ids: dict[tuple[str, str], int] = {}
    caps: list[list[str]] = []
    for s in splits:
        for c in s.raw.classes:
            key = (s.raw.seen_key or s.raw.name, c)
            if key not in ids:
                ids[key] = len(caps)
                caps.append([])
            caps[ids[key]].extend(t.format(c) for t in s.raw.templates if t.format(c) not in caps[ids[key]])
    return ids, caps


def _degrade(x: np.ndarray, resolution: int) -> np.ndarray:
    """Box-downscale uint8 images to ``resolution`` px and scale back bilinearly (the pool's low-res domain)."""
    from PIL import Image

    size = x.shape[-1]
    return np.stack([np.asarray(Image.fromarray(a).resize((resolution, resolution), Image.BOX)
                                .resize((size, size), Image.BILINEAR)) for a in x]).astype(np.uint8)


def _pool(splits: list[Split], ids: dict[tuple[str, str], int], caps: list[list[str]],
          cfg: Optional[BuildConfig] = None) -> Captioned:
    cfg = cfg or BuildConfig()
    xs, cs, ts = [], [], []
    for t, s in enumerate(splits):
        x, y = s.train
        keep = np.isin(y, s.seen)
        if cfg.pool_per_class:  # the training split is already shuffled: keep the first images of each class
            rank = np.zeros(len(y), dtype=np.int64)
            for c in np.unique(y):
                rank[y == c] = np.arange(int((y == c).sum()))
            keep &= rank < cfg.pool_per_class
        if cfg.pool_resolution:
            x = x.copy()
            x[keep] = _degrade(x[keep], cfg.pool_resolution)
        concept = np.array([ids[(s.raw.seen_key or s.raw.name, s.raw.classes[i])] for i in y], dtype=np.int64)
        xs.append(x[keep])
        cs.append(concept[keep])
        ts.append(np.full(int(keep.sum()), t, dtype=np.int64))
    return Captioned(np.concatenate(xs), np.concatenate(cs), caps, np.concatenate(ts))


def _save_npz(path: Path, xy: tuple[np.ndarray, np.ndarray]) -> str:
    np.savez_compressed(path, x=xy[0].astype(np.uint8), y=xy[1].astype(np.int64))
    return path.name


def build(out: Path, cfg: Optional[BuildConfig] = None, on_progress: Progress = None,
          data_cache: Optional[Path] = None) -> Path:
    """Build the zoo into ``out`` (replaced only when the build succeeds) and return its path."""
    cfg = cfg or BuildConfig()
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    splits = [split(r, cfg) for r in load_tasks(cfg, data_cache)]
    ids, caps = concepts(splits)
    times["data_s"] = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = create_clip(ARCH, MODEL_CONFIG, "cpu").to(cfg.device)  # same initial weights on any device
    tok = get_tokenizer(ARCH)
    t = time.perf_counter()
    losses = pretrain(model, tok, _pool(splits, ids, caps, cfg), caps, list(range(len(caps))),
                      MODEL_CONFIG["vision_cfg"]["image_size"], MEAN, STD, cfg.pretrain,
                      lambda f, m: report(on_progress, 0.45 * f, m))
    times["pretrain_s"] = time.perf_counter() - t
    model.requires_grad_(False)
    save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "base.safetensors"))

    tasks_json = []
    t = time.perf_counter()
    for i, s in enumerate(splits):
        r = s.raw
        report(on_progress, 0.45 + 0.45 * i / len(splits), f"fine-tuning {r.label}")
        d = tmp / "tasks" / r.name
        d.mkdir(parents=True)
        head = zero_shot_head(model, tok, r.classes, r.templates, cfg.device).clone()  # a normal tensor, not an inference one
        ft_cfg = replace(cfg.finetune, seed=cfg.finetune.seed + i)
        size = MODEL_CONFIG["vision_cfg"]["image_size"]
        tuned = finetune_full(model, head, *s.train, size, MEAN, STD, ft_cfg)
        save_file(tuned, str(d / "finetuned.safetensors"))
        finetune_lora(model, head, *s.train, size, MEAN, STD, ft_cfg, cfg.lora, d / "lora")
        # L-LoRA: same targets, rank, alpha and seed (so the same A_0 as the LoRA fine-tune), A frozen, B trained
        finetune_lora(model, head, *s.train, size, MEAN, STD, ft_cfg, cfg.lora, d / "llora", linearized=True)
        rel = f"tasks/{r.name}"
        tasks_json.append({
            "name": r.name, "label": r.label, "classes": list(r.classes), "templates": list(r.templates),
            "finetuned": f"{rel}/finetuned.safetensors", "lora": f"{rel}/lora", "llora": f"{rel}/llora",
            "test": {"kind": "npz", "path": f"{rel}/{_save_npz(d / 'test.npz', s.test)}"},
            "validation": {"kind": "npz", "path": f"{rel}/{_save_npz(d / 'validation.npz', s.val)}"},
            "synthetic": r.synthetic, "source": r.source, "license": r.license,
            "seen_classes": [r.classes[c] for c in s.seen],
        })
    times["finetune_s"] = time.perf_counter() - t

    raw = {"format": 1, "name": "demo", "architecture": ARCH, "model_config": MODEL_CONFIG,
           "description": "PERU Studio demo zoo: a 0.8M-parameter ViT CLIP pre-trained here, 8 small image tasks, "
                          "full, LoRA and L-LoRA fine-tunes of the image tower (see docs/zoo.md).",
           "base": "base.safetensors", "tuned_prefix": "visual.", "image_mean": list(MEAN), "image_std": list(STD),
           "tasks": tasks_json,
           "build": {"config": asdict(cfg), "pretrain_loss_first_last": [losses[0], losses[-1]],
                     "torch": torch.__version__}}
    (tmp / "zoo.json").write_text(json.dumps(raw, indent=1))
    zoo = parse_manifest(tmp, raw)  # the format check the app will run
    report(on_progress, 0.9, "evaluating")
    t = time.perf_counter()
    raw["build"]["metrics"] = evaluate_zoo(zoo, cfg.device, merges=False)  # every merge: `report` and the sweep
    times["evaluate_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0
    raw["build"]["timings"] = {k: round(v, 1) for k, v in times.items()}
    (tmp / "zoo.json").write_text(json.dumps(raw, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    load_zoo(out)
    report(on_progress, 1.0, f"zoo written to {out}")
    return out
