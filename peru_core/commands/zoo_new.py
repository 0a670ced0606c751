"""``python -m peru_core zoo new DIR ...``: a zoo folder from checkpoints, adapters and test sets, in one command.

Every path may be an ``hf://owner/repo[@revision][/path]`` reference (resolved through the Hugging Face cache, see
:mod:`peru_core.hub`). A task named after a standard task (:mod:`peru_core.tasks`) takes its class names and prompt
templates from the shipped data; others take them from ``--classes NAME=FILE`` or from the parquet test set's
features. The zoo is written and validated by :func:`peru_core.zoo.writer.write_zoo`, as the Upload page does.
``--preset fusionbench-vit-b-32`` fills the eight tasks of PERU's Table 1 (https://arxiv.org/abs/2310.01886) from
FusionBench's public fine-tunes and test sets.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from peru_core.commands.merge import one_line_errors
from peru_core.errors import PeruError
from peru_core.hub import is_hub_ref


# images per task for merging statistics: the most the Fisher/RegMean sliders ask for (merging/fisher.py SAMPLES)
VALIDATION_LIMIT = 1024


@dataclass(frozen=True)
class Preset:
    """A public model family: the open_clip architecture, the base repository and the task repositories
    (``{task}`` is the task's FusionBench name)."""

    architecture: str
    base: str
    finetuned: str
    lora: Optional[str] = None
    tasks: tuple[str, ...] = ()


def _fusionbench(arch: str, hf: str, lora: bool = False) -> Preset:
    from peru_core.tasks import PAPER_TASKS

    return Preset(arch, f"hf://openai/{hf}", f"hf://tanganke/{hf}_{{task}}",
                  f"hf://tanganke/{hf}_{{task}}_lora-16" if lora else None, PAPER_TASKS)


def presets() -> dict[str, Preset]:
    """The known presets (FusionBench publishes LoRA-16 adapters for ViT-B/16 only)."""
    return {"fusionbench-vit-b-32": _fusionbench("ViT-B-32-quickgelu", "clip-vit-base-patch32"),
            "fusionbench-vit-b-16": _fusionbench("ViT-B-16-quickgelu", "clip-vit-base-patch16", lora=True),
            "fusionbench-vit-l-14": _fusionbench("ViT-L-14-quickgelu", "clip-vit-large-patch14")}


def _pairs(items: Optional[Sequence[str]], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise PeruError(f"{flag} {item!r} should be NAME=PATH (a task name, '=', a path or hf:// reference).")
        if name.strip() in out:
            raise PeruError(f"{flag} names task {name.strip()!r} twice; give one {flag} per task.")
        out[name.strip()] = value.strip()
    return out


def add_parser(subparsers) -> None:
    zoo = subparsers.add_parser("zoo", help="create zoos (zoo new)")
    sub = zoo.add_subparsers(dest="zoo_command", required=True)
    p = one_line_errors(sub.add_parser(
        "new", help="write a zoo folder from checkpoints, adapters and test sets (paths or hf:// references)",
        description=__doc__.split("\n\n")[0]))
    p.add_argument("dir", help="the zoo folder to write (zoo.json and imported checkpoints)")
    p.add_argument("--preset", choices=sorted(presets()), help="fill architecture, base, tasks and test sets from "
                   "a public model family (explicit options override it)")
    p.add_argument("--arch", help="open_clip architecture, e.g. ViT-B-32-quickgelu (OpenAI CLIP uses QuickGELU)")
    p.add_argument("--model-config", metavar="FILE", help="open_clip model config (JSON) for a custom --arch")
    p.add_argument("--base", help="pre-trained CLIP checkpoint (open_clip or Hugging Face CLIPModel), or hf://...")
    p.add_argument("--task", nargs="+", action="extend", metavar="NAME=PATH", help="full fine-tunes")
    p.add_argument("--lora", nargs="+", action="extend", metavar="NAME=DIR", help="PEFT LoRA adapter folders")
    p.add_argument("--l-lora", nargs="+", action="extend", metavar="NAME=DIR",
                   help="L-LoRA adapter folders (PEFT, or FusionBench's linearized export)")
    p.add_argument("--test", nargs="+", action="extend", metavar="NAME=PATH",
                   help="test sets: image folder, .npz, parquet file or folder, or hf://owner/dataset[/config]")
    p.add_argument("--validation", nargs="+", action="extend", metavar="NAME=PATH",
                   help="validation sets for Fisher/RegMean (same kinds; an hf:// dataset without a validation "
                        "split gives its train split)")
    p.add_argument("--validation-limit", type=int, default=VALIDATION_LIMIT, metavar="N",
                   help=f"parquet validation sets: use N images spread over the set (default {VALIDATION_LIMIT}; "
                        "0: all)")
    p.add_argument("--classes", nargs="+", action="extend", metavar="NAME=FILE",
                   help="class names, one per line (default: the standard task's, or the parquet set's features)")
    p.add_argument("--tasks", nargs="+", metavar="NAME", help="with --preset: only these of its tasks")
    p.add_argument("--name", help="zoo name (default: the folder's name)")
    p.add_argument("--description", default="", help="one line shown on the Home page")
    p.add_argument("--no-copy", action="store_true", help="reference files that already fit where they are "
                   "(hf:// ones by their reference) instead of copying them into DIR")
    p.set_defaults(func=run)


def _parquet_dir(path: str) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and next(p.rglob("*.parquet"), None) is not None


def _classes(path: str) -> tuple[str, ...]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise PeruError(f"Class file {path} does not exist; give a text file with one class name per line.")
    return tuple(line.strip() for line in p.read_text().splitlines() if line.strip())


def task_inputs(args: argparse.Namespace) -> tuple[str, str, list[dict]]:
    """Architecture, base reference and the writer's task dicts from the command line (preset first, then the
    explicit options, which win)."""
    from peru_core.tasks import find_task

    preset = presets()[args.preset] if args.preset else None
    arch = args.arch or (preset.architecture if preset else None)
    base = args.base or (preset.base if preset else None)
    if args.validation_limit < 0:
        raise PeruError("--validation-limit should be a number of images (0: all of them).")
    if not arch or not base:
        raise PeruError("zoo new needs --arch and --base (or a --preset that gives them).")
    kinds = {"finetuned": _pairs(args.task, "--task"), "lora": _pairs(args.lora, "--lora"),
             "llora": _pairs(args.l_lora, "--l-lora"), "test": _pairs(args.test, "--test"),
             "validation": _pairs(args.validation, "--validation")}
    class_files = _pairs(args.classes, "--classes")
    if preset:
        chosen = list(args.tasks or preset.tasks)
        unknown = [t for t in chosen if t not in preset.tasks]
        if unknown:
            raise PeruError(f"--tasks {unknown[0]!r} is not a task of preset {args.preset}; pick from "
                            f"{', '.join(preset.tasks)}.")
        for t in chosen:
            known = find_task(t)
            assert known is not None and known.fusionbench, t  # the preset's tasks ship as data (tested)
            kinds["finetuned"].setdefault(t, preset.finetuned.format(task=known.fusionbench))
            if preset.lora:
                kinds["lora"].setdefault(t, preset.lora.format(task=known.fusionbench))
            if known.test:
                kinds["test"].setdefault(t, known.test)
                kinds["validation"].setdefault(t, known.test)  # its validation (or first train) split, capped
    names = list(dict.fromkeys(n for refs in kinds.values() for n in refs))
    if not names:
        raise PeruError("zoo new got no task; give --task/--lora/--l-lora NAME=PATH (or a --preset).")
    for n in names:
        if not any(n in kinds[k] for k in ("finetuned", "lora", "llora")):
            raise PeruError(f"Task {n!r} has test data but no checkpoint; give --task, --lora or --l-lora {n}=PATH.")
    for n in class_files:
        if n not in names:
            raise PeruError(f"--classes names task {n!r}, which has no checkpoint; check the task name.")
    tasks = []
    for n in names:
        entry: dict = {"name": n, **{k: refs[n] for k, refs in kinds.items() if n in refs}}
        val = entry.get("validation")
        if val and args.validation_limit and (is_hub_ref(val) or val.endswith(".parquet") or _parquet_dir(val)):
            entry["validation"] = {"path": val, "limit": args.validation_limit}
        known = find_task(n)
        if n in class_files:
            entry["classes"] = _classes(class_files[n])
        elif known is not None:
            entry.update(classes=known.classes, templates=known.templates, label=known.label,
                         source=f"class names and templates: {known.source}")
        tasks.append(entry)
    return arch, base, tasks


def _progress(fraction: float, message: str) -> None:
    sys.stderr.write(f"[{fraction * 100:5.1f}%] {message}\n")


def run(args: argparse.Namespace) -> int:
    from peru_core.zoo.writer import write_zoo

    arch, base, tasks = task_inputs(args)
    model_config = None
    if args.model_config:
        try:
            model_config = json.loads(Path(args.model_config).expanduser().read_text())
        except (OSError, ValueError) as e:
            raise PeruError(f"--model-config {args.model_config} is not a readable JSON file ({e}); fix it.") from None
    zoo = write_zoo(args.dir, arch, base, tasks, name=args.name, description=args.description,
                    model_config=model_config, copy=not args.no_copy, on_progress=_progress)
    kinds = [k for k in ("finetuned", "lora", "llora") if all(getattr(t, k) for t in zoo.tasks)]
    print(f"wrote zoo {zoo.name!r} to {zoo.root}: {len(zoo.tasks)} tasks ({', '.join(zoo.task_names)}), "
          f"checkpoints: {', '.join(kinds) or 'mixed'}, test sets: {sum(t.test is not None for t in zoo.tasks)}")
    for note in zoo.extra.get("notes", []):
        print(f"  note: {note}")
    return 0
