"""Run specs: normalisation, validation, stable keys."""
import pytest

from peru_core.errors import PeruError
from peru_core.spec import Mode, RunSpec, Scope, Source


def test_key_round_trip_and_hashable():
    s = RunSpec.make("peru-fft", "full", "task_arithmetic", {"lam": 0.3}, keep=10, scope="per-tensor")
    assert RunSpec.from_key(s.key()) == s
    assert len({s, RunSpec.from_key(s.key())}) == 1
    assert s.label == "PERU-FFT (Task Arithmetic) 10% per-tensor"


def test_irrelevant_knobs_are_dropped():
    s = RunSpec.make("pretrained", "lora", "ties", {"k": 5}, keep=10, rank=3, scope="per-tensor")
    assert s == RunSpec(Mode.PRETRAINED, Source.FULL)
    assert RunSpec.make("peru-lora", rank=4).source is Source.LORA


def test_defaults_are_filled_so_equal_settings_share_a_key():
    a = RunSpec.make("merge", "full", "ties", {})
    b = RunSpec.make("merge", "full", "ties", {"k": 20.0, "lam": 1.0})
    assert a.key() == b.key()


@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="peru-fft", merge="task_arithmetic", keep=101), "out of range"),
    (dict(mode="post-pruning", keep=-1), "out of range"),
    (dict(mode="peru-lora", rank=1.5), "whole number"),
    (dict(mode="merge", merge="nope"), "Unknown merge method"),
    (dict(mode="merge"), "needs a merge method"),
    (dict(mode="merge", merge="task_arithmetic", params={"lam": 99}), "out of range"),
    (dict(mode="merge", merge="task_arithmetic", params={"zeta": 1}), "no parameter"),
    (dict(mode="bogus"), "mode"),
])
def test_bad_specs_raise_one_sentence(kwargs, words):
    with pytest.raises(PeruError, match=words):
        RunSpec.make(**kwargs)
