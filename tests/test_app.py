"""The app's callbacks and wiring, without a server (tiny random-init model, starter photos)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
from tests.conftest import TINY_MODEL, draw_sketch


def pad(image: Image.Image) -> dict:
    """What a Gradio Sketchpad (type='numpy', RGB) hands to the callback."""
    return {"background": None, "layers": [], "composite": np.asarray(image.convert("RGB"))}


@pytest.fixture(scope="module")
def backend(tiny_encoder, tmp_path_factory) -> app.Backend:
    root = tmp_path_factory.mktemp("app")
    b = app.Backend(app.AppConfig(cache=str(root / "cache"), model=TINY_MODEL, pretrained="none"), encoder=tiny_encoder)
    b.prepare()  # what start() runs on a thread
    assert b.ready, b.status
    return b


# ---- configuration ----------------------------------------------------------------------------
def test_parse_args_defaults_env_and_cli(monkeypatch, tmp_path):
    for name in ("ZSDEMO_GALLERY", "ZSDEMO_CACHE", "ZSDEMO_PROMPTS", "ZSDEMO_MODEL", "ZSDEMO_PRETRAINED",
                 "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "ZSDEMO_SHARE"):
        monkeypatch.delenv(name, raising=False)
    cfg = app.parse_args([])
    assert cfg.galleries == [] and cfg.cache is None and cfg.model is None and not cfg.share
    assert app.Backend(cfg).cache_dir == Path("gallery_cache/starter")

    monkeypatch.setenv("ZSDEMO_GALLERY", f"/a{':'}/b")
    monkeypatch.setenv("ZSDEMO_MODEL", "ViT-B-16")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("ZSDEMO_SHARE", "true")
    cfg = app.parse_args([])
    assert cfg.galleries == ["/a", "/b"] and cfg.model == "ViT-B-16" and cfg.port == 7999 and cfg.share

    cfg = app.parse_args(["--gallery", str(tmp_path), "--model", "zsdemo-tiny-vit", "--pretrained", "none",
                          "--prompts", "p.safetensors", "--cache", "c", "--host", "0.0.0.0", "--port", "8000"])
    assert cfg.galleries == [str(tmp_path)] and cfg.model == "zsdemo-tiny-vit" and cfg.pretrained == "none"
    assert (cfg.prompts, cfg.cache, cfg.host, cfg.port) == ("p.safetensors", "c", "0.0.0.0", 8000)
    # A custom gallery gets its own cache folder, named after it.
    assert app.default_cache_dir([str(tmp_path)]).name.startswith(tmp_path.name + "-")
    assert app.default_cache_dir(["/x/photos"]) != app.default_cache_dir(["/y/photos"])


def test_hub_specs():
    assert app.parse_hub_spec("hf://datasets/me/photos@abc123/cats") == ("dataset", "me/photos", "abc123", "cats")
    assert app.parse_hub_spec("hf://me/prompts/sketchy.safetensors") == ("model", "me/prompts", None, "sketchy.safetensors")
    assert app.parse_hub_spec("hf://datasets/me/photos") == ("dataset", "me/photos", None, "")
    with pytest.raises(app.ZsdemoError, match="not a hub location"):
        app.parse_hub_spec("hf://justone")
    with pytest.raises(app.ZsdemoError, match="names a repository, not a file"):
        app.resolve_hub_file("hf://me/prompts")
    assert app.resolve_hub_file("local.safetensors") == "local.safetensors"
    assert app.resolve_hub_folder("~/photos") == Path.home() / "photos"


def test_hub_download_offline_is_a_readable_error(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(app.ZsdemoError, match="Could not fetch hf://me/prompts/p.safetensors"):
        app.resolve_hub_file("hf://me/prompts/p.safetensors")


# ---- startup -------------------------------------------------------------------------------------
def test_startup_reports_progress_then_ready(tiny_encoder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 60, 3), i * 40, np.uint8)).save(photos / f"p{i}.png")
    b = app.Backend(app.AppConfig(galleries=[str(photos)], cache=str(tmp_path / "cache")), encoder=tiny_encoder)
    assert not b.ready and "Starting" in b.banner_html()
    items, preview, status, _, _ = b.search(pad(draw_sketch()))
    assert items == [] and preview is None and "Still preparing the gallery" in status

    seen: list[str] = []
    original = b._progress
    b._progress = lambda done, total, msg: (original(done, total, msg), seen.append(b.banner_html()))  # type: ignore[method-assign]
    b.prepare()
    assert b.ready and b.status.phase == "ready" and b.banner_html() == ""
    assert any("<progress value='5' max='5'>" in html for html in seen), seen
    banner, info, timer = b.poll()
    assert banner == "" and "**Gallery:** 5 photos" in info and timer.active is False


def test_startup_failure_is_shown_not_raised(tiny_encoder, tmp_path):
    b = app.Backend(app.AppConfig(galleries=[str(tmp_path / "nope")], cache=str(tmp_path / "c")), encoder=tiny_encoder)
    b.start()
    assert b.wait_ready(60) is False
    assert b.status.phase == "error" and "Gallery folder not found" in b.status.message
    assert "zs-error" in b.banner_html() and "Traceback" not in b.banner_html()
    assert "could not be prepared" in b.search(pad(draw_sketch()))[2]
    assert b.poll()[2].active is False


def test_info_names_backbone_prompts_and_size(backend):
    info = backend.info_markdown()
    assert f"`{TINY_MODEL}`" in info and "random weights" in info
    assert "none (plain CLIP" in info and f"{len(backend.engine.gallery)} photos" in info
    assert len(backend.engine.gallery) >= 15  # the starter photos


# ---- search ------------------------------------------------------------------------------------
def test_search_returns_ranked_thumbnails(backend):
    items, preview, status, hits, current = backend.search(pad(draw_sketch(shape="circle")), 5)
    assert len(items) == 5 == len(hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    thumbs = backend.engine.gallery.thumbs_dir
    for (thumb, caption), hit in zip(items, hits, strict=True):
        assert Path(thumb).is_file() and Path(thumb).parent == thumbs
        assert caption == f"{hit['score']:.3f} · {hit['name']}"
        assert Path(hit["photo"]).is_file()
    assert isinstance(preview, Image.Image) and preview.width == preview.height  # cropped and padded square
    assert "5 best of" in status and " ms" in status
    assert current is not None
    # k is clamped to the configured range
    assert len(backend.search(pad(draw_sketch()), 0)[0]) == backend.config.default_k
    assert len(backend.search(pad(draw_sketch()), 10_000)[0]) == min(backend.config.max_k, len(backend.engine.gallery))


def test_different_sketches_rank_differently(backend):
    a = backend.search(pad(draw_sketch(shape="line")), 10)[3]
    b = backend.search(pad(draw_sketch(shape="box")), 10)[3]
    assert [h["score"] for h in a] != [h["score"] for h in b]


def test_empty_canvas_gives_the_hint(backend):
    blank = {"background": None, "layers": [], "composite": np.full((448, 448, 3), 255, np.uint8)}
    for value in (blank, {"background": None, "layers": [], "composite": None}, None):
        items, preview, status, hits, _ = backend.search(value)
        assert (items, preview, hits) == ([], None, []) and status == app.EMPTY_HINT


def test_text_refinement_off_is_exactly_sketch_only(backend):
    sketch = pad(draw_sketch(shape="circle"))
    plain = backend.search(sketch, 8)[3]
    assert backend.search(sketch, 8, "red", 0.0)[3] == plain
    assert backend.search(sketch, 8, "   ", 0.7)[3] == plain
    refined = backend.search(sketch, 8, "a red bus", 0.8)
    assert [h["score"] for h in refined[3]] != [h["score"] for h in plain]
    assert "a red bus" in refined[2]


def test_uploaded_sketch_file_and_bad_uploads(backend, tmp_path):
    good = tmp_path / "sketch.png"
    draw_sketch(shape="box").save(good)
    items, _, _, hits, current = backend.search_upload(str(good), 4)
    assert len(items) == 4 and current == str(good)
    assert hits == backend.search(pad(draw_sketch(shape="box")), 4)[3]  # same pixels, same results

    garbage = tmp_path / "notes.png"
    garbage.write_text("this is not an image")
    items, preview, status, _, _ = backend.search_upload(str(garbage))
    assert items == [] and preview is None and status.startswith("⚠️") and "not a readable image" in status

    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 5000), 1).save(huge)  # 45 MP: refused before decoding
    status = backend.search_upload(str(huge))[2]
    assert status.startswith("⚠️") and "MP" in status and "limit" in status
    assert backend.search_upload(None)[2] == app.EMPTY_HINT


def test_rerun_uses_the_stored_sketch(backend):
    first = backend.search(pad(draw_sketch(shape="line")), 12)
    again = backend.rerun(first[4], 3, "", 0.0)
    assert again[3] == first[3][:3]
    assert backend.rerun(None, 3, "", 0.0)[2] == app.EMPTY_HINT


def test_show_photo_large(backend):
    hits = backend.search(pad(draw_sketch()), 3)[3]
    photo, caption = backend.show_photo(hits, 1)
    assert isinstance(photo, Image.Image) and max(photo.size) <= app.LARGE_PHOTO_SIDE
    original = Image.open(hits[1]["photo"])
    assert max(photo.size) == min(max(original.size), app.LARGE_PHOTO_SIDE)  # the photo, not the 256 px thumbnail
    assert hits[1]["name"] in caption and f"{hits[1]['score']:.3f}" in caption
    assert backend.show_photo(hits, 7) == (None, "")
    assert backend.show_photo(hits, None) == (None, "")


# ---- own photos --------------------------------------------------------------------------------
def test_add_photos_indexes_persists_and_reports_rejects(backend, tmp_path):
    before = len(backend.engine.gallery)
    old_gallery = backend.engine.gallery
    photo = tmp_path / "my-shoe.png"
    backend.search(pad(draw_sketch(shape="circle")), 1)[1].save(photo)  # the model's view of a circle, as a photo
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    calls: list[tuple] = []
    status, info = backend.add_photos([str(photo), str(text), str(broken)],
                                      progress=lambda value, desc=None: calls.append((value, desc)))
    assert status.startswith("Added 1 photo;") and f"now has {before + 1}" in status
    assert "Skipped 2" in status and "readme.txt: not a photo file" in status and "broken.jpg" in status
    assert f"{before + 1} photos" in info and calls  # progress was reported
    assert len(old_gallery) == before  # the previous gallery object is untouched (concurrent readers)
    uploads = backend.engine.gallery.uploads_dir
    assert [p.name for p in uploads.iterdir() if p.name.startswith("my-shoe")]

    # The new photo is found by its own sketch (sketch and photo branches are the same model here).
    hits = backend.search(pad(draw_sketch(shape="circle")), 3)[3]
    assert hits[0]["name"].startswith("my-shoe") and hits[0]["score"] > 0.999

    # ... and it persists: a fresh start on the same cache finds it without re-indexing.
    from zsdemo.gallery import Gallery

    reopened = Gallery.open(backend.cache_dir, backend.encoder)
    assert len(reopened) == before + 1

    assert backend.add_photos([])[0] == "Choose one or more photos first."
    many = [str(photo)] * (backend.config.max_photos_per_upload + 1)
    assert "too many" in backend.add_photos(many)[0]


def test_add_photos_before_ready_is_refused(tiny_encoder, tmp_path):
    b = app.Backend(app.AppConfig(cache=str(tmp_path)), encoder=tiny_encoder)
    assert "Still preparing" in b.add_photos([str(tmp_path / "x.png")])[0]


# ---- the Blocks wiring -------------------------------------------------------------------------
def test_demo_wiring(backend):
    demo = app.build_demo(backend)
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    search = by_name["search"]
    assert search.trigger_mode == "always_last" and search.show_progress == "hidden"
    assert [type(b).__name__ for b in search.inputs] == ["Sketchpad", "Slider", "Textbox", "Slider"]
    sketchpad = search.inputs[0]
    assert sketchpad.image_mode == "RGB" and sketchpad.layers.disabled is True
    assert {"search", "search_upload", "add_photos"} <= set(by_name)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"search", "search_upload", "add_photos"}
    assert demo._queue.max_size == backend.config.queue_size  # bounded queue
    assert search.concurrency_limit == backend.config.concurrency


def test_search_through_process_api(backend, tmp_path):
    """The real preprocess path of the Sketchpad (file -> numpy RGB) and the Gallery postprocess."""
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    path = tmp_path / "stroke.png"
    draw_sketch(shape="circle").save(path)
    demo = app.build_demo(backend)
    fn = next(f for f in demo.fns.values() if f.api_name == "search")
    payload = EditorData(background=None, layers=[], composite=FileData(path=str(path))).model_dump()
    out = asyncio.run(demo.process_api(block_fn=fn, inputs=[payload, 4, "", 0.0], state=None))
    gallery, preview, status = out["data"][:3]
    assert len(gallery) == 4 and all(item["caption"] for item in gallery)
    assert [item["caption"] for item in gallery] == [f"{h['score']:.3f} · {h['name']}"
                                                     for h in backend.search(str(path), 4)[3]]
    assert preview is not None and "4 best of" in status


def test_prompt_checkpoint_is_loaded_and_shown(tmp_path):
    """--prompts FILE: the checkpoint is loaded with the backbone and named (with its hash) on the page."""
    from zsdemo.encoder import create_clip
    from zsdemo.preprocess import PREPROCESS_VERSION
    from zsdemo.prompts import PromptedViT, PromptSpec, save_checkpoint

    prompted = PromptedViT(create_clip(TINY_MODEL, "none").visual, PromptSpec(n_prompts=3))
    ckpt = save_checkpoint(tmp_path / "sketchy.safetensors", prompted, TINY_MODEL, "none", PREPROCESS_VERSION)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (50, 40), "red").save(photos / "red.png")
    config = app.AppConfig(galleries=[str(photos)], cache=str(tmp_path / "cache"), model=TINY_MODEL,
                           pretrained="none", prompts=str(ckpt))
    b = app.Backend(config)
    b.prepare()
    assert b.ready, b.status
    info = b.info_markdown()
    assert "`sketchy.safetensors`" in info and "n_prompts': 3" in info and "**Gallery:** 1 photos" in info
    assert b.encoder.describe()["prompts_sha256"][:12] in info

    # A checkpoint for another backbone is refused with a readable message on the page, not a crash.
    config.model, config.cache = "ViT-B-32-quickgelu", str(tmp_path / "cache2")
    bad = app.Backend(config)
    bad.prepare()
    assert bad.status.phase == "error" and "was trained for backbone" in bad.status.message
    assert "was trained for backbone" in bad.banner_html()
