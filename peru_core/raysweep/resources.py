"""What one worker asks Ray for: memory from the zoo's size, a GPU when the cluster has them, CPUs for torch threads.

Ray's ``memory`` resource is a reservation, not a limit: asking for what a worker will hold keeps Ray from placing
more workers on a node than its memory can take (https://docs.ray.io/en/latest/ray-core/scheduling/memory-management.html).
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from peru_core.errors import PeruError
from peru_core.io import read_file_header
from peru_core.zoo.manifest import DataRef, Zoo

GiB = 2**30
OVERHEAD = 3 * GiB // 4  # the interpreter with torch and open_clip imported (measured: ~0.6 GiB on the CPU)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class WorkerShape:
    """Resources of one worker actor and how many workers to start."""

    workers: int
    num_cpus: int
    num_gpus: int
    memory: int  # bytes

    def describe(self) -> str:
        gpu = f", {self.num_gpus} GPU" if self.num_gpus else ""
        return f"{self.workers} worker(s), each {self.num_cpus} CPU{gpu} and {self.memory / GiB:.1f} GiB"


def _images(ref: Optional[DataRef]) -> int:
    """How many images a data reference holds, from the npz header or the folder listing (nothing decoded)."""
    if ref is None:
        return 0
    if ref.kind == "folder":
        return sum(1 for p in Path(ref.path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    try:
        with zipfile.ZipFile(ref.path) as z, z.open("x.npy") as f:
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape = read[np.lib.format.read_magic(f)](f)[0]  # the header only, not the array
        return int(shape[0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return 0  # the worker reports an unreadable file with its own sentence


def _values(path: Path) -> int:
    header = read_file_header(path, path.name)
    return sum(math.prod(v["shape"]) for k, v in header.items() if not k.startswith("__"))


def worker_memory(zoo: Zoo) -> int:
    """Bytes one worker holds for ``zoo``: the float32 model, the tuned part of the base and of every fine-tune
    (full ones read, adapters folded in), the memo's merged model and prepared selectors (capped like the memo by
    ``$PERU_CACHE_GB``), the preprocessed test and validation images, and the interpreter."""
    model = 4 * _values(zoo.base)
    header = read_file_header(zoo.base, zoo.base.name)
    tuned = 4 * sum(math.prod(v["shape"]) for k, v in header.items() if k.startswith(zoo.tuned_prefix))
    T = len(zoo.tasks)
    kinds = sum(any(getattr(t, kind, None) for t in zoo.tasks) for kind in ("finetuned", "lora", "llora"))
    memo = min(int(float(os.environ.get("PERU_CACHE_GB", 4)) * GiB), int(tuned * (1 + 1.6 * T)))
    side = int(((zoo.model_config or {}).get("vision_cfg") or {}).get("image_size", 224))  # open_clip's usual size
    images = sum(_images(t.test) + _images(t.validation) for t in zoo.tasks)
    return OVERHEAD + model + tuned * (1 + T * kinds) + memo + images * 3 * side * side * 4


def plan_workers(nodes: list[dict[str, Any]], memory: int, device: Optional[str], workers: Optional[int],
                 tasks: int) -> WorkerShape:
    """Size the pool from the live nodes' resources (``ray.nodes()``): one GPU per worker when the cluster has GPUs
    (unless ``device`` is ``cpu``), else one worker per CPU; never more workers than the nodes' memory holds or than
    there are ``tasks`` to run. CPUs per worker: the node's CPUs shared among the workers it can hold."""
    alive = [n["Resources"] for n in nodes if n.get("Alive", True)]
    gpus = sum(int(r.get("GPU", 0)) for r in alive)
    if device == "cuda" and not gpus:
        raise PeruError("--device cuda was asked for but the Ray cluster has no GPU; drop --device or add GPU nodes.")
    use_gpu = gpus > 0 and device != "cpu"
    fits = [int(r.get("memory", 0) // memory) for r in alive]
    if not any(fits):
        biggest = max((r.get("memory", 0) for r in alive), default=0)
        raise PeruError(f"A worker needs about {memory / GiB:.1f} GiB for this zoo but the largest Ray node offers "
                        f"{biggest / GiB:.1f} GiB; use a node with more memory or lower $PERU_CACHE_GB.")
    slots = [min(f, int(r.get("GPU", 0)) if use_gpu else max(1, int(r.get("CPU", 1)))) for f, r in zip(fits, alive)]
    n = min(workers or sum(slots), max(1, tasks))
    # spread the CPUs: a node holding k of the workers gives each CPU / k torch threads; the smallest node decides,
    # so that a worker fits on every node that has room for one
    per_node = min((r.get("CPU", 1) / max(1, min(s, n)) for r, s in zip(alive, slots) if s), default=1)
    return WorkerShape(n, max(1, int(per_node)), 1 if use_gpu else 0, memory)
