"""What the service has loaded and how far it is, in data for the page's info line and in words when it is
not ready yet."""

from __future__ import annotations

from typing import Any

from zsdemo.config import is_random_weights
from zsdemo.serve.modes import Mode


def _query_path(encoder: Any) -> Any:
    return getattr(encoder, "query_path", None) or getattr(getattr(encoder, "cfg", None), "query_precision", None)


def describe_mode(mode: Mode) -> dict[str, Any]:
    """One mode: name, label, phase, progress, prompts, query path, photos."""
    info: dict[str, Any] = {"name": mode.name, "label": mode.label, "phase": mode.status.phase,
                            "status": mode.status.message, "done": mode.status.done, "total": mode.status.total,
                            "cache_dir": str(mode.cache_dir)}
    if mode.encoder is not None:
        described = mode.encoder.describe()
        info.update(prompts=described.get("prompts"), prompts_sha256=described.get("prompts_sha256"),
                    spec=described.get("spec"), query_path=_query_path(mode.encoder))
    if mode.engine is not None:
        info.update(photos=len(mode.engine.gallery), search_backend=mode.engine.gallery.backend)
    return info


def describe_service(modes: list[Mode]) -> dict[str, Any]:
    """The model, prompts, query path and gallery, honest in every phase. The top-level keys describe the first
    mode; `modes` lists every mode."""
    first = modes[0]
    info: dict[str, Any] = {"phase": first.status.phase, "status": first.status.message,
                            "modes": [describe_mode(mode) for mode in modes]}
    if first.encoder is None:
        return info
    described = first.encoder.describe()
    info.update(model=described.get("model"), pretrained=described.get("pretrained"),
                random_weights=is_random_weights(str(described.get("pretrained"))),
                prompts=described.get("prompts"), prompts_sha256=described.get("prompts_sha256"),
                spec=described.get("spec"), query_path=_query_path(first.encoder),
                query_report=getattr(first.encoder, "query_report", None))
    if first.engine is not None:
        gallery = first.engine.gallery
        info.update(photos=len(gallery), search_backend=gallery.backend, skipped=len(gallery.skipped))
    return info


def not_ready_message(mode: Mode, first: Mode) -> str:
    """Why `mode` cannot answer yet (still preparing, with progress) or at all (preparing failed)."""
    s = mode.status
    which = "" if mode is first else f" for “{mode.label}”"
    if s.phase == "error":
        return f"The gallery{which} could not be prepared: {s.message}"
    progress = f" ({s.done}/{s.total})" if s.total else ""
    if mode is not first:
        return (f"Still preparing “{mode.label}”: {s.message}{progress}. “{first.label}” works now; "
                "this one in a moment.")
    return f"Still preparing the gallery: {s.message}{progress}. Your sketch will work in a moment."
