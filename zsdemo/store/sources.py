"""Which photo folders a cache is built from: the ones given, else the ones it records, else (for a new cache
only) the bundled starter photos. Never silently swaps a user's gallery for the starter one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zsdemo.config import ServeConfig, resolve_hub_folder, resolve_serve_config
from zsdemo.errors import CacheError, ZsdemoError
from zsdemo.store.layout import is_new_cache, read_generation, recorded_sources


def gallery_sources(cache_dir: Path, galleries: Sequence[str]) -> list[Path] | None:
    """The folders to index into `cache_dir`: the ones given (checked: each must be a folder); else None, meaning
    the folders recorded in the cache; else, for a brand-new cache only, the starter photos."""
    if galleries:
        sources = [resolve_hub_folder(spec) for spec in galleries]
        files = [str(s) for s in sources if s.exists() and not s.is_dir()]
        if files:
            raise ZsdemoError(f"{', '.join(files)} {'is a file' if len(files) == 1 else 'are files'}, not a "
                              "folder: name the folder that holds the photos.")
        missing = [str(s) for s in sources if not s.is_dir()]
        if missing:
            raise ZsdemoError(f"Gallery folder not found: {', '.join(missing)}.")
        return sources
    if recorded_sources(cache_dir):
        return None
    if is_new_cache(cache_dir):
        from zsdemo.store.starter import starter_photos_dir

        return [starter_photos_dir(Path(cache_dir).parent)]
    raise CacheError(f"The cache {cache_dir} does not record which photo folders it was built from; name them: "
                     f"`python -m zsdemo index PHOTO_DIR... --cache {cache_dir}`.")


def live_manifest(cache_dir: Path) -> dict[str, Any] | None:
    """The manifest of a cache's live generation (what it was built with); None for a cache not built yet, or one
    that cannot be read (whoever opens it then says why)."""
    try:
        return read_generation(Path(cache_dir))[0]
    except CacheError:
        return None


def resolve_for_cache(flags: Mapping[str, Any] | None = None) -> ServeConfig:
    """The settings the app and the CLI serve a cache with: flag > environment > the cache's own manifest (its
    model, weights and prompts) > default, the cache being the one the flags and environment name."""
    return resolve_serve_config(flags, manifest=live_manifest(resolve_serve_config(flags).cache_dir))
