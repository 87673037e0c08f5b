"""Which photo folders a cache is built from: the ones given, else the ones it records, else (for a new cache
only) the bundled starter photos. Never silently swaps a user's gallery for the starter one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zsdemo.config import resolve_hub_folder
from zsdemo.errors import CacheError, ZsdemoError
from zsdemo.store.layout import is_new_cache, recorded_sources


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
