"""The standard image-classification tasks of PERU's experiments, their class names and prompt templates as data.

PERU (https://arxiv.org/abs/2310.01886) evaluates on the eight tasks of task vectors (SUN397, Stanford Cars,
RESISC45, EuroSAT, GTSRB, MNIST, DTD, SVHN) and, in its Table 8, on VTAB-natural ones (CIFAR-10/100, Caltech101,
Flowers102, Oxford Pets). Each ships as ``peru_core/tasks_data/<name>.json`` (classes in the label order of the
public test set it names, the zero-shot templates, and where the lists were copied from), so a zoo task named after
one of them needs no class list. Names match ignoring case, spaces, ``-`` and ``_``, and each file's aliases.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TASKS_DATA = Path(__file__).resolve().parent / "tasks_data"
# The eight tasks of task vectors and PERU's Table 1, in task vectors' order.
PAPER_TASKS = ("sun397", "stanford_cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")


@dataclass(frozen=True)
class KnownTask:
    """One standard task: what zoo.json would otherwise spell out."""

    name: str
    label: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    source: str  # where the class names and templates come from
    test: Optional[str] = None  # the public test set (an hf:// dataset reference), when there is one
    fusionbench: Optional[str] = None  # the task's name in FusionBench's hub repositories
    aliases: tuple[str, ...] = ()


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


@functools.lru_cache(maxsize=1)
def known_tasks() -> dict[str, KnownTask]:
    """Every task in ``tasks_data``, by canonical name."""
    out: dict[str, KnownTask] = {}
    for f in sorted(TASKS_DATA.glob("*.json")):
        raw = json.loads(f.read_text())
        out[raw["name"]] = KnownTask(name=raw["name"], label=raw["label"], classes=tuple(raw["classes"]),
                                     templates=tuple(raw["templates"]), source=raw["source"], test=raw.get("test"),
                                     fusionbench=raw.get("fusionbench"), aliases=tuple(raw.get("aliases", ())))
    return out


def find_task(name: str) -> Optional[KnownTask]:
    """The standard task called ``name`` (or one of its aliases), ``None`` when there is none."""
    key = _key(name)
    for task in known_tasks().values():
        if key in {_key(task.name), *(_key(a) for a in task.aliases)}:
            return task
    return None
