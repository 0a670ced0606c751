"""Upload glue: stage uploaded files on disk, check each file in one sentence, find a zoo's parts in a folder.

Checks read safetensors headers only (no weights), so a 600 MB checkpoint is checked in milliseconds; the deep
validation runs once more in :func:`peru_core.zoo.writer.write_zoo` before anything is saved. Every message names
the user's own file (its upload name, or its path under the folder they typed), never a staging path.
"""
from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from peru_core.errors import PeruError
from peru_core.zoo.validate import checkpoint_shapes

ARCHITECTURES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-32-quickgelu", "ViT-B-16-quickgelu", "ViT-L-14-quickgelu")
CHECKPOINTS = ("finetuned", "lora", "llora")  # a task's checkpoint kinds: the zoo.json keys
SPLITS = ("test", "validation")
KIND_NAMES = {"finetuned": "fine-tune", "lora": "LoRA adapter", "llora": "L-LoRA adapter", "test": "test data",
              "validation": "validation data"}
# what a file name may end with after the task's name, per uploader ("mnist_test.npz" is task mnist's test data)
SUFFIXES = {"finetuned": ("finetuned", "ft"), "lora": ("lora", "adapter"), "llora": ("llora", "l-lora", "l_lora"),
            "test": ("test",), "validation": ("validation", "val")}
STALE_S = 24 * 3600  # staging folders of sessions idle this long are removed
Shapes = dict[str, tuple[int, ...]]


@dataclass
class TaskFiles:
    """What a task has so far: a path per kind (``finetuned``, ``lora``, ``llora``, ``test``, ``validation``),
    the user's own name of each file (``shown``) and the class names its data gives (image sub-folders,
    classes.txt)."""

    name: str
    finetuned: Optional[Path] = None
    lora: Optional[Path] = None
    llora: Optional[Path] = None
    test: Optional[Path] = None
    validation: Optional[Path] = None
    classes: tuple[str, ...] = ()
    shown: dict[str, str] = field(default_factory=dict)

    def name_of(self, kind: str) -> str:
        """The user's name of this task's file of ``kind``."""
        return self.shown.get(kind) or getattr(self, kind).name


def task_of(filename: str, kind: str) -> str:
    """The task a file names: its stem, less a suffix naming the uploader's kind (``mnist_test.npz`` -> mnist)."""
    stem = Path(filename).stem if not filename.endswith(".tar.gz") else filename[:-7]
    for s in SUFFIXES.get(kind, ()):
        m = re.fullmatch(rf"(.+?)[._-]{re.escape(s)}", stem, flags=re.IGNORECASE)
        if m:
            return m.group(1)
    return stem


def _shown_error(e: PeruError, path: Path, shown: str) -> PeruError:
    """The error with the staged or absolute path replaced by the user's name of the file."""
    msg = str(e)
    for p in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
        msg = msg.replace(p, shown)
    return PeruError(msg)


def _checked(fn: Callable[[], str], path: Path, shown: str) -> str:
    try:
        return fn()
    except PeruError as e:
        raise _shown_error(e, path, shown) from None


def check_base(path: Path, expected: Shapes, arch: str, shown: str = "") -> str:
    """One sentence: what the base checkpoint holds, or raise PeruError with what is wrong (a pickle, whatever its
    extension, gets the conversion sentence)."""
    shown = shown or path.name

    def run() -> str:
        shapes, hf = checkpoint_shapes_named(path, shown)  # HF names are valid: write_zoo maps them
        missing = sorted(set(expected) - set(shapes))
        wrong = [k for k in shapes if k in expected and shapes[k] != expected[k]]
        if wrong:
            raise PeruError(f"{shown} has {wrong[0]!r} of shape {shapes[wrong[0]]} where {arch} expects "
                            f"{expected[wrong[0]]}; pick the architecture it was saved from.")
        if missing and not hf:
            raise PeruError(f"{shown} lacks {len(missing)} tensor(s) of {arch}, e.g. {missing[0]!r}; upload the "
                            "complete model (image and text towers).")
        return f"{len(shapes)} tensors of {arch}" + (" (Hugging Face names: mapped on save)" if hf else "")

    return _checked(run, path, shown)


def checkpoint_shapes_named(path: Path, shown: str) -> tuple[Shapes, bool]:
    """:func:`checkpoint_shapes` with errors naming ``shown``."""
    return _checked(lambda: checkpoint_shapes(path), path, shown)  # type: ignore[return-value]


def check_finetuned(path: Path, expected: Shapes, prefix: str, shown: str = "") -> str:
    """A fine-tune must hold tensors of the tuned part with the architecture's shapes."""
    shown = shown or path.name
    shapes, hf = checkpoint_shapes_named(path, shown)
    tuned = {k: s for k, s in shapes.items() if k.startswith(prefix)}
    if not tuned:
        raise PeruError(f"{shown} holds no tensor of the tuned part {prefix!r}; upload the fine-tuned image "
                        "encoder of this architecture.")
    wrong = [k for k, s in tuned.items() if k in expected and s != expected[k]]
    unknown = [k for k in tuned if k not in expected]
    if unknown or wrong:
        k = (unknown or wrong)[0]
        raise PeruError(f"{shown} has {k!r}{'' if k in expected else ' (unknown)'} that does not fit the "
                        "chosen architecture; pick the architecture it was fine-tuned from.")
    return f"{len(tuned)} tuned tensors" + (" (Hugging Face names: mapped on save)" if hf else "")


def check_adapter(folder: Path, expected: Shapes, shown: str = "", kind: str = "lora") -> str:
    """A PEFT adapter (LoRA or L-LoRA: the same files) whose targets exist in the architecture with the product's
    shape."""
    from peru_core import hf_clip
    from peru_core.io import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONVERT_HINT, LINEARIZED_WEIGHTS, load_lora_adapter,
                              validate_adapter)

    shown = shown or folder.name
    if not (folder / ADAPTER_CONFIG).is_file():
        raise PeruError(f"{shown} holds no {ADAPTER_CONFIG}; give the folder PEFT's save_pretrained wrote "
                        f"({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}), zipped for an upload.")
    if not (folder / ADAPTER_WEIGHTS).is_file() and not (folder / LINEARIZED_WEIGHTS).is_file():  # FusionBench's
        if (folder / "adapter_model.bin").is_file():
            raise PeruError(f"{shown} holds adapter_model.bin, a pickle, which can run code when loaded; save the "
                            f"adapter with safe_serialization=True or {CONVERT_HINT}.")
        raise PeruError(f"{shown} has no {ADAPTER_WEIGHTS}; save the adapter with PEFT's save_pretrained.")

    def run() -> str:
        adapter = load_lora_adapter(folder, name=shown, base_keys=expected)
        if not any(hf_clip.is_hf_module(k) for k in adapter):
            validate_adapter({k: torch.empty(s, device="meta") for k, s in expected.items()}, adapter)
        ranks = sorted({f.rank for f in adapter.values()})
        what = "L-LoRA" if kind == "llora" else "LoRA"
        return f"{what} on {len(adapter)} matrices, rank {'/'.join(map(str, ranks))}"

    return _checked(run, folder, shown)


def check_data(path: Path, classes: tuple[str, ...], shown: str = "") -> str:
    """An image folder (one sub-folder per class) or an .npz with x and y."""
    shown = shown or path.name

    def run() -> str:
        if path.suffix == ".npz":
            import numpy as np

            try:
                with np.load(path, allow_pickle=False) as z:
                    if "x" not in z or "y" not in z:
                        raise PeruError(f"{shown} needs arrays 'x' (images) and 'y' (labels); it has "
                                        f"{', '.join(z.files) or 'none'}.")
                    y = z["y"]
            except (OSError, ValueError, zipfile.BadZipFile):
                raise PeruError(f"{shown} is not a readable .npz of plain arrays; save it with numpy.savez "
                                "(x: uint8 images, y: integer labels).") from None
            top = int(y.max()) if len(y) else -1
            if classes and top >= len(classes):
                raise PeruError(f"{shown} has labels up to {top} but {len(classes)} class names; fix either.")
            return f"{len(y)} images"
        from peru_core.imagefolder import list_images

        if not path.is_dir():
            raise PeruError(f"{shown} is neither an image folder nor an .npz file; give one of those.")
        if not classes:
            raise PeruError(f"{shown} needs class names; type them in the task's Classes box.")
        return f"{len(list_images(path, classes))} images in {len(classes)} classes"

    return _checked(run, path, shown)


def folder_classes(path: Path) -> tuple[str, ...]:
    """Class names from an image folder's sub-folders (sorted; numeric names in numeric order)."""
    if not path.is_dir():
        return ()
    subs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    return tuple(sorted(subs, key=int) if subs and all(s.isdigit() for s in subs) else subs)


def extract_zip(data: bytes, dest: Path) -> Path:
    """Unpack a zip safely (no absolute or '..' paths) into ``dest`` and return the folder that holds its content.

    ``dest`` appears only once the whole zip is unpacked: a bad zip leaves nothing that a rerun could take for it."""
    import io
    import os
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                p = Path(info.filename)
                if p.is_absolute() or ".." in p.parts:
                    raise PeruError(f"The zip holds an unsafe path {info.filename!r}; zip the folder's content only.")
            z.extractall(tmp)
        os.replace(tmp, dest)
    except zipfile.BadZipFile:
        raise PeruError("The file is not a valid zip archive; zip the folder again.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful replace
    return content_root(dest)


def content_root(folder: Path) -> Path:
    """An unpacked zip's content: its one top-level folder when it has just one, else the folder itself."""
    inner = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return inner[0] if len(inner) == 1 and inner[0].is_dir() else folder


def adapter_root(folder: Path) -> Path:
    """The folder (itself or below) holding adapter_config.json."""
    found = sorted(folder.rglob("adapter_config.json"))
    return found[0].parent if found else folder


class Staging:
    """One browser session's uploads on disk: ``<root>/<kind>/<upload id>/<the user's file name>`` (zips unpacked
    into ``<upload id>/<zip stem>/``). Files no longer in an uploader are removed on the next run; the whole folder
    goes once the zoo is saved (:meth:`remove`) or after :data:`STALE_S` of idleness (:func:`prune_stale`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._live: set[Path] = set()
        self._names: dict[Path, str] = {}  # staged entry folder -> the user's file name

    def add(self, files: Iterable[Any], kind: str, on_error: Callable[[str], None]) -> dict[str, tuple[Path, str]]:
        """Stage uploaded files of ``kind``: task name -> (staged path, the user's file name)."""
        out: dict[str, tuple[Path, str]] = {}
        for f in files or []:
            entry = self.root / kind / re.sub(r"[^A-Za-z0-9_-]+", "_", str(f.file_id))
            self._live.add(entry)
            self._names[entry] = f.name
            safe = re.sub(r"[^A-Za-z0-9._ -]+", "_", Path(f.name).name) or "upload"
            if f.name.lower().endswith(".zip"):
                dest = entry / (Path(safe).stem or "upload")
                try:
                    path = content_root(dest) if dest.is_dir() else extract_zip(f.getvalue(), dest)
                except PeruError as e:
                    on_error(f"**{f.name}**: {e}")
                    continue
            else:
                path = entry / safe
                if not path.is_file() or path.stat().st_size != f.size:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(f.getvalue())
            out[task_of(f.name, kind)] = (path, f.name)
        return out

    def prune(self) -> None:
        """Drop staged files whose upload was removed from its uploader (call after every :meth:`add` of a run)."""
        if not self.root.is_dir():
            return
        for entry in self.root.glob("*/*"):
            if entry.is_dir() and entry not in self._live:
                shutil.rmtree(entry, ignore_errors=True)
        self.root.touch()  # the session is alive: see prune_stale

    def clean(self, message: str) -> str:
        """``message`` with staged paths replaced by the user's file names."""
        for entry, name in sorted(self._names.items(), key=lambda kv: -len(str(kv[0]))):
            message = re.sub(re.escape(str(entry)) + r"/[^/\s'\"]+", lambda m, n=name: n, message)
        return message.replace(str(self.root), "the upload")

    def remove(self) -> None:
        """Remove the session's whole staging folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def prune_stale(uploads: Path, keep: Path, now: Optional[float] = None) -> None:
    """Remove staging folders under ``uploads`` (other than ``keep``) untouched for :data:`STALE_S`: sessions
    that ended without saving."""
    if not uploads.is_dir():
        return
    now = time.time() if now is None else now
    for d in uploads.iterdir():
        if d != keep and d.is_dir() and now - d.stat().st_mtime > STALE_S:
            shutil.rmtree(d, ignore_errors=True)


def scan_folder(folder: Path, shown: str = "") -> tuple[Optional[Path], list[TaskFiles], Optional[dict]]:
    """Find a zoo's parts in ``folder``: (base, tasks, its zoo.json when it has one).

    A folder holding ``zoo.json`` is read through it (every field and file the manifest names). Otherwise:
    ``base*.safetensors`` at the top, and one sub-folder per task holding a ``*.safetensors`` fine-tune, PEFT
    adapter folders (one named ``llora`` is the L-LoRA fine-tune, any other the LoRA one), optional ``test/`` or
    ``test.npz`` and ``validation/`` or ``validation.npz``, and optional ``classes.txt`` (one class per line)."""
    shown = shown or str(folder)
    if not folder.exists():
        raise PeruError(f"Folder {shown} does not exist; type the path of a folder on this server that holds "
                        "base.safetensors and one sub-folder per task (or a zoo.json).")
    if not folder.is_dir():
        raise PeruError(f"{shown} is a file, not a folder; type the folder that holds it.")
    if (folder / "zoo.json").is_file():
        return _scan_manifest(folder)
    bases = sorted(folder.glob("base*.safetensors")) or sorted(folder.glob("*.safetensors"))
    tasks = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        t = TaskFiles(d.name)
        ft = sorted(p for p in d.glob("*.safetensors") if not p.name.startswith("adapter_model"))
        t.finetuned = ft[0] if ft else None
        for cfg in sorted(d.rglob("adapter_config.json")):
            kind = "llora" if any(p.lower() in ("llora", "l-lora", "l_lora") for p in cfg.parent.relative_to(d).parts) \
                else "lora"
            if getattr(t, kind) is None:
                setattr(t, kind, cfg.parent)
        for split, names in (("test", ("test",)), ("validation", ("validation", "val"))):
            for n in names:
                p = d / n if (d / n).is_dir() else d / f"{n}.npz"
                if p.exists() and getattr(t, split) is None:
                    setattr(t, split, p)
        if (d / "classes.txt").is_file():
            t.classes = tuple(c.strip() for c in (d / "classes.txt").read_text().splitlines() if c.strip())
        elif t.test is not None:
            t.classes = folder_classes(t.test)
        _name_files(t, folder)
        if any(getattr(t, k) is not None for k in CHECKPOINTS):
            tasks.append(t)
    return (bases[0] if bases else None), tasks, None


def _name_files(t: TaskFiles, folder: Path) -> None:
    for kind in (*CHECKPOINTS, *SPLITS):
        p = getattr(t, kind)
        if p is not None:
            t.shown[kind] = str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)


def _scan_manifest(folder: Path) -> tuple[Optional[Path], list[TaskFiles], Optional[dict]]:
    from peru_core.zoo.manifest import load_zoo

    zoo = load_zoo(folder)  # one sentence when a path it names is missing
    raw = json.loads((folder / "zoo.json").read_text())
    tasks = []
    for spec in zoo.tasks:
        t = TaskFiles(spec.name, classes=spec.classes)
        for kind in CHECKPOINTS:
            setattr(t, kind, getattr(spec, kind, None))
        for split in SPLITS:
            ref = getattr(spec, split)
            setattr(t, split, ref.path if ref else None)
        _name_files(t, folder.resolve())
        tasks.append(t)
    return zoo.base, tasks, raw


def read_manifest(data: bytes, shown: str = "zoo.json") -> dict:
    """A zoo.json to start the form from: a JSON object with a list of tasks (its files are not needed)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PeruError(f"{shown} is not valid JSON; pick the zoo.json of a zoo folder.") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in raw["tasks"]):
        raise PeruError(f"{shown} is not a zoo manifest (an object with a list of named 'tasks'); pick the "
                        "zoo.json of a zoo folder.")
    return raw


def read_config(data: bytes) -> dict:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) from JSON bytes."""
    try:
        cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PeruError("model_config.json is not valid JSON; export the open_clip config again.") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise PeruError("model_config.json needs 'embed_dim', 'vision_cfg' and 'text_cfg' (an open_clip config).")
    return cfg


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.5, 0.5, 0.5"`` -> (0.5, 0.5, 0.5); empty -> (); one sentence on anything else."""
    parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise PeruError(f"{what} should be numbers separated by commas, e.g. 0.5, 0.5, 0.5.") from None


def lines(text: str) -> tuple[str, ...]:
    """Non-empty, stripped lines of a text box."""
    return tuple(s.strip() for s in text.splitlines() if s.strip())
