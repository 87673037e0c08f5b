"""Smoke runs of the launched-app benchmarks (bench/browser.py, bench/load.py) with the tiny model.

Benchmarks, not tests: no figure is asserted, only that each runs end to end, exits 0 and prints its
machine-readable verdict as the last line. bench/browser.py needs Debian's chromium (skipped without it
locally; fails under CI=true, like tests/test_browser.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def verdict(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    fields = dict(part.split("=", 1) for part in last.split())
    assert fields.get("met") in ("yes", "no"), last
    return fields


def run(script: str, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_browser_benchmark_smoke_prints_the_breakdown_and_the_verdict_last(tmp_path):
    if not Path(CHROMIUM).is_file():
        message = f"chromium not found at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    out = run("browser.py", tmp_path)
    for heading in ("p50 per segment", "pointer up -> join sent", "on screen (Element Timing)",
                    "POINTER UP -> RESULTS ON SCREEN", "the engine's own p50", "page overhead (p50 minus p50)"):
        assert heading in out, heading
    timed = re.search(r"on screen from Element Timing for (\d+) of (\d+) strokes", out)
    assert timed and int(timed.group(1)) > 0, "the results' paint was not timed by the browser (Element Timing)"
    fields = verdict(out)
    assert {"browser_over_engine_p50", "overhead_ms", "stroke_to_results_p50_ms", "engine_p50_ms", "cpu"} <= set(fields)
    assert float(fields["browser_over_engine_p50"]) > 0 and fields["overhead_met"] in ("yes", "no")
    # the overhead printed is the stroke-to-results p50 minus the engine's p50 (rounding apart)
    total, engine = float(fields["stroke_to_results_p50_ms"]), float(fields["engine_p50_ms"])
    assert abs(float(fields["overhead_ms"]) - (total - engine)) <= 1.5


def test_load_benchmark_smoke_prints_every_figure_and_the_verdict_last(tmp_path):
    out = run("load.py", tmp_path)
    for heading in ("1 user x", "2 users x", "throughput", "app RSS", "during indexing", "idle"):
        assert heading in out, heading
    fields = verdict(out)
    assert {"users", "p95_over_single_p50", "rss_growth_pct", "errors", "cpu"} <= set(fields)
    assert fields["users"] == "2" and fields["errors"] == "0"
