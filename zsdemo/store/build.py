"""Building a gallery cache: plan against the live generation, encode what is new (resumably), write a new
generation. Builds into one cache are serialised by its file lock; a failed build leaves the previous
generation live."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsdemo.errors import CacheError
from zsdemo.model.preprocess import PHOTO_EXTENSIONS
from zsdemo.store.gallery import Gallery
from zsdemo.store.generation import (
    collect_garbage,
    gather_rows,
    has_finished_shards,
    remove_unfinished,
    write_generation,
)
from zsdemo.store.index import INDEX_FILES, IndexConfig
from zsdemo.store.layout import (
    PhotoEncoder,
    PhotoEntry,
    ProgressFn,
    SkippedFile,
    WaitFn,
    cache_lock,
    open_matrix,
    read_generation,
    recorded_sources,
)
from zsdemo.store.plan import UpdatePlan, plan_update, scan_photos
from zsdemo.store.runs import EncodeRun, RunnerFn, encode_locally

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    total: int = 0
    added: int = 0
    removed: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    renamed: list[tuple[str, str]] = field(default_factory=list)  # uploads stored under a safe name: (given, stored)

    def summary(self) -> str:
        text = (f"{self.total} photos indexed ({self.added} new, {self.reused} reused, {self.removed} removed) "
                f"in {self.seconds:.1f} s")
        if self.skipped:
            text += f"; {len(self.skipped)} skipped:\n" + "\n".join(f"  {p}: {why}" for p, why in self.skipped)
        return text


def build_gallery(sources: list[Path] | None, cache_dir: Path, encoder: PhotoEncoder,
                  progress: ProgressFn | None = None, index_cfg: IndexConfig | None = None,
                  on_wait: WaitFn | None = None, runner: RunnerFn | None = None,
                  shard_size: int | None = None) -> tuple[Gallery, BuildReport]:
    """Index the photos under `sources` into `cache_dir`, encoding only new or changed files.

    `sources=None` rebuilds from the folders recorded in the cache (CacheError if it records none).
    A folder holding no photos at all is refused (CacheError), and leaves no cache folder behind.
    `runner` encodes the run's shards (default: in this process; zsdemo.store.distributed spreads them over
    processes); it is called under the cache lock, only when there is something to encode.
    """
    started = time.perf_counter()
    index_cfg = index_cfg or IndexConfig()
    cache_dir = Path(cache_dir).expanduser().resolve()
    sources = checked_sources(sources, cache_dir)
    created = not cache_dir.exists()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with cache_lock(cache_dir, on_wait):
            try:
                gallery, report = _build_locked(list(sources), cache_dir, encoder, progress, index_cfg,
                                                runner or encode_locally, shard_size)
            except Exception as exc:
                # A failed build leaves the previous generation live and nothing of its own behind; only
                # an interruption (KeyboardInterrupt, kill -9), a lost process (`resumable`) or a run that
                # already finished shards (a rank killed under a distributed build: the survivor sees only a
                # communication error) keeps them for the next run, which resumes the same plan's folder.
                if not getattr(exc, "resumable", False) and not has_finished_shards(cache_dir):
                    remove_unfinished(cache_dir)
                raise
    except BaseException as exc:
        # A first build that fails leaves no cache folder, unless it was interrupted after encoding some
        # shards: those are kept for the next run to resume from.
        if created and not (cache_dir / "CURRENT").exists() \
                and (isinstance(exc, CacheError) or not has_finished_shards(cache_dir)):
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - started
    log.info("%s", report.summary())
    return gallery, report


def checked_sources(sources: list[Path] | None, cache_dir: Path) -> list[Path]:
    """The folders to index (None: the ones the cache records), checked before anything is created, so a refused
    build leaves nothing behind (and the CLI can refuse before it loads a model)."""
    if sources is None:
        sources = recorded_sources(cache_dir)
        if not sources:
            raise CacheError(f"The cache {cache_dir} does not record which photo folders it was built from; "
                             f"name them: `python -m zsdemo index PHOTO_DIR... --cache {cache_dir}`.")
    if not scan_photos(sources, exclude=cache_dir) and not any((cache_dir / "uploads").glob("*")):
        folders = ", ".join(str(Path(s).resolve()) for s in sources)
        raise CacheError(f"No photos in {folders} ({', '.join(PHOTO_EXTENSIONS)} files, searched recursively). "
                         "Add photos there or point to another folder.")
    return list(sources)


def _build_locked(sources: list[Path], cache_dir: Path, encoder: PhotoEncoder, progress: ProgressFn | None,
                  index_cfg: IndexConfig, runner: RunnerFn, shard_size: int | None) -> tuple[Gallery, BuildReport]:
    (cache_dir / "thumbs").mkdir(exist_ok=True)
    old_manifest, old_emb = None, None
    try:
        old_manifest, old_emb = read_generation(cache_dir)
    except CacheError as exc:
        if (cache_dir / "CURRENT").exists():
            log.warning("Rebuilding %s: %s", cache_dir, exc)
    plan = plan_update(sources, cache_dir, encoder.fingerprint(), encoder.embed_dim, old_manifest)
    if plan.stale_model:
        log.info("Cache in %s is stale (other model, weights or prompts): re-encoding its photos.", cache_dir)
    report = BuildReport(reused=len(plan.reuse), removed=len(plan.remove),
                         skipped=[(s.path, s.reason) for s in plan.skip])
    if old_manifest is not None and old_emb is not None and not plan.changed:
        report.total = len(plan.reuse)
        return Gallery(cache_dir, old_manifest, old_emb, index_cfg, locked=True), report

    # (entry, source, row): source -1 is the old generation's matrix, s >= 0 the run's shard s
    rows: list[tuple[PhotoEntry, int, int]] = [(entry, -1, row) for entry, row in plan.reuse]
    skipped = list(plan.skip)
    matrices: dict[int, np.ndarray] = {} if old_emb is None else {-1: old_emb}
    if plan.encode:
        report.added = _encode_new(plan, cache_dir, encoder, progress, runner, shard_size, rows, skipped, matrices)
    report.skipped = [(s.path, s.reason) for s in skipped]
    report.total = len(rows)
    if not rows:
        raise CacheError(f"None of the {len(skipped)} photo files could be read, so there is nothing to search:\n"
                         + "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:10]))
    extend_from = extendable_index(cache_dir, old_manifest, plan)
    if extend_from is not None:
        # the old rows keep their places, the new ones follow: the old HNSW index grows by the new rows only
        rows.sort(key=lambda r: (r[1] >= 0, r[2] if r[1] < 0 else 0, r[0].name))
    else:
        rows.sort(key=lambda r: r[0].name)  # stable: same order as before (reused first among equal names)
    manifest = write_generation(cache_dir, [r[0] for r in rows], gather_rows(rows, matrices, encoder.embed_dim),
                                plan.sources, encoder, index_cfg, skipped, extend_from)
    collect_garbage(cache_dir, manifest)
    return Gallery(cache_dir, manifest, open_matrix(cache_dir / manifest["generation"]), index_cfg, locked=True), report


def extendable_index(cache_dir: Path, manifest: dict | None, plan: UpdatePlan) -> Path | None:
    """The live generation's HNSW index when this update only adds photos to it (every old row kept, none
    changed, same model), so the new generation can extend it; else None (a full build)."""
    if manifest is None or manifest.get("index") != "hnsw" or plan.stale_model or plan.remove:
        return None
    index_file = cache_dir / manifest["generation"] / INDEX_FILES["hnsw"]
    kept = sorted(row for _, row in plan.reuse)
    if kept != list(range(len(manifest["entries"]))) or not index_file.is_file():
        return None
    return index_file


def _encode_new(plan: UpdatePlan, cache_dir: Path, encoder: PhotoEncoder, progress: ProgressFn | None,
                runner: RunnerFn, shard_size: int | None, rows: list[tuple[PhotoEntry, int, int]],
                skipped: list[SkippedFile], matrices: dict[int, np.ndarray]) -> int:
    """Encode the plan's new photos through `runner` and append their rows; how many were added."""
    if progress:
        progress(0, len(plan.encode), f"Indexing {len(plan.encode)} new photos ({len(plan.reuse)} cached)")
    run = EncodeRun.prepare(cache_dir, plan.encode, encoder.fingerprint(), encoder.embed_dim, shard_size)
    runner(run, encoder, progress)
    added = 0
    for shard in range(run.n_shards):
        if not run.is_done(shard):
            lost = CacheError(f"Shard {shard} of {run.dir} was not encoded; run the build again to finish it.")
            lost.resumable = True  # type: ignore[attr-defined]
            raise lost
        entries, shard_skipped, matrix = run.read_shard(shard)
        rows += [(entry, shard, i) for i, entry in enumerate(entries)]
        skipped += shard_skipped
        matrices[shard] = matrix
        added += len(entries)
    return added


def create_gallery(cache_dir: Path, entries: list[PhotoEntry], embeddings: np.ndarray, sources: list[Path],
                   encoder: PhotoEncoder, index_cfg: IndexConfig | None = None) -> Gallery:
    """A gallery from entries and embeddings made elsewhere (benchmarks, tests, imports); written as a
    generation like any build. The entries' thumbnails must already be in `cache_dir/thumbs`.
    `embeddings` may be a memory map: it is streamed to the cache in chunks."""
    cache_dir = Path(cache_dir).expanduser().resolve()
    if len(entries) != len(embeddings):
        raise ValueError(f"{len(entries)} entries for {len(embeddings)} embeddings")
    index_cfg = index_cfg or IndexConfig()
    (cache_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_dir):
        manifest = write_generation(cache_dir, entries, embeddings, [Path(s) for s in sources], encoder,
                                    index_cfg, [])
        collect_garbage(cache_dir, manifest)
        return Gallery(cache_dir, manifest, open_matrix(cache_dir / manifest["generation"]), index_cfg, locked=True)
