"""The sweep CLI takes every registered merge by its registry name, on every kind of fine-tune of the zoo."""
from __future__ import annotations

import pandas as pd

from peru_core.cli import main
from peru_core.merging import list_methods

PAPER = {"average", "task_arithmetic", "ties", "fisher", "regmean"}


def test_sweep_accepts_every_new_method(tiny_zoo_dir, tmp_path, peru_home, capsys):
    new = [m for m in list_methods() if m.name not in PAPER]
    out = tmp_path / "field.csv"
    assert main(["sweep", "--zoo", str(tiny_zoo_dir), "--methods", *[m.name for m in new], "--keeps", "10",
                 "--ranks", "1", "--out", str(out)]) == 0
    rows = pd.read_csv(out, index_col=0).index.tolist()
    for m in new:  # the merge alone, on full fine-tunes and on both kinds of adapters
        for tag in ("", " [LoRA]", " [L-LoRA]"):
            assert any(r.startswith(m.label + tag + " (") or r == m.label + tag for r in rows), (m.name, tag, rows)
