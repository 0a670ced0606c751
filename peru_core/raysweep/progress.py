"""The driver's view of a sweep: specs done out of the total, each worker's throughput, elapsed and remaining time."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional


def clock(seconds: float) -> str:
    """``1:05`` or ``1:02:05``."""
    s = int(round(max(0.0, seconds)))
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


@dataclass
class SweepProgress:
    """Counts finished specs; ``line()`` renders the status after each one."""

    total: int
    start: float = field(default_factory=time.perf_counter)
    done: int = 0
    failed: int = 0
    first_ready: Optional[float] = None
    ready_at: dict[int, float] = field(default_factory=dict)  # worker index -> when it became ready
    per_worker: dict[int, int] = field(default_factory=dict)  # worker index -> specs it finished

    def worker_ready(self, index: int) -> None:
        now = time.perf_counter()
        self.ready_at[index] = now
        self.first_ready = self.first_ready if self.first_ready is not None else now

    def finished(self, index: int, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        self.per_worker[index] = self.per_worker.get(index, 0) + 1

    def remaining(self) -> Optional[float]:
        """Seconds left at the pool's rate so far (specs done since the first worker was ready); None before any."""
        if not self.done or self.first_ready is None:
            return None
        rate = self.done / max(1e-9, time.perf_counter() - self.first_ready)
        return (self.total - self.done) / rate

    def line(self) -> str:
        now = time.perf_counter()
        left = self.remaining()
        rates = " ".join(f"w{i} {self.per_worker.get(i, 0) / max(1e-9, now - t) * 60:.1f}/min"
                         for i, t in sorted(self.ready_at.items()))
        return (f"{self.done}/{self.total} specs" + (f" ({self.failed} failed)" if self.failed else "") +
                f" | elapsed {clock(now - self.start)}, remaining " + (f"~{clock(left)}" if left is not None else "?")
                + (f" | {rates}" if rates else ""))
