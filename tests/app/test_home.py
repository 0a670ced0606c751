"""Home: what it says is true of what it shows, for any zoo."""
from __future__ import annotations

from app_helpers import ok

from peru_core import experiments, fmt
from peru_core.spec import RunSpec
from peru_core.zoo.manifest import load_zoo
from peru_core.zoo.runtime import ZooRuntime


def test_the_reference_caption_is_computed_from_the_rows_shown(app, tiny_zoo_dir):
    """Item 8 of issue 14: the caption claimed every method falls between Pre-trained and Single-Task, false on the
    demo zoo; it now states the measured gap of each Single-Task row over Pre-trained, and nothing it cannot know."""
    at = ok(app.run())
    (caption,) = [c.value for c in at.caption if "Pre-trained" in c.value and "top-1" in c.value]
    assert "falls between" not in caption
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")
    pre = RunSpec.make("pretrained")
    for source in experiments.available_sources(rt):
        spec = RunSpec.make("single-task", source.value)
        df = experiments.run_specs(rt, [pre, spec]).pivot_table(index="task", columns="spec_key", values="accuracy")
        gap = df[spec.key()] - df[pre.key()]
        assert (f"{spec.label} minus Pre-trained: {fmt.points_text(gap.mean())} on average "
                f"({fmt.points_text(gap.min())} to {fmt.points_text(gap.max())} per task)") in caption


def test_the_architecture_is_shown_whole(app, tiny_zoo_dir):
    """Item 18: the architecture name sat in a metric tile, cut off on narrow windows ("peru-tiny..."); it is text
    now, and every metric holds a short number."""
    at = ok(app.run())
    assert not any(m.label == "Architecture" for m in at.metric)
    assert any(f"`{load_zoo(tiny_zoo_dir).architecture}`" in m.value for m in at.markdown)
    assert all(len(str(m.value)) <= 8 for m in at.metric)
