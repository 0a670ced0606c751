"""Task datasets as model-ready tensors: ``npz`` arrays (the demo zoo), image folders and parquet sets (users' data).

PERU (https://arxiv.org/abs/2310.01886) evaluates every reused model on each task's held-out test set; this module
turns a manifest's :class:`~peru_core.zoo.manifest.DataRef` into ``(x, y)`` with the image tower's preprocessing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from peru_core.errors import PeruError
from peru_core.zoo.manifest import DataRef

# open_clip's defaults (OpenAI CLIP), used when a zoo names no statistics of its own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` (uint8, N x H x W or N x H x W x C) and ``y`` (integer labels) from an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise PeruError(f"{path} needs arrays 'x' (images) and 'y' (labels); it has {', '.join(z.files)}.")
            x, y = z["x"], z["y"]
    except (OSError, ValueError) as e:
        raise PeruError(f"{path} is not a readable .npz file ({e}); rebuild or replace it.") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise PeruError(f"{path}: 'x' should be uint8 images N x H x W[x C], not {x.dtype} {x.shape}.")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise PeruError(f"{path}: 'y' should hold one integer label per image ({len(x)}), not {y.dtype} {y.shape}.")
    return x, y.astype(np.int64)


def preprocess_uint8(x: np.ndarray | torch.Tensor, image_size: int, mean: Sequence[float] = CLIP_MEAN,
                     std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """uint8 images (N x H x W[x C]) -> float32 N x 3 x S x S: scaled to [0, 1], grey copied to 3 channels,
    resized (bilinear, antialiased) to ``image_size`` when needed, normalized per channel."""
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] != 3:
        raise PeruError(f"Images have {t.shape[1]} channels; give grey (1) or RGB (3) images.")
    if t.shape[-2:] != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((t - m) / s).contiguous()


def load_task_data(ref: DataRef, classes: Sequence[str], image_size: int, *,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's images as a preprocessed float tensor N x 3 x S x S and labels as int64 (indices into ``classes``).

    ``limit`` keeps the first ``limit`` images (the stored order is already shuffled for the demo zoo).
    """
    mean = tuple(mean) if mean else CLIP_MEAN
    std = tuple(std) if std else CLIP_STD
    if ref.kind == "npz":
        x, y = read_npz(ref.path)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise PeruError(f"{ref.path} has labels outside 0..{len(classes) - 1}; the task lists {len(classes)} "
                            "classes, so fix the labels or the class list.")
        return preprocess_uint8(x, image_size, mean, std), torch.from_numpy(y)
    if ref.kind == "folder":
        # Written for issue 5 (image folders); imported here only when a folder is asked for.
        from peru_core.imagefolder import load_image_folder

        return load_image_folder(ref.path, classes, image_size, mean=mean, std=std, limit=limit)
    if ref.kind == "parquet":
        from peru_core.parquet_data import load_parquet  # pyarrow: imported only when a parquet set is asked for

        if ref.limit is not None:  # the manifest's own cap (e.g. the images Fisher/RegMean statistics use)
            limit = ref.limit if limit is None else min(limit, ref.limit)
        return load_parquet(ref.path, classes, image_size, split=ref.split or "test", mean=mean, std=std,
                            limit=limit)
    raise PeruError(f"Data kind {ref.kind!r} is unknown; use 'npz', 'folder' or 'parquet'.")
