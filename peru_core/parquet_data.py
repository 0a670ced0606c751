"""Parquet test sets (what ``datasets`` writes and the hub serves), read in batches with the model's preprocessing.

PERU (https://arxiv.org/abs/2310.01886) evaluates on each task's held-out test set; the public copies of the paper's
sets (``tanganke/sun397``, ``ylecun/mnist``, ``ufldl-stanford/svhn`` ...) are parquet files with an ``image`` column
(a struct of encoded ``bytes`` and/or a ``path``, or plain bytes) and an integer ``label`` column. The class names
are in the file's ``huggingface`` schema metadata (a ``ClassLabel`` feature) when ``datasets`` wrote it.

A folder may hold several splits, named the ``datasets`` way (``test-00000-of-00002.parquet``, ``test/0000.parquet``,
``mnist/test-...``): only the files of the asked split are read (``validation`` falls back to ``train``: merging
statistics need unlabelled images only); a folder without split names is one set. Rows are
read one record batch at a time (``pyarrow``'s ``iter_batches``), decoded by a small thread pool, never the whole
file at once. pyarrow is imported here only.
"""
from __future__ import annotations

import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from peru_core.errors import PeruError
from peru_core.imagefolder import Preprocess, clip_preprocess
from peru_core.types import Progress, report

SPLITS = {"train": ("train",), "test": ("test",), "validation": ("validation", "valid", "val", "dev")}
_SPLIT_OF = {alias: split for split, aliases in SPLITS.items() for alias in aliases}
_SPLIT_NAME = re.compile(r"^(?P<split>[A-Za-z]+)(?:[-_.]|$)")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")


@dataclass(frozen=True)
class ParquetSet:
    """What a parquet test set holds, read from the footers only: its files, rows and columns."""

    files: tuple[Path, ...]
    rows: int
    image_column: str
    label_column: str
    class_names: Optional[tuple[str, ...]]  # from a ``ClassLabel`` feature, when the file has one


def _split_of(rel: Path) -> Optional[str]:
    """The split a file belongs to by its name or a folder name (``test-0000.parquet``, ``test/0.parquet``)."""
    for part in (rel.name, *rel.parts[:-1]):
        m = _SPLIT_NAME.match(part)
        if m and m["split"].lower() in _SPLIT_OF:
            return _SPLIT_OF[m["split"].lower()]
    return None


def has_split(folder: str | Path, split: str) -> bool:
    """True when ``folder`` holds parquet files named as ``split``'s (not counting a fallback)."""
    want = _SPLIT_OF.get(split.lower(), split.lower())
    folder = Path(folder)
    return any(_split_of(p.relative_to(folder)) == want for p in folder.rglob("*.parquet"))


def parquet_files(path: str | Path, split: str = "test") -> list[Path]:
    """The parquet files of ``split`` under ``path`` (a file or a folder; rules: module docstring)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".parquet":
            raise PeruError(f"{path} is not a .parquet file; give a parquet file or a folder of them.")
        return [path]
    if not path.is_dir():
        raise PeruError(f"Test set {path} does not exist; give a parquet file or a folder of them.")
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise PeruError(f"{path} holds no .parquet files; give the folder of a parquet (Hugging Face datasets) set.")
    splits = {p: _split_of(p.relative_to(path)) for p in files}
    if not any(splits.values()):
        return files
    want = _SPLIT_OF.get(split.lower(), split.lower())
    chosen = [p for p, s in splits.items() if s == want]
    if not chosen and want == "validation":  # Fisher/RegMean statistics need unlabelled images: train ones do
        chosen = [p for p, s in splits.items() if s == "train"]
    if not chosen:
        have = sorted({s for s in splits.values() if s})
        raise PeruError(f"{path} has parquet files of the split(s) {', '.join(have)} but none of {split!r}; name the "
                        "file or sub-folder of the split to use.")
    return chosen


def _features(schema: Any) -> dict:
    """The ``datasets`` features stored in the schema metadata (``{}`` when another tool wrote the file)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
        feats = meta.get("info", {}).get("features") or meta.get("features") or {}
        return feats if isinstance(feats, dict) else {}
    except (ValueError, AttributeError):
        return {}


def _is_image_type(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes"}


def inspect_parquet(path: str | Path, split: str = "test") -> ParquetSet:
    """Files, row count, image and label columns and class names of a parquet set; one-sentence errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = parquet_files(path, split)
    schemas = []
    rows = 0
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise PeruError(f"{f} is not a readable parquet file ({str(e).splitlines()[0]}); download or export it "
                            "again.") from None
        schemas.append(meta.schema_arrow)
        rows += meta.metadata.num_rows
    schema = schemas[0]
    feats = _features(schema)
    names = schema.names
    image = next((c for c in IMAGE_COLUMNS if c in names and _is_image_type(schema.field(c).type)), None) or next(
        (c for c in names if feats.get(c, {}).get("_type") == "Image" or _is_image_type(schema.field(c).type)), None)
    if image is None:
        raise PeruError(f"{files[0]} has no image column (columns: {', '.join(names)}); the set needs an 'image' "
                        "column of encoded images.")
    label = next((c for c in LABEL_COLUMNS if c in names), None) or next(
        (c for c in names if feats.get(c, {}).get("_type") == "ClassLabel"), None)
    if label is None:
        raise PeruError(f"{files[0]} has no label column (columns: {', '.join(names)}); the set needs an integer "
                        "'label' column.")
    if not pa.types.is_integer(schema.field(label).type):
        raise PeruError(f"{files[0]}: column {label!r} holds {schema.field(label).type}, not integers; give the class "
                        "index of each image.")
    for f, s in zip(files[1:], schemas[1:]):
        if image not in s.names or label not in s.names:
            raise PeruError(f"{f} lacks the column {image if image not in s.names else label!r} that {files[0].name} "
                            "has; all files of a split need the same columns.")
    feat = feats.get(label, {})
    classes = tuple(str(c) for c in feat["names"]) if feat.get("_type") == "ClassLabel" and feat.get("names") \
        else None
    return ParquetSet(tuple(files), rows, image, label, classes)


def check_parquet(path: str | Path, classes: Sequence[str], split: str = "test", *, what: str = "") -> ParquetSet:
    """The set's metadata, after checking it against the task's ``classes``: the class count of its ``ClassLabel``
    feature and every label (only the label column is read)."""
    import pyarrow.parquet as pq

    info = inspect_parquet(path, split)
    what = what or str(path)
    if info.class_names is not None and len(info.class_names) != len(classes):
        raise PeruError(f"{what} names {len(info.class_names)} classes but the task lists {len(classes)}; give the "
                        "task the dataset's class list (or leave it out to take the dataset's).")
    for f in info.files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=65536, columns=[info.label_column]):
            y = batch.column(0).to_numpy(zero_copy_only=False)
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise PeruError(f"{what} has labels up to {int(y.max())} but the task lists {len(classes)} classes; "
                                "fix the class list or the labels.")
    return info


def _open(value: Any, folder: Path) -> Image.Image:
    if isinstance(value, dict):
        data, rel = value.get("bytes"), value.get("path")
        if data is None:
            if not rel:
                raise ValueError("neither bytes nor a path")
            return Image.open(folder / rel)  # a datasets export that kept only file names
        return Image.open(io.BytesIO(data))
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    raise ValueError(f"a {type(value).__name__}, not an encoded image")


def _decode(value: Any, folder: Path, tf: Preprocess, where: str) -> torch.Tensor:
    try:
        with _open(value, folder) as img:
            return tf(img)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PeruError(f"{where} holds an image that cannot be read ({e}); fix or remove that row.") from None


def spread(rows: int, limit: Optional[int]) -> Optional[np.ndarray]:
    """Row indices of a ``limit``-row subset spread evenly over ``rows`` (sets are often stored sorted by class, so
    the first rows would be a few classes only); ``None`` for all rows."""
    if limit is None or limit >= rows:
        return None
    return (np.arange(max(0, limit), dtype=np.int64) * rows) // max(1, limit)


def iter_parquet(path: str | Path, classes: Sequence[str], image_size: Optional[int] = None, *, split: str = "test",
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 preprocess: Optional[Preprocess] = None, limit: Optional[int] = None, batch_size: int = 256,
                 workers: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(x float32 B x 3 x S x S, y int64)`` of the set in file order; ``limit``: that many rows spread
    evenly over it (:func:`spread`), only those decoded.

    ``image_size``/``mean``/``std`` select open_clip's evaluation transform, or pass ``preprocess``.
    """
    import pyarrow.parquet as pq

    info = check_parquet(path, classes, split)
    if preprocess is None:
        if not image_size:
            raise PeruError("Reading a parquet set needs the model's image size (or a preprocess function).")
        preprocess = clip_preprocess(image_size, mean, std)
    picked = spread(info.rows, limit)
    offset = 0  # global index of the batch's first row
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for f in info.files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size,
                                                        columns=[info.image_column, info.label_column]):
                n = batch.num_rows
                if picked is not None:
                    if offset >= (int(picked[-1]) + 1 if len(picked) else 0):
                        return
                    local = picked[(picked >= offset) & (picked < offset + n)] - offset
                    offset += n
                    if not len(local):
                        continue
                    batch = batch.take(local)
                else:
                    offset += n
                images = batch.column(0).to_pylist()
                y = torch.tensor(batch.column(1).to_numpy(zero_copy_only=False), dtype=torch.int64)  # a copy
                x = torch.stack(list(pool.map(lambda v: _decode(v, f.parent, preprocess, str(f)), images)))
                yield x, y


def load_parquet(path: str | Path, classes: Sequence[str], image_size: Optional[int] = None, *,
                 split: str = "test", mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 preprocess: Optional[Preprocess] = None, limit: Optional[int] = None, batch_size: int = 256,
                 on_progress: Progress = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole parquet set (or ``limit`` rows spread over it) as ``(x float32 N x 3 x S x S, y int64)``, filled batch
    by batch into one tensor (the encoded files are never all in memory)."""
    rows = inspect_parquet(path, split).rows  # footers only
    n = rows if limit is None else min(limit, rows)
    if n == 0:
        raise PeruError(f"{path} holds no rows of the {split!r} split; give a test set with images.")
    x: Optional[torch.Tensor] = None
    y = torch.empty(n, dtype=torch.int64)
    done = 0
    for xb, yb in iter_parquet(path, classes, image_size, split=split, mean=mean, std=std, preprocess=preprocess,
                               limit=n, batch_size=batch_size):
        if x is None:
            x = torch.empty((n, *xb.shape[1:]), dtype=xb.dtype)  # one allocation, no concatenated copy
        x[done:done + len(xb)], y[done:done + len(yb)] = xb, yb
        done += len(xb)
        report(on_progress, done / n, f"read {done}/{n} images")
    assert x is not None and done == n
    return x, y
