"""Page state (issue 14): widgets follow the kind of fine-tune, ignored settings change nothing, settings live in
the URL, computations queue, can be cancelled and survive a reload, sliders use their registry step and say
their unit, computed embeddings are kept."""
from __future__ import annotations

import re
import threading
from pathlib import Path

from app_helpers import computed, ok, open_page, press
from streamlit.testing.v1 import AppTest

from peru_core.merging import get_method, list_methods
from peru_core.spec import RunSpec
from peru_core.store import ResultsStore
from ui import jobs, specs, state
from ui.widgets import slider_step

LAB, TO, EM = "pages/1_Merge_lab.py", "pages/2_Trade-offs.py", "pages/4_Embeddings.py"
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- item 1: the mode radio follows the source
def test_lab_mode_radio_has_a_valid_choice_for_every_source_and_keeps_each(app):
    at = open_page(app, LAB)
    ok(at.radio(key="lab_mode_full").set_value("peru-fft").run())
    for source, expected in (("lora", "peru-lora"), ("llora", "peru-lora"), ("full", "peru-fft")):
        ok(at.radio(key=state.LAB_SOURCE).set_value(source).run())
        radio = at.radio(key=f"lab_mode_{source}")  # one radio per kind: its options never change under it
        assert radio.value == expected and radio.index is not None
        assert radio.options == list(specs.REUSE_MODES[source].values())
    ok(at.radio(key="lab_mode_full").set_value("post-pruning").run())
    ok(at.radio(key=state.LAB_SOURCE).set_value("lora").run())
    ok(at.radio(key=state.LAB_SOURCE).set_value("full").run())
    assert at.radio(key="lab_mode_full").value == "post-pruning"


# ---------------------------------------------------------------- item 2: Trade-offs and Embeddings choices
def test_tradeoffs_methods_follow_the_source_both_ways(app):
    at = open_page(app, TO)
    full = at.multiselect(key="to_methods_full").value
    assert set(full) == {"post-pruning", "peru-fft:task_arithmetic", "merge:task_arithmetic"}
    assert at.multiselect(key=state.TO_KEEPS).value
    for source in ("lora", "llora"):
        ok(at.radio(key=state.TO_SOURCE).set_value(source).run())
        assert at.multiselect(key=f"to_methods_{source}").value == ["peru-lora", "merge:task_arithmetic"]
        assert at.multiselect(key=f"to_ranks_{source}").value  # the q picker is there
        assert not [m for m in at.multiselect if m.key == state.TO_KEEPS]  # no m values for adapters
    ok(at.radio(key=state.TO_SOURCE).set_value("full").run())
    assert at.multiselect(key="to_methods_full").value == full
    assert at.multiselect(key=state.TO_KEEPS).value and at.radio(key=state.TO_SCOPE).value == "global"


def test_embeddings_panels_follow_the_source_both_ways(app):
    at = open_page(app, EM)
    full = at.multiselect(key="em_methods_full").value
    assert "post-pruning" in full and "peru-fft:task_arithmetic" in full
    ok(at.radio(key=state.EM_SOURCE).set_value("lora").run())
    lora = at.multiselect(key="em_methods_lora").value
    assert "peru-lora" in lora and len(lora) > 1
    ok(at.radio(key=state.EM_SOURCE).set_value("full").run())
    assert at.multiselect(key="em_methods_full").value == full


# ---------------------------------------------------------------- item 3: what a mode ignores changes nothing
def test_settings_a_mode_ignores_are_hidden_and_change_nothing(app):
    at = open_page(app, LAB)
    ok(at.radio(key="lab_mode_full").set_value("post-pruning").run())
    assert not [s for s in at.selectbox if s.key == state.LAB_MERGE]  # Post-Pruning starts from theta_0
    assert not [s for s in at.slider if s.key.startswith("lab_param_")]
    at = press(at, state.LAB_COMPUTE)
    assert at.button(key=state.LAB_COMPUTE).disabled
    ok(at.radio(key="lab_mode_full").set_value("peru-fft").run())  # the merge matters here ...
    ok(at.slider(key=state.param_key("lab", "task_arithmetic", "lam")).set_value(0.5).run())
    assert not at.button(key=state.LAB_COMPUTE).disabled
    ok(at.radio(key="lab_mode_full").set_value("post-pruning").run())  # ... and not here: nothing to compute
    assert at.button(key=state.LAB_COMPUTE).disabled and not at.info
    ok(at.radio(key=state.LAB_SOURCE).set_value("lora").run())
    ok(at.radio(key="lab_mode_lora").set_value("peru-lora").run())
    assert not [s for s in at.selectbox if s.key == state.LAB_MERGE]
    at = press(at, state.LAB_COMPUTE)
    assert at.button(key=state.LAB_COMPUTE).disabled and at.metric


def test_lab_rows_depend_only_on_what_the_mode_uses():
    a = specs.lab("full", "task_arithmetic", {"lam": 0.3}, "post-pruning", 10.0, None, "global")
    b = specs.lab("full", "ties", {"k": 50, "lam": 2.0}, "post-pruning", 10.0, None, "global")
    assert a == b and a[-1].label == "Post-Pruning 10%"
    c = specs.lab("lora", "task_arithmetic", {"lam": 0.3}, "peru-lora", None, 2, "global")
    d = specs.lab("lora", "ties", {"k": 50, "lam": 2.0}, "peru-lora", None, 2, "global")
    assert c == d


# ---------------------------------------------------------------- item 4: settings in the URL; a reload
def test_settings_come_from_the_url(app):
    # option widgets are bound by the label a reader sees (Streamlit's query-param binding)
    app.query_params = {"lab_source": "Full fine-tunes", "lab_mode_full": "Post-Pruning", "lab_keep": "30",
                        "lab_scope": "each tensor"}
    at = ok(app.switch_page(LAB).run())  # a shared link, opened in a new session
    assert at.radio(key="lab_mode_full").value == "post-pruning"
    assert at.slider(key=state.LAB_KEEP).value == 30.0
    assert at.radio(key=state.LAB_SCOPE).value == "per-tensor"


def _blocker():
    """A job that holds the queue until released (another user's long computation)."""
    release = threading.Event()
    job = jobs.jobs().submit("test:blocker", "Another user's sweep", lambda progress: release.wait(60))
    while job.state != jobs.RUNNING:
        job.wait(0.01)
    return job, release


def _lab_session(tiny_zoo_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("PERU_DEMO_ZOO", str(tiny_zoo_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params = {"lab_mode_full": "Post-Pruning", "lab_keep": "7"}
    return open_page(at, LAB)


def test_reload_during_a_compute_finds_it_and_it_is_stored(app, tiny_zoo_dir, peru_home, monkeypatch):
    """Item 4: the page that started a compute goes away (reload); the compute goes on, the new page shows its
    progress, then its result. Item 5: it says what it is queued behind."""
    first = _lab_session(tiny_zoo_dir, monkeypatch)
    blocker, release = _blocker()
    try:
        ok(first.button(key=state.LAB_COMPUTE).click().run())
        reloaded = _lab_session(tiny_zoo_dir, monkeypatch)  # same URL, new session
        bars = reloaded.get("progress")
        assert bars and "queued behind another computation (Another user's sweep)" in bars[0].proto.text
        assert reloaded.button(key=state.LAB_COMPUTE).disabled  # not a second copy of the same work
    finally:
        release.set()
    reloaded = computed(reloaded)
    assert reloaded.metric and "Post-Pruning 7%" in [h.value for h in reloaded.subheader]
    assert RunSpec.make("post-pruning", "full", keep=7.0).key() in _stored_keys()


# ---------------------------------------------------------------- item 5: queued, and Cancel
def test_cancel_a_queued_compute(app, tiny_zoo_dir, peru_home, monkeypatch):
    at = _lab_session(tiny_zoo_dir, monkeypatch)
    blocker, release = _blocker()
    try:
        ok(at.button(key=state.LAB_COMPUTE).click().run())
        assert "queued behind another computation" in at.get("progress")[0].proto.text
        ok(at.button(key="lab_cancel").click().run())
        assert any("was cancelled" in w.value for w in at.warning)
        assert not at.button(key=state.LAB_COMPUTE).disabled  # it can be started again
    finally:
        release.set()
    jobs.jobs().wait_all()
    assert not any('"keep": 7.0' in k for k in _stored_keys())


def _stored_keys() -> set[str]:
    import sqlite3

    from peru_core.store import peru_home

    path = peru_home() / "results.sqlite"
    if not path.exists():
        return set()
    con = sqlite3.connect(path)
    try:
        return {k for (k,) in con.execute("SELECT DISTINCT spec_key FROM results")}
    finally:
        con.close()


def test_cancel_between_specs_keeps_what_is_finished_and_nothing_partial(tiny_zoo_dir, tmp_path):
    from peru_core import experiments
    from peru_core.zoo.manifest import load_zoo
    from peru_core.zoo.runtime import ZooRuntime

    rt = ZooRuntime(load_zoo(tiny_zoo_dir))
    store = ResultsStore(tmp_path / "r.sqlite")
    first, second = RunSpec.make("post-pruning", keep=3.0), RunSpec.make("post-pruning", keep=4.0)
    box = jobs.Jobs()
    holder: dict = {}
    last = rt.zoo.task_names[-1]

    def work(progress):
        def spy(fraction, message):
            if message.startswith("[2/2]") and message.endswith(f"evaluating {last}"):
                holder["job"].cancel()  # pressed while the second spec is half evaluated
            progress(fraction, message)
        return experiments.run_specs(rt, [first, second], store=store, on_progress=spy)

    gate = threading.Event()
    holder["job"] = job = box.submit("t", "two specs", lambda progress: (gate.wait(10), work(progress))[1])
    gate.set()
    assert job.wait(60) and job.state == jobs.CANCELLED
    names = rt.zoo.task_names
    assert store.get(rt.content_hash, first.key(), names) is not None
    assert store.count() == len(names)  # the second spec left no row at all


def test_second_job_is_told_what_it_waits_for():
    box = jobs.Jobs()
    release = threading.Event()
    a = box.submit("a", "Computing the sweep", lambda progress: release.wait(10))
    b = box.submit("b", "Computing Post-Pruning 5%", lambda progress: None)
    for _ in range(100):
        if b.message:
            break
        b.wait(0.02)
    assert b.state == jobs.QUEUED and "queued behind another computation (Computing the sweep)" in jobs.label(b)
    assert box.submit("a", "same work", lambda progress: None) is a  # the same work joins the running job
    release.set()
    assert b.wait(10) and b.state == jobs.DONE and a.state == jobs.DONE


# ---------------------------------------------------------------- items 10 and 19: sliders from the registry
def test_every_merge_slider_uses_its_param_step_label_and_unit(app):
    at = open_page(app, LAB)
    ok(at.radio(key="lab_mode_full").set_value("peru-fft").run())
    seen = 0
    for method in list_methods():
        if method.name not in at.selectbox(key=state.LAB_MERGE).options and \
                method.label not in at.selectbox(key=state.LAB_MERGE).options:
            continue
        ok(at.selectbox(key=state.LAB_MERGE).set_value(method.name).run())
        for p in method.params:
            if p.is_choice:  # a selectbox (TIES's conventions, AdaMerging's granularity)
                assert at.selectbox(key=state.param_key("lab", method.name, p.name)).label == p.title
                continue
            s = at.slider(key=state.param_key("lab", method.name, p.name))
            assert s.step == slider_step(p) and (not p.step or s.step == p.step), (method.name, p.name, s.step)
            assert s.label == p.title and p.label and s.label != p.name
            if p.unit:
                assert p.unit in s.label
            seen += 1
    assert seen >= 5
    fisher = get_method("fisher").params[0]
    assert fisher.name == "samples" and slider_step(fisher) == 16


def test_keep_and_rank_sliders_say_what_they_count(app):
    at = open_page(app, LAB)
    assert "%" in at.slider(key=state.LAB_KEEP).label
    ok(at.radio(key=state.LAB_SOURCE).set_value("lora").run())
    label = at.slider(key="lab_rank_lora").label
    assert "rank" in label.lower() and "q" in label


def test_budget_default_fits_the_source(app):
    """With LoRA fine-tunes the default budget is below one adapter, so the answer is not Single-Task itself."""
    at = open_page(app, TO)
    at = press(at, state.TO_COMPUTE)
    full = at.number_input(key="to_budget_full").value
    ok(at.radio(key=state.TO_SOURCE).set_value("lora").run())
    at = press(at, state.TO_COMPUTE)
    budget = at.number_input(key="to_budget_lora").value
    answer = [m.value for m in at.markdown if "keeps the most accuracy" in m.value or "No computed" in m.value]
    scale = [c.value for c in at.caption if c.value.startswith("For scale")]
    adapter_mb = float(re.search(r"is ([\d.]+) (kB|MB)", scale[0]).group(1)) / (1000 if "kB" in scale[0] else 1)
    assert budget < adapter_mb and budget != full
    assert answer and "Single-Task" not in answer[0].split("**")[1]


# ---------------------------------------------------------------- item 20: computed embeddings are kept
def test_embeddings_come_back_without_recomputing(app):
    at = open_page(app, EM)
    ok(at.multiselect(key="em_methods_full").set_value(["merge:task_arithmetic"]).run())
    ok(at.slider(key=state.EM_PERPLEXITY).set_value(5.0).run())
    at = press(at, state.EM_COMPUTE)
    first = [m.value for m in at.metric]
    ok(at.slider(key=state.EM_PERPLEXITY).set_value(6.0).run())
    at = press(at, state.EM_COMPUTE)
    ok(at.slider(key=state.EM_PERPLEXITY).set_value(5.0).run())  # a configuration computed a moment ago
    assert [m.value for m in at.metric] == first and not at.info
    assert at.button(key=state.EM_COMPUTE).disabled


# ---------------------------------------------------------------- item 18: icons that need no emoji font
def test_pages_use_material_icons_not_emoji():
    emoji = re.compile("[\u2600-\u27bf\U0001f300-\U0001faff]")
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]
    bad = [f"{f.name}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
           if emoji.search(line)]
    assert not bad, bad
