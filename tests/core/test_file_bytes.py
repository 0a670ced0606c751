"""Issue 14 items 6, 7: every byte figure is the size of the file written for it; Single-Task serves no shared model.

Checked against ``os.path.getsize`` of real files: the dashboard's downloads (every mode, float32 and float16
zoos), the sparse / low-rank / LoRA task-part formats for several m, dtypes and scopes, and the CLI's report.json.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from conftest import LORA_TARGETS, PREFIX, random_factors, write_adapter
from peru_core import experiments as ex
from peru_core.accounting import safetensors_bytes, state_dict_entries
from peru_core.cli import main
from peru_core.io import load_state_dict, save_state_dict
from peru_core.sparse import TopM, encoding, part_dtype
from peru_core.spec import RunSpec
from peru_core.statedict import Layout
from peru_core.taskpart import read_task_part, sparse_part, sparse_part_bytes


def _size(tmp_path, name: str, data: bytes) -> int:
    path = tmp_path / name
    path.write_bytes(data)
    return os.path.getsize(path)


@pytest.mark.parametrize("metadata", [None, {}, {"a": "b"}, {"q\"uote": "new\nline \\ é ✓", "x": "\x01\x7f"}])
def test_safetensors_bytes_is_the_file_size(tmp_path, metadata):
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(3, 5, generator=g), "b16": torch.randn(7, generator=g).half(),
          "bf": torch.randn(2, 2, generator=g).bfloat16(), "idx": torch.arange(11, dtype=torch.int32),
          "i64": torch.arange(3), "mask": torch.zeros(9, dtype=torch.uint8), "f64": torch.zeros(1, dtype=torch.float64),
          "empty": torch.zeros(0), "scalar": torch.tensor(2.0)}
    for n in range(1, len(sd) + 1):  # every header length modulo 8
        part = dict(list(sd.items())[:n])
        size = _size(tmp_path, f"f{n}.safetensors", st_save(part, metadata=metadata))
        assert safetensors_bytes(state_dict_entries(part), metadata) == size
    path = save_state_dict(sd, tmp_path / "io.safetensors", metadata=metadata)
    assert safetensors_bytes(state_dict_entries(sd), metadata or {}) == os.path.getsize(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scope", ["global", "per-tensor"])
def test_sparse_part_file_size_and_exact_round_trip(tmp_path, base, dtype, scope):
    vec = {k: (v * torch.linspace(0.5, 2, v.numel()).view_as(v)).to(dtype) for k, v in base.items()}
    layout = Layout.of(vec)
    sel = TopM.of(vec, scope)
    seen = set()
    for m in (0, 0.5, 1, 3, 5, 10, 20, 50, 99, 100):
        part = sel.select(m)
        meta = {"peru_spec": "{\"mode\": \"peru-fft\"}", "zoo": "tiny"}
        tensors, part_meta = sparse_part(part, part_dtype(layout.dtypes), meta)
        path = save_state_dict(tensors, tmp_path / f"{m}.safetensors", metadata=part_meta)
        assert os.path.getsize(path) == sparse_part_bytes(layout, part.nnz, m, scope, part_dtype(layout.dtypes),
                                                          meta)
        seen.add(encoding(layout.size, part.nnz))
        back = read_task_part(path).sparse
        order = np.argsort(part.indices)
        assert np.array_equal(back.indices, part.indices[order])
        want = torch.from_numpy(part.values[order]).to(dtype).to(torch.from_numpy(back.values).dtype)
        assert torch.equal(torch.from_numpy(back.values), want)
    assert seen == {"indices", "mask", "dense"}


def test_mask_is_written_where_it_is_smaller(base):
    vec = {k: v for k, v in base.items()}
    d = Layout.of(vec).size
    small, big = TopM.of(vec).select(1), TopM.of(vec).select(20)
    assert 4 * small.nnz <= math.ceil(d / 8) < 4 * big.nnz
    assert set(small.to_tensors()[0]) == {"values", "indices"}
    tensors, meta = big.to_tensors()
    assert set(tensors) == {"values", "mask"} and tensors["mask"].numel() == math.ceil(d / 8)
    assert meta["encoding"] == "mask"


def _specs(rt) -> list[RunSpec]:
    specs = ex.paper_specs(rt, merges=["task_arithmetic"], keeps=(1, 20, 100), ranks=(1, 2, ex.lora_rank(rt)))
    return specs + [RunSpec.make("post-pruning", keep=10, scope="per-tensor"),
                    RunSpec.make("peru-fft", "full", "ties", keep=0, scope="per-tensor")]


@pytest.mark.parametrize("which", ["rt", "rt16"])
def test_downloads_are_the_reported_bytes(request, tmp_path, which):
    rt = request.getfixturevalue(which)
    names = rt.zoo.task_names
    for spec in _specs(rt):
        costs, files = ex._costs(rt, spec), ex.artifacts(rt, spec)
        sizes = {n: _size(tmp_path, n, b) for n, b in files.items()}
        shared = sizes.pop("shared_model.safetensors", 0)
        assert shared == costs.shared_bytes, spec.label
        assert len(sizes) == (len(names) if costs.task_bytes[0] else 0), spec.label
        for t, b in zip(names, costs.task_bytes):
            got = [s for n, s in sizes.items() if n.startswith(f"{t}.")]
            assert got == ([b] if b else []), spec.label
        assert sum(os.path.getsize(tmp_path / n) for n in files) == costs.total_bytes
        if which == "rt16":  # written in the stored dtype, not the runtime's float32
            assert all(v.dtype == torch.float16 for v in load_state_dict(files.get(
                "shared_model.safetensors") or files[f"{names[0]}.safetensors"]).values())


@pytest.mark.parametrize("spec", [RunSpec.make("peru-fft", "full", "task_arithmetic", keep=20),
                                  RunSpec.make("post-pruning", keep=3, scope="per-tensor"),
                                  RunSpec.make("peru-lora", rank=2), RunSpec.make("single-task", "lora")],
                         ids=lambda s: s.label)
def test_downloaded_parts_rebuild_the_task_models(rt, spec):
    files = ex.artifacts(rt, spec)
    shared = load_state_dict(files["shared_model.safetensors"])
    for i, t in enumerate(rt.zoo.task_names):
        (name,) = [n for n in files if n.startswith(f"{t}.")]
        rebuilt = read_task_part(files[name]).apply(shared)
        expect = ex.task_model(rt, spec, i)
        assert all(torch.allclose(rebuilt[k], expect[k], atol=1e-5) for k in expect)


def test_single_task_serves_no_shared_model(rt):
    """Item 7: T x d, not (T + 1) x d."""
    d, T = sum(v.numel() for v in rt.base_state().values()), len(rt.zoo.task_names)
    c = ex._costs(rt, RunSpec.make("single-task"))
    assert c.shared_params == 0 and c.total_params == T * d and c.shared_bytes == 0


def test_cli_reports_the_sizes_of_the_files_it_writes(tmp_path, capsys, base, tuned):
    root = tmp_path
    save_state_dict(base, root / "base.safetensors")
    paths = [save_state_dict(t, root / f"task{i}.safetensors") for i, t in enumerate(tuned)]
    for mode, keep, scope in (("peru-fft", "10", "global"), ("post-pruning", "2", "per-tensor"),
                              ("post-pruning", "100", "global")):
        out = root / f"out_{mode}_{keep}"
        extra = ["--merge", "task_arithmetic", "--param", "lam=0.3"] if mode == "peru-fft" else []
        assert main(["reuse", "--base", str(root / "base.safetensors"), "--finetuned", *map(str, paths), "--mode",
                     mode, *extra, "--keep", keep, "--scope", scope, "--prefix", PREFIX, "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        acc = report["accounting"]
        assert acc["shared_bytes"] == os.path.getsize(out / report["shared"])
        assert acc["task_bytes"] == [os.path.getsize(out / t["part"]) for t in report["tasks"]]
        shared = load_state_dict(out / report["shared"])
        for t in report["tasks"]:
            model = load_state_dict(out / t["output"])
            rebuilt = read_task_part(out / t["part"]).apply(shared)
            assert all(torch.allclose(rebuilt[k], model[k], atol=1e-6) for k in rebuilt)
    ads = [write_adapter(root / n, random_factors(i, LORA_TARGETS, r=3), r=3, lora_alpha=3)
           for i, n in enumerate(["mnist", "svhn"])]
    out = root / "lora"
    assert main(["lora", "--base", str(root / "base.safetensors"), "--adapters", *map(str, ads), "--rank", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["accounting"]["shared_bytes"] == os.path.getsize(root / "base.safetensors")
    assert report["accounting"]["task_bytes"] == [os.path.getsize(out / t["part"]) for t in report["tasks"]]
    capsys.readouterr()
