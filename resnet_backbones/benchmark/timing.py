"""Timing and memory measurement shared by the benchmark sections.

Timing: every candidate of a comparison is warmed up, then the candidates run in turns (ours,
theirs, ours, ...; the order reverses every round so that neither always runs first), each
round timing one call of each; the reported figure is the median. Ratios are only ever taken
between candidates of the same interleaved run, which is what makes them meaningful on a busy
machine where absolute times drift. Where the candidates are different runtimes on several
threads, what one leaves running slows the next: ONNX Runtime's intra-op pool and OpenMP's
threads spin for tens of milliseconds after a call (measured: our compiled R-50 at 224x224, two
threads, right after an ONNX Runtime call 48 ms instead of 25). ``settle_s`` therefore starts
each candidate's turn with untimed calls of its own, so that each one is timed in the steady
state of calls back to back, as a server running it alone would see it.

Peak memory: on GPU, ``torch.cuda.max_memory_allocated`` during the call, minus what was
allocated before it. On CPU, where PyTorch keeps no allocator statistics, the profiler's
allocation events (``torch.profiler`` with ``profile_memory=True``) are replayed in time order
and the highest running total is taken: the peak of tensor memory allocated during the call
above what was allocated before it, all threads included. Both therefore measure what the call
adds on top of the model (and, for training steps, its already-allocated gradients and
optimizer state: a warm-up step allocates those first).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

__all__ = [
    "Measurement",
    "available_cpus",
    "interleaved",
    "load_average",
    "machine_info",
    "peak_memory_bytes",
    "synchronizer",
]


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Measurement:
    """Seconds per call of one candidate, over the rounds of an interleaved run."""

    name: str
    times: List[float] = field(default_factory=list)
    #: 1-minute load average before and after the interleaved run this measurement is part of
    load: Optional[List[float]] = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    def to_dict(self) -> Dict[str, Any]:
        return {"median_s": self.median, "times_s": list(self.times), "load_average": self.load}


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 10,
    budget_s: float = 30.0,
    sync: Callable[[], None] = lambda: None,
    settle_s: float = 0.0,
) -> Dict[str, Measurement]:
    """Times each candidate (a function of no arguments) in interleaved rounds.

    After ``warmup`` untimed calls of each, runs as many rounds as fit in ``budget_s`` seconds
    (estimated from the last warm-up round, settling included), but at least ``min_repeats`` and
    at most ``max_repeats``. With ``settle_s`` > 0, each candidate's turn in a round begins with
    untimed calls of it for at least ``settle_s`` seconds (one at the least; see the module doc).
    Returns one :class:`Measurement` per candidate, in the given order.
    """
    names = list(candidates)
    load_before = load_average()

    def settle(name: str) -> None:
        if settle_s > 0:
            start = time.perf_counter()
            while True:
                candidates[name]()
                sync()
                if time.perf_counter() - start >= settle_s:
                    return

    round_time = 0.0
    for _ in range(max(warmup, 1)):
        round_time = 0.0
        for name in names:
            sync()
            start = time.perf_counter()
            settle(name)
            candidates[name]()
            sync()
            round_time += time.perf_counter() - start
    repeats = int(budget_s / round_time) if round_time > 0 else max_repeats
    repeats = max(min_repeats, min(max_repeats, repeats))
    results = {name: Measurement(name) for name in names}
    for index in range(repeats):
        for name in names if index % 2 == 0 else reversed(names):
            settle(name)
            sync()
            start = time.perf_counter()
            candidates[name]()
            sync()
            results[name].times.append(time.perf_counter() - start)
    load_after = load_average()
    if load_before and load_after:
        for measurement in results.values():
            measurement.load = [load_before[0], load_after[0]]
    return results


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> Optional[int]:
    """Peak memory that ``fn()`` allocates on ``device`` above what was allocated before it
    (see the module doc for how); None where it cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    return _cpu_peak_from_profiler(fn)


@contextlib.contextmanager
def _profiler_chatter_hidden():
    """The profiler's C++ side prints start/stop lines straight to file descriptor 2; they go
    to /dev/null while it starts and stops (Python exceptions are unaffected)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_from_profiler(fn: Callable[[], Any]) -> Optional[int]:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _profiler_chatter_hidden():
        prof.start()
    try:
        fn()
    finally:
        with _profiler_chatter_hidden():
            prof.stop()
    try:
        events = prof.profiler.kineto_results.events()
        allocations = sorted(
            (event.start_ns(), event.nbytes())
            for event in events
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        )
    except AttributeError:  # a torch whose profiler results look different
        return None
    running = peak = 0
    for _, nbytes in allocations:
        running += nbytes
        peak = max(peak, running)
    return int(peak)


def machine_info(device: torch.device, threads: int) -> Dict[str, Any]:
    """What the numbers were measured on."""
    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores_available": available_cpus(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        import detectron2

        info["detectron2"] = getattr(detectron2, "__version__", "unknown")
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["load_average_at_start"] = load_average()
    return info


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
