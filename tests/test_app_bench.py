"""The round-trip benchmark runs end to end (tiny model, small gallery) and reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_app_roundtrip_benchmark_smoke(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(ROOT / "bench" / "app_roundtrip.py"), "--photos", "300", "--rounds", "4",
           "--model", TINY_MODEL, "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["gallery_photos"] == 300 and figures["model"] == TINY_MODEL
    for key in ("roundtrip_results_json", "roundtrip_with_thumbnail_downloads", "engine_search_sketch",
                "engine_in_app_same_calls", "gradio_floor_roundtrip"):
        assert figures[key]["n"] == 4 and 0 < figures[key]["p50_ms"] <= figures[key]["p95_ms"], key
    assert figures["overhead_ratio_p50"] > 0 and figures["overhead_ratio_same_calls_median"] > 1
    assert "round trip, stroke -> ranked results" in run.stdout and "overhead" in run.stdout
