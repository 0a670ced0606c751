"""The CLI end to end: merge, reuse, lora; bad input exits 2 with one line and writes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LORA_TARGETS, PREFIX, random_factors, write_adapter
from peru_core.cli import main
from peru_core.io import load_metadata, load_state_dict, save_state_dict
from peru_core.merging import get_method
from peru_core.reuse import peru_fft
from peru_core.sparse import keep_count

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path, base, tuned, finetuned):
    """base.safetensors, three partial (visual.) and three full fine-tunes on disk."""
    save_state_dict(base, tmp_path / "base.safetensors")
    part = [save_state_dict(sd, tmp_path / f"task{i}.safetensors") for i, sd in enumerate(tuned)]
    full = [save_state_dict(sd, tmp_path / f"full{i}.safetensors") for i, sd in enumerate(finetuned)]
    return tmp_path, [str(p) for p in part], [str(p) for p in full]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]


def test_merge(files, capsys, base, tuned):
    root, part, _ = files
    code, out, _ = run(["merge", "--base", root / "base.safetensors", "--finetuned", *part, "--method", "ties",
                        "--param", "k=30", "--param", "lam=0.8", "--prefix", PREFIX, "--out", root / "m.safetensors"],
                       capsys)
    assert code == 0 and "m.safetensors" in out
    merged = load_state_dict(root / "m.safetensors")
    ref = get_method("ties")(base, tuned, k=30, lam=0.8)
    assert set(merged) == set(ref) and all(torch.equal(merged[k], ref[k]) for k in ref)
    assert load_metadata(root / "m.safetensors")["method"] == "ties"


def test_reuse_peru_fft(files, capsys, base, tuned):
    root, part, _ = files
    out_dir = root / "out"
    code, _, _ = run(["reuse", "--base", root / "base.safetensors", "--finetuned", *part, "--mode", "peru-fft",
                      "--merge", "task_arithmetic", "--param", "lam=0.3", "--keep", "10", "--scope", "global",
                      "--prefix", PREFIX, "--out", out_dir], capsys)
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["parts", "report.json", "task0.safetensors",
                                                          "task1.safetensors", "task2.safetensors"]
    assert sorted(p.name for p in (out_dir / "parts").iterdir()) == [
        "shared_model.safetensors", "task0.safetensors", "task1.safetensors", "task2.safetensors"]
    merged = get_method("task_arithmetic")(base, tuned, lam=0.3)
    got = load_state_dict(out_dir / "task1.safetensors")
    ref = peru_fft(merged, tuned[1], 10.0)
    assert all(torch.allclose(got[k], ref[k]) for k in ref)
    report = json.loads((out_dir / "report.json").read_text())
    d = sum(t.numel() for t in tuned[0].values())
    n = keep_count(d, 10)
    assert report["d"] == d and [t["kept"] for t in report["tasks"]] == [n] * 3
    acc = report["accounting"]
    assert acc["total_params"] == d + 3 * n  # the shared model is the tuned part, as on the dashboard
    assert acc["task_bytes"] == [os.path.getsize(out_dir / "parts" / f"task{i}.safetensors") for i in range(3)]


def test_reuse_post_pruning_full_checkpoints(files, capsys):
    root, _, full = files
    code, _, _ = run(["reuse", "--base", root / "base.safetensors", "--finetuned", *full, "--mode", "post-pruning",
                      "--keep", "100", "--scope", "per-tensor", "--out", root / "pp"], capsys)
    assert code == 0
    for i, p in enumerate(full):
        got, want = load_state_dict(root / "pp" / f"full{i}.safetensors"), load_state_dict(p)
        assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_lora(tmp_path, capsys, base):
    save_state_dict(base, tmp_path / "base.safetensors")
    ads = [write_adapter(tmp_path / name, random_factors(i, LORA_TARGETS, r=3), r=3, lora_alpha=3)
           for i, name in enumerate(["mnist", "svhn"])]
    code, _, _ = run(["lora", "--base", tmp_path / "base.safetensors", "--adapters", *ads, "--rank", "2",
                      "--out", tmp_path / "out"], capsys)
    assert code == 0
    model = load_state_dict(tmp_path / "out" / "svhn.safetensors")
    assert set(model) == set(base)
    for m in LORA_TARGETS:
        k = f"{m}.weight"
        assert torch.linalg.matrix_rank((model[k] - base[k]).double(), atol=1e-4) == 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["tasks"][0]["task_params"] == 2 * (8 + 4 + 1) + 2 * (4 + 8 + 1)


def test_lora_mixed_ranks_report_the_rank_kept(tmp_path, capsys, base):
    """Issue 14 item 21: q is clamped per matrix to the adapter's own rank, and the report says so."""
    save_state_dict(base, tmp_path / "base.safetensors")
    ads = [write_adapter(tmp_path / "r3", random_factors(0, LORA_TARGETS, r=3), r=3, lora_alpha=3),
           write_adapter(tmp_path / "r1", random_factors(1, LORA_TARGETS, r=1), r=1, lora_alpha=1)]
    code, _, _ = run(["lora", "--base", tmp_path / "base.safetensors", "--adapters", *ads, "--rank", "2",
                      "--out", tmp_path / "out"], capsys)
    assert code == 0
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]
    assert set(rows[0]["kept_rank"].values()) == {2} and set(rows[1]["kept_rank"].values()) == {1}
    assert set(rows[1]["lora_rank"].values()) == {1}
    assert rows[1]["task_params"] == 1 * (8 + 4 + 1) + 1 * (4 + 8 + 1)


BAD = {
    "empty task list": (["reuse", "--base", "{base}", "--mode", "post-pruning", "--keep", "5"], "empty"),
    "duplicate names": (["merge", "--base", "{base}", "--finetuned", "{t0}", "{dup}", "--method", "average"],
                        "Two tasks are named 'task0'"),
    "keep out of range": (["reuse", "--base", "{base}", "--finetuned", "{t0}", "--mode", "post-pruning",
                           "--keep", "150"], "[0, 100]"),
    "param out of range": (["merge", "--base", "{base}", "--finetuned", "{t0}", "--method", "ties", "--param",
                            "k=101"], "out of range"),
    "param not key=value": (["merge", "--base", "{base}", "--finetuned", "{t0}", "--method", "ties", "--param",
                             "k"], "key=value"),
    "unknown method": (["merge", "--base", "{base}", "--finetuned", "{t0}", "--method", "magic"], "Unknown"),
    "pickle": (["merge", "--base", "{base}", "--finetuned", "{pickle}", "--method", "average"], "convert"),
    "truncated": (["merge", "--base", "{base}", "--finetuned", "{cut}", "--method", "average"], "truncated"),
    "missing keys": (["merge", "--base", "{base}", "--finetuned", "{t0}", "--method", "average", "--prefix", ""],
                     "missing keys"),
    "nan": (["merge", "--base", "{base}", "--finetuned", "{nan}", "--method", "average"], "NaN"),
    "missing file": (["merge", "--base", "{base}", "--finetuned", "{root}/nope.safetensors", "--method",
                      "average"], "does not exist"),
    "usage": (["reuse", "--base", "{base}"], "required"),
    "bad scope": (["reuse", "--base", "{base}", "--finetuned", "{t0}", "--mode", "post-pruning", "--keep", "5",
                   "--scope", "rows"], "scope"),
    "rank": (["lora", "--base", "{base}", "--adapters", "{root}", "--rank", "-1"], "1 or more"),
    "rank 0": (["lora", "--base", "{base}", "--adapters", "{goodad}", "--rank", "0"], "keeps nothing"),
    "rank above r": (["lora", "--base", "{base}", "--adapters", "{goodad}", "--rank", "9"],
                     "above the largest adapter rank (2)"),
    "adapter target": (["lora", "--base", "{base}", "--adapters", "{badad}", "--rank", "1"], "not in the base"),
    "param for post-pruning": (["reuse", "--base", "{base}", "--finetuned", "{t0}", "--mode", "post-pruning",
                                "--param", "lam=1", "--keep", "5"], "peru-fft"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_nothing_written(files, capsys, case, base):
    root, part, _ = files
    dup = root / "again"
    dup.mkdir()
    save_state_dict(load_state_dict(part[0]), dup / "task0.safetensors")
    torch.save({"w": torch.zeros(2)}, root / "legacy.pt")
    data = Path(part[0]).read_bytes()
    (root / "cut.safetensors").write_bytes(data[:-7])
    bad = load_state_dict(part[0])
    bad["visual.ln_post.weight"][0] = float("nan")
    save_state_dict(bad, root / "nan.safetensors")
    write_adapter(root / "badad", random_factors(0, {"visual.nowhere": (4, 4)}))
    write_adapter(root / "goodad", random_factors(0, LORA_TARGETS, r=2))
    before = sorted(p.name for p in root.iterdir())
    argv, pattern = BAD[case]
    fill = {"base": root / "base.safetensors", "t0": part[0], "dup": dup / "task0.safetensors",
            "pickle": root / "legacy.pt", "cut": root / "cut.safetensors", "nan": root / "nan.safetensors",
            "root": root, "badad": root / "badad", "goodad": root / "goodad"}
    argv = [a.format(**fill) for a in argv]
    if case not in ("missing keys",):
        argv += ["--prefix", PREFIX] if argv[0] != "lora" else []
    argv += ["--out", str(root / ("o.safetensors" if argv[0] == "merge" else "outdir"))]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written, no temp left


def test_python_m_subprocess(files):
    root, part, _ = files
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run([sys.executable, "-m", "peru_core", "merge", "--base", str(root / "base.safetensors"),
                         "--finetuned", *part, "--method", "average", "--prefix", PREFIX, "--out",
                         str(root / "avg.safetensors")], capture_output=True, text=True, env=env, cwd=root)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "peru_core", "reuse", "--base", str(root / "base.safetensors"),
                          "--finetuned", *part, "--mode", "peru-fft", "--keep", "-3", "--out", str(root / "x")],
                         capture_output=True, text=True, env=env, cwd=root)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert not (root / "x").exists()
