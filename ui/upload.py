"""Upload glue: stage uploaded files on disk, check each file in one sentence, find a zoo's parts in a folder.

Checks read safetensors headers only (no weights), so a 600 MB checkpoint is checked in milliseconds; the deep
validation runs once more in :func:`peru_core.zoo.writer.write_zoo` before anything is saved.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from peru_core.errors import PeruError
from peru_core.zoo.validate import checkpoint_shapes

ARCHITECTURES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-32-quickgelu", "ViT-B-16-quickgelu", "ViT-L-14-quickgelu")
Shapes = dict[str, tuple[int, ...]]


@dataclass
class TaskFiles:
    """What a task has so far."""

    name: str
    finetuned: Optional[Path] = None
    lora: Optional[Path] = None
    test: Optional[Path] = None
    classes: tuple[str, ...] = ()


def check_base(path: Path, expected: Shapes, arch: str) -> str:
    """One sentence: what the base checkpoint holds, or raise PeruError with what is wrong."""
    shapes, hf = checkpoint_shapes(path)  # HF names are valid: write_zoo maps them
    missing = sorted(set(expected) - set(shapes))
    wrong = [k for k in shapes if k in expected and shapes[k] != expected[k]]
    if wrong:
        raise PeruError(f"{path.name} has {wrong[0]!r} of shape {shapes[wrong[0]]} where {arch} expects "
                        f"{expected[wrong[0]]}; pick the architecture it was saved from.")
    if missing and not hf:
        raise PeruError(f"{path.name} lacks {len(missing)} tensor(s) of {arch}, e.g. {missing[0]!r}; upload the "
                        "complete model (image and text towers).")
    return f"{len(shapes)} tensors of {arch}" + (" (Hugging Face names: mapped on save)" if hf else "")


def check_finetuned(path: Path, expected: Shapes, prefix: str) -> str:
    """A fine-tune must hold tensors of the tuned part with the architecture's shapes."""
    shapes, hf = checkpoint_shapes(path)
    tuned = {k: s for k, s in shapes.items() if k.startswith(prefix)}
    if not tuned:
        raise PeruError(f"{path.name} holds no tensor of the tuned part {prefix!r}; upload the fine-tuned image "
                        "encoder of this architecture.")
    wrong = [k for k, s in tuned.items() if k in expected and s != expected[k]]
    unknown = [k for k in tuned if k not in expected]
    if unknown or wrong:
        k = (unknown or wrong)[0]
        raise PeruError(f"{path.name} has {k!r}{'' if k in expected else ' (unknown)'} that does not fit the "
                        "chosen architecture; pick the architecture it was fine-tuned from.")
    return f"{len(tuned)} tuned tensors" + (" (Hugging Face names: mapped on save)" if hf else "")


def check_adapter(folder: Path, expected: Shapes) -> str:
    """A PEFT LoRA adapter whose targets exist in the architecture with the product's shape."""
    from peru_core import hf_clip
    from peru_core.io import load_lora_adapter, validate_adapter

    adapter = load_lora_adapter(folder, name=folder.name, base_keys=expected)
    ranks = sorted({f.rank for f in adapter.values()})
    if not any(hf_clip.is_hf_module(k) for k in adapter):
        validate_adapter({k: torch.empty(s, device="meta") for k, s in expected.items()}, adapter)
    return f"LoRA on {len(adapter)} matrices, rank {'/'.join(map(str, ranks))}"


def check_data(path: Path, classes: tuple[str, ...]) -> str:
    """An image folder (one sub-folder per class) or an .npz with x and y."""
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise PeruError(f"{path.name} needs arrays 'x' (images) and 'y' (labels); it has {', '.join(z.files)}.")
            n, top = len(z["y"]), int(z["y"].max()) if len(z["y"]) else -1
        if classes and top >= len(classes):
            raise PeruError(f"{path.name} has labels up to {top} but {len(classes)} class names; fix either.")
        return f"{n} test images"
    from peru_core.imagefolder import list_images

    if not classes:
        raise PeruError(f"Task data {path.name} needs class names; add a line 'task: class1, class2, ...'.")
    return f"{len(list_images(path, classes))} test images in {len(classes)} classes"


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
    import shutil
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


def parse_classes(text: str) -> dict[str, tuple[str, ...]]:
    """Lines ``task: class a, class b`` -> {task: classes}."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            task, _, names = line.partition(":")
            out[task.strip()] = tuple(c.strip() for c in names.split(",") if c.strip())
    return out


def scan_folder(folder: Path) -> tuple[Optional[Path], list[TaskFiles]]:
    """Find a zoo's parts in ``folder``: ``base*.safetensors`` at the top, and one sub-folder per task holding a
    ``*.safetensors`` fine-tune and/or a PEFT adapter (``adapter_config.json``), optional ``test/`` image folder or
    ``test.npz``, and optional ``classes.txt`` (one class per line)."""
    if not folder.is_dir():
        raise PeruError(f"{folder} is not a folder; give the folder that holds base.safetensors and one sub-folder "
                        "per task.")
    bases = sorted(folder.glob("base*.safetensors")) or sorted(folder.glob("*.safetensors"))
    tasks = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        t = TaskFiles(d.name)
        ft = sorted(p for p in d.glob("*.safetensors") if not p.name.startswith("adapter_model"))
        t.finetuned = ft[0] if ft else None
        cfg = sorted(d.rglob("adapter_config.json"))
        t.lora = cfg[0].parent if cfg else None
        t.test = d / "test" if (d / "test").is_dir() else d / "test.npz" if (d / "test.npz").is_file() else None
        if (d / "classes.txt").is_file():
            t.classes = tuple(c.strip() for c in (d / "classes.txt").read_text().splitlines() if c.strip())
        elif t.test is not None:
            t.classes = folder_classes(t.test)
        if t.finetuned or t.lora:
            tasks.append(t)
    return (bases[0] if bases else None), tasks


def read_config(data: bytes) -> dict:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) from JSON bytes."""
    import json

    try:
        cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PeruError("model_config.json is not valid JSON; export the open_clip config again.") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise PeruError("model_config.json needs 'embed_dim', 'vision_cfg' and 'text_cfg' (an open_clip config).")
    return cfg


def write(target: Path, arch: str, base_path: Path, tasks, *, copy: bool, model_config: Optional[dict] = None,
          on_progress=None, staged: Optional[Path] = None):
    """Save the zoo with :func:`peru_core.zoo.writer.write_zoo` (deep validation, nothing half-written); then drop
    the staged checkpoint copies (``staged``), keeping staged test data, which the zoo references in place."""
    import shutil

    from peru_core.zoo.writer import TaskInput, write_zoo

    zoo = write_zoo(target, arch, base_path, [TaskInput(name=t.name, classes=tuple(t.classes), finetuned=t.finetuned,
                                                        lora=t.lora, test=t.test) for t in tasks],
                    copy=copy, model_config=model_config, on_progress=on_progress)
    if staged is not None:
        for kind in ("base", "finetuned", "adapters"):
            shutil.rmtree(staged / kind, ignore_errors=True)
    return zoo
