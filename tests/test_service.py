"""The search service under the page (no Gradio): startup, search, uploads, honest status."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL, canvas_value, draw_sketch
from zsdemo.config import ServeConfig
from zsdemo.serve.explaining import LARGE_PHOTO_SIDE
from zsdemo.serve.service import SearchService
from zsdemo.store.build import build_gallery
from zsdemo.store.gallery import Gallery


def photos_in(folder, n: int = 5):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((40, 60, 3), i * 40, np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="module")
def service(tiny_encoder, tmp_path_factory) -> SearchService:
    root = tmp_path_factory.mktemp("service")
    s = SearchService(ServeConfig(cache=str(root / "cache"), model=TINY_MODEL, pretrained="none"), encoder=tiny_encoder)
    s.prepare()  # what start() runs on a thread
    assert s.ready, s.status
    return s


def test_startup_reports_progress_then_ready(tiny_encoder, tmp_path):
    s = SearchService(ServeConfig(galleries=[str(photos_in(tmp_path / "photos"))], cache=str(tmp_path / "cache")),
                      encoder=tiny_encoder)
    assert not s.ready and s.status.phase == "starting"
    assert s.search(canvas_value()).kind == "not_ready"
    seen: list[tuple[int, int]] = []
    original = s._progress
    s._progress = lambda done, total, msg: (original(done, total, msg), seen.append((done, total)))  # type: ignore[method-assign]
    s.prepare()
    assert s.ready and s.status.phase == "ready" and (5, 5) in seen
    assert s.describe()["photos"] == 5


def test_startup_failure_is_in_the_status_not_raised(tiny_encoder, tmp_path):
    s = SearchService(ServeConfig(galleries=[str(tmp_path / "nope")], cache=str(tmp_path / "c")), encoder=tiny_encoder)
    s.start()
    assert s.wait_ready(60) is False
    assert s.status.phase == "error" and "Gallery folder not found" in s.status.message
    assert s.search(canvas_value()).kind == "not_ready" and "could not be prepared" in s.search(canvas_value()).message


def test_a_stale_cache_is_rebuilt_from_the_users_folders_not_the_starter(tiny_encoder, tmp_path):
    """The app started with --cache DIR whose cache is stale or damaged keeps the user's gallery."""
    mine = photos_in(tmp_path / "mine", 4)
    build_gallery([mine], tmp_path / "c", tiny_encoder)
    (tmp_path / "c" / "CURRENT").write_text("gen-lost")  # fails to open
    s = SearchService(ServeConfig(cache=str(tmp_path / "c")), encoder=tiny_encoder)
    s.prepare()
    assert s.ready, s.status
    assert {e.name for e in s.engine.gallery.entries} == {f"p{i}.png" for i in range(4)}
    assert not (tmp_path / "starter_photos").exists()


def test_a_brand_new_cache_gets_the_starter_photos(service):
    assert len(service.engine.gallery) >= 15 and service.describe()["random_weights"] is True


def test_search_ranks_and_clamps_k(service):
    outcome = service.search(canvas_value("circle"), 5)
    assert outcome.kind == "ok" and len(outcome.hits) == 5
    scores = [h.score for h in outcome.hits]
    assert scores == sorted(scores, reverse=True)
    assert outcome.preview.width == outcome.preview.height and " ms" in outcome.message
    assert len(service.search(canvas_value(), 0).hits) == service.config.default_k
    assert len(service.search(canvas_value(), 10_000).hits) == min(service.config.max_k, len(service.engine.gallery))


def test_strokes_and_the_same_drawing_as_pixels_agree(service):
    """The canvas sends strokes; an API client may send the picture: same drawing, same top results."""
    from zsdemo.model.preprocess import strokes_to_image

    value = canvas_value("box")
    by_strokes = service.search(value, 5).hits
    by_pixels = service.search(np.asarray(strokes_to_image(value)), 5).hits
    assert [h.name for h in by_strokes] == [h.name for h in by_pixels]


def test_empty_and_bad_sketches_get_readable_messages(service, tmp_path):
    assert service.search(canvas_value().replace('"strokes": [[', '"strokes": [], "x": [[')).kind == "empty"
    assert service.search(None).kind == "empty"
    assert service.search(np.full((448, 448, 3), 255, np.uint8)).kind == "empty"
    bad = service.search('{"width": 448, "strokes": [["a"]]}')
    assert bad.kind == "error" and "could not be read" in bad.message
    huge = service.search(np.zeros((12000, 12000), np.uint8))  # the canvas endpoint obeys the pixel limit
    assert huge.kind == "error" and "MP" in huge.message and "limit" in huge.message
    junk = tmp_path / "tmpab12cd.png"
    junk.write_text("not an image")
    message = service.search(str(junk)).message
    assert "not a readable image" in message and str(tmp_path) not in message and "tmpab12cd" not in message


def test_text_refinement_off_is_exactly_sketch_only(service):
    sketch = canvas_value("circle")
    plain = [(h.name, h.score) for h in service.search(sketch, 8).hits]
    assert [(h.name, h.score) for h in service.search(sketch, 8, "red", 0.0).hits] == plain
    assert [(h.name, h.score) for h in service.search(sketch, 8, "   ", 0.7).hits] == plain
    refined = service.search(sketch, 8, "a red bus", 0.8)
    assert [h.score for h in refined.hits] != [s for _, s in plain] and "a red bus" in refined.message


def test_photo_is_the_original_not_the_thumbnail(service):
    hit = service.search(canvas_value(), 3).hits[1]
    photo = service.photo(hit)
    original = Image.open(hit.photo)
    assert max(photo.size) == min(max(original.size), LARGE_PHOTO_SIDE) and LARGE_PHOTO_SIDE <= 512


def test_add_photos_indexes_persists_and_reports_rejects(service, tmp_path):
    before = len(service.engine.gallery)
    old_gallery = service.engine.gallery
    photo = tmp_path / "my-shoe.png"
    service.search(draw_sketch(shape="circle"), 1).preview.save(photo)  # the model's view of a circle, as a photo
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    calls: list[tuple[int, int]] = []
    outcome = service.add_photos([str(photo), str(text), str(broken)], lambda d, t, m: calls.append((d, t)))
    assert outcome.ok and outcome.added == 1 and f"now has {before + 1}" in outcome.message and calls
    assert sorted(name for name, _ in outcome.skipped) == ["broken.jpg", "readme.txt"]
    assert len(old_gallery) == before  # the previous gallery object is untouched (concurrent readers)
    hits = service.search(draw_sketch(shape="circle"), 3).hits
    assert hits[0].name.startswith("my-shoe") and hits[0].score > 0.999
    assert len(Gallery.open(service.cache_dir, service.encoder)) == before + 1  # persists
    assert service.add_photos([]).message == "Choose one or more photos first."
    assert "too many" in service.add_photos([str(photo)] * (service.config.max_photos_per_upload + 1)).message


def test_add_photos_before_ready_is_refused(tiny_encoder, tmp_path):
    s = SearchService(ServeConfig(cache=str(tmp_path)), encoder=tiny_encoder)
    assert "Still preparing" in s.add_photos([str(tmp_path / "x.png")]).message


def test_uploads_are_indexed_gently_beside_searches(service, tmp_path, monkeypatch):
    """Indexing an upload runs on its own low-priority thread with torch capped to index_threads."""
    import os
    import threading

    import torch

    seen: list[tuple[int, int, str]] = []
    encode = service.encoder.encode_photos

    def spying(photos):
        seen.append((os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), torch.get_num_threads(),
                     threading.current_thread().name))
        return encode(photos)

    monkeypatch.setattr(service.encoder, "encode_photos", spying)
    threads_before = torch.get_num_threads()
    photo = tmp_path / "gentle.png"
    Image.new("RGB", (48, 40), (10, 200, 30)).save(photo)
    assert service.add_photos([str(photo)]).ok
    assert seen and all(nice >= 10 and threads == service.config.index_threads and name == "zsdemo-index"
                        for nice, threads, name in seen), seen
    assert torch.get_num_threads() == threads_before
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 10  # the caller's thread is untouched


def test_bad_parameters_are_readable_refusals_not_exceptions(service):
    good = canvas_value("circle")
    for kwargs in ({"k": float("nan")}, {"k": "many"}, {"k": [1]}, {"text": "x" * 100_000, "text_weight": 0.5},
                   {"text": {"a": 1}}, {"text_weight": float("inf")}, {"text_weight": 2}, {"mode": "nope" * 1000},
                   {"mode": 5}):
        outcome = service.search(good, **kwargs)
        assert outcome.kind == "error" and len(outcome.message) < 300, (kwargs, outcome.message)
    assert service.search(good, k=3, text="red", text_weight=0.5).kind == "ok"
    assert service.explain("p0.png", good, mode="nope" * 1000).kind == "error"


def test_served_files_are_not_accepted_as_uploads(service):
    hit = service.search(canvas_value(), 1).hits[0]
    outcome = service.add_photos([str(hit.thumbnail), str(hit.photo)])
    assert outcome.added == 0 and len(outcome.skipped) == 2 and "serves" in outcome.skipped[0][1]
