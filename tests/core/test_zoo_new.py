"""`python -m peru_core zoo new` from a fake hub cache (offline): HF CLIP base and fine-tunes, PEFT LoRA and
FusionBench L-LoRA adapters, parquet test sets; standard tasks need no class list; every bad reference is one
sentence; the FusionBench preset's task files are complete."""
import json

import pytest

from hub_zoo import ARCH, BLOBS, DATA, build_hub
from peru_core import cli
from peru_core.tasks import PAPER_TASKS, find_task, known_tasks

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("hf_home")
    mp.setenv("HF_HOME", str(home))
    mp.delenv("HF_HUB_CACHE", raising=False)
    mp.setenv("HF_HUB_OFFLINE", "1")
    refs = build_hub(home / "hub", tmp_path_factory.mktemp("hub_work"))
    yield refs
    mp.undo()


def _args(refs: dict, out, *extra: str) -> list[str]:
    return ["zoo", "new", str(out), "--arch", ARCH, "--model-config", refs["config"], "--base", refs["base"],
            "--task", f"mnist={refs['ft_mnist']}", f"blobs={refs['ft_blobs']}",
            "--lora", f"mnist={refs['lora_mnist']}", f"blobs={refs['lora_blobs']}",
            "--l-lora", f"mnist={refs['llora_mnist']}", f"blobs={refs['llora_blobs']}", *extra]


def test_zoo_new_from_the_hub_cache_evaluates(hub, tmp_path, capsys):
    from peru_core import experiments as ex
    from peru_core.spec import Source
    from peru_core.zoo import load_zoo
    from peru_core.zoo.runtime import ZooRuntime

    out = tmp_path / "zoo"
    rc = cli.main(_args(hub, out, "--test", f"mnist={hub['test_mnist']}", f"blobs={hub['test_blobs']}",
                        "--validation", f"mnist={hub['test_mnist']}", "--validation-limit", "4"))
    assert rc == 0, capsys.readouterr().err
    assert "2 tasks (mnist, blobs)" in capsys.readouterr().out
    raw = json.loads((out / "zoo.json").read_text())
    tasks = {t["name"]: t for t in raw["tasks"]}
    assert tasks["mnist"]["classes"] == list(find_task("mnist").classes)  # from peru_core/tasks_data
    assert tasks["mnist"]["templates"] == list(find_task("mnist").templates)
    assert "classes" not in tasks["blobs"]  # taken from the parquet set's ClassLabel feature when loaded
    assert tasks["mnist"]["test"] == {"kind": "parquet", "path": hub["test_mnist"]}  # stays a reference
    assert tasks["mnist"]["validation"] == {"kind": "parquet", "path": hub["test_mnist"], "limit": 4}
    zoo = load_zoo(out)
    assert zoo.task("blobs").classes == tuple(BLOBS) and zoo.task("mnist").label == "MNIST"
    assert zoo.task("mnist").test.split == "test"
    parquet = [p.name for p in zoo.files() if p.suffix == ".parquet"]
    assert parquet == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "test-00000-of-00001.parquet"]
    rt = ZooRuntime(zoo, device="cpu")
    assert ex.available_sources(rt) == [Source.FULL, Source.LORA, Source.LLORA]
    x, y = rt.data("mnist")
    assert x.shape == (20, 3, 8, 8) and int(y.max()) < 10  # the test split only, not train
    assert rt.data("mnist", "validation")[0].shape == (4, 3, 8, 8)  # no validation split: 4 of its 6 train images
    for kind in ("lora", "llora"):
        rt.adapter("mnist", kind)  # folds (L-LoRA) and validates against the base
    acc = rt.accuracy(rt.finetuned("blobs"), "blobs")
    assert 0.0 <= acc <= 1.0


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress lines come first
    assert err.startswith("error: ") and err.endswith("."), err
    return err


def test_bad_references_are_one_sentence(hub, tmp_path, capsys):
    err = _error(capsys, _args(hub, tmp_path / "a", "--test", f"mnist=hf://{DATA}/no-such-set"))
    assert f"hf://{DATA}/no-such-set" in err and f"hf download {DATA}/no-such-set --repo-type dataset" in err
    err = _error(capsys, ["zoo", "new", str(tmp_path / "b"), "--arch", ARCH, "--model-config", hub["config"],
                          "--base", "hf://nobody/clip", "--task", f"mnist={hub['ft_mnist']}"])
    assert "hf://nobody/clip" in err and "HF_HUB_OFFLINE" in err
    blobs = f"blobs={hub['test_blobs']}"
    err = _error(capsys, _args(hub, tmp_path / "c", "--test", f"mnist=hf://{DATA}/nolabel", blobs))
    assert "no label column" in err
    err = _error(capsys, _args(hub, tmp_path / "d", "--test", f"mnist=hf://{DATA}/three", blobs))
    assert "names 3 classes but the task lists 10" in err
    err = _error(capsys, _args(hub, tmp_path / "f", "--test", f"mnist={hub['test_mnist']}"))
    assert "task 'blobs' has no 'classes'" in err  # not a standard task, and no parquet set to name them
    err = _error(capsys, _args(hub, tmp_path / "e", "--task", "oops"))
    assert "NAME=PATH" in err
    assert not any((tmp_path / n).exists() for n in "abcdef")  # nothing half-written


def test_paper_preset_task_files_are_complete(tmp_path):
    from peru_core.cli import build_parser
    from peru_core.commands.zoo_new import task_inputs

    assert len(known_tasks()) >= 13
    sizes = {"sun397": 397, "stanford_cars": 196, "resisc45": 45, "eurosat": 10, "svhn": 10, "gtsrb": 43,
             "mnist": 10, "dtd": 47, "cifar10": 10, "cifar100": 100, "caltech101": 102, "flowers102": 102,
             "oxford_pets": 37}
    for name, n in sizes.items():
        t = find_task(name)
        assert t is not None and len(t.classes) == n == len(set(t.classes)), name
        assert t.templates and all("{}" in s and s.format("x") for s in t.templates), name
        assert t.source.startswith(("fusion_bench 0.2.33 (PyPI", "clip_benchmark 1.6.2 (PyPI")), name
    assert find_task("Stanford-Cars").name == find_task("cars").name == "stanford_cars"
    args = build_parser().parse_args(["zoo", "new", str(tmp_path / "z"), "--preset", "fusionbench-vit-b-32"])
    arch, base, tasks = task_inputs(args)
    assert (arch, base) == ("ViT-B-32-quickgelu", "hf://openai/clip-vit-base-patch32")
    assert [t["name"] for t in tasks] == list(PAPER_TASKS)
    for t in tasks:
        known = find_task(t["name"])
        assert t["finetuned"] == f"hf://tanganke/clip-vit-base-patch32_{known.fusionbench}"
        assert t["test"].startswith("hf://datasets/") and t["classes"] == known.classes
    assert {t["name"]: t["test"] for t in tasks}["svhn"] == "hf://datasets/ufldl-stanford/svhn/cropped_digits"
    assert {t["name"]: t["finetuned"] for t in tasks}["stanford_cars"] == \
        "hf://tanganke/clip-vit-base-patch32_stanford-cars"
