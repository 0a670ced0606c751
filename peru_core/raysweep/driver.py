"""The driver: send the specs the store lacks to a pool of Ray actors, write each finished spec to the store.

Ray (https://docs.ray.io/en/latest/ray-core/actors.html) places the actors, restarts one whose process dies
(``max_restarts``) and re-sends the calls it had not finished (``max_task_retries``). Everything else stays as in the
serial path: :func:`peru_core.experiments.run_spec` computes a spec on a worker, and the driver alone writes the
SQLite store, one transaction per spec, so a driver killed mid-sweep loses no stored spec and a rerun computes
only the rest.
"""
from __future__ import annotations

import logging
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pandas as pd

from peru_core import experiments
from peru_core.errors import PeruError
from peru_core.raysweep.plan import Group, group_specs
from peru_core.raysweep.progress import SweepProgress
from peru_core.raysweep.resources import plan_workers, worker_memory
from peru_core.raysweep.worker import SweepWorker, one_line
from peru_core.spec import RunSpec
from peru_core.store import ResultsStore
from peru_core.types import Progress, report


class SweepFailed(PeruError):
    """Some specs failed for reasons of their own; the others finished (and are stored). ``failures``: label ->
    one-line error."""

    def __init__(self, failures: dict[str, str], finished: int, stored: bool) -> None:
        self.failures = failures
        label, why = next(iter(failures.items()))
        more = f" and {len(failures) - 1} more (each reported above)" if len(failures) > 1 else ""
        kept = ("are in the results store, so a rerun computes only the failed ones" if stored
                else "finished, but --no-store kept nothing")
        super().__init__(f"{len(failures)} spec(s) failed: {label}: {why.rstrip('.')}{more}; fix the cause and rerun "
                         f"(the {finished} that finished {kept}).")


@contextmanager
def ray_session(address: Optional[str], num_cpus: Optional[int] = None) -> Iterator[None]:
    """A Ray connection for one sweep: an existing one is reused (and left open); ``address=None`` starts a local
    runtime on this machine, ``auto`` or ``ray://host:10001`` joins a cluster, shipping this copy of peru_core."""
    import ray

    if ray.is_initialized():
        yield
        return
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            env = {"py_modules": [str(Path(experiments.__file__).parent)]}  # workers run the driver's code
            ray.init(address=address, runtime_env=env, **common)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)  # a new one, here
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError or a bare Exception here
        ray.shutdown()  # whatever half-started
        fix = ("check the address and that the cluster is up (`ray start --head` starts one)" if address else
               "retry when the machine is less busy, or read Ray's logs under /tmp/ray")
        raise PeruError(f"Could not {'reach Ray at ' + repr(address) if address else 'start Ray on this machine'} "
                        f"({one_line(e)}); {fix}.") from None
    try:
        yield
    finally:
        ray.shutdown()


def _dead_worker(err: BaseException, retries: int) -> str:
    return (f"its worker died {retries + 1} time(s) while computing it (killed, or out of memory: see Ray's logs "
            f"under /tmp/ray); {one_line(err)}")


class _Pool:
    """Actors, the groups still to hand out, and the spec calls in flight."""

    def __init__(self, runtime: Any, todo: list[RunSpec], store: Optional[ResultsStore], device: Optional[str],
                 workers: Optional[int], max_retries: int, on_progress: Progress, local: bool) -> None:
        import ray

        zoo = runtime.zoo
        shape = plan_workers(ray.nodes(), worker_memory(zoo), device, workers, len(todo))
        groups = group_specs(todo, shape.workers)
        if len(groups) < shape.workers:  # a worker with no group would only cost its start-up
            shape = plan_workers(ray.nodes(), shape.memory, device, len(groups), len(todo))
        self.ray, self.runtime, self.store, self.max_retries = ray, runtime, store, max_retries
        self.on_progress, self.todo = on_progress, todo
        self.queue: deque[Group] = deque(groups)
        self.progress = SweepProgress(len(todo))
        self.frames: dict[RunSpec, pd.DataFrame] = {}
        self.failures: dict[RunSpec, str] = {}
        self.outstanding: dict[int, int] = {}
        self.dead: set[int] = set()
        self.pids: dict[int, int] = {}  # worker index -> its process now (a restart changes it)
        actor = ray.remote(SweepWorker).options(
            num_cpus=shape.num_cpus, num_gpus=shape.num_gpus, memory=shape.memory,
            max_restarts=max_retries, max_task_retries=max_retries)
        wdevice = "cuda" if shape.num_gpus else "cpu"  # a CPU worker never touches a GPU it was not given
        threads = shape.num_cpus
        if local and not shape.num_gpus:
            # torch's CPU reductions depend on the thread count: on this machine CPU workers use the serial path's
            # count, so their numbers are the serial ones bit for bit (the cores are then shared, not split)
            import torch

            threads = torch.get_num_threads()
        self.actors = {i: actor.remote(i, str(zoo.root), experiments.zoo_key(runtime), wdevice, threads)
                       for i in range(shape.workers)}
        self.pending: dict[Any, tuple] = {a.ready.remote(): ("ready", i) for i, a in self.actors.items()}
        self._say(0.0, f"{len(todo)} specs in {len(groups)} groups to compute on {shape.describe()}")

    def _say(self, fraction: float, message: str) -> None:
        report(self.on_progress, fraction, message)

    def _assign(self, i: int) -> None:
        """Give worker ``i`` the next group: its specs queue on that actor, so the shared work is done once there."""
        if not self.queue:
            return
        group = self.queue.popleft()
        for spec in group.specs:
            self.pending[self.actors[i].run.remote(spec.key())] = ("spec", i, spec)
        self.outstanding[i] = self.outstanding.get(i, 0) + len(group.specs)

    def _ready(self, i: int, ref: Any) -> None:
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            info = {"error": f"worker {i} could not start ({one_line(e)})"}
        if info["error"]:
            raise PeruError(info["error"])
        self.progress.worker_ready(i)
        self.pids[i] = info["pid"]
        self._say(self.progress.done / self.progress.total,
                  f"worker {i} ready on {info['node']} (pid {info['pid']}, {info['device']}, {info['threads']} "
                  f"thread(s)) after {info['startup_s']:.1f} s of start-up")
        self._assign(i)

    def _finished(self, i: int, spec: RunSpec, ref: Any) -> None:
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the actor is gone for good after max_restarts
            out = {"error": _dead_worker(e, self.max_retries)}
            self.dead.add(i)
        if out.get("pid", self.pids.get(i)) != self.pids.get(i):
            self._say(self.progress.done / self.progress.total, f"worker {i} was restarted (pid {self.pids.get(i)} "
                      f"died; now pid {out['pid']}); its unfinished specs were sent again")
            self.pids[i] = out["pid"]
        if "frame" in out:
            self.frames[spec] = out["frame"]
            if self.store is not None:  # one transaction per spec, as in the serial path
                experiments.store_rows(self.store, experiments.zoo_key(self.runtime), spec, out["frame"])
            status = f"{out['seconds']:.1f} s on worker {i}"
        else:
            self.failures[spec] = out["error"]
            status = f"FAILED on worker {i}: {out['error']}"
        self.progress.finished(i, "frame" in out)
        self._say(self.progress.done / self.progress.total, f"{spec.label}: {status} | {self.progress.line()}")
        self.outstanding[i] -= 1
        if not self.outstanding[i] and i not in self.dead:
            self._assign(i)

    def run(self) -> None:
        """Until every spec has finished or failed; actors are killed at the end (their resources freed)."""
        try:
            while self.queue or any(k[0] == "spec" for k in self.pending.values()):
                if not self.pending:  # every worker died: what is left cannot run
                    for group in self.queue:
                        for spec in group.specs:
                            self.failures[spec] = "no worker was left to compute it (every worker died)"
                    break
                (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
                kind = self.pending.pop(ref)
                if kind[0] == "ready":
                    self._ready(kind[1], ref)
                else:
                    self._finished(kind[1], kind[2], ref)
        finally:
            for a in self.actors.values():
                self.ray.kill(a)


def run_specs_ray(runtime: Any, specs: Sequence[RunSpec], store: Optional[ResultsStore] = None, *,
                  address: Optional[str] = None, workers: Optional[int] = None, max_retries: int = 2,
                  device: Optional[str] = None, num_cpus: Optional[int] = None,
                  on_progress: Progress = None) -> pd.DataFrame:
    """The rows of :func:`peru_core.experiments.run_specs` (same order, same values), computed on Ray actors.

    Specs already in ``store`` are read back here and never sent. ``address``: None for a local Ray runtime
    (``num_cpus`` caps it), ``auto`` or ``ray://host:10001`` for a cluster; a Ray connection already open is used
    as is. ``workers``: actors to start (default: one per GPU, else one per CPU, as memory allows).
    ``max_retries``: restarts of a worker whose process dies, each re-running its unfinished specs.
    Raises :class:`SweepFailed` when specs failed for reasons of their own, after the others finished."""
    names, zoo_hash = runtime.zoo.task_names, experiments.zoo_key(runtime)
    unique = list(dict.fromkeys(specs))
    frames: dict[RunSpec, pd.DataFrame] = {}
    todo = [s for s in unique if store is None or store.get(zoo_hash, s.key(), names) is None]
    for spec in unique:
        if spec not in todo:  # a store hit: read here, never sent
            frames[spec] = experiments.run_spec(runtime, spec, store)
    report(on_progress, 0.0, f"{len(unique) - len(todo)} of {len(unique)} specs from the results store")
    failures: dict[RunSpec, str] = {}
    if todo:
        with ray_session(address, num_cpus):
            pool = _Pool(runtime, todo, store, device, workers, max_retries, on_progress, local=address is None)
            pool.run()
        frames.update(pool.frames)
        failures = pool.failures
    if failures:
        raise SweepFailed({s.label: e for s, e in failures.items()}, len(todo) - len(failures), store is not None)
    out = [frames[s] for s in specs]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=experiments.ROW_COLUMNS)
