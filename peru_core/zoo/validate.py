"""Deep validation of a zoo folder: every problem as one sentence that names the file and what is wrong.

:func:`~peru_core.zoo.manifest.load_zoo` checks the manifest and that its files exist; this goes further, without
reading any weights: checkpoint keys and shapes (from safetensors headers) against the architecture built on the
meta device with ``open_clip.create_model(name, pretrained=None)``, LoRA adapter targets against that model, and
each test folder's classes against the task's class list. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from peru_core import hf_clip
from peru_core.errors import PeruError
from peru_core.zoo.manifest import DataRef, TaskSpec, Zoo, load_zoo

Shapes = dict[str, tuple[int, ...]]


def architecture_shapes(architecture: str, model_config: Optional[dict] = None) -> Shapes:
    """Key -> shape of the open_clip model ``architecture`` (built on the meta device: no memory, ~1 s)."""
    from peru_core.models import create_clip

    with torch.device("meta"):
        model = create_clip(architecture, model_config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def checkpoint_shapes(path: Path) -> tuple[Shapes, bool]:
    """Key -> shape from a safetensors header, in open_clip names, and whether the file uses Hugging Face CLIP names
    (those are mapped on meta tensors: valid data, but a zoo must hold open_clip names, so it is imported)."""
    from peru_core.io import read_file_header  # its checks name pickles, corrupt and truncated files clearly

    header = read_file_header(path, path.name)
    raw = {k: tuple(v["shape"]) for k, v in header.items() if not k.startswith("__")}
    if hf_clip.detect_layout(raw) == hf_clip.HF_CLIP:
        meta = hf_clip.hf_to_open_clip({k: torch.empty(s, device="meta") for k, s in raw.items()}, strict=False)
        return {k: tuple(v.shape) for k, v in meta.items()}, True
    return raw, False


def _name(path: Path, zoo: Zoo) -> str:
    return str(path.relative_to(zoo.root)) if path.is_relative_to(zoo.root) else str(path)


def _compare(shapes: Shapes, expected: Shapes, what: str, arch: str) -> Optional[str]:
    extra = sorted(set(shapes) - set(expected))
    missing = sorted(set(expected) - set(shapes))
    if extra:
        return (f"{what} has {len(extra)} tensor(s) that {arch} does not have, e.g. {extra[0]!r}; it belongs to "
                "another architecture (or the zoo's tuned_prefix is wrong).")
    if missing:
        return (f"{what} lacks {len(missing)} tensor(s) of {arch}, e.g. {missing[0]!r}; save the complete "
                "checkpoint for this architecture.")
    for k, s in shapes.items():
        if s != expected[k]:
            return (f"{what} has {k!r} of shape {s} where {arch} expects {expected[k]}; the checkpoint is for "
                    "another architecture (width, patch size or image size differ).")
    return None


def _checkpoint(path: Path, expected: Shapes, what: str, arch: str) -> Optional[str]:
    try:
        shapes, hf = checkpoint_shapes(path)
    except PeruError as e:
        return str(e)
    if hf:
        return (f"{what} uses Hugging Face CLIP names; import it into the zoo with the Upload page or "
                "peru_core.zoo.writer.write_zoo, which maps it to open_clip names.")
    return _compare(shapes, expected, what, arch)


def _adapter(spec: TaskSpec, zoo: Zoo, shapes: Shapes, kind: str = "lora") -> Optional[str]:
    """A LoRA or L-LoRA adapter (``kind``, the manifest key): readable, inside the tuned part, shapes that fit."""
    from peru_core.io import load_lora_adapter, validate_adapter

    folder = getattr(spec, kind)
    what = f"The {'L-LoRA' if kind == 'llora' else 'LoRA'} adapter of task {spec.name!r} ({_name(folder, zoo)})"
    try:
        adapter = load_lora_adapter(folder, name=f"of task {spec.name!r}", base_keys=shapes)
    except PeruError as e:
        return str(e)
    outside = [k for k in adapter if not k.startswith(zoo.tuned_prefix)]
    if outside:
        return (f"{what} targets {outside[0]!r}, outside the zoo's tuned part {zoo.tuned_prefix!r}; "
                "train adapters on the image tower only.")
    try:
        validate_adapter({k: torch.empty(s, device="meta") for k, s in shapes.items()}, adapter)
    except PeruError as e:
        return str(e)
    return None


def _data(ref: DataRef, spec: TaskSpec, zoo: Zoo, split: str) -> Optional[str]:
    what = f"The {split} data of task {spec.name!r} ({_name(ref.path, zoo)})"
    try:
        if ref.kind == "folder":
            from peru_core.imagefolder import list_images

            list_images(ref.path, spec.classes, limit=1)
            return None
        if ref.kind == "parquet":  # footers and the label column only
            from peru_core.parquet_data import check_parquet

            check_parquet(ref.path, spec.classes, ref.split or split, what=what)
            return None
        with np.load(ref.path, allow_pickle=False) as z:
            if "y" not in z or "x" not in z:
                return f"{what} needs arrays 'x' and 'y'; it has {', '.join(z.files)}."
            y = z["y"]
    except PeruError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"{what} is not a readable .npz file ({e})."
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(spec.classes)):
        return (f"{what} has labels up to {int(y.max())} but the task lists {len(spec.classes)} classes; "
                "fix the class list or the labels.")
    return None


def zoo_problems(folder: str | Path) -> list[str]:
    """Every problem of the zoo in ``folder``, one sentence each; ``[]`` when it is ready to use."""
    try:
        zoo = load_zoo(folder)
    except PeruError as e:
        return [str(e)]
    try:
        expected = architecture_shapes(zoo.architecture, zoo.model_config)
    except PeruError as e:
        return [str(e)]
    except Exception as e:  # noqa: BLE001 - a bad custom config fails inside open_clip
        return [f"zoo.json architecture {zoo.architecture!r} could not be built ({type(e).__name__}: {e}); "
                "fix model_config."]
    arch = zoo.architecture
    tuned = {k: s for k, s in expected.items() if k.startswith(zoo.tuned_prefix)}
    problems: list[str] = []
    if not tuned:
        problems.append(f"zoo.json tuned_prefix {zoo.tuned_prefix!r} matches no tensor of {arch}; use 'visual.'.")
    p = _checkpoint(zoo.base, expected, f"The base checkpoint {_name(zoo.base, zoo)}", arch)
    if p:
        problems.append(p)
    for spec in zoo.tasks:
        if spec.finetuned is not None and tuned:
            what = f"The fine-tune of task {spec.name!r} ({_name(spec.finetuned, zoo)})"
            p = _checkpoint(spec.finetuned, tuned, what, f"the tuned part {zoo.tuned_prefix!r} of {arch}")
            if p:
                problems.append(p)
        for kind in ("lora", "llora"):
            if getattr(spec, kind, None) is not None:
                p = _adapter(spec, zoo, expected, kind)
                if p:
                    problems.append(p)
        for split, ref in (("test", spec.test), ("validation", spec.validation)):
            if ref is not None:
                p = _data(ref, spec, zoo, split)
                if p:
                    problems.append(p)
    return problems


def validate_zoo(folder: str | Path) -> Zoo:
    """The zoo in ``folder`` after deep validation; raises :class:`PeruError` with its first problem."""
    problems = zoo_problems(folder)
    if problems:
        raise PeruError(problems[0])
    return load_zoo(folder)
