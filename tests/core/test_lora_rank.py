"""Issue 14 item 21: a PERU-LoRA rank q outside [1, the largest adapter rank] is a one-sentence error, everywhere."""
from __future__ import annotations

import pytest

from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.spec import RunSpec
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime


def test_rank_zero_is_not_a_spec():
    with pytest.raises(PeruError, match="from 1 up to the LoRA rank"):
        RunSpec.make("peru-lora", rank=0)


def test_rank_above_the_adapters_is_refused(tiny_zoo_dir):
    rt = ZooRuntime(load_zoo(tiny_zoo_dir))
    r = ex.lora_rank(rt)
    too_big = RunSpec.make("peru-lora", rank=r + 1)
    for compute in (ex.run_spec, ex.artifacts, ex._costs):
        with pytest.raises(PeruError, match=f"from 1 to {r}, the largest adapter rank"):
            compute(rt, too_big)
    assert ex._costs(rt, RunSpec.make("peru-lora", rank=r)).task_params[0] > 0
