"""Benchmark settings, resolved like the app's and the CLI's (zsdemo.config.resolve_serve_config).

Precedence: command-line flag > ZSDEMO_* environment variable > the benchmark's own default (random init
for speed runs: the real architecture without a download) > the serving default (zsdemo.config).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from zsdemo.config import ENVIRONMENT, ServeConfig, resolve_serve_config

BENCH_DEFAULTS = {"pretrained": "none"}  # speeds are real at random init; no weights to fetch


def bench_config(flags: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> ServeConfig:
    """The serving config a benchmark measures: `flags` (None = not given) over the environment over
    `defaults` (BENCH_DEFAULTS unless given) over zsdemo.config's defaults."""
    environ = os.environ if environ is None else environ
    own = BENCH_DEFAULTS if defaults is None else defaults
    unset = {name: value for name, value in own.items() if not environ.get(ENVIRONMENT.get(name, ""), "").strip()}
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    return resolve_serve_config({**unset, **given}, environ=environ)
