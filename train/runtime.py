"""Process-level settings for training runs: torch threads per CPU process (the rule in zsdemo.threads)."""

from __future__ import annotations

from zsdemo.threads import local_processes
from zsdemo.threads import set_cpu_threads as _set_threads

__all__ = ["local_processes", "set_cpu_threads"]


def set_cpu_threads(device_type: str, processes: int) -> int:
    """Set torch's intra-op threads for a CPU run (zsdemo.threads.threads_per_process) and return the number;
    0 (nothing set) on a GPU."""
    return _set_threads(processes) if device_type == "cpu" else 0
