"""Process-level settings for training runs: how many torch threads a CPU process uses.

zsdemo sets threads only inside its indexing service, so training has its own small helper.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def local_processes(world_size: int) -> int:
    """Processes of this run on this machine (torchrun / accelerate set LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    except ValueError:
        return max(1, world_size)


def set_cpu_threads(device_type: str, processes: int) -> int:
    """Set torch's intra-op threads for a CPU run and return the number; 0 (nothing set) on a GPU.

    OMP_NUM_THREADS, when set, is honoured. Otherwise one process keeps torch's default, and several
    processes on one machine split its cores (one thread each on a 2-core machine with 2 ranks), since
    every rank would otherwise start as many threads as there are cores and they would fight for them.
    """
    if device_type != "cpu":
        return 0
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            threads = max(1, int(env))
        except ValueError:
            log.warning("OMP_NUM_THREADS=%r is not a number; ignoring it", env)
        else:
            torch.set_num_threads(threads)
            return threads
    if processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    return torch.get_num_threads()
