"""The Ray actor: one worker, one zoo, one :class:`~peru_core.zoo.runtime.ZooRuntime` loaded once.

The model, the checkpoints, the zero-shot heads and the test sets are read when the worker starts, not per spec;
specs then arrive one at a time (an actor runs its calls in order) and reuse what the runtime's memo holds.
This module imports no Ray: the driver wraps :class:`SweepWorker` with ``ray.remote``, and a test can call it directly.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

from peru_core.errors import PeruError


def one_line(err: BaseException) -> str:
    """A failure as one line: a PeruError's own sentence, or the exception's type and first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, PeruError) else f"{type(err).__name__}: {text}".rstrip(": ")


def _node() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (a test calling the class directly)
        return "local"


class SweepWorker:
    """Holds one runtime for the zoo at ``zoo_root``; :meth:`run` computes one spec into result rows.

    ``zoo_hash`` is the driver's content hash of the zoo: a node whose copy differs refuses to start, so rows are
    never stored under the wrong zoo. ``threads``: torch threads (the CPUs Ray gave this worker).
    """

    def __init__(self, index: int, zoo_root: str, zoo_hash: str, device: Optional[str], threads: int) -> None:
        t0 = time.perf_counter()
        self.index, self.error, self.runtime = index, None, None
        try:
            import torch

            from peru_core.zoo import load_zoo
            from peru_core.zoo.runtime import ZooRuntime

            torch.set_num_threads(max(1, threads))
            zoo = load_zoo(zoo_root)
            digest = zoo.content_hash()
            if digest != zoo_hash:
                raise PeruError(f"The zoo at {zoo_root} on node {_node()} differs from the driver's copy; put the "
                                "same files at that path on every node (a shared folder or one copy each).")
            runtime = ZooRuntime(zoo, device=device, content_hash=digest)
            for task in zoo.task_names:  # what every spec needs: the model, each head and test set
                runtime.head(task)
                runtime.data(task)
            self.runtime = runtime
        except Exception as e:  # reported by ready(): the driver stops with this sentence
            self.error = one_line(e)
        self.startup_s = time.perf_counter() - t0

    def ready(self) -> dict[str, Any]:
        """Who and where this worker is, how long it took to start, and the start-up error if any."""
        import torch

        device = str(self.runtime.device) if self.runtime is not None else None
        return {"index": self.index, "pid": os.getpid(), "node": _node(), "device": device,
                "threads": torch.get_num_threads(), "startup_s": self.startup_s, "error": self.error}

    def run(self, spec_key: str) -> dict[str, Any]:
        """Compute the spec ``spec_key`` (its canonical JSON) into rows, or return its one-line error; never
        raises for a spec's own failure, so one bad spec does not take the worker down."""
        from peru_core import experiments
        from peru_core.spec import RunSpec

        t0 = time.perf_counter()
        out: dict[str, Any] = {"key": spec_key, "index": self.index, "pid": os.getpid()}
        try:
            if self.runtime is None:
                raise PeruError(self.error or "The worker has no zoo loaded.")
            out["frame"] = experiments.run_spec(self.runtime, RunSpec.from_key(spec_key), None)
        except Exception as e:
            out["error"] = one_line(e)
        out["seconds"] = time.perf_counter() - t0
        return out
