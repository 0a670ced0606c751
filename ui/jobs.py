"""Long computations run as jobs: one at a time per server, outside any browser session, each with a Cancel.

A job runs in its own thread, so a reload, a closed tab or a moved slider does not drop it: it finishes and
writes its results (the results store for run specs, a bounded cache for t-SNE), and a page that asks for the same
work finds the job and shows its progress. Jobs queue behind each other (two users pressing Compute: the second is
told what it waits for). Cancel is checked at each progress report, between tasks: the store writes one
transaction per spec, so a cancelled job leaves the settings it finished and nothing partial. A job that has
something new to show before it ends (quick estimates) calls ``progress.updated()``: a page watching it reruns.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import streamlit as st

from peru_core.errors import PeruError

log = logging.getLogger("peru_studio")
Work = Callable[[Callable[[float, str], None]], Any]
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
KEEP_FINISHED = 64  # finished jobs remembered (their outcome is shown once to whoever asks for that work again)


class Cancelled(Exception):
    """Raised from a job's progress callback once Cancel was pressed."""


@dataclass
class Job:
    """One computation: what it does, how far it is, how it ended."""

    key: str  # identity of the work: the same key is the same computation
    what: str  # for people: "Computing PERU-FFT (Task Arithmetic) 10%"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    state: str = QUEUED
    fraction: float = 0.0
    message: str = ""
    error: str = ""
    result: Any = None
    behind: str = ""  # what a queued job waits for
    updates: int = 0  # bumped when the job has something new to show before it ends (quick estimates)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    news: threading.Condition = field(default_factory=threading.Condition)  # notified on updates and at the end

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report (between tasks)."""
        self.cancel_requested.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.finished.wait(timeout)

    def updated(self) -> None:
        """Something new to show before the end (quick estimates): watching pages rerun."""
        with self.news:
            self.updates += 1
            self.news.notify_all()

    def wait_news(self, seen: int, timeout: float) -> bool:
        """Block up to ``timeout`` s until the job has an update after ``seen`` or has ended; True if it has."""
        with self.news:
            return self.news.wait_for(lambda: self.updates != seen or not self.active, timeout)


class Jobs:
    """The server's jobs: submit, find, run one at a time in submission order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._queue: list[Job] = []  # active jobs in order; the first one runs
        self._by_key: OrderedDict[str, Job] = OrderedDict()

    def get(self, key: str) -> Optional[Job]:
        """The latest job for ``key`` (active or finished), if any."""
        with self._lock:
            return self._by_key.get(key)

    def running(self) -> Optional[Job]:
        with self._lock:
            return self._queue[0] if self._queue else None

    def submit(self, key: str, what: str, work: Work) -> Job:
        """Start ``work(progress)`` as a job, or return the active job that already does the same work."""
        with self._lock:
            old = self._by_key.get(key)
            if old is not None and old.active:
                return old
            job = Job(key, what)
            self._by_key[key] = job
            self._by_key.move_to_end(key)
            self._queue.append(job)
            self._forget_old()
        threading.Thread(target=self._run, args=(job, work), name=f"peru-job-{job.id}", daemon=True).start()
        return job

    def _forget_old(self) -> None:
        finished = [k for k, j in self._by_key.items() if not j.active]
        for k in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._by_key[k]

    def _wait_turn(self, job: Job) -> None:
        with self._turn:
            while self._queue[0] is not job:
                if job.cancel_requested.is_set():
                    raise Cancelled
                ahead = self._queue[0]
                job.behind = ahead.what
                job.message = f"queued behind another computation ({ahead.what})"
                self._turn.wait(0.2)
        job.behind = ""

    def _run(self, job: Job, work: Work) -> None:
        def progress(fraction: float, message: str) -> None:
            if job.cancel_requested.is_set():
                raise Cancelled
            job.fraction, job.message = min(max(float(fraction), 0.0), 1.0), message

        progress.updated = job.updated  # type: ignore[attr-defined]

        try:
            self._wait_turn(job)
            job.state = RUNNING
            progress(0.0, "starting")
            job.result = work(progress)
            job.state, job.fraction = DONE, 1.0
        except Cancelled:
            job.state = CANCELLED
        except PeruError as e:
            job.state, job.error = FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - a job's thread must end with its outcome recorded
            log.exception("job %s (%s) failed", job.id, job.what)
            job.state = FAILED
            job.error = f"Something went wrong ({type(e).__name__}); the details are in the server log."
        finally:
            with self._turn:
                if job in self._queue:
                    self._queue.remove(job)
                self._turn.notify_all()
            job.finished.set()
            with job.news:
                job.news.notify_all()

    def wait_all(self, timeout: float = 120.0) -> None:
        """Block until no job is active (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                active = list(self._queue)
            if not active:
                return
            active[0].wait(max(0.0, deadline - time.monotonic()))
        raise TimeoutError("jobs still running")


@st.cache_resource(show_spinner=False)
def jobs() -> Jobs:
    """The one :class:`Jobs` of this server (shared by every session)."""
    return Jobs()


def wait_for_news(job: Job, ready: Callable[[], bool], timeout: float) -> bool:
    """Right after submitting ``job``: wait up to ``timeout`` s until ``ready()`` (checked at each of its updates)
    or its end, unless it is queued behind another user's job (it would then only wait out the timeout). Returns
    whether it is still active.

    Why: the page that pressed Compute then draws the estimates in the same run, instead of a progress poll
    noticing them up to half a second later and rerunning the page (and nothing is drawn meanwhile to compete with
    the job for the GIL and the cores)."""
    ahead = jobs().running()
    if ahead is None or ahead is job:
        deadline = time.monotonic() + timeout
        seen = job.updates
        while job.active and not ready() and time.monotonic() < deadline:
            job.wait_news(seen, deadline - time.monotonic())
            seen = job.updates
    return job.active


def label(job: Job) -> str:
    """One line for a progress bar."""
    if job.cancel_requested.is_set() and job.active:
        return f"{job.what}: cancelling after the current task…"
    if job.state == QUEUED:
        return f"{job.what}: queued behind another computation ({job.behind or 'starting'}); it starts when that ends."
    return f"{job.what}: {job.message}" if job.message else job.what


def watch(key: str, name: str) -> Optional[Job]:
    """Show the job ``key``: while it is active a progress bar and a Cancel button (redrawn every half second, so
    the rest of the page stays usable; the page reruns when the job ends), or how it ended when it was cancelled or
    failed. ``name`` prefixes the keys of what is drawn (``<name>_job``, ``<name>_cancel``). Returns the job."""
    job = jobs().get(key)
    if job is None:
        return None
    if job.active:
        _progress(key, name, job.updates)
    elif job.state == CANCELLED:
        st.warning(f"{job.what} was cancelled: the settings it had finished are stored, nothing partial is. "
                   "Press Compute to start it again.", icon=":material/cancel:")
    elif job.state == FAILED:
        st.error(job.error)
    return job


@st.fragment(run_every=0.5)
def _progress(key: str, name: str, seen: int = 0) -> None:
    job = jobs().get(key)
    if job is None or not job.active or job.updates != seen:
        st.rerun()  # the whole page: it now finds the results, new estimates, or how the job ended
    with st.container(key=f"{name}_job"):
        st.progress(job.fraction, text=label(job))
        if st.button("Cancel", key=f"{name}_cancel", icon=":material/cancel:",
                     help="Stops after the task being evaluated; what is finished stays stored."):
            job.cancel()
            job.wait(30.0)  # it stops at its next progress report (one task's evaluation)
            st.rerun()
