"""bench/startup.py runs end to end (tiny model, CLI part) and ends with a verdict a machine can read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_startup_benchmark_prints_figures_and_a_verdict(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "startup.py"), "--model", "zsdemo-tiny-vit",
                           "--skip-app"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("startup_verdict=")
    verdict = json.loads(last.removeprefix("startup_verdict="))
    assert verdict["cli_fp32_s"] > 0 and verdict["cli_fresh_s"] > 0 and isinstance(verdict["cli_ok"], bool)
