"""Specs run on a real (tiny) zoo: formulas, costs, the store, downloads."""
import shutil

import pytest
import torch
from safetensors.torch import load as st_load

from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.sparse import SparseDelta, keep_count
from peru_core.spec import Mode, RunSpec, Source
from peru_core.store import ResultsStore
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime


def _topm_reference(vec: dict, keep: float) -> dict:
    """Straightforward global top-m%: sort all |values|, keep the largest keep_count."""
    flat = torch.cat([v.flatten() for v in vec.values()])
    k = keep_count(flat.numel(), keep)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.argsort(flat.abs(), descending=True, stable=True)[:k]] = True
    out, i = {}, 0
    for key, v in vec.items():
        out[key] = torch.where(mask[i:i + v.numel()].view_as(v), v, torch.zeros_like(v))
        i += v.numel()
    return out


def test_peru_fft_task_model_matches_formula(rt):
    spec = RunSpec.make("peru-fft", "full", "task_arithmetic", {"lam": 0.3}, keep=10)
    base = rt.base_state()
    fts = [rt.finetuned(t) for t in rt.zoo.task_names]
    merged = {k: base[k] + 0.3 * sum(ft[k] - base[k] for ft in fts) for k in base}
    for i, ft in enumerate(fts):
        expect = _topm_reference({k: ft[k] - merged[k] for k in base}, 10)
        got = ex.task_model(rt, spec, i)
        for k in base:
            torch.testing.assert_close(got[k], merged[k] + expect[k], atol=1e-6, rtol=0)


def test_post_pruning_and_pretrained_and_single_task(rt):
    base = rt.base_state()
    ft = rt.finetuned(0)
    got = ex.task_model(rt, RunSpec.make("post-pruning", keep=5), 0)
    ref = _topm_reference({k: ft[k] - base[k] for k in base}, 5)
    for k in base:
        torch.testing.assert_close(got[k], base[k] + ref[k], atol=1e-6, rtol=0)
    assert all(torch.equal(ex.task_model(rt, RunSpec.make("pretrained"), 1)[k], base[k]) for k in base)
    assert all(torch.equal(ex.task_model(rt, RunSpec.make("single-task"), 1)[k], rt.finetuned(1)[k]) for k in base)
    # m = 100 is the fine-tune itself
    full = ex.task_model(rt, RunSpec.make("post-pruning", keep=100), 0)
    assert all(torch.allclose(full[k], ft[k], atol=1e-6) for k in base)


def test_peru_lora_full_rank_equals_lora_fine_tune(rt):
    r = ex.lora_rank(rt)
    a = ex.task_model(rt, RunSpec.make("peru-lora", rank=r), "blobs")
    b = ex.task_model(rt, RunSpec.make("single-task", "lora"), "blobs")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_rows_accuracy_and_costs(rt):
    d = sum(v.numel() for v in rt.base_state().values())
    T = len(rt.zoo.tasks)
    spec = RunSpec.make("peru-fft", "full", "task_arithmetic", keep=10)
    rows = ex.run_spec(rt, spec)
    assert list(rows["task"]) == rt.zoo.task_names and not rows["cached"].any()
    for _, r in rows.iterrows():
        assert r["accuracy"] == pytest.approx(rt.accuracy(ex.task_model(rt, spec, r["task"]), r["task"]))
    assert (rows["params"] == d + T * keep_count(d, 10)).all()
    assert (rows["task_params"] == keep_count(d, 10)).all()
    single = ex.run_spec(rt, RunSpec.make("single-task"))
    one_model = len(ex.artifacts(rt, RunSpec.make("single-task"))[f"{rt.zoo.task_names[0]}.safetensors"])
    assert (single["params"] == T * d).all() and (single["bytes"] == T * one_model).all()  # no shared model
    q = 2
    lora = ex.run_spec(rt, RunSpec.make("peru-lora", rank=q))
    per_task = sum(q * (f.shape[0] + f.shape[1] + 1) for f in rt.adapter("stripes").values())
    assert lora["task_params"].iloc[0] == per_task and lora["params"].iloc[0] == d + T * per_task


def test_store_hit_and_changed_checkpoint_is_not_stale(tiny_zoo_dir, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    spec = RunSpec.make("merge", "full", "task_arithmetic", {"lam": 1.0})
    rt1 = ZooRuntime(load_zoo(tiny_zoo_dir))
    first = ex.run_spec(rt1, spec, store)
    second = ex.run_spec(rt1, spec, store)
    assert second["cached"].all() and list(second["accuracy"]) == list(first["accuracy"])
    # change one fine-tuned checkpoint: the zoo hash changes, so nothing stale comes back
    copy = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, copy)
    from safetensors.torch import load_file, save_file

    f = copy / "finetuned" / "stripes.safetensors"
    sd = load_file(str(f))
    save_file({k: v * 3.0 for k, v in sd.items()}, str(f))
    rt2 = ZooRuntime(load_zoo(copy))
    assert ex.zoo_key(rt2) != ex.zoo_key(rt1)
    third = ex.run_spec(rt2, spec, store)
    assert not third["cached"].any()


def test_artifacts_rebuild_the_task_models(rt):
    spec = RunSpec.make("peru-fft", "full", "task_arithmetic", keep=20)
    files = ex.artifacts(rt, spec)
    shared = st_load(files["shared_model.safetensors"])
    from safetensors import safe_open
    import tempfile, os

    for i, t in enumerate(rt.zoo.task_names):
        raw = files[f"{t}.top20pct.safetensors"]
        with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as fh:
            fh.write(raw)
        with safe_open(fh.name, "pt") as so:
            meta = so.metadata()
        os.unlink(fh.name)
        part = SparseDelta.from_tensors(st_load(raw), meta)
        rebuilt = part.apply(shared)
        expect = ex.task_model(rt, spec, i)
        assert all(torch.allclose(rebuilt[k], expect[k], atol=1e-6) for k in expect)
    lora_files = ex.artifacts(rt, RunSpec.make("peru-lora", rank=2))
    factors = st_load(lora_files["stripes.rank2.safetensors"])
    assert all(v.shape[-1] == 2 or v.shape[0] == 2 or v.ndim == 1 for v in factors.values())


def test_paper_specs_cover_the_table(rt):
    specs = ex.paper_specs(rt)
    modes = [s.mode for s in specs]
    assert modes.count(Mode.POST_PRUNING) == 4 and modes.count(Mode.PERU_FFT) == 4
    for src in (Source.LORA, Source.LLORA):
        assert [s.rank for s in specs if s.mode is Mode.PERU_LORA and s.source is src] == \
            [q for q in (1, 2, 4, 8, 16) if q <= ex.lora_rank(rt, src)]
    assert {s.source for s in specs if s.mode is Mode.MERGE} == {Source.FULL, Source.LORA, Source.LLORA}


def test_memo_is_bounded_by_bytes():
    memo = ex._Memo(size=10, max_bytes=3 * 400)
    for i in range(5):
        memo.get(i, lambda: {"w": torch.zeros(100)})  # 400 bytes each
    assert list(memo.items) == [2, 3, 4]
    made = []
    memo.get(4, lambda: made.append(1))
    assert not made  # a hit does not rebuild


def test_store_answers_without_building_the_model(tiny_zoo_dir, tmp_path):
    """Rows from the store, costs and specs need only the base checkpoint: no model, no open_clip import."""
    store = ResultsStore(tmp_path / "r.sqlite")
    specs = ex.paper_specs(ZooRuntime(load_zoo(tiny_zoo_dir)), merges=["task_arithmetic"], keeps=[5], ranks=[1])
    first = ex.run_specs(ZooRuntime(load_zoo(tiny_zoo_dir)), specs, store)
    warm = ZooRuntime(load_zoo(tiny_zoo_dir))
    again = ex.run_specs(warm, specs, store)
    assert warm._model is None and again["cached"].all()
    assert list(again["accuracy"]) == list(first["accuracy"]) and list(again["params"]) == list(first["params"])
    assert warm.model is warm.model and warm._model is not None  # built once, on first use


def test_base_that_does_not_fit_the_architecture_is_one_sentence(tiny_zoo_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, copy)
    manifest = load_zoo(copy)
    sd = load_file(str(manifest.base))
    save_file({**sd, "visual.extra": torch.zeros(2)}, str(manifest.base))
    rt = ZooRuntime(load_zoo(copy))
    with pytest.raises(PeruError, match=r"has an unexpected key 'visual.extra' for architecture") as err:
        rt.accuracy(rt.base_state(), 0)
    assert "\n" not in str(err.value)
    save_file({k: v for k, v in sd.items() if not k.startswith("visual.")}, str(manifest.base))
    with pytest.raises(PeruError, match="tuned_prefix 'visual.'; fix zoo.json"):
        ZooRuntime(load_zoo(copy))


def test_runtime_reads_what_it_needs(tiny_zoo_dir):
    """A given content hash is used as is; the model's size comes from the header; one task's model loads one
    fine-tune; all without building the model."""
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), content_hash="given")
    assert ex.zoo_key(rt) == "given"
    ex.task_model(rt, RunSpec.make("post-pruning", keep=5), 1)
    ex.task_model(rt, RunSpec.make("single-task"), 1)
    assert list(rt._finetuned) == [rt.zoo.task_names[1]] and rt._model is None
    assert rt.model_params == sum(p.numel() for p in rt.model.parameters())


def test_bytes_count_the_stored_dtype(tiny_zoo_dir, tmp_path):
    """A float16 zoo stores 2 bytes per value: costs say so, although the runtime computes in float32."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, copy)
    zoo = load_zoo(copy)
    save_file({k: v.half() for k, v in load_file(str(zoo.base)).items()}, str(zoo.base))
    rt16, rt32 = ZooRuntime(load_zoo(copy)), ZooRuntime(load_zoo(tiny_zoo_dir))
    assert rt16.stored_dtype == torch.float16 and all(v.dtype == torch.float32 for v in rt16.base_state().values())
    spec = RunSpec.make("peru-fft", "full", "task_arithmetic", {"lam": 0.3}, keep=5)
    c16, c32 = ex._costs(rt16, spec), ex._costs(rt32, spec)
    assert c16.task_params == c32.task_params
    d = sum(v.numel() for v in rt16.base_state().values())
    # 2 bytes less per value; the headers differ only in offsets' digits and dtype names (exact sizes:
    # test_file_bytes.py)
    assert abs(c32.shared_bytes - c16.shared_bytes - 2 * d) < 256
