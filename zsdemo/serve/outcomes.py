"""What the service answers, typed, for the page to format: it never parses the service's messages."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from zsdemo.store.layout import Hit


@dataclass
class SearchOutcome:
    """What a search gives the page: hits, or a message saying why there are none.

    kind: ok | empty | error | not_ready. `retry` (not_ready only): the gallery is still being prepared, so the
    same sketch will work once the service is ready (the page re-runs it then); False when preparing failed."""

    kind: str
    message: str
    hits: list[Hit] = field(default_factory=list)
    preview: Image.Image | None = None  # the cleaned sketch, as the model sees it
    seconds: float | None = None  # the engine's own time
    retry: bool = False
    mode_label: str | None = None  # the mode that answered, when the app serves more than one


@dataclass
class AddOutcome:
    ok: bool
    message: str
    added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ExplainOutcome:
    """Why a photo matched: the similarity map over the photo, or a message saying why there is none."""

    kind: str  # ok | empty | error | not_ready
    message: str
    image: Image.Image | None = None
    seconds: float | None = None
