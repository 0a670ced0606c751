"""The zoo manifest (``zoo.json``): which model, which checkpoints, which tasks and test data.

A zoo is a folder holding ``zoo.json`` plus the files it names (paths relative to the folder).
The demo zoo in ``assets/zoo`` and folders users bring share this one format; see
``docs/zoo_format.md`` for an annotated example.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peru_core.errors import PeruError

FORMAT_VERSION = 1
DATA_KINDS = ("npz", "folder", "parquet")


@dataclass(frozen=True)
class DataRef:
    """Where a task's images live: ``npz`` (arrays ``x`` uint8 NxHxW[xC] and ``y`` int) or an image ``folder``
    (one sub-folder per class, named as in ``classes`` or matched by sorted order), or ``parquet`` (a file or a
    folder of them with an image and an integer label column, e.g. an ``hf://`` dataset; ``split`` picks the
    files of one split when the folder holds several, see :mod:`peru_core.parquet_data`)."""

    kind: str
    path: Path
    split: str = ""
    limit: Optional[int] = None  # parquet: read at most this many rows, spread over the set


@dataclass(frozen=True)
class TaskSpec:
    """One task: its classes and prompts, its checkpoints and its data."""

    name: str
    label: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    finetuned: Optional[Path] = None  # safetensors: the tuned part (keys under Zoo.tuned_prefix)
    lora: Optional[Path] = None  # a PEFT adapter folder
    llora: Optional[Path] = None  # a PEFT adapter folder of an L-LoRA fine-tune (LoRA with A frozen at A_0)
    test: Optional[DataRef] = None
    validation: Optional[DataRef] = None  # unlabelled use: Fisher / RegMean statistics
    synthetic: bool = False
    source: str = ""
    license: str = ""


@dataclass(frozen=True)
class Zoo:
    """A parsed, validated manifest. ``root`` is the folder; all paths are absolute."""

    root: Path
    name: str
    description: str
    architecture: str  # an open_clip model name, e.g. "ViT-B-32", or a custom name with ``model_config``
    model_config: Optional[dict[str, Any]]  # open_clip model config (JSON) for custom architectures
    base: Path
    tuned_prefix: str  # the fine-tuned part of the model, e.g. "visual."
    tasks: tuple[TaskSpec, ...]
    image_mean: tuple[float, ...] = ()
    image_std: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise PeruError(f"Task {name!r} is not in zoo {self.name!r}; pick one of {', '.join(self.task_names)}.")

    def files(self) -> list[Path]:
        """Every file the zoo depends on (checkpoints, adapters, data), for hashing."""
        out: list[Path] = [self.root / "zoo.json", self.base]
        for t in self.tasks:
            for p in (t.finetuned, t.lora, t.llora):
                if p is not None:
                    out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
            for ref in (t.test, t.validation):
                if ref is not None and ref.kind == "parquet":  # that split's files, not the whole dataset
                    from peru_core.parquet_data import parquet_files

                    out.extend(parquet_files(ref.path, ref.split or "test"))
                elif ref is not None:
                    p = ref.path
                    out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
        return out

    def content_hash(self) -> str:
        """SHA-256 over the bytes of every file the zoo depends on: a changed checkpoint changes the key."""
        h = hashlib.sha256()
        for p in self.files():
            h.update(str(p.relative_to(self.root) if p.is_relative_to(self.root) else p).encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]


def _need(obj: dict, key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise PeruError(f"{where} has no {key!r} field; add it (see docs/zoo_format.md).")
    if not isinstance(obj[key], kind):
        raise PeruError(f"{where} field {key!r} should be a {kind.__name__}, not {type(obj[key]).__name__}.")
    return obj[key]


def _path(root: Path, rel: str, where: str, *, is_dir: bool = False) -> Path:
    if rel.startswith("hf://"):  # a Hugging Face reference, resolved through the hub cache (peru_core.hub)
        from peru_core.zoo.hubrefs import hub_path

        return hub_path(rel, where, is_dir=is_dir)
    p = (root / rel).resolve()
    if not p.exists():
        raise PeruError(f"{where} names {rel!r}, which does not exist under {root}; fix the path or add the file.")
    if is_dir != p.is_dir():
        kind = "a folder" if is_dir else "a file"
        raise PeruError(f"{where} names {rel!r}, which should be {kind}.")
    return p


def _data(root: Path, obj: Any, where: str, split: str = "test") -> Optional[DataRef]:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise PeruError(f"{where} should be an object like {{\"kind\": \"npz\", \"path\": \"...\"}}.")
    kind = _need(obj, "kind", str, where)
    if kind not in DATA_KINDS:
        raise PeruError(f"{where} kind {kind!r} is unknown; use one of {', '.join(DATA_KINDS)}.")
    if kind == "parquet":  # a file or a folder, local or hf://; only the files of the split are fetched
        from peru_core.zoo.hubrefs import parquet_path

        split = str(obj.get("split") or split)
        limit = obj.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise PeruError(f"{where} limit should be a positive number of images, not {limit!r}.")
        return DataRef(kind, parquet_path(root, _need(obj, "path", str, where), where, split, limit), split, limit)
    return DataRef(kind, _path(root, _need(obj, "path", str, where), where, is_dir=(kind == "folder")))


def parse_manifest(root: Path, raw: dict[str, Any]) -> Zoo:
    """Validate a manifest dict (already JSON-decoded) for the zoo folder ``root``."""
    root = Path(root).resolve()
    if raw.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise PeruError(f"zoo.json format {raw.get('format')!r} is not supported; this version reads format {FORMAT_VERSION}.")
    where = "zoo.json"
    arch = _need(raw, "architecture", str, where)
    model_config = raw.get("model_config")
    if model_config is not None and not isinstance(model_config, dict):
        raise PeruError("zoo.json field 'model_config' should be an open_clip model config object.")
    default_templates = tuple(raw.get("templates", ["a photo of a {}."]))
    tasks_raw = _need(raw, "tasks", list, where)
    if not tasks_raw:
        raise PeruError("zoo.json lists no tasks; add at least one task with its classes and checkpoints.")
    tasks: list[TaskSpec] = []
    seen: set[str] = set()
    for i, t in enumerate(tasks_raw):
        tw = f"zoo.json task #{i + 1}"
        if not isinstance(t, dict):
            raise PeruError(f"{tw} should be an object with at least 'name' and 'classes'.")
        name = _need(t, "name", str, tw)
        tw = f"zoo.json task {name!r}"
        if name in seen:
            raise PeruError(f"zoo.json names task {name!r} twice; task names must be unique.")
        seen.add(name)
        test = _data(root, t.get("test"), f"{tw} test")
        known = None
        if "classes" in t:
            classes = tuple(_need(t, "classes", list, tw))
        else:  # a standard task (peru_core/tasks_data) or a parquet set whose features name the classes
            from peru_core.zoo.hubrefs import default_classes

            classes, known = default_classes(name, test, tw)
        if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
            raise PeruError(f"{tw} needs at least two non-empty class names.")
        templates = tuple(t.get("templates", known.templates if known else default_templates))
        if not templates or not all(isinstance(s, str) and "{}" in s for s in templates):
            raise PeruError(f"{tw} prompt templates must each contain '{{}}' where the class name goes.")
        ft = _path(root, t["finetuned"], tw) if t.get("finetuned") else None
        lora = _path(root, t["lora"], tw, is_dir=True) if t.get("lora") else None
        llora = _path(root, t["llora"], tw, is_dir=True) if t.get("llora") else None
        if ft is None and lora is None and llora is None:
            raise PeruError(f"{tw} has none of 'finetuned', 'lora' and 'llora'; give at least one checkpoint.")
        tasks.append(TaskSpec(
            name=name, label=str(t.get("label", known.label if known else name)), classes=classes,
            templates=templates, finetuned=ft, lora=lora, llora=llora, test=test,
            validation=_data(root, t.get("validation"), f"{tw} validation", "validation"),
            synthetic=bool(t.get("synthetic", False)), source=str(t.get("source", "")),
            license=str(t.get("license", "")),
        ))
    return Zoo(
        root=root, name=str(raw.get("name", root.name)), description=str(raw.get("description", "")),
        architecture=arch, model_config=model_config, base=_path(root, _need(raw, "base", str, where), where),
        tuned_prefix=str(raw.get("tuned_prefix", "visual.")), tasks=tuple(tasks),
        image_mean=tuple(raw.get("image_mean", ())), image_std=tuple(raw.get("image_std", ())),
        extra={k: v for k, v in raw.items() if k not in {
            "format", "name", "description", "architecture", "model_config", "base", "tuned_prefix", "tasks",
            "templates", "image_mean", "image_std"}},
    )


def load_zoo(folder: str | Path) -> Zoo:
    """Read and validate ``folder/zoo.json``; ``folder`` may be an ``hf://`` reference to a zoo on the hub."""
    if isinstance(folder, str) and folder.startswith("hf://"):
        from peru_core.hub import local_path

        folder = local_path(folder, "zoo")
    root = Path(folder)
    mf = root / "zoo.json"
    if not mf.is_file():
        raise PeruError(f"{root} has no zoo.json; pick a zoo folder or create one on the Upload page.")
    try:
        raw = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PeruError(f"{mf} is not valid JSON ({e}); fix the file.") from None
    if not isinstance(raw, dict):
        raise PeruError(f"{mf} should hold a JSON object.")
    return parse_manifest(root, raw)


DEMO_ZOO = Path(__file__).resolve().parents[2] / "assets" / "zoo"


def demo_zoo() -> Zoo:
    """The built-in demo zoo that ships in ``assets/zoo``."""
    return load_zoo(DEMO_ZOO)
