"""Write a zoo folder (``zoo.json`` + the files it names) from checkpoints users bring; used by the Upload page.

Checkpoints that already fit (open_clip names, exactly the right keys) are copied, or referenced in place with
``copy=False``. Others are imported into the zoo once: Hugging Face CLIP layouts are renamed to open_clip
(:mod:`peru_core.hf_clip`), a fine-tune's tensors outside the tuned part are dropped and the tuned tensors it lacks
(e.g. ``visual.proj`` of a ``CLIPVisionModel``) are taken from the base, and pickles are read by the restricted
converter only when ``convert_pickles`` is set. PEFT adapters (LoRA and L-LoRA) are copied as they are: the loader
maps HF module names (``q_proj``, ``v_proj``, ...) onto open_clip weights. With ``copy`` (the default) test and
validation data are copied too, so the zoo folder is self-contained: every path in its ``zoo.json`` is relative.
Everything is staged in a temporary folder, validated deeply (:func:`~peru_core.zoo.validate.zoo_problems`), then
moved into place, ``zoo.json`` last: a failed write leaves the target as it was. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence


from peru_core import hf_clip
from peru_core.errors import PeruError
from peru_core.hub import is_hub_ref, local_path
from peru_core.io import LINEARIZED_WEIGHTS, is_pickle
from peru_core.types import Progress, StateDict, report
from peru_core.zoo.manifest import FORMAT_VERSION, Zoo, load_zoo
from peru_core.zoo.validate import Shapes, architecture_shapes, zoo_problems


@dataclass(frozen=True)
class TaskInput:
    """One task of a zoo being written: checkpoints (a fine-tune and/or a PEFT adapter folder) and data."""

    name: str
    classes: tuple[str, ...]
    # paths, or hf:// references (strings) resolved through the hub cache
    finetuned: Optional[Path | str] = None  # safetensors (open_clip or HF CLIP names), or a pickle (convert_pickles)
    lora: Optional[Path | str] = None  # folder with adapter_config.json + adapter_model.safetensors
    llora: Optional[Path | str] = None  # the same, of an L-LoRA fine-tune (or FusionBench's linearized export)
    # image folder (one sub-folder per class), .npz with x, y, parquet file or folder, or an hf:// dataset
    test: Optional[Path | str | Mapping[str, Any]] = None
    validation: Optional[Path | str | Mapping[str, Any]] = None
    templates: tuple[str, ...] = ()  # empty: the zoo's templates
    label: str = ""
    synthetic: bool = False
    source: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # other fields, kept as they are

    @classmethod
    def of(cls, obj: "TaskInput | Mapping[str, Any]") -> "TaskInput":
        if isinstance(obj, TaskInput):
            return obj
        known = {"name", "classes", "finetuned", "lora", "llora", "test", "validation", "templates", "label",
                 "synthetic", "source", "license"}
        kw = {k: v for k, v in obj.items() if k in known and v not in (None, "")}
        for k in ("finetuned", "lora", "llora", "test", "validation"):
            # hf:// references stay strings (Path would collapse "//"); a parquet set may come as a dict
            if k in kw and not is_hub_ref(kw[k]) and not isinstance(kw[k], Mapping):
                kw[k] = Path(kw[k]).expanduser()
        classes = kw.get("classes", ())
        if isinstance(classes, str):  # a text box: one class per line, or comma-separated
            classes = [c.strip() for c in re.split(r"[\n,]", classes) if c.strip()]
        kw["classes"] = tuple(classes)
        kw["templates"] = tuple(kw.get("templates", ()))
        kw["synthetic"] = bool(kw.get("synthetic", False))
        return cls(**kw, extra={k: v for k, v in obj.items() if k not in known})


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "task"


def _is_parquet(src: Path) -> bool:
    """A .parquet file, or a folder holding some (an image folder holds none)."""
    return src.suffix == ".parquet" if src.is_file() else next(src.rglob("*.parquet"), None) is not None


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return is_pickle(f.read(9))


class _Writer:
    """Puts each checkpoint into the staging folder (copied, or imported in open_clip names) and returns the path
    the manifest should name; collects notes on every change it made."""

    def __init__(self, staging: Path, expected: Shapes, prefix: str, copy: bool, convert_pickles: bool) -> None:
        self.staging, self.expected, self.prefix = staging, expected, prefix
        self.copy, self.convert_pickles = copy, convert_pickles
        self.notes: list[str] = []
        self._base: Optional[StateDict] = None

    def _read(self, path: Path) -> StateDict:
        if _is_pickle(path):
            if not self.convert_pickles:
                raise PeruError(f"{path.name} is a pickled checkpoint, which can run code when loaded; tick "
                                "'convert pickles' (a safe, restricted conversion) or run python -m peru_core convert.")
            from peru_core.convert import read_pickled_checkpoint

            sd, _ = read_pickled_checkpoint(path)
            self.notes.append(f"{path.name}: converted from a pickle by the restricted unpickler (no code run).")
            return sd
        from peru_core.io import load_state_dict

        sd = load_state_dict(path)
        if hf_clip.detect_layout(sd) == hf_clip.HF_CLIP:
            self.notes.append(f"{path.name}: Hugging Face CLIP names mapped to open_clip.")
        return hf_clip.to_open_clip(sd)

    def _fits(self, path: Path, keys: set[str]) -> bool:
        from peru_core.zoo.validate import checkpoint_shapes

        if not path.is_file():
            raise PeruError(f"{path} does not exist (or is a folder); pick the checkpoint file.")
        if _is_pickle(path):
            return False
        shapes, hf = checkpoint_shapes(path)
        return not hf and set(shapes) == keys

    def place(self, src: Path, rel: str, ref: Path | str = "") -> str:
        """Copy ``src`` to ``rel`` in the zoo (or reference it in place): the manifest path. ``ref``: what the user
        named, kept as the reference when it is an ``hf://`` one (not the cache path it resolved to)."""
        if not self.copy:
            return str(ref) if is_hub_ref(ref) else str(src.resolve())
        dst = self.staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        return rel

    def base(self, ref: Path | str) -> str:
        src = local_path(ref, "file")  # an hf:// reference: the file in the hub cache
        if self._fits(src, set(self.expected)):
            return self.place(src, "base.safetensors", ref)
        sd = self._read(src)
        self._base = {k: v for k, v in sd.items() if k in self.expected}
        if len(self._base) < len(sd):
            self.notes.append(f"{src.name}: {len(sd) - len(self._base)} tensor(s) unknown to the architecture dropped.")
        return self._save(self._base, "base.safetensors", src)

    def base_tensors(self, base_ref: str) -> StateDict:
        if self._base is None:
            from peru_core.io import load_state_dict

            p = Path(base_ref) if Path(base_ref).is_absolute() else self.staging / base_ref
            self._base = load_state_dict(p)
        return self._base

    def finetuned(self, ref: Path | str, task: str, base_ref: str) -> str:
        src = local_path(ref, "file")
        tuned = {k for k in self.expected if k.startswith(self.prefix)}
        rel = f"checkpoints/{_slug(task)}.safetensors"
        if self._fits(src, tuned):
            return self.place(src, rel, ref)
        sd = self._read(src)
        kept = {k: v for k, v in sd.items() if k in tuned}
        if not kept:
            raise PeruError(f"The fine-tune of task {task!r} ({src.name}) holds no tensor of the tuned part "
                            f"{self.prefix!r}; pick the image-encoder checkpoint.")
        missing = sorted(tuned - set(kept))
        if missing:
            base = self.base_tensors(base_ref)
            kept.update({k: base[k] for k in missing})
            self.notes.append(f"{src.name}: {len(missing)} tuned tensor(s) it does not hold (e.g. {missing[0]}) "
                              "taken from the base, i.e. left unchanged by the fine-tune.")
        return self._save(kept, rel, src)

    def adapter(self, ref: Path | str, task: str, kind: str = "lora") -> str:
        from safetensors import safe_open

        from peru_core.io import ADAPTER_WEIGHTS, load_lora_adapter

        src = local_path(ref, "adapter")

        # readable, and HF module names (q_proj/v_proj...) map onto open_clip: io.parse_adapter calls hf_clip
        load_lora_adapter(src, name=f"of task {task!r}", base_keys=self.expected)
        weights = src / ADAPTER_WEIGHTS if (src / ADAPTER_WEIGHTS).is_file() else src / LINEARIZED_WEIGHTS
        if weights.name == LINEARIZED_WEIGHTS:
            self.notes.append(f"{src.name}: a FusionBench L-LoRA export, folded into LoRA factors when loaded "
                              "(peru_core.llora).")
        with safe_open(str(weights), "pt") as f:
            if any(hf_clip.is_hf_module(k.split(".lora_")[0]) for k in f.keys()):
                self.notes.append(f"{src.name}: LoRA on Hugging Face modules, applied to open_clip weights when "
                                  "loaded (q/k/v packed into attn.in_proj_weight).")
        return self.place(src, f"{'adapters' if kind == 'lora' else kind}/{_slug(task)}", ref)

    def data(self, src: Optional[Path | str | Mapping[str, Any]], task: str, split: str) -> Optional[dict[str, Any]]:
        """A test or validation set: copied into ``data/`` (or referenced in place without ``copy``); an ``hf://``
        dataset stays a reference (its parquet files live in the hub cache). A parquet set may be given as
        ``{"path": ..., "split": ..., "limit": ...}`` (see :class:`~peru_core.zoo.manifest.DataRef`)."""
        if src is None:
            return None
        if isinstance(src, Mapping):
            extra = {k: v for k, v in src.items() if k in ("split", "limit") and v is not None}
            ref = self.data(src["path"], task, split)
            if extra and ref is not None and ref["kind"] != "parquet":
                raise PeruError(f"The {split} data of task {task!r} sets {', '.join(extra)}, which only parquet "
                                "sets have; drop it or give a parquet set.")
            return {**ref, **extra} if ref is not None else None
        if is_hub_ref(src):
            return {"kind": "parquet", "path": str(src)}
        src = Path(src)
        what = f"{split} data of task {task!r}"
        if not src.exists():
            raise PeruError(f"The {what} {src} does not exist; pick the image folder, parquet set or .npz file.")
        if not (src.is_dir() or (src.is_file() and src.suffix in (".npz", ".parquet"))):
            raise PeruError(f"The {what} {src} is neither an image folder, a parquet set nor an .npz file; pick one "
                            "of those.")
        kind = "npz" if src.suffix == ".npz" else "parquet" if _is_parquet(src) else "folder"
        rel = f"data/{_slug(task)}_{split}" + ("" if src.is_dir() else src.suffix)
        return {"kind": kind, "path": self.place(src, rel)}

    def _save(self, sd: StateDict, rel: str, src: Path) -> str:
        from peru_core.io import save_state_dict

        save_state_dict(sd, self.staging / rel, metadata={"imported_from": src.name})
        return rel


def write_zoo(folder: str | Path, architecture: str, base_path: str | Path,
              tasks: Sequence[TaskInput | Mapping[str, Any]], *, name: Optional[str] = None, description: str = "",
              templates: Sequence[str] = ("a photo of a {}.",), tuned_prefix: str = "visual.",
              model_config: Optional[dict[str, Any]] = None, image_mean: Sequence[float] = (),
              image_std: Sequence[float] = (), copy: bool = True, convert_pickles: bool = False,
              on_progress: Progress = None) -> Zoo:
    """Write ``folder/zoo.json`` (and imported files) for ``architecture`` (an open_clip name) and return the Zoo.

    Every field :func:`~peru_core.zoo.manifest.load_zoo` reads can be given: zoo-wide prompt ``templates`` (a task's
    own ``templates`` override them), ``image_mean``/``image_std`` (empty: CLIP's), and per task a label, classes,
    templates, the synthetic flag, source and licence. With ``copy`` (the default) checkpoints, adapters and data
    are copied into the zoo, which is then self-contained (relative paths only); ``copy=False`` references files
    that already fit where they are (imported ones are always written into the zoo).
    Raises :class:`PeruError` with the first problem found; nothing is left half-written.
    """
    folder = Path(folder).expanduser().resolve()
    specs = [TaskInput.of(t) for t in tasks]
    if not specs:
        raise PeruError("A zoo needs at least one task; add a task with its classes and a checkpoint.")
    if len({_slug(s.name) for s in specs}) < len(specs):
        raise PeruError("Two tasks have the same (or a too similar) name; give every task a distinct name.")
    if len(image_mean) != len(image_std):
        raise PeruError(f"image_mean has {len(image_mean)} values but image_std {len(image_std)}; give one per "
                        "colour channel (3) in both, or neither.")
    report(on_progress, 0.0, f"building {architecture} on the meta device")
    expected = architecture_shapes(architecture, model_config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".staging", dir=folder.parent))
    try:
        w = _Writer(staging, expected, tuned_prefix, copy, convert_pickles)
        base_ref = w.base(base_path if is_hub_ref(base_path) else Path(base_path).expanduser())
        entries = []
        for i, s in enumerate(specs):
            report(on_progress, (i + 1) / (len(specs) + 2), f"task {s.name}")
            entry: dict[str, Any] = {"name": s.name, **s.extra}
            if s.classes:  # none: a standard task's, or the parquet test set's (manifest.default_classes)
                entry["classes"] = list(s.classes)
            if s.label:
                entry["label"] = s.label
            if s.templates:
                entry["templates"] = list(s.templates)
            if s.finetuned is not None:
                entry["finetuned"] = w.finetuned(s.finetuned, s.name, base_ref)
            for kind in ("lora", "llora"):
                if getattr(s, kind) is not None:
                    entry[kind] = w.adapter(getattr(s, kind), s.name, kind)
            for split in ("test", "validation"):
                ref = w.data(getattr(s, split), s.name, split)
                if ref:
                    entry[split] = ref
            entry["synthetic"] = s.synthetic
            for k in ("source", "license"):
                if getattr(s, k):
                    entry[k] = getattr(s, k)
            entries.append(entry)
        manifest: dict[str, Any] = {"format": FORMAT_VERSION, "name": name or folder.name, "description": description,
                                    "architecture": architecture, "base": base_ref, "tuned_prefix": tuned_prefix,
                                    "templates": list(templates), "tasks": entries}
        if model_config is not None:
            manifest["model_config"] = model_config
        if image_mean:
            manifest["image_mean"], manifest["image_std"] = [float(v) for v in image_mean], [float(v) for v in image_std]
        if w.notes:
            manifest["notes"] = w.notes
        (staging / "zoo.json").write_text(json.dumps(manifest, indent=2))
        report(on_progress, (len(specs) + 1) / (len(specs) + 2), "validating")
        problems = zoo_problems(staging)
        if problems:
            raise PeruError(problems[0])
        (staging / "zoo.json").write_text(json.dumps(_relative(manifest, folder), indent=2))
        _commit(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(on_progress, 1.0, "zoo written")
    return load_zoo(folder)


def _relative(obj: Any, folder: Path) -> Any:
    """Absolute paths inside ``folder`` become relative, so a zoo folder can be moved as a whole."""
    if isinstance(obj, dict):
        return {k: _relative(v, folder) if k in ("base", "finetuned", "lora", "llora", "path", "test", "validation",
                                                 "tasks")
                else v for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, folder) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and Path(obj).is_relative_to(folder):
        return str(Path(obj).relative_to(folder))
    return obj


def _commit(staging: Path, folder: Path) -> None:
    """Move every staged file into ``folder`` (one atomic rename each), ``zoo.json`` last."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != "zoo.json")
    for p in files + [staging / "zoo.json"]:
        dst = folder / p.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dst)
