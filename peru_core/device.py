"""Where compute runs: the GPU when there is one, the CPU otherwise (overridable).

State dicts always live in host memory (checkpoints stream from disk, and the results must be saved or cached
there). The compute-bound kernels (TIES' trim thresholds and fused merge, the top-m% sort of PERU-FFT and
Post-Pruning, dense task-vector spectra, and evaluation) move their inputs to the compute device and bring only
the result back. Memory-bound sums (averaging, Task Arithmetic) stay on the host: every byte has to leave host
memory either way, and one pass over it there is as fast as copying it to the GPU.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Sequence, TypeVar, Union

import torch

from peru_core.errors import PeruError

_In = TypeVar("_In")
_Out = TypeVar("_Out")

DeviceLike = Union[str, torch.device, None]


def available_devices() -> list[str]:
    """Devices a user may pick, best first (``cuda`` only when CUDA is usable)."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def default_device() -> str:
    """``$PERU_DEVICE`` if set, else ``cuda`` when available, else ``cpu``."""
    forced = os.environ.get("PERU_DEVICE")
    if forced:
        return forced
    return available_devices()[0]


def resolve_device(device: DeviceLike = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks :func:`default_device`. A name torch does not know, or
    ``cuda`` on a machine without a usable GPU, is a one-sentence PeruError."""
    if isinstance(device, torch.device):
        return device
    name = device if device is not None else default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise PeruError(f"Unknown device {name!r}; use one of: {', '.join(available_devices())}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PeruError(f"Device {name!r} was asked for, but this machine has no usable CUDA GPU; use cpu "
                        "(or unset PERU_DEVICE).")
    if dev.type not in ("cpu", "cuda"):
        raise PeruError(f"Device {name!r} is not supported; use one of: {', '.join(available_devices())}.")
    return dev


# --- precision -------------------------------------------------------------------------------------------------
PRECISIONS = ("float32", "bf16")


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of bfloat16 dot-product instructions


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that says so, or a CPU with AVX512-BF16 or AMX
    (oneDNN's bf16 kernels there: the demo zoo evaluates 1.95x as fast as in float32 on this project's AVX512-BF16
    CPU, ``benchmarks/bench_eval.py --precision bf16``; elsewhere bf16 is emulated and slower than float32, so it is
    not offered)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_flags() & set(CPU_BF16_FLAGS))


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` checked against ``device``: ``float32`` anywhere, ``bf16`` (autocast of the image tower's
    matrix products to bfloat16) where :func:`supports_bf16`; a one-sentence PeruError otherwise. bf16 is refused
    rather than ignored elsewhere: a row labelled bf16 must have been computed in bf16."""
    if precision not in PRECISIONS:
        raise PeruError(f"Unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}.")
    if precision == "bf16" and not supports_bf16(device):
        if device.type == "cuda":
            raise PeruError("This GPU does not support bfloat16; use --precision float32.")
        raise PeruError("Precision bf16 needs a GPU or a CPU with native bfloat16 (AVX512-BF16 or AMX), which this "
                        "one lacks; use --precision float32 (or pick cuda).")
    return precision


def env_count(name: str, example: str) -> Optional[int]:
    """A positive whole number from the environment variable ``name``, or None when it is unset or empty; a
    one-sentence PeruError (with ``example``) when it is anything else."""
    forced = os.environ.get(name)
    if not forced:
        return None
    try:
        value = int(forced)
    except ValueError:
        value = 0
    if value < 1:
        raise PeruError(f"{name}={forced!r} is not a positive whole number; unset it or give e.g. {example}.")
    return value


# --- batch size ------------------------------------------------------------------------------------------------
CPU_BATCH = 256  # on the CPU larger batches gain nothing (the GEMMs are already cache-bound) and cost memory
GPU_MEMORY_SHARE = 0.5  # of the free GPU memory, for one evaluation batch's activations
MAX_BATCH = 4096


def batch_size_for(device: torch.device, bytes_per_image: int) -> int:
    """Images per evaluation batch: on a GPU, as many as fit in half its free memory at ``bytes_per_image`` of
    peak activations each (measured by the caller), within [32, 4096]; on the CPU, :data:`CPU_BATCH`.
    ``$PERU_BATCH`` overrides both."""
    forced = env_count("PERU_BATCH", "256")
    if forced is not None:
        return forced
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(MAX_BATCH, max(32, free * GPU_MEMORY_SHARE // max(1, bytes_per_image))))


# --- threads ---------------------------------------------------------------------------------------------------
_THREADS_SET: list[int] = []


SAMPLE_S = 0.2  # how long free_cores watches the machine's CPU counters


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat`` (Linux); OSError elsewhere."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores the machine is busy on right now: the busy share of all CPUs over ``sample_s`` seconds times their
    count (``/proc/stat``), less this process's own CPU time meanwhile (a server's other threads), so what it
    counts is other processes; the 1-minute load average where ``/proc/stat`` cannot be read."""
    try:
        b0, t0 = _cpu_times()
        own0, wall0 = time.process_time(), time.monotonic()
        time.sleep(sample_s)
        b1, t1 = _cpu_times()
        own = (time.process_time() - own0) / max(time.monotonic() - wall0, 1e-9)  # this process's other threads
        if t1 > t0:
            return max(0.0, (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1) - own)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def free_cores(busy: Optional[float] = None) -> int:
    """Cores this process may use that no other process is busy on: the CPUs of its affinity mask minus the cores
    busy right now (:func:`busy_cores`, or ``busy`` when given), rounded, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    busy = busy_cores() if busy is None else busy
    # a core held by another process makes torch's thread pool wait for it at every barrier (TIES went from
    # 8.8 s to over 100 s), so a busy core is worth leaving out
    return max(1, min(cores, cores - int(busy + 0.5)))


def configure_threads(force: bool = False) -> int:
    """Set torch's intra-op threads once per process (engine start: the CLI and the app) and return the count:
    ``$PERU_THREADS`` when set, else :func:`free_cores`. Later calls return the count set first unless ``force``."""
    if _THREADS_SET and not force:
        return _THREADS_SET[0]
    n = env_count("PERU_THREADS", "2")
    if n is None:
        n = free_cores()
    torch.set_num_threads(n)
    _THREADS_SET[:] = [n]
    return n


def one_thread_each(fn: Callable[[_In], _Out], items: Sequence[_In]) -> Iterator[_Out]:
    """``fn`` of each item, in order, on ``torch.get_num_threads()`` worker threads with one torch thread each.

    Why: work split into many small, independent pieces (a 3072 x 128 QR, a 128 x 128 SVD, a 1 MB chunk of a
    weighted sum) spends much of its time in the barriers of torch's thread pool; one piece per core avoids them
    (figures: docs/engine.md, "Second issue 10 run"). Each piece runs on one thread whatever the pool size, so results do not depend on the thread count. Only for
    CPU work: ``fn`` must not touch CUDA tensors.
    """
    threads = torch.get_num_threads()
    workers = min(threads, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield from pool.map(fn, items)
    finally:
        # the count is per thread, but torch also keeps the last one set as the default of threads started later
        # (a dashboard job's thread): restore the caller's
        torch.set_num_threads(threads)
