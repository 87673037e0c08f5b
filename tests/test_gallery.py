"""The gallery cache on disk: build, reuse, incremental update, staleness, interrupted builds, Annoy vs exact."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zsdemo.errors import CacheError, EmptySketchError
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder
from zsdemo.model.prompts import PromptedViT, PromptSpec, save_checkpoint
from zsdemo.search.engine import SearchEngine, blend
from zsdemo.store.build import build_gallery, create_gallery
from zsdemo.store.gallery import Gallery
from zsdemo.store.index import IndexConfig, estimate_exact_ms
from zsdemo.store.layout import PhotoEntry, read_generation, recorded_sources
from zsdemo.store.plan import plan_update
from zsdemo.store.uploads import add_photos


class CountingEncoder:
    """Wraps the real tiny encoder and counts how many photos it was asked to encode."""

    def __init__(self, inner: SketchPhotoEncoder) -> None:
        self.inner = inner
        self.embed_dim = inner.embed_dim
        self.cfg = inner.cfg
        self.encoded = 0

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def describe(self) -> dict:
        return self.inner.describe()

    def encode_photos(self, photos):
        self.encoded += len(photos)
        return self.inner.encode_photos(photos)


def make_photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + n):
        image = Image.new("RGB", (96, 72), tuple(int(c) for c in rng.integers(0, 255, 3)))
        ImageDraw.Draw(image).ellipse((10 + i % 20, 10, 60, 60), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = folder / f"photo_{i:03d}.{['jpg', 'png', 'webp', 'bmp'][i % 4]}"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture()
def encoder(tiny_encoder):
    return CountingEncoder(tiny_encoder)


def test_build_then_reuse_then_incremental(tmp_path, encoder):
    photos = tmp_path / "photos"
    make_photos(photos / "a", 6)
    make_photos(photos / "b" / "deep", 4, start=6)
    gallery, report = build_gallery([photos], tmp_path / "cache", encoder)
    assert (report.total, report.added, encoder.encoded) == (10, 10, 10)
    assert {e.name for e in gallery.entries} >= {"a/photo_000.jpg", "b/deep/photo_009.png"}
    assert all(Path(gallery.thumbs_dir / e.thumb).is_file() for e in gallery.entries)
    generation = gallery.generation_dir

    # nothing changed: nothing encoded, nothing rewritten
    again, report = build_gallery([photos], tmp_path / "cache", encoder)
    assert (report.added, report.reused, encoder.encoded) == (0, 10, 10)
    assert again.generation_dir == generation

    # two added, one removed, one modified: only three encoded
    make_photos(photos / "a", 2, start=20)
    (photos / "a" / "photo_000.jpg").unlink()
    modified = photos / "a" / "photo_001.png"
    Image.new("RGB", (50, 50), "purple").save(modified)
    os.utime(modified, ns=(1, 10**18))
    updated, report = build_gallery([photos], tmp_path / "cache", encoder)
    assert (report.total, report.added, report.removed, report.reused) == (11, 3, 1, 8)
    assert encoder.encoded == 13
    assert not generation.exists(), "old generations are cleaned up"
    assert len(list(gallery.thumbs_dir.iterdir())) == 11, "unreferenced thumbnails are removed"


def test_embeddings_match_a_fresh_encoding(tmp_path, tiny_encoder):
    paths = make_photos(tmp_path / "p", 5)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    by_path = {e.path: gallery.embeddings[i] for i, e in enumerate(gallery.entries)}
    fresh = tiny_encoder.encode_photos(paths)
    for path, vector in zip(paths, fresh, strict=True):
        assert np.allclose(by_path[str(path.resolve())], vector, atol=1e-5)


def test_photo_query_returns_itself_first(tmp_path, tiny_encoder):
    paths = make_photos(tmp_path / "p", 8)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    result = SearchEngine(tiny_encoder, gallery).search_photo(paths[3], k=3)
    assert result.hits[0].photo == paths[3].resolve()
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert result.hits[0].score >= result.hits[1].score >= result.hits[2].score


def test_unreadable_files_are_skipped_and_listed(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 3)
    (tmp_path / "p" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "p" / "notes.txt").write_text("ignored: not an image extension")
    gallery, report = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    assert len(gallery) == 3
    assert [Path(p).name for p, _ in report.skipped] == ["broken.jpg"]
    assert "broken.jpg" in report.summary()


def test_stale_cache_is_detected_and_rebuilt(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 4)
    build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    prompts = save_checkpoint(tmp_path / "prompts.safetensors", PromptedViT(tiny_encoder.clip.visual, PromptSpec(3)),
                              "zsdemo-tiny-vit", "none", "1")
    prompted = CountingEncoder(SketchPhotoEncoder.load(
        EncoderConfig(model="zsdemo-tiny-vit", pretrained="none", prompts=str(prompts))))
    with pytest.raises(CacheError, match="stale"):
        Gallery.open(tmp_path / "c", prompted)
    gallery, report = build_gallery([tmp_path / "p"], tmp_path / "c", prompted)
    assert report.added == 4 and prompted.encoded == 4
    assert Gallery.open(tmp_path / "c", prompted).manifest["fingerprint"] == prompted.fingerprint()


def test_interrupted_build_keeps_the_previous_cache(tmp_path, tiny_encoder, monkeypatch):
    make_photos(tmp_path / "p", 4)
    first, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    make_photos(tmp_path / "p", 3, start=10)

    import zsdemo.store.generation as generation_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the index")

    monkeypatch.setattr(generation_module, "write_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    monkeypatch.undo()
    survivor = Gallery.open(tmp_path / "c", tiny_encoder)
    assert len(survivor) == 4 and survivor.generation_dir == first.generation_dir
    # the next build finishes the job and removes the half-written generation
    done, report = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    assert len(done) == 7 and len(list((tmp_path / "c").glob("gen-*"))) == 1


def test_interrupted_first_build_leaves_no_valid_cache(tmp_path, tiny_encoder, monkeypatch):
    make_photos(tmp_path / "p", 2)
    import zsdemo.store.generation as generation_module

    monkeypatch.setattr(generation_module, "write_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    with pytest.raises(CacheError, match="No gallery cache"):
        Gallery.open(tmp_path / "c", tiny_encoder)


@pytest.mark.parametrize("damage", ["manifest", "embeddings", "index", "pointer"])
def test_damaged_cache_is_refused_then_rebuilt(tmp_path, tiny_encoder, damage):
    make_photos(tmp_path / "p", 3)
    annoy = IndexConfig(annoy_threshold=2)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=annoy)
    gen = gallery.generation_dir
    if damage == "manifest":
        (gen / "manifest.json").write_text('{"version": 1, "entries": [')
    elif damage == "embeddings":
        np.save(gen / "embeddings.npy", np.zeros((2, 32), np.float32))
    elif damage == "index":
        (gen / "index.ann").unlink()
    else:
        (tmp_path / "c" / "CURRENT").write_text("gen-does-not-exist")
    with pytest.raises(CacheError):
        Gallery.open(tmp_path / "c", tiny_encoder)
    rebuilt, report = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=annoy)
    assert report.added == 3 and len(Gallery.open(tmp_path / "c", tiny_encoder)) == 3


def test_annoy_backend_agrees_with_exact_on_a_real_cache(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 40)
    exact, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    assert not (exact.generation_dir / "index.ann").exists(), "no Annoy index where exact search is used"
    annoy = Gallery.open(tmp_path / "c", tiny_encoder, IndexConfig(annoy_threshold=10))
    assert exact.backend == "exact" and annoy.backend == "annoy"
    for row in range(0, 40, 7):
        q = exact.embeddings[row]
        e, a = exact.search(q, 5), annoy.search(q, 5)
        assert e[0].photo == a[0].photo
        assert [h.score for h in a] == pytest.approx([h.score for h in e], abs=1e-4)


def test_add_photos_copies_into_uploads_and_persists(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 3)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    new = make_photos(tmp_path / "incoming", 2, start=50)
    junk = tmp_path / "incoming" / "evil.png"
    junk.write_text("<script>")
    updated, report = add_photos(gallery, [*new, junk], tiny_encoder)
    assert len(updated) == 5 and len(gallery) == 3, "the old object stays valid for readers"
    assert [name for name, _ in report.skipped] == ["evil.png"]
    assert len(list(updated.uploads_dir.iterdir())) == 2
    shutil.rmtree(tmp_path / "incoming")  # the originals may go away: the copies persist
    reopened, report = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    assert len(reopened) == 5 and report.added == 0
    hit = SearchEngine(tiny_encoder, reopened).search_photo(updated.uploads_dir / sorted(
        p.name for p in updated.uploads_dir.iterdir())[0], k=1).hits[0]
    assert hit.photo.parent == updated.uploads_dir.resolve() and hit.score == pytest.approx(1.0, abs=1e-4)


def test_manifest_records_files_model_and_index(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 2)
    build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    manifest, embeddings = read_generation(tmp_path / "c")
    assert manifest["encoder"]["model"] == "zsdemo-tiny-vit" and manifest["metric"] == "angular"
    assert manifest["fingerprint"] == tiny_encoder.fingerprint()
    assert {"path", "size", "mtime_ns", "thumb", "name"} <= set(manifest["entries"][0])
    assert manifest["index"] == "exact" and manifest["skipped"] == []
    assert embeddings.shape == (2, 32)
    json.dumps(manifest)


def test_missing_gallery_folder_is_a_clear_error(tmp_path, tiny_encoder):
    with pytest.raises(CacheError, match="does not exist"):
        build_gallery([tmp_path / "nope"], tmp_path / "c", tiny_encoder)


def test_sketch_search_and_text_blend(tmp_path, tiny_encoder):
    from conftest import draw_sketch

    make_photos(tmp_path / "p", 6)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    engine = SearchEngine(tiny_encoder, gallery)
    sketch = np.asarray(draw_sketch(300, "circle"))
    plain = engine.search_sketch(sketch, k=6)
    assert len(plain.hits) == 6 and plain.preview.width == plain.preview.height
    off = engine.search_sketch(sketch, k=6, text="red", text_weight=0.0)
    assert [(h.photo, h.score) for h in off.hits] == [(h.photo, h.score) for h in plain.hits]
    on = engine.search_sketch(sketch, k=6, text="red", text_weight=0.9)
    assert [h.score for h in on.hits] != [h.score for h in plain.hits]
    with pytest.raises(EmptySketchError):
        engine.search_sketch({"width": 448, "height": 448, "strokes": []})


def test_blend_is_normalised_and_identity_at_zero():
    rng = np.random.default_rng(0)
    s, t = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 16)).astype(np.float32))
    assert blend(s, t, 0.0) is s and blend(s, None, 0.5) is s
    mixed = blend(s, t, 0.5)
    assert np.linalg.norm(mixed) == pytest.approx(1.0, abs=1e-6)
    assert mixed @ t > s @ t


# ---- a user's data survives ---------------------------------------------------------------------
def test_rebuild_without_folders_keeps_the_users_photos(tmp_path, tiny_encoder):
    make_photos(tmp_path / "mine", 5)
    build_gallery([tmp_path / "mine"], tmp_path / "c", tiny_encoder)
    prompts = save_checkpoint(tmp_path / "prompts.safetensors", PromptedViT(tiny_encoder.clip.visual, PromptSpec(3)),
                              "zsdemo-tiny-vit", "none", "1")
    other = SketchPhotoEncoder.load(EncoderConfig(model="zsdemo-tiny-vit", pretrained="none", prompts=str(prompts)))
    assert recorded_sources(tmp_path / "c") == [(tmp_path / "mine").resolve()]
    rebuilt, report = build_gallery(None, tmp_path / "c", other)  # stale model, no folders named
    assert report.added == 5 and {e.name for e in rebuilt.entries} == {f"photo_{i:03d}.{['jpg', 'png', 'webp', 'bmp'][i % 4]}" for i in range(5)}
    assert rebuilt.sources == [(tmp_path / "mine").resolve()]
    # a damaged CURRENT still tells which folders to use
    (tmp_path / "c" / "CURRENT").write_text("gen-gone")
    assert recorded_sources(tmp_path / "c") == [(tmp_path / "mine").resolve()]


def test_a_photo_that_turns_unreadable_leaves_the_index(tmp_path, encoder):
    paths = make_photos(tmp_path / "p", 4)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", encoder)
    victim = paths[1]
    old_thumb = next(e.thumb for e in gallery.entries if e.path == str(victim.resolve()))
    Image.new("RGB", (40, 40), "green").save(victim)  # changes...
    victim.write_bytes(b"\x89PNG truncated")  # ...then becomes unreadable
    updated, report = build_gallery([tmp_path / "p"], tmp_path / "c", encoder)
    assert len(updated) == 3 and str(victim.resolve()) not in {e.path for e in updated.entries}
    assert [Path(p).name for p, _ in report.skipped] == [victim.name]
    assert not (updated.thumbs_dir / old_thumb).exists(), "its stale thumbnail is gone too"
    assert [s.path for s in updated.skipped] == [str(victim.resolve())]
    # not retried (and not reported as changed) until the file changes again
    plan = plan_update([tmp_path / "p"], tmp_path / "c", encoder.fingerprint(), manifest=updated.manifest)
    assert not plan.changed and len(plan.skip) == 1
    encoded = encoder.encoded
    again, report = build_gallery([tmp_path / "p"], tmp_path / "c", encoder)
    assert again.generation_dir == updated.generation_dir and encoder.encoded == encoded
    Image.new("RGB", (40, 40), "blue").save(victim)
    os.utime(victim, ns=(1, 10**18))
    fixed, report = build_gallery([tmp_path / "p"], tmp_path / "c", encoder)
    assert len(fixed) == 4 and report.added == 1 and fixed.skipped == []


def test_a_folder_without_photos_is_refused_and_leaves_nothing(tmp_path, tiny_encoder):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(CacheError, match="No photos in"):
        build_gallery([tmp_path / "empty"], tmp_path / "c", tiny_encoder)
    assert not (tmp_path / "c").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(CacheError, match="None of the 1 photo files could be read"):
        build_gallery([tmp_path / "bad"], tmp_path / "c", tiny_encoder)
    assert not (tmp_path / "c").exists()


def test_gallery_create_is_the_public_constructor(tmp_path, tiny_encoder):
    paths = make_photos(tmp_path / "p", 3)
    vectors = tiny_encoder.encode_photos(paths)
    (tmp_path / "c" / "thumbs").mkdir(parents=True)
    entries = []
    for i, path in enumerate(paths):
        Image.open(path).save(tmp_path / "c" / "thumbs" / f"t{i}.jpg")
        entries.append(PhotoEntry(path.name, str(path), path.stat().st_size, path.stat().st_mtime_ns, f"t{i}.jpg"))
    made = create_gallery(tmp_path / "c", entries, vectors, [tmp_path / "p"], tiny_encoder)
    reopened = Gallery.open(tmp_path / "c", tiny_encoder)
    assert len(reopened) == 3 and reopened.search(vectors[2], 1)[0].name == paths[2].name
    assert made.generation_dir == reopened.generation_dir


# ---- scale: memory-mapped generations, the index chosen at build time -------------------------------------
def test_generations_are_memory_mapped_and_searched_in_place(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 6)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    reopened = Gallery.open(tmp_path / "c", tiny_encoder)
    for g in (gallery, reopened):
        assert isinstance(g.embeddings, np.memmap) and not g.embeddings.flags.writeable
    hits = reopened.search(reopened.embeddings[4], 3)
    assert hits[0].name == reopened.entries[4].name and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # a reader keeps a working gallery after an update removes its generation (the map outlives the file)
    make_photos(tmp_path / "p", 2, start=30)
    updated, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    assert not reopened.generation_dir.exists() and len(updated) == 8
    assert reopened.search(reopened.embeddings[1], 1)[0].name == reopened.entries[1].name


def test_the_index_choice_and_tuned_search_k_are_recorded_at_build(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 40)
    budget = IndexConfig(min_annoy_items=10, latency_budget_ms=0.0, n_trees=5,  # any exact search is "too slow"
                         approximate="annoy")
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=budget)
    manifest = gallery.manifest
    assert manifest["index"] == "annoy" and gallery.backend == "annoy"
    # recorded to significant figures, from the same (cached) measurement: never rounded to 0 on a fast CPU
    assert manifest["exact_ms_estimate"] == pytest.approx(estimate_exact_ms(40, 32), rel=0.01)
    assert manifest["exact_ms_estimate"] > 0 and manifest["latency_budget_ms"] == 0.0
    assert manifest["search_k"] >= 1000 and manifest["tuned_recall_at_10"] >= 0.95 and manifest["n_trees"] == 5
    # reopened with the default config on (say) a faster machine: the builder's measured choice stands
    reopened = Gallery.open(tmp_path / "c", tiny_encoder)
    assert reopened.backend == "annoy" and reopened._searcher.search_k == manifest["search_k"]
    exact = Gallery.open(tmp_path / "c", tiny_encoder, IndexConfig(annoy_threshold=10**6))
    assert exact.backend == "exact", "an explicit threshold still overrides"
    for row in range(0, 40, 9):
        assert reopened.search(exact.embeddings[row], 1)[0].name == exact.search(exact.embeddings[row], 1)[0].name
    # small galleries stay exact under the default budget (min_annoy_items)
    small, _ = build_gallery([tmp_path / "p"], tmp_path / "c2", tiny_encoder)
    assert small.backend == "exact" and "exact_ms_estimate" not in small.manifest


def test_past_the_budget_an_hnsw_index_is_built_recorded_reused_and_rebuilt_on_update(tmp_path, tiny_encoder,
                                                                                       monkeypatch):
    make_photos(tmp_path / "p", 40)
    budget = IndexConfig(min_annoy_items=10, latency_budget_ms=0.0)  # default approximate index: HNSW
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=budget)
    manifest = gallery.manifest
    assert manifest["index"] == "hnsw" and gallery.backend == "hnsw"
    assert (manifest["hnsw_m"], manifest["hnsw_ef_construction"]) == (budget.hnsw_m, budget.hnsw_ef_construction)
    assert manifest["ef"] >= 10 and manifest["tuned_recall_at_10"] >= 0.95 and manifest["measured_p50_ms"] > 0
    index_file = gallery.generation_dir / "index.voy"
    assert index_file.is_file() and not (gallery.generation_dir / "index.ann").exists()
    # reopening uses the index on disk, as built and tuned: nothing is rebuilt
    import zsdemo.store.generation as generation_module

    def no_build(*args, **kwargs):
        raise AssertionError("the index was rebuilt on open")

    monkeypatch.setattr(generation_module, "build_index", no_build)
    reopened = Gallery.open(tmp_path / "c", tiny_encoder)
    assert reopened.backend == "hnsw" and reopened._searcher.ef == manifest["ef"]
    for row in range(0, 40, 7):
        hits = reopened.search(reopened.embeddings[row], 3)
        assert hits[0].name == reopened.entries[row].name and hits[0].score == pytest.approx(1.0, abs=1e-4)
    monkeypatch.undo()
    # adding photos writes a new generation with its own index over every row, consistent with exact search
    make_photos(tmp_path / "p" / "a", 5, start=100)  # "a/photo_1xx" sorts before every old name
    updated, report = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=budget)
    assert report.added == 5 and len(updated) == 45 and updated.backend == "hnsw"
    assert updated.generation_dir != gallery.generation_dir and (updated.generation_dir / "index.voy").is_file()
    assert len(updated._searcher) == 45
    # only photos were added: the old rows keep their places and the old index grows by the 5 new rows
    assert updated.manifest["index_extended"] == {"from": gallery.manifest["generation"], "added_rows": 5}
    assert [e.name for e in updated.entries[:40]] == [e.name for e in gallery.entries]
    assert updated.manifest["tuned_recall_at_10"] >= 0.95
    exact = Gallery.open(tmp_path / "c", tiny_encoder, IndexConfig(annoy_threshold=10**6))
    for row in range(45):
        q = exact.embeddings[row]
        assert [h.name for h in updated.search(q, 5)] == [h.name for h in exact.search(q, 5)]
    # a removed photo is not an append: the index is built afresh over the name-sorted rows
    removed = sorted((tmp_path / "p").glob("*.*"))[3]
    removed.unlink()
    rebuilt, report = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=budget)
    assert report.removed == 1 and len(rebuilt) == 44 and "index_extended" not in rebuilt.manifest
    assert [e.name for e in rebuilt.entries] == sorted(e.name for e in rebuilt.entries)
    assert len(rebuilt._searcher) == 44
    # another graph degree cannot extend the old index: built afresh too
    make_photos(tmp_path / "p", 2, start=200)
    regrown, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder,
                               index_cfg=IndexConfig(min_annoy_items=10, latency_budget_ms=0.0, hnsw_m=8))
    assert "index_extended" not in regrown.manifest and regrown.manifest["hnsw_m"] == 8 and len(regrown) == 46


def test_a_lost_hnsw_index_file_is_refused(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 12)
    budget = IndexConfig(min_annoy_items=10, latency_budget_ms=0.0)
    gallery, _ = build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder, index_cfg=budget)
    (gallery.generation_dir / "index.voy").unlink()
    with pytest.raises(CacheError, match="lost its index"):
        Gallery.open(tmp_path / "c", tiny_encoder)
