"""Cached wrappers: one ZooRuntime per (zoo folder, content hash, device, precision); result frames keyed by spec
keys and precision.

``st.cache_resource`` holds the runtime (a model and checkpoints: shared, never modified); ``st.cache_data`` holds
small results (DataFrames). Tensors never key a cache: the zoo's content hash and the spec keys do. Computations run
as jobs (:mod:`ui.jobs`): queued one at a time across users, cancellable, and not lost on a reload.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import streamlit as st

from peru_core.errors import PeruError
from peru_core.spec import RunSpec
from peru_core.store import ResultsStore
from peru_core.zoo.manifest import Zoo, load_zoo
from ui import jobs


def _signature(zoo: Zoo) -> tuple:
    # Size and modification time of every file: hashing gigabytes again on each rerun would cost seconds.
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in zoo.files())


@st.cache_data(show_spinner="Hashing the zoo's files…", max_entries=64)
def _content_hash(root: str, signature: tuple) -> str:
    return load_zoo(root).content_hash()


def zoo_hash(zoo: Zoo) -> str:
    """The zoo's content hash (SHA-256 of its files), recomputed only when a file's size or mtime changes."""
    return _content_hash(str(zoo.root), _signature(zoo))


@st.cache_data(show_spinner=False, max_entries=64)
def load_zoo_cached(root: str, manifest_mtime: int) -> Zoo:
    return load_zoo(root)


def zoo_at(root: str | Path) -> Zoo:
    """The parsed manifest of a zoo folder (re-read when zoo.json changes)."""
    root = Path(root)
    mf = root / "zoo.json"
    return load_zoo_cached(str(root.resolve()), mf.stat().st_mtime_ns if mf.is_file() else 0)


@st.cache_resource(show_spinner="Loading the zoo's model and checkpoints…", max_entries=3)
def runtime(root: str, content_hash: str, device: str, precision: str = "float32"):
    """The shared :class:`ZooRuntime` (model, checkpoints, heads, test data) for a zoo on a device, evaluating at
    ``precision`` ("bf16" where the device computes it natively)."""
    from peru_core.zoo.runtime import ZooRuntime

    threads()
    return ZooRuntime(load_zoo(root), device, content_hash=content_hash,  # hashed once, by zoo_hash()
                      precision=precision)


@st.cache_resource(show_spinner=False)
def threads() -> int:
    """torch's thread count, set once at the server's engine start from the cores actually free
    (``$PERU_THREADS`` overrides; :func:`peru_core.device.configure_threads`)."""
    from peru_core.device import configure_threads

    return configure_threads()


def store() -> ResultsStore:
    """The results store in ``$PERU_HOME`` (cheap to open: SQLite, one connection per call)."""
    return ResultsStore()


def missing(rt, specs: Sequence[RunSpec], content_hash: str) -> list[RunSpec]:
    """The specs whose rows the store lacks for some task of the zoo."""
    s, tasks = store(), rt.zoo.task_names
    return [sp for sp in specs if s.get(content_hash, sp.key(), tasks, precision=rt.precision) is None]


@st.cache_data(show_spinner=False, max_entries=4096)
def _frame(content_hash: str, keys: tuple[str, ...], precision: str, _rt) -> pd.DataFrame:
    from peru_core import experiments

    return experiments.run_specs(_rt, [RunSpec.from_key(k) for k in keys], store=store())


def results(rt, specs: Sequence[RunSpec], content_hash: str) -> pd.DataFrame:
    """Exact rows of specs that are all stored (no compute: a moved slider comes back at once); call
    :func:`missing` first and :func:`compute` for what is not."""
    return _frame(content_hash, tuple(sp.key() for sp in specs), rt.precision, rt)


def estimated(rt, specs: Sequence[RunSpec]) -> pd.DataFrame | None:
    """While a job computes: every spec's exact rows where stored, else its quick estimates (``estimate`` True,
    with ``low``/``high``); None when some spec has neither yet. Reads the store only (never cached: the job
    replaces estimates with exact rows)."""
    from peru_core import experiments

    frames = [experiments.stored_rows(rt, sp, store()) for sp in specs]
    if any(f is None for f in frames):
        return None
    return pd.concat(frames, ignore_index=True)


def job_key(rt, specs: Sequence[RunSpec]) -> str:
    """The identity of the job that computes ``specs`` on this zoo (a page asks for the same key after a reload)."""
    precision = "" if rt.precision == "float32" else f"+{rt.precision}"  # a bf16 job is another job
    return "specs:" + rt.content_hash + precision + ":" + "|".join(sorted(sp.key() for sp in specs))


def submit(rt, specs: Sequence[RunSpec], what: str, key: str | None = None, *,
           estimates: bool = False) -> jobs.Job:
    """Start computing (and storing) ``specs`` as a background job, or join the one already doing it.

    ``key`` names the job (default: :func:`job_key` of ``specs``): pages pass the key of everything they show, so
    the same view finds its job again after a reload, while only the missing settings are computed. With
    ``estimates`` each setting is first estimated on a stratified subset (:func:`estimated` reads them)."""
    from peru_core import experiments

    specs = list(specs)

    def work(progress) -> pd.DataFrame:
        # with ``estimates``: quick estimates first (stored apart; the watching page reruns on
        # progress.updated() and shows them), then the exact rows that replace them
        on_estimate = (lambda spec, rows: progress.updated()) if estimates else None
        return experiments.run_specs(rt, specs, store=store(), on_progress=progress, on_estimate=on_estimate)

    return jobs.jobs().submit(key or job_key(rt, specs), what, work)


def compute(rt, specs: Sequence[RunSpec], what: str = "Computing") -> pd.DataFrame:
    """Compute (and store) the specs, waiting with a progress bar (queued behind other users' jobs, and said so).

    The work runs as a job: if this session goes away (a reload), it still finishes and is stored."""
    job = submit(rt, specs, what)
    bar = st.progress(0.0, text=f"{what}…")
    # the same key on every run: a press reruns the page, which finds the button pressed before it waits again
    slot = st.empty()
    if slot.button("Cancel", key="cancel_" + hashlib.sha1(job.key.encode()).hexdigest()[:10],
                   icon=":material/cancel:", help="Stops after the task being evaluated; what is finished stays."):
        job.cancel()
    try:
        while not job.wait(0.25):
            bar.progress(job.fraction, text=jobs.label(job))
    finally:
        bar.empty()
        slot.empty()
    if job.state != jobs.DONE:
        raise PeruError(job.error or f"{what} was cancelled; nothing partial was stored. Start it again.")
    return job.result


class Bounded:
    """A small thread-safe LRU (computed embeddings: a few MB each), shared by every session."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key not in self.items:
                return None
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def embeddings() -> Bounded:
    """t-SNE panels computed on this server, by configuration (the last 64)."""
    return Bounded(64)


def clear_all() -> None:
    """Forget every cached runtime and frame (tests; a zoo edited on disk)."""
    st.cache_data.clear()
    st.cache_resource.clear()
