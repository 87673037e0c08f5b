"""How many torch threads a CPU process uses: one rule for training, indexing and serving.

Torch starts one intra-op thread per core in every process. Two processes on two cores, or one process on
a machine other jobs keep busy, then fight over the cores (a tiny model's step runs several times slower with
2 threads than with 1 there). So: OMP_NUM_THREADS when set; otherwise the cores this process may use that other
jobs are not already using (1-minute load average), shared among the processes of the run on this machine.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def idle_cores() -> int:
    """Usable cores minus the ones other jobs keep busy (1-minute load average, rounded down), at least 1."""
    cores = usable_cores()
    try:
        busy = int(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, cores - min(busy, cores - 1))


def threads_per_process(processes: int = 1) -> int:
    """OMP_NUM_THREADS if set (a positive whole number), else the idle cores shared among `processes`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("OMP_NUM_THREADS=%r is not a whole number; ignoring it", env)
    return max(1, idle_cores() // max(1, processes))


def local_processes(world_size: int = 1) -> int:
    """Processes of this run on this machine (torchrun / accelerate set LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    except ValueError:
        return max(1, world_size)


def set_cpu_threads(processes: int = 1) -> int:
    """Set torch's intra-op threads for a CPU process by `threads_per_process` and return the number."""
    import torch

    threads = threads_per_process(processes)
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%d usable cores, %d idle, %d process(es) on this machine%s)", threads,
             usable_cores(), idle_cores(), processes,
             "; OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS", "").strip() else "")
    return threads
