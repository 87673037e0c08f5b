"""The ways one app searches: "this kind of thing" (category-level prompts, `--prompts`), "this exact one"
(fine-grained prompts, one shared prompt for sketch and photo, `--fine-grained-prompts`), or plain CLIP
when no prompt file is given. Each mode has its prompts, an encoder on the shared backbone, a gallery
cache and a search engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsdemo.config import ServeConfig
from zsdemo.errors import ZsdemoError

CATEGORY, FINE_GRAINED, PLAIN = "category", "fine_grained", "plain"
MODE_LABELS = {CATEGORY: "Find this kind of thing", FINE_GRAINED: "Find this exact one",
               PLAIN: "Find similar photos (plain CLIP)"}
MODE_FLAGS = {CATEGORY: ("--prompts", "ZSDEMO_PROMPTS"),
              FINE_GRAINED: ("--fine-grained-prompts", "ZSDEMO_FINE_GRAINED_PROMPTS")}


def served_modes(config: ServeConfig) -> list[str]:
    """The modes a config serves, first = the default: category and/or fine-grained, else plain CLIP."""
    modes = [name for name, given in ((CATEGORY, config.prompts), (FINE_GRAINED, config.fine_grained_prompts)) if given]
    return modes or [PLAIN]


def check_prompt_kind(path: str, mode: str) -> None:
    """Refuse a checkpoint given for the wrong mode, naming the flag it belongs to. Fine-grained checkpoints have
    one shared prompt (spec.shared); category-level ones a sketch and a photo prompt."""
    from zsdemo.model.prompts import read_checkpoint

    shared = read_checkpoint(path).spec.shared
    if mode == CATEGORY and shared:
        raise ZsdemoError(f"{Path(path).name} is a fine-grained checkpoint (one shared prompt for sketch and photo): "
                          "pass it with --fine-grained-prompts (or ZSDEMO_FINE_GRAINED_PROMPTS), not --prompts.")
    if mode == FINE_GRAINED and not shared:
        raise ZsdemoError(f"{Path(path).name} is a category-level checkpoint (separate sketch and photo prompts): "
                          "pass it with --prompts (or ZSDEMO_PROMPTS), not --fine-grained-prompts.")


@dataclass
class Status:
    phase: str = "starting"  # starting | loading | indexing | waiting | ready | error
    message: str = "Starting…"
    done: int = 0
    total: int = 0

    @property
    def settled(self) -> bool:
        return self.phase in ("ready", "error")


@dataclass
class Mode:
    """One way of searching: its prompts, encoder (sharing the backbone), gallery cache and search engine."""

    name: str
    prompts: str | None  # the checkpoint as given (a path or hf:// spec); None = plain CLIP
    cache_dir: Path
    encoder: Any | None = None
    engine: Any | None = None
    status: Status = field(default_factory=Status)
    names: tuple[Any, dict[str, int]] | None = None  # (gallery, photo name -> row), for /explain by name

    @property
    def label(self) -> str:
        return MODE_LABELS[self.name]
