"""Sweeps on a Ray cluster (or a local Ray runtime): the same specs, rows and store as the serial path.

One actor per worker holds one :class:`~peru_core.zoo.runtime.ZooRuntime`; specs that share a merge, a set of top-m%
selectors or the LoRA SVDs are grouped onto one worker; the driver writes each finished spec to the results store.
See docs/ray.md. Ray is imported only when a sweep runs on it.
"""
from peru_core.raysweep.driver import SweepFailed, run_specs_ray
from peru_core.raysweep.plan import Group, group_specs, shared_work

__all__ = ["Group", "SweepFailed", "group_specs", "run_specs_ray", "shared_work"]
