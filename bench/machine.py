"""What a benchmark figure was measured on, and the memory a process uses.

Every figure a benchmark prints sits next to the machine it was measured on: the CPU model and the
SIMD/bf16 flags that decide which query path is fast, the thread settings, and the load average (these
machines are shared, so the load says how much a figure is inflated).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import threading
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def machine_info() -> dict[str, Any]:
    """CPU model, SIMD level / VNNI / native bf16 (zsdemo.query.cpu.cpu_features), cores, threads, load."""
    import torch

    from zsdemo.query.cpu import cpu_features, cpu_label

    features = cpu_features()
    return {
        "cpu": cpu_model(),
        "cpu_label": cpu_label(features),
        "features": features,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1m": round(load_average()[0], 2),
    }


def machine_line(info: dict[str, Any]) -> str:
    f = info["features"]
    return (f"machine: {info['cpu']} [{info['cpu_label']}: AVX2 {f['avx2']}, AVX-512 {f['avx512']}, VNNI {f['vnni']}, "
            f"native bf16 {f['native_bf16']}; torch capability {f['capability']}]; {info['cores']} cores; "
            f"torch {info['torch']} with {info['torch_threads']} threads; load average (1 min) {info['load_avg_1m']}")


def thread_settings() -> dict[str, str]:
    """The thread-count environment variables as set for this process ('unset' when not set)."""
    return {name: os.environ.get(name, "unset") for name in THREAD_VARIABLES}


def verdict_cpu() -> str:
    """The CPU model as one token, for verdict lines (key=value, space-separated)."""
    return "_".join(cpu_model().replace("(R)", "").replace("(TM)", "").split())


# ---- process memory ---------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB; nan if unreadable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def proc_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / RssShmem of this process in bytes, and Pss from smaps_rollup."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) * 1024
    return out


def max_rss() -> int:
    """Peak resident memory of this process so far (ru_maxrss), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (peak RSS) to its current RSS (Linux >= 4.0: clear_refs "5"), so that
    peak_rss() measures what follows, not a transient peak while importing; False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """Peak resident memory (VmHWM) since the process started or since reset_peak_rss(), in bytes;
    ru_maxrss where /proc is not readable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return max_rss()


class PeakSampler:
    """Samples proc_status every 50 ms in a thread while in its `with` block; .peak holds each field's maximum."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.peak: dict[str, int] = {}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in proc_status().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gib(b: float) -> str:
    """Bytes as 'x.xx GiB' or 'n MiB'."""
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"
