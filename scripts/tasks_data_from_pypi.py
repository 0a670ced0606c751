"""Regenerate ``peru_core/tasks_data/*.json`` (class names and prompt templates of the standard tasks) from the
PyPI wheels that carry them: ``fusion_bench`` (FusionBench, MIT; the CLIP / task-vectors sets in the label order of
its hub datasets) and, for Caltech101, ``clip_benchmark`` (LAION, MIT; the CLIP paper's set).

    pip download --no-deps fusion_bench==0.2.33 clip_benchmark==1.6.2 -d /tmp/wheels
    python scripts/tasks_data_from_pypi.py /tmp/wheels

Only ``classes``, ``templates`` and ``source`` are rewritten; the other fields (label, aliases, test set,
FusionBench name) are ours. The wheels are read as zip files and their modules parsed with ``ast``: no code from
them is run (templates are ``lambda c: f"..."`` literals, turned into ``"...{}..."`` strings here).
"""
from __future__ import annotations

import ast
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "peru_core" / "tasks_data"
FB = "fusion_bench/tasks/clip_classification/"
# our file -> fusion_bench module (None: from clip_benchmark)
MODULES = {"cifar10": "cifar10", "cifar100": "cifar100", "dtd": "dtd", "eurosat": "eurosat",
           "flowers102": "flower102", "gtsrb": "gtsrb", "mnist": "mnist", "oxford_pets": "oxford_iiit_pet",
           "resisc45": "resisc45", "stanford_cars": "stanford_cars", "sun397": "sun397", "svhn": "svhn",
           "caltech101": None}


def _template(node: ast.expr) -> str:
    """``lambda c: f"a photo of a {c}."`` -> ``"a photo of a {}."`` (only f-strings of the argument)."""
    if not isinstance(node, ast.Lambda) or not isinstance(node.body, ast.JoinedStr):
        raise ValueError(f"unexpected template {ast.dump(node)[:80]}")
    parts = []
    for v in node.body.values:
        if isinstance(v, ast.Constant):
            parts.append(str(v.value).replace("{", "{{").replace("}", "}}"))
        else:
            parts.append("{}")
    return "".join(parts)


def _fb_module(wheel: zipfile.ZipFile, name: str) -> tuple[list[str], list[str]]:
    tree = ast.parse(wheel.read(FB + name + ".py"))
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    classes = ast.literal_eval(found.get("classnames") or found["fine_label"])
    templates = [_template(t) for t in found["templates"].elts]
    return list(classes), templates


def _clip_benchmark(wheel: zipfile.ZipFile, name: str) -> tuple[list[str], list[str]]:
    classes = json.loads(wheel.read("clip_benchmark/datasets/en_classnames.json"))[name]
    templates = json.loads(wheel.read("clip_benchmark/datasets/en_zeroshot_classification_templates.json"))[name]
    return list(classes), [t.replace("{c}", "{}") for t in templates]


def main(wheels: Path) -> None:
    fb_path = next(wheels.glob("fusion_bench-*.whl"))
    cb_path = next(wheels.glob("clip_benchmark-*.whl"))
    fb_version, cb_version = fb_path.name.split("-")[1], cb_path.name.split("-")[1]
    with zipfile.ZipFile(fb_path) as fb, zipfile.ZipFile(cb_path) as cb:
        for ours, module in MODULES.items():
            path = OUT / f"{ours}.json"
            data = json.loads(path.read_text())
            if module:
                data["classes"], data["templates"] = _fb_module(fb, module)
                data["source"] = (f"fusion_bench {fb_version} (PyPI; FusionBench, MIT licence), "
                                  f"{FB}{module}.py: the CLIP / task-vectors class names and templates")
            else:
                data["classes"], data["templates"] = _clip_benchmark(cb, ours)
                data["source"] = (f"clip_benchmark {cb_version} (PyPI; LAION, MIT licence), "
                                  "clip_benchmark/datasets/en_classnames.json and "
                                  "en_zeroshot_classification_templates.json: the CLIP paper's set")
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            print(f"{ours}: {len(data['classes'])} classes, {len(data['templates'])} templates")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
