"""What this CPU can do, as the query paths care about it: SIMD level, VNNI, native bf16."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_features() -> dict[str, Any]:
    """What the query path cares about: SIMD level, int8 dot-product (VNNI) and native bf16 support."""
    flags = cpu_flags()
    capability = str(torch.backends.cpu.get_cpu_capability())
    mkldnn_bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    hw_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    return {
        "capability": capability,  # torch's dispatch level: DEFAULT / AVX2 / AVX512 / ...
        "avx2": "avx2" in flags or capability.startswith(("AVX2", "AVX512")),
        "avx512": any(f.startswith("avx512f") for f in flags) or capability.startswith("AVX512"),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        # bf16 only where the hardware has it; without /proc/cpuinfo, trust torch on an AVX-512 CPU
        "native_bf16": hw_bf16 or (not flags and mkldnn_bf16 and capability.startswith("AVX512")),
        "mkldnn_bf16": mkldnn_bf16,
    }


def cpu_label(features: dict[str, Any] | None = None) -> str:
    """'AVX2', 'AVX-512', 'AVX-512+BF16' ... for one-line reports."""
    f = features or cpu_features()
    label = "AVX-512" if f["avx512"] else "AVX2" if f["avx2"] else str(f["capability"])
    if f["vnni"]:
        label += "+VNNI"
    if f["native_bf16"]:
        label += "+BF16"
    return label
