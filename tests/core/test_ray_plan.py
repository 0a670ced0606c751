"""The Ray sweep's planning, without Ray: grouping by shared work, worker sizing, spec files, the worker class."""
import json

import pytest

from peru_core.errors import PeruError
from peru_core.raysweep.plan import group_specs, shared_work
from peru_core.raysweep.resources import GiB, plan_workers, worker_memory
from peru_core.raysweep.worker import SweepWorker, one_line
from peru_core.spec import RunSpec
from peru_core.specfile import read_spec_file, spec_file_text

FFT = [RunSpec.make("peru-fft", "full", "task_arithmetic", keep=k) for k in (1, 5, 10, 20)]
PRUNE = [RunSpec.make("post-pruning", "full", keep=k) for k in (1, 10)]
LORA = [RunSpec.make("peru-lora", "lora", rank=q) for q in (1, 2, 4)]
MERGE = RunSpec.make("merge", "full", "task_arithmetic")
OTHERS = [RunSpec.make("pretrained"), RunSpec.make("merge", "lora", "task_arithmetic"), RunSpec.make("merge", "full", "ties")]


def test_specs_sharing_work_are_grouped_heaviest_first():
    specs = OTHERS[:1] + FFT[:2] + LORA + [MERGE] + PRUNE + FFT[2:] + OTHERS[1:]
    groups = group_specs(specs)
    # the merge and PERU-FFT at every m share theta_star; every q shares the SVDs; every m of Post-Pruning the base
    assert [set(g.specs) for g in groups[:3]] == [set(FFT[:2] + [MERGE] + FFT[2:]), set(LORA), set(PRUNE)]
    assert groups[0].specs == tuple(FFT[:2] + [MERGE] + FFT[2:])  # the caller's order within a group
    assert sorted(len(g.specs) for g in groups[3:]) == [1, 1, 1]
    assert sum(len(g.specs) for g in groups) == len(specs)
    # a merge on LoRA fine-tunes is not the merge on full ones, nor another method's
    assert len({shared_work(s) for s in [MERGE] + OTHERS[1:]}) == 3


def test_groups_are_split_only_when_that_finishes_sooner():
    specs = FFT + [MERGE] + LORA  # weights: 5 specs + the merge, 3 specs + the SVDs
    assert [len(g.specs) for g in group_specs(specs, workers=2)] == [5, 3]  # split, it would end later (7 > 6)
    four = group_specs(specs, workers=4)  # idle workers: the merge is done twice, the pool ends at 4, not 6
    assert sorted(len(g.specs) for g in four) == [2, 3, 3] and {s for g in four for s in g.specs} == set(specs)
    assert [len(g.specs) for g in group_specs(FFT, workers=8)] == [1, 1, 1, 1]
    assert len(group_specs(specs[:1], workers=8)) == 1  # one spec cannot be split
    assert len(group_specs(specs + specs, workers=1)) == 2  # duplicates are computed once


def _node(cpu, mem_gib, gpu=0):
    return {"Alive": True, "Resources": {"CPU": cpu, "memory": mem_gib * GiB, **({"GPU": gpu} if gpu else {})}}


def test_workers_follow_gpus_cpus_and_memory():
    cpu_only = plan_workers([_node(2, 16)], 2 * GiB, None, None, tasks=30)
    assert (cpu_only.workers, cpu_only.num_cpus, cpu_only.num_gpus) == (2, 1, 0)
    one = plan_workers([_node(2, 16)], 2 * GiB, None, 1, tasks=30)
    assert (one.workers, one.num_cpus) == (1, 2)  # one worker gets the node's two cores as torch threads
    gpus = plan_workers([_node(16, 128, gpu=4), _node(16, 128, gpu=4)], 10 * GiB, None, None, tasks=100)
    assert (gpus.workers, gpus.num_gpus, gpus.num_cpus) == (8, 1, 4)
    assert plan_workers([_node(16, 128, gpu=4)], 10 * GiB, "cpu", None, tasks=100).num_gpus == 0
    tight = plan_workers([_node(64, 40)], 15 * GiB, None, None, tasks=100)
    assert tight.workers == 2  # memory, not the 64 cores, decides
    assert plan_workers([_node(8, 64)], GiB, None, None, tasks=3).workers == 3
    with pytest.raises(PeruError, match="largest Ray node"):
        plan_workers([_node(8, 4)], 5 * GiB, None, None, tasks=3)
    with pytest.raises(PeruError, match="no GPU"):
        plan_workers([_node(8, 64)], GiB, "cuda", None, tasks=3)


def test_worker_memory_counts_the_zoo(tiny_zoo_dir):
    from peru_core.zoo import load_zoo

    zoo = load_zoo(tiny_zoo_dir)
    mem = worker_memory(zoo)
    images = sum(len(__import__("numpy").load(p)["y"]) for p in tiny_zoo_dir.glob("data/*.npz"))
    assert mem > 3 * 8 * 8 * 4 * images  # at least the preprocessed images and the interpreter
    assert mem < 2 * GiB  # a tiny zoo asks for little


def test_spec_file_round_trip_and_errors(tmp_path):
    specs = OTHERS + FFT + LORA + [RunSpec.make("merge", "full", "ties", {"k": 30})]
    f = tmp_path / "specs.json"
    f.write_text(spec_file_text(specs))
    assert read_spec_file(f) == specs
    f.write_text(json.dumps([{"mode": "peru-fft", "merge": "task_arithmetic", "keep": 10}]))
    assert read_spec_file(f) == [FFT[2]]  # defaults fill the rest
    for bad, words in [("{", "not valid JSON"), ("[]", "non-empty JSON list"), ('[{"keep": 1}]', "Entry 1"),
                       ('[{"mode": "merge", "merge": "ties", "colour": 1}]', "unknown field 'colour'"),
                       ('[{"mode": "post-pruning", "keep": 400}]', "Entry 1 of spec file"),
                       ('[{"mode": "post-pruning", "keep": "lots"}]', "wrong kind")]:
        f.write_text(bad)
        with pytest.raises(PeruError, match=words) as e:
            read_spec_file(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_worker_reports_a_bad_spec_and_keeps_going(tiny_zoo_dir):
    from peru_core.zoo import load_zoo

    zoo_hash = load_zoo(tiny_zoo_dir).content_hash()
    w = SweepWorker(0, str(tiny_zoo_dir), zoo_hash, "cpu", 1)
    assert w.ready()["error"] is None and w.ready()["device"] == "cpu"
    bad = w.run(RunSpec.make("peru-lora", "lora", rank=99).key())
    assert "frame" not in bad and bad["error"].startswith("Rank q=99 is out of range")
    good = w.run(RunSpec.make("pretrained").key())
    assert "error" not in good and len(good["frame"]) == 2
    other = SweepWorker(1, str(tiny_zoo_dir), "0" * 16, "cpu", 1)  # a node holding another copy of the zoo
    assert "differs from the driver's copy" in other.ready()["error"]
    assert "error" in other.run(RunSpec.make("pretrained").key())
    assert one_line(RuntimeError("boom\ntraceback")) == "RuntimeError: boom"


def test_sweep_flags_are_checked_before_the_zoo_is_read(tmp_path, capsys):
    from peru_core.cli import main

    spec_file = tmp_path / "s.json"
    spec_file.write_text(spec_file_text(OTHERS))
    for extra, words in [(["--workers", "2"], "add --ray"), (["--ray", "--workers", "0"], "at least 1"),
                         (["--ray", "--max-retries", "-1"], "0 or more"),
                         (["--specs", str(spec_file), "--keeps", "5"], "leave out --methods")]:
        assert main(["sweep", "--zoo", str(tmp_path / "nowhere"), *extra, "--out", str(tmp_path / "t.csv")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
