"""What ``zoo.json`` may leave to the library: ``hf://`` paths, parquet test sets, class lists of standard tasks.

Hooks of :mod:`peru_core.zoo.manifest`: a checkpoint, adapter or data path may be an ``hf://`` reference
(:mod:`peru_core.hub`), a test set may be ``{"kind": "parquet", ...}`` (:mod:`peru_core.parquet_data`), and a task
named after a standard task (:mod:`peru_core.tasks`), or whose parquet set names its classes, needs no ``classes``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from peru_core.errors import PeruError
from peru_core.hub import is_hub_ref, parse_ref, resolve_adapter, resolve_file, resolve_folder
from peru_core.tasks import KnownTask, find_task, known_tasks

if TYPE_CHECKING:
    from peru_core.zoo.manifest import DataRef


def hub_path(ref: str, where: str, *, is_dir: bool = False) -> Path:
    """A checkpoint file (``is_dir`` False) or an adapter folder named by an ``hf://`` reference in ``where``."""
    try:
        if is_dir:
            return resolve_adapter(ref)
        return resolve_file(ref)
    except PeruError as e:
        raise PeruError(f"{where}: {e}") from None


def split_patterns(split: str, first_shard: bool = False) -> list[str]:
    """Glob patterns (relative to the dataset folder) of the parquet files of ``split``, as ``datasets`` names
    them: ``test-00000-of-00001.parquet``, ``test.parquet``, ``test/0000.parquet`` (at any depth); with
    ``first_shard``, only the first file of a sharded split."""
    from peru_core.parquet_data import SPLITS

    out: list[str] = []
    for n in SPLITS.get(split, (split,)):
        shards = (f"{n}-00000-of-*.parquet", f"{n}/0000.parquet") if first_shard else (f"{n}-*.parquet",
                                                                                        f"{n}/*.parquet")
        for p in (*shards, f"{n}.parquet"):
            out += [p, f"*/{p}"]
    return out


def _fetch(rel: str, split: str, first_shard: bool = False) -> Path:
    return resolve_folder(rel, patterns=split_patterns(split, first_shard), default_type="dataset",
                          what=f"{split!r} split")


def parquet_path(root: Path, rel: str, where: str, split: str, limit: Optional[int] = None) -> Path:
    """The local file or folder of a parquet set. An ``hf://`` dataset fetches only ``split``'s files (a reference
    ending in ``.parquet``, that one file); a validation split it lacks falls back to ``train``, only its first
    shard when a ``limit`` says few images are needed."""
    if is_hub_ref(rel):
        from peru_core.parquet_data import has_split

        try:
            if parse_ref(rel, "dataset").subpath.endswith(".parquet"):
                return resolve_file(rel, default_type="dataset")
            if split != "validation":
                return _fetch(rel, split)
            try:
                folder = _fetch(rel, split)
                if has_split(folder, split):
                    return folder
            except PeruError:
                pass
            return _fetch(rel, "train", first_shard=limit is not None)
        except PeruError as e:
            raise PeruError(f"{where}: {e}") from None
    p = (root / rel).resolve()
    if not p.exists():
        raise PeruError(f"{where} names {rel!r}, which does not exist under {root}; fix the path or add the files.")
    return p


def default_classes(name: str, test: Optional["DataRef"], where: str) -> tuple[tuple[str, ...], Optional[KnownTask]]:
    """The class list of a task that gives none: a standard task's (with the task), else the test set's
    ``ClassLabel`` names; otherwise a one-sentence error."""
    known = find_task(name)
    if known is not None:
        return known.classes, known
    if test is not None and test.kind == "parquet":
        from peru_core.parquet_data import inspect_parquet

        names = inspect_parquet(test.path, test.split or "test").class_names
        if names:
            return names, None
    raise PeruError(f"{where} has no 'classes'; list them, name the task after a standard task "
                    f"({', '.join(known_tasks())}), or give a parquet test set whose features name them.")
