"""The sweep CLI accepts every method issue 9 added: each registered merge (AdaMerging too) and the mask-reuse modes
TALL and EMR by name in ``--methods``, and any setting of them (TIES's conventions, AdaMerging's steps) in a spec
file."""
from __future__ import annotations

import json

import pandas as pd

from peru_core.cli import main
from peru_core.merging import get_method, list_methods
from peru_core.partreuse import PART_METHODS
from peru_core.spec import MODE_LABELS, Mode, RunSpec

SHORT = ["--keeps", "10", "--ranks", "1"]


def _table(path):
    return pd.read_csv(path, index_col="method")


def test_sweep_accepts_every_data_free_merge_and_the_mask_modes(tiny_zoo_dir, tmp_path, peru_home, capsys):
    merges = [m.name for m in list_methods() if not m.needs]
    out = tmp_path / "all.csv"
    assert main(["sweep", "--zoo", str(tiny_zoo_dir), "--methods", *merges, *PART_METHODS, *SHORT,
                 "--out", str(out)]) == 0
    rows = _table(out).index.tolist()
    for name in merges:
        assert any(r.startswith(get_method(name).label) for r in rows), (name, rows)
    for mode in PART_METHODS:  # one row per kind of fine-tune the zoo holds (full, LoRA, L-LoRA)
        assert any(r.startswith(MODE_LABELS[Mode(mode)]) for r in rows), (mode, rows)
        assert sum(r.startswith(MODE_LABELS[Mode(mode)]) for r in rows) >= 1
    table = _table(out)
    tall = [r for r in rows if r.startswith("TALL masks")][0]
    pretrained = table.loc["Pre-trained", "params"]
    assert table.loc[tall, "bytes"] > 0 and table.loc[tall, "params"] > pretrained  # shared model + vector + masks
    capsys.readouterr()


def test_sweep_runs_adamerging_by_name_and_by_spec_file(tiny_zoo_dir, tmp_path, peru_home, capsys):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([
        {"mode": "merge", "merge": "adamerging", "params": {"steps": 2, "batch": 8, "granularity": "task"}},
        {"mode": "merge", "merge": "ties", "params": {"trim_count": "int+1", "zero_sign": "fusionbench",
                                                      "aggregate": "sum", "lam": 0.3}},
        {"mode": "tall", "params": {"tall_mask_lambda": 0.4}}, {"mode": "emr", "source": "lora"}]))
    out = tmp_path / "specs.csv"
    assert main(["sweep", "--zoo", str(tiny_zoo_dir), "--specs", str(specs), "--out", str(out)]) == 0
    rows = _table(out).index.tolist()
    assert len(rows) == 4 and rows[0].startswith("AdaMerging") and "steps=2" in rows[0]
    assert "zero_sign=majority" in rows[1] and rows[2].startswith("TALL masks") and "EMR-Merging [LoRA]" in rows[3]
    # by name (the registry's defaults: steps 100 is still short on the tiny zoo)
    out2 = tmp_path / "name.csv"
    assert main(["sweep", "--zoo", str(tiny_zoo_dir), "--methods", "adamerging", *SHORT, "--out", str(out2)]) == 0
    named = _table(out2).index.tolist()
    assert any(r.startswith(RunSpec.make("merge", "full", "adamerging").label) for r in named), named
    capsys.readouterr()


def test_sweep_unknown_method_is_one_line(tiny_zoo_dir, tmp_path, capsys):
    assert main(["sweep", "--zoo", str(tiny_zoo_dir), "--methods", "tal", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tal" in err
