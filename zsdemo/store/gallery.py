"""A loaded gallery: one live generation of a cache, searched exactly or through its index. Read-only:
building and adding photos (zsdemo.store.build, zsdemo.store.uploads) write a new generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from zsdemo.errors import CacheError
from zsdemo.store.generation import ensure_index
from zsdemo.store.index import (
    INDEX_FILES,
    AnnoySearcher,
    HnswSearcher,
    IndexConfig,
    choose_backend,
    exact_search,
    open_searcher,
)
from zsdemo.store.layout import EntryView, Hit, PhotoEncoder, PhotoEntry, SkippedFile, read_generation


class Gallery:
    """One loaded generation of a gallery cache. Immutable: updates return a new Gallery.

    `embeddings` is normally a read-only memory map of the generation's embeddings.npy: opening a gallery
    reads no rows, and processes serving the same cache share the pages."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray, index_cfg: IndexConfig,
                 locked: bool = False) -> None:
        """`locked`: the caller holds the cache's build lock (a missing index file is then built without it)."""
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.embeddings = embeddings
        self.index_cfg = index_cfg
        self.entries: Sequence[PhotoEntry] = EntryView(manifest["entries"])
        self.skipped: list[SkippedFile] = [SkippedFile(**s) for s in manifest.get("skipped", [])]
        self.sources = [Path(s) for s in manifest["sources"]]
        self.generation_dir = cache_dir / manifest["generation"]
        self._searcher: AnnoySearcher | HnswSearcher | None = None
        if index_cfg.annoy_threshold is not None:  # an explicit threshold overrides the choice recorded at build
            wanted = choose_backend(len(self.entries), int(manifest["dim"]), index_cfg)
        else:  # the builder measured exact search's cost on its machine; reopening must not re-decide by noise
            wanted = manifest.get("index", "exact")
        if wanted in INDEX_FILES and self.entries:
            searcher_cfg, tuned = index_cfg, None
            if manifest.get("index") == wanted and (self.generation_dir / INDEX_FILES[wanted]).is_file():
                # built (and tuned) with the generation
                searcher_cfg = replace(index_cfg, n_trees=int(manifest.get("n_trees") or index_cfg.n_trees))
                tuned = manifest.get("search_k" if wanted == "annoy" else "ef")
            index_file = ensure_index(cache_dir, manifest, self._matrix_source(), wanted, index_cfg, locked)
            self._searcher = open_searcher(wanted, index_file, int(manifest["dim"]), searcher_cfg, tuned)

    thumbs_dir = property(lambda self: self.cache_dir / "thumbs")
    uploads_dir = property(lambda self: self.cache_dir / "uploads")

    def _matrix_source(self) -> np.ndarray | Path:
        path = self.generation_dir / "embeddings.npy"
        return path if isinstance(self.embeddings, np.memmap) and path.is_file() else self.embeddings

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def backend(self) -> str:
        if self._searcher is None:
            return "exact"
        return "annoy" if isinstance(self._searcher, AnnoySearcher) else "hnsw"

    def search(self, query: np.ndarray, k: int = 10) -> list[Hit]:
        """Top-k photos for an L2-normalised query vector."""
        if len(self.entries) == 0 or k <= 0:
            return []
        if self._searcher is not None:
            ids, scores = self._searcher.search(query, k)
        else:
            ids, scores = exact_search(self.embeddings, query, k)
        return [self.hit(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]

    def hit(self, row: int, score: float) -> Hit:
        """Row `row` of the gallery as a search result of similarity `score`."""
        entry = self.entries[row]
        return Hit(name=entry.name, photo=Path(entry.path), thumbnail=self.thumbs_dir / entry.thumb, score=score)

    def info(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "photos": len(self),
            "sources": [str(s) for s in self.sources],
            "search_backend": self.backend,
            "fingerprint": self.manifest["fingerprint"],
            "encoder": self.manifest["encoder"],
            "built": self.manifest["built"],
            "skipped": len(self.skipped),
        }

    @classmethod
    def open(cls, cache_dir: Path, encoder: PhotoEncoder, index_cfg: IndexConfig | None = None) -> Gallery:
        """Load the live generation; CacheError if missing, incomplete, corrupt or made for another model."""
        cache_dir = Path(cache_dir).resolve()
        manifest, embeddings = read_generation(cache_dir)
        if manifest["fingerprint"] != encoder.fingerprint():
            raise CacheError(
                f"The cache in {cache_dir} was built for another model or prompts "
                f"({manifest['encoder'].get('model')}, prompts {manifest['encoder'].get('prompts')}); "
                f"it is stale. Rebuild it from its own photo folders with `python -m zsdemo index --cache {cache_dir}`."
            )
        if embeddings.shape[1] != encoder.embed_dim:
            raise CacheError(f"The cache in {cache_dir} holds {embeddings.shape[1]}-d embeddings; the model makes "
                             f"{encoder.embed_dim}-d ones. Rebuild it with `python -m zsdemo index --cache {cache_dir}`.")
        return cls(cache_dir, manifest, embeddings, index_cfg or IndexConfig())
