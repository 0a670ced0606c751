"""Image-folder test sets: one sub-folder per class, read with PIL and the architecture's preprocessing, in batches.

PERU (https://arxiv.org/abs/2310.01886) measures every reused model on each task's held-out images; users bring
those as folders. Sub-folders are matched to the task's class names exactly, then ignoring case, spaces, ``_`` and
``-``; only when NO folder is named after a class (e.g. WordNet ids, ``0..9``) and the counts agree is the sorted
folder order taken as the class order (numerically for all-digit names).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from peru_core.data import CLIP_MEAN, CLIP_STD
from peru_core.errors import PeruError
from peru_core.types import Progress, report

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
Preprocess = Callable[[Image.Image], torch.Tensor]


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


def match_class_folders(folder: str | Path, classes: Sequence[str]) -> list[Path]:
    """The sub-folder of ``folder`` holding each class, in the order of ``classes`` (rules: module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PeruError(f"Test folder {folder} does not exist; give a folder with one sub-folder per class.")
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subs:
        raise PeruError(f"{folder} has no sub-folders; put each class's images in a sub-folder named after the class.")
    by_name = {d.name: d for d in subs}
    by_norm: dict[str, list[Path]] = {}
    for d in subs:
        by_norm.setdefault(_norm(d.name), []).append(d)
    found = [by_name.get(c) or (by_norm.get(_norm(c)) or [None])[0] for c in classes]
    n_named = sum(f is not None for f in found)
    if n_named == len(classes) == len(subs) and len(set(found)) == len(classes):
        return found  # type: ignore[return-value]
    if n_named == 0 and len(subs) == len(classes):
        if all(d.name.isdigit() for d in subs):
            subs.sort(key=lambda d: int(d.name))
        return subs
    if len(subs) != len(classes):
        extra = sorted(d.name for d in subs if d not in found)
        missing = [c for c, f in zip(classes, found) if f is None]
        hint = (f"no folder for class {missing[0]!r}" if missing else f"folder {extra[0]!r} is not a class") \
            if n_named else "no folder is named after a class"
        raise PeruError(f"{folder} has {len(subs)} class sub-folders but the task lists {len(classes)} classes "
                        f"({hint}); make them match.")
    missing = [c for c, f in zip(classes, found) if f is None]
    if missing:
        raise PeruError(f"{folder}: no sub-folder is named after class {missing[0]!r} while others match class "
                        "names; rename the folders after the classes (or all by index).")
    raise PeruError(f"{folder}: two class names match the same sub-folder; make the class names distinct.")


def list_images(folder: str | Path, classes: Sequence[str], limit: Optional[int] = None) -> list[tuple[Path, int]]:
    """``(file, label)`` pairs; with ``limit``, a class-balanced prefix (round robin over classes, sorted files)."""
    per_class = [sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                        and not p.name.startswith("."))
                 for d in match_class_folders(folder, classes)]
    items: list[tuple[Path, int]] = []
    for i in range(max((len(f) for f in per_class), default=0)):
        items.extend((files[i], label) for label, files in enumerate(per_class) if i < len(files))
    if not items:
        raise PeruError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add the test images.")
    return items[:limit] if limit is not None else items


def clip_preprocess(image_size: int, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None) -> Preprocess:
    """open_clip's evaluation transform: bicubic resize of the short side, centre crop, RGB, normalize."""
    from open_clip.transform import image_transform

    tf = image_transform(int(image_size), is_train=False, mean=tuple(mean or CLIP_MEAN), std=tuple(std or CLIP_STD))
    return lambda img: tf(img.convert("RGB"))


def _read(path: Path, preprocess: Preprocess) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            return preprocess(img)
    except (UnidentifiedImageError, OSError) as e:
        raise PeruError(f"{path} is not a readable image ({e}); remove or replace it.") from None


def _resolve(image_size: Optional[int], mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
             preprocess: Optional[Preprocess]) -> Preprocess:
    if preprocess is not None:
        return preprocess
    if not image_size:
        raise PeruError("Reading an image folder needs the model's image size (or a preprocess function).")
    return clip_preprocess(image_size, mean, std)


def iter_image_folder(folder: str | Path, classes: Sequence[str], image_size: Optional[int] = None, *,
                      mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                      preprocess: Optional[Preprocess] = None, limit: Optional[int] = None, batch_size: int = 256,
                      workers: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(x float32 B x 3 x S x S, y int64)``: evaluate sets larger than memory one batch at a time.

    Images are decoded by a small thread pool (PIL releases the GIL while decoding).
    """
    items = list_images(folder, classes, limit)
    yield from _batches(items, _resolve(image_size, mean, std, preprocess), batch_size, workers)


def _batches(items: list[tuple[Path, int]], tf: Preprocess, batch_size: int,
             workers: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            x = torch.stack(list(pool.map(lambda it: _read(it[0], tf), chunk)))
            yield x, torch.tensor([label for _, label in chunk], dtype=torch.int64)


def load_image_folder(folder: str | Path, classes: Sequence[str], image_size: Optional[int] = None, *,
                      mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                      preprocess: Optional[Preprocess] = None, limit: Optional[int] = None, batch_size: int = 256,
                      on_progress: Progress = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole test folder as ``(x float32 N x 3 x S x S, y int64)``, filled batch by batch into one tensor.

    ``classes`` gives the label order; ``image_size``/``mean``/``std`` select open_clip's evaluation transform,
    or pass ``preprocess`` (PIL image -> tensor). ``limit`` keeps a class-balanced subset.
    """
    items = list_images(folder, classes, limit)
    n = len(items)
    x: Optional[torch.Tensor] = None
    y = torch.empty(n, dtype=torch.int64)
    done = 0
    for xb, yb in _batches(items, _resolve(image_size, mean, std, preprocess), batch_size):
        if x is None:
            x = torch.empty((n, *xb.shape[1:]), dtype=xb.dtype)  # one allocation, no concatenated copy
        x[done:done + len(xb)], y[done:done + len(yb)] = xb, yb
        done += len(xb)
        report(on_progress, done / n, f"read {done}/{n} images")
    assert x is not None
    return x, y
