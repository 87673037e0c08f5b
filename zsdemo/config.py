"""Serving configuration: the one place that knows the defaults and where each setting comes from.

Precedence, for every setting: command-line flag > environment variable > the gallery cache's manifest
(for the model a cache was built with) > the default below. The CLI, the app and the benchmarks all
resolve their settings through `resolve_serve_config`, so they agree.

`hf://` locations (a prompt file or a gallery folder on the Hugging Face Hub) are resolved here too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zsdemo.errors import ZsdemoError

DEFAULT_MODEL = "ViT-B-32-quickgelu"
DEFAULT_PRETRAINED = "openai"
RANDOM_WEIGHTS = ("none", "random", "")  # spellings of "random init, for tests only"
# Sketch query paths (zsdemo.query): photos are always encoded in fp32, only sketch queries use these.
AUTO = "auto"  # measure the paths that make sense on this CPU, keep the fastest close enough to fp32
QUERY_PATHS = ("fp32", "int8", "bf16", "onnx-fp32", "onnx-int8")
ALIASES = {"torch-fp32": "fp32", "torch-int8": "int8", "torch-bf16": "bf16"}
QUERY_PRECISIONS = (AUTO, *QUERY_PATHS, *ALIASES)  # every accepted query_precision value
DEFAULT_QUERY_PRECISION = AUTO
MIN_QUERY_COSINE = 0.99  # a reduced-precision query path is used only this close to fp32
DEFAULT_BATCH_SIZE = 32  # photos per encoder batch when indexing
DEFAULT_CACHE_ROOT = Path("gallery_cache")
STARTER_CACHE_NAME = "starter"

# setting -> environment variable. A Hugging Face Space is configured through these alone.
ENVIRONMENT = {
    "galleries": "ZSDEMO_GALLERY",
    "cache": "ZSDEMO_CACHE",
    "model": "ZSDEMO_MODEL",
    "pretrained": "ZSDEMO_PRETRAINED",
    "prompts": "ZSDEMO_PROMPTS",
    "fine_grained_prompts": "ZSDEMO_FINE_GRAINED_PROMPTS",
    "query_precision": "ZSDEMO_QUERY_PRECISION",
    "host": "GRADIO_SERVER_NAME",
    "port": "GRADIO_SERVER_PORT",
    "share": "ZSDEMO_SHARE",
    "max_upload_mb": "ZSDEMO_MAX_UPLOAD_MB",
    "queue_size": "ZSDEMO_QUEUE_SIZE",
    "concurrency": "ZSDEMO_CONCURRENCY",
    "index_threads": "ZSDEMO_INDEX_THREADS",
}
# Settings a cache manifest can supply: search/info on an existing cache default to its model.
FROM_MANIFEST = ("model", "pretrained", "prompts")


@dataclass
class ServeConfig:
    """Everything the CLI and the app need to serve a gallery. `galleries` empty = the starter photos
    (for a brand-new cache) or the folders recorded in an existing cache."""

    galleries: list[str] = field(default_factory=list)
    cache: str | None = None
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    prompts: str | None = None
    fine_grained_prompts: str | None = None
    query_precision: str = DEFAULT_QUERY_PRECISION
    host: str | None = None
    port: int | None = None
    share: bool = False
    default_k: int = 12
    max_k: int = 48
    max_upload_mb: int = 25
    max_photos_per_upload: int = 500
    queue_size: int = 32
    concurrency: int = 2
    index_threads: int = 1  # torch threads for background indexing, so searches keep a core

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache).expanduser() if self.cache else default_cache_dir(self.galleries)


def _parse(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(ServeConfig)}[name]
    if name == "galleries":
        return [part for part in raw.split(os.pathsep) if part.strip()]
    if kind == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "int" in str(kind):
        try:
            return int(raw)
        except ValueError:
            raise ZsdemoError(f"{ENVIRONMENT[name]}={raw!r} is not a whole number.") from None
    return raw


def resolve_serve_config(flags: Mapping[str, Any] | None = None, manifest: Mapping[str, Any] | None = None,
                         environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Flag > environment > cache manifest > default. `flags` values of None (or []) mean "not given"."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    encoder = (manifest or {}).get("encoder", {})
    for name in FROM_MANIFEST:
        if encoder.get(name):
            values[name] = encoder[name]
    for name, variable in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is not None and raw.strip():
            values[name] = _parse(name, raw)
    for name, value in (flags or {}).items():
        if value is not None and value != [] and name in {f.name for f in fields(ServeConfig)}:
            values[name] = value
    return ServeConfig(**values)


def canonical_path(precision: str) -> str:
    """'torch-int8' -> 'int8'; ZsdemoError for unknown names."""
    name = ALIASES.get(precision.strip().lower(), precision.strip().lower())
    if name != AUTO and name not in QUERY_PATHS:
        raise ZsdemoError(f"query_precision must be one of {', '.join(QUERY_PRECISIONS)}, not {precision!r}.")
    return name


def is_random_weights(pretrained: str) -> bool:
    return pretrained.strip().lower() in RANDOM_WEIGHTS


def default_cache_dir(galleries: Sequence[str]) -> Path:
    """gallery_cache/starter for the starter photos; gallery_cache/<first folder>-<hash> for a user's."""
    if not galleries:
        return DEFAULT_CACHE_ROOT / STARTER_CACHE_NAME
    first = galleries[0].rstrip("/").split("/")[-1] or "gallery"
    digest = hashlib.sha256("\n".join(galleries).encode()).hexdigest()[:8]
    return DEFAULT_CACHE_ROOT / f"{first}-{digest}"


# ---- Hugging Face Hub locations (hf://...), resolved to local paths ---------------------------
def parse_hub_spec(spec: str) -> tuple[str, str, str | None, str]:
    """'hf://[datasets/|spaces/]OWNER/NAME[@REV][/PATH]' -> (repo_type, repo_id, revision, path)."""
    rest = spec.removeprefix("hf://")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space"), ("models/", "model")):
        if rest.startswith(prefix):
            repo_type, rest = kind, rest[len(prefix):]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ZsdemoError(f"{spec!r} is not a hub location: use hf://[datasets/]OWNER/NAME[@REVISION][/PATH].")
    name, _, revision = parts[1].partition("@")
    return repo_type, f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def _hub_error(spec: str, exc: Exception, what: str) -> ZsdemoError:
    return ZsdemoError(f"Could not fetch {spec} from the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}). "
                       f"Check the name and your network, or download it and pass {what}.")


def resolve_hub_file(spec: str) -> str:
    """A local file path for `spec`; hf:// locations are downloaded into the Hugging Face cache."""
    if not spec.startswith("hf://"):
        return spec
    import huggingface_hub

    repo_type, repo_id, revision, path = parse_hub_spec(spec)
    if not path:
        raise ZsdemoError(f"{spec!r} names a repository, not a file: add the file name, e.g. {spec}/prompts.safetensors.")
    try:
        return huggingface_hub.hf_hub_download(repo_id, path, repo_type=repo_type, revision=revision)
    except Exception as exc:
        raise _hub_error(spec, exc, "a local path") from None


def resolve_hub_folder(spec: str) -> Path:
    """A local folder for `spec`; hf:// dataset locations are snapshot-downloaded (cached, so cheap on restart)."""
    if not spec.startswith("hf://"):
        return Path(spec).expanduser()
    import huggingface_hub

    repo_type, repo_id, revision, path = parse_hub_spec(spec)
    patterns = [f"{path.rstrip('/')}/**"] if path else None
    try:
        local = huggingface_hub.snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns)
    except Exception as exc:
        raise _hub_error(spec, exc, "--gallery with a local folder") from None
    return Path(local) / path if path else Path(local)
