"""How a child process's OpenMP threads should wait, given the load other programs put on the CPU.

torch's CPU kernels run on OpenMP (libgomp in the PyPI wheels). Its threads spin while they wait
for each other, which is fastest on an idle machine, and a disaster when another program keeps
a core busy: a thread spins for a partner that the kernel has descheduled. Measured on a 2-core
machine with the quickstart's stage 1 (`docs/benchmarks.md`, "The quickstart on a busy machine"):

| samples/s | idle | one core kept busy |
|---|---|---|
| spinning (libgomp's default) | 124-158 | 48-50 |
| `OMP_WAIT_POLICY=PASSIVE` (threads sleep) | 90-93 | 99-101 |

libgomp reads the policy once, when it loads, so it is chosen for a child process before it
starts: `wait_policy_environment()` samples the CPU for a second and says PASSIVE when other
programs keep at least `BUSY_CORES` cores busy. Nothing here runs on import.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

BUSY_CORES = 0.5
"""Cores other programs must keep busy for the threads to sleep rather than spin."""

USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Environment variables that say the user chose how threads wait: then nothing is changed."""


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy (not idle, not waiting for I/O) over the next `seconds`, from
    /proc/stat; the calling process sleeps meanwhile, so this is other programs' load. None
    where /proc/stat is missing (not Linux)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    total = sum(second) - sum(first)
    if total <= 0:
        return 0.0
    idle = (second[3] + second[4]) - (first[3] + first[4])
    return os.cpu_count() * (total - idle) / total


def wait_policy_environment(seconds: float = 1.0) -> dict[str, str]:
    """`{"OMP_WAIT_POLICY": "PASSIVE"}` to add to a child process's environment when other
    programs keep `BUSY_CORES` or more busy, else `{}` (threads spin); `{}` too when the
    environment already sets `USER_SETTINGS`."""
    if any(name in os.environ for name in USER_SETTINGS):
        return {}
    busy = busy_cores(seconds)
    if busy is None or busy < BUSY_CORES:
        return {}
    logger.info(
        "Other programs keep %.1f of %d cores busy: the training threads sleep while they wait "
        "(OMP_WAIT_POLICY=PASSIVE) instead of spinning; set OMP_WAIT_POLICY to choose yourself.",
        busy,
        os.cpu_count(),
    )
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def _cpu_times() -> list[int] | None:
    """The aggregate 'cpu' line of /proc/stat: user, nice, system, idle, iowait, irq, ..."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return [int(value) for value in fields[1:]]
