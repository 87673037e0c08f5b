"""The page: rendering what the service says, the Blocks wiring, and the canvas endpoint without a server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from PIL import Image

import app
from tests.conftest import TINY_MODEL, canvas_value
from zsdemo.config import ServeConfig
from zsdemo.limits import BusyError, ClientSlots
from zsdemo.serve.service import SearchService


@pytest.fixture(scope="module")
def service(tiny_encoder, tmp_path_factory) -> SearchService:
    root = tmp_path_factory.mktemp("app")
    s = SearchService(ServeConfig(cache=str(root / "cache"), model=TINY_MODEL, pretrained="none"), encoder=tiny_encoder)
    s.prepare()
    assert s.ready, s.status
    return s


def test_info_names_backbone_prompts_query_path_and_size(service):
    info = app.info_markdown(service)
    assert f"`{TINY_MODEL}`" in info and "random weights" in info and "sketch queries: `" in info
    assert "none (plain CLIP" in info and f"{len(service.engine.gallery)} photos, exact search" in info


def test_failed_startup_does_not_say_loading_forever(tmp_path):
    s = SearchService(ServeConfig(cache=str(tmp_path / "c"), model="no-such-model", pretrained="none"))
    assert app.info_markdown(s) == "**Model:** loading…"
    s.prepare()
    assert s.status.phase == "error" and "Unknown open_clip model" in s.status.message
    assert "startup failed" in app.info_markdown(s) and "loading" not in app.info_markdown(s)
    assert "zs-error" in app.banner_html(s) and "Traceback" not in app.banner_html(s)


def test_render_search_results_and_messages(service):
    items, preview, status, hits, current = app.render_search(service.search(canvas_value("circle"), 5), "sketch")
    assert len(items) == 5 == len(hits) and current == "sketch"
    for (thumb, caption), hit in zip(items, hits, strict=True):  # a route and a file name: no server folder
        assert thumb.startswith(app.THUMB_ROUTE + "/") and thumb.count("/") == 3, thumb
        assert service.thumbnail_file(thumb.rsplit("/", 1)[1]).parent == service.engine.gallery.thumbs_dir
        assert caption == f"{hit['score']:.3f} · {hit['name']}" and set(hit) == {"name", "score", "mode"}
    assert str(service.cache_dir.resolve()) not in repr((items, hits)) and str(Path.cwd()) not in repr((items, hits))
    assert isinstance(preview, Image.Image) and "5 best of" in status and " ms" in status
    assert app.render_search(service.search(None), None)[2] == app.EMPTY_HINT
    assert app.render_search(service.search('{"strokes": 7}'), None)[2].startswith("⚠️")


def test_demo_wiring(service):
    demo = app.build_demo(service)
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    search = by_name["search"]
    assert search.show_progress == "hidden"
    assert [type(b).__name__ for b in search.inputs] == ["HTML", "Slider", "Textbox", "Slider", "Radio"]
    assert search.inputs[0].elem_id == "zs-sketch"
    assert [type(b).__name__ for b in search.outputs] == ["Gallery", "Image", "Markdown"]
    # the page's strokes: the canvas's own server function, not a Gradio event
    sketch = search.inputs[0]
    assert [fn.__name__ for fn in sketch.server_fns] == ["stroke_search"]
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"search", "search_upload", "add_photos", "explain"}
    assert demo._queue.max_size == service.config.queue_size  # bounded queue
    # drawn strokes skip the queue (one HTTP round trip instead of three); uploads still queue
    assert search.queue is False and by_name["search_upload"].concurrency_limit == 1  # a kind of its own
    assert by_name["search_upload"].concurrency_id == "search_upload" and by_name["explain"].concurrency_id == "explain"


def page_request(path: str = "/gradio_api/run/predict"):
    """A request as the page's POST arrives (for handlers that build the thumbnails' URLs from it)."""
    import gradio as gr
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "scheme": "http",
             "server": ("127.0.0.1", 7860), "client": ("127.0.0.1", 50000), "root_path": "",
             "headers": [(b"host", b"127.0.0.1:7860")]}
    return gr.Request(request=Request(scope))


def test_thumbnail_urls_name_no_server_folder_and_clicks_need_no_path(service, monkeypatch):
    """Results reference thumbnails by file name on the app's own route; the page's state keeps names and modes only,
    and a click asks the service for the photo by name (a photo path in the state is never used)."""
    page = app.Page(service)
    value = canvas_value("circle")
    items, _, status, hits, current, _ = page.search(value, 3, request=page_request())
    assert len(items) == 3 and all(url.startswith("http://127.0.0.1:7860/zs/thumbs/") for url, _ in items)
    behind_proxy = page_request()
    behind_proxy.request.scope["headers"] += [(b"x-forwarded-host", b"me-sketch.hf.space"),
                                               (b"x-forwarded-proto", b"https")]
    assert page.search(value, 1, request=behind_proxy)[0][0][0].startswith("https://me-sketch.hf.space/zs/thumbs/")
    assert all(set(hit) == {"name", "score", "mode"} for hit in hits)
    asked = []
    find = service.find_photo
    monkeypatch.setattr(service, "find_photo", lambda name, mode=None: asked.append((name, mode)) or find(name, mode))
    import gradio as gr

    view = app.results_view(page.search(value, 3, request=page_request()))  # what the results view shows
    assert [item["name"] for item in view["items"]] == [hit["name"] for hit in hits]
    assert view["preview"].startswith("data:image/jpeg;base64,") and "best of" in view["status"]
    clicked = {key: view["items"][1][key] for key in ("name", "mode", "score")}  # what a click sends back
    image, caption, _ = page.show_photo(current, gr.SelectData(None, {"index": 1, "value": clicked}))
    assert image is not None and "Why this photo" in caption and asked == [(hits[1]["name"], hits[1]["mode"])]
    gone = {"name": "no/such.jpg", "score": 0.5, "mode": hits[0]["mode"]}
    image, caption, _ = page.show_photo(current, gr.SelectData(None, {"index": 0, "value": gone}))
    assert image is None and "no longer in the gallery" in caption
    for junk in ({"name": "/etc/passwd"}, {"name": 7}, "x", {"name": "a", "score": "NaN?"}):
        image, caption, _ = page.show_photo(current, gr.SelectData(None, {"index": 0, "value": junk}))
        assert image is None and "Traceback" not in caption


def test_stroke_search_is_the_canvas_endpoint_checked_like_search(service):
    """The canvas's server function: one call a stroke, the results view back; bad values get readable messages."""
    page = app.Page(service)
    view = page.stroke({"sketch": canvas_value("circle"), "k": "4", "text": "", "text_weight": "0", "mode": None,
                        "mode_label": None}, page_request("/gradio_api/component_server"))
    assert len(view["items"]) == 4 and "4 best of" in view["status"]
    assert view["items"][0]["src"].startswith("http://127.0.0.1:7860/zs/thumbs/")
    assert str(service.cache_dir.resolve()) not in str(view) and str(Path.cwd()) not in str(view)
    assert page.stroke("nonsense")["status"].startswith("⚠️")
    assert page.stroke({"sketch": "/etc/passwd"})["status"].startswith("⚠️")
    assert page.stroke({"sketch": canvas_value(), "k": "NaN"})["status"].startswith("⚠️")
    assert page.stroke({"sketch": canvas_value(), "mode": "nope"})["status"].startswith("⚠️")
    label = service.mode(None).label  # the mode as the switch's label reads
    assert page.stroke({"sketch": canvas_value(), "mode": "x", "mode_label": label})["items"]
    assert page.remember(canvas_value(), None) == (canvas_value(), False)
    assert page.remember("not strokes", None) == (None, False)


def test_thumbnail_route_serves_only_thumbnail_names(service):
    import fastapi
    from starlette.testclient import TestClient

    web = fastapi.FastAPI(middleware=[app.thumbnail_middleware(service.config)])
    web.get("/gradio_api/file={rest:path}")(lambda rest: {"gradio": rest})  # stands in for Gradio's file route
    name = service.search(canvas_value(), 1).hits[0].thumbnail.name
    with TestClient(web) as http:
        ok = http.get(f"{app.THUMB_ROUTE}/{name}")
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg" and "immutable" in ok.headers[
            "cache-control"]
        # gradio_client downloads a file by its URL through Gradio's file route: answered here, not fetched
        via_gradio = http.get(f"/gradio_api/file=http%3A//127.0.0.1%3A7860{app.THUMB_ROUTE}/{name}")
        assert via_gradio.status_code == 200 and via_gradio.content == ok.content
        assert http.get("/gradio_api/file=/etc/passwd").json() == {"gradio": "/etc/passwd"}  # the rest: Gradio's
        for bad in ("..%2FCURRENT", "%2E%2E", "CURRENT", "x.png", f"{name}%00", "..%2F..%2Fapp.py", "a" * 200 + ".jpg"):
            assert http.get(f"{app.THUMB_ROUTE}/{bad}").status_code == 404, bad
    assert service.thumbnail_file("../CURRENT") is None and service.thumbnail_file(None) is None


def test_canvas_endpoint_through_process_api(service):
    """The canvas's real value (strokes JSON) through Gradio's preprocess and the Gallery postprocess."""
    demo = app.build_demo(service)
    fn = next(f for f in demo.fns.values() if f.api_name == "search")
    value = canvas_value("circle")
    out = asyncio.run(demo.process_api(block_fn=fn, inputs=[value, 4, "", 0.0, "plain"], state=None,
                                       request=page_request()))
    gallery, preview, status = out["data"][:3]
    assert len(gallery) == 4 and preview is not None and "4 best of" in status
    for item in gallery:  # thumbnails by URL on the app's own route, not Gradio's file route with their path
        assert item["image"]["url"].startswith("http://127.0.0.1:7860/zs/thumbs/"), item
    assert str(service.cache_dir.resolve()) not in str(out) and str(Path.cwd()) not in str(out)
    assert [item["caption"] for item in gallery] == [f"{h.score:.3f} · {h.name}" for h in service.search(value, 4).hits]


def test_prompt_checkpoint_is_loaded_and_shown(tmp_path):
    """--prompts FILE: loaded with the backbone and named (with its hash) on the page; a mismatch is a message."""
    from zsdemo.model.encoder import create_clip
    from zsdemo.model.preprocess import PREPROCESS_VERSION
    from zsdemo.model.prompts import PromptedViT, PromptSpec, save_checkpoint

    prompted = PromptedViT(create_clip(TINY_MODEL, "none").visual, PromptSpec(n_prompts=3))
    ckpt = save_checkpoint(tmp_path / "sketchy.safetensors", prompted, TINY_MODEL, "none", PREPROCESS_VERSION)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (50, 40), "red").save(photos / "red.png")
    config = ServeConfig(galleries=[str(photos)], cache=str(tmp_path / "cache"), model=TINY_MODEL,
                         pretrained="none", prompts=str(ckpt))
    s = SearchService(config)
    s.prepare()
    assert s.ready, s.status
    info = app.info_markdown(s)
    assert "`sketchy.safetensors`" in info and "**Gallery:** 1 photos" in info
    # the checkpoint's shape in words, not a Python dict
    assert "3 learned prompt tokens, at the input layer, separate sketch and photo prompts" in info
    assert "{" not in info and "n_prompts" not in info
    assert s.encoder.describe()["prompts_sha256"][:12] in info

    config.model, config.cache = "ViT-B-32-quickgelu", str(tmp_path / "cache2")
    bad = SearchService(config)
    bad.prepare()
    assert bad.status.phase == "error" and "was trained for backbone" in bad.status.message
    assert "was trained for backbone" in app.banner_html(bad)


def test_unqueued_search_still_runs_at_most_concurrency_at_once(service, monkeypatch):
    import threading
    import time

    demo = app.build_demo(service)  # wraps service.search with the page's semaphore
    fn = next(f for f in demo.fns.values() if f.api_name == "search").fn
    running, peak, lock = [0], [0], threading.Lock()
    search = service.search

    def slow(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return search(*args, **kwargs)

    monkeypatch.setattr(service, "search", slow)
    threads = [threading.Thread(target=fn, args=(canvas_value(),)) for _ in range(3 * service.config.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == service.config.concurrency


def test_app_settings_come_from_the_cache_manifest(service, monkeypatch, tmp_path):
    """flag > environment > the cache's manifest > default, as in the CLI (issue 16 item 2)."""
    for name in ("ZSDEMO_MODEL", "ZSDEMO_PRETRAINED", "ZSDEMO_PROMPTS", "ZSDEMO_CACHE", "ZSDEMO_GALLERY"):
        monkeypatch.delenv(name, raising=False)
    cache = str(service.cache_dir)  # built with the tiny model and random weights
    cfg = app.parse_args(["--cache", cache])
    assert (cfg.model, cfg.pretrained) == (TINY_MODEL, "none")
    monkeypatch.setenv("ZSDEMO_PRETRAINED", "from-env")
    assert app.parse_args(["--cache", cache]).pretrained == "from-env"
    assert app.parse_args(["--cache", cache, "--pretrained", "flag"]).pretrained == "flag"
    monkeypatch.delenv("ZSDEMO_PRETRAINED")
    fresh = app.parse_args(["--cache", str(tmp_path / "new")])
    assert (fresh.model, fresh.pretrained) == (ServeConfig().model, ServeConfig().pretrained)


def test_error_banner_shows_code_as_code_and_no_server_paths(service, tmp_path):
    from zsdemo.serve.modes import Status

    s = SearchService(ServeConfig(cache=str(tmp_path / "cache"), model=TINY_MODEL, pretrained="none"))
    s.status = Status("error", f"The cache {tmp_path / 'cache'} does not record its folders: "
                               f"`python -m zsdemo index PHOTO_DIR... --cache {tmp_path / 'cache'}`.\n"
                               "Weights are not in the Hugging Face cache (/srv/hf/hub); pass "
                               "--pretrained /path/to/open_clip_model.safetensors.")
    banner = app.banner_html(s)
    assert "`" not in banner and "<code>python -m zsdemo index PHOTO_DIR... --cache the cache folder</code>" in banner
    assert str(tmp_path) not in banner and "/srv/hf" not in banner and "a folder on the server" in banner
    assert "/path/to/open_clip_model.safetensors" in banner and "<br>" in banner  # advice and line breaks kept
    assert app.warning_html(s) and "Random backbone weights" in app.warning_html(s)
    assert app.warning_html(SearchService(ServeConfig(cache=str(tmp_path / "c2")))) == ""


def test_one_client_on_two_connections_does_not_hold_both_search_slots(service, monkeypatch):
    """Issue 15, fair sharing: with two search slots, one client's two searches at once run one after the other, so
    another client's search finds a free slot at once; a different client is not slowed by the first one's queue."""
    import threading
    import time

    page = app.Page(service)
    assert page.searching.limit == 2 and page.per_client.limit == 1
    search, seen, lock = service.search, [], threading.Lock()

    def slow(*args, **kwargs):
        with lock:
            seen.append(("start", threading.current_thread().name))
        time.sleep(0.3)
        return search(*args, **kwargs)

    monkeypatch.setattr(service, "search", slow)

    def from_client(address: str, name: str) -> threading.Thread:
        request = page_request()
        request.request.scope["headers"] += [(b"x-forwarded-for", address.encode())]
        return threading.Thread(target=page.search, args=(canvas_value(),), kwargs={"request": request}, name=name)

    greedy = [from_client("10.0.0.1", f"greedy{i}") for i in range(2)]
    for t in greedy:
        t.start()
    time.sleep(0.1)
    assert page.per_client.held("10.0.0.1") == 1  # the second waits outside the shared slots
    other = from_client("10.0.0.2", "other")
    other.start()
    time.sleep(0.1)
    assert page.per_client.held("10.0.0.2") == 1  # took the free slot at once
    for t in (*greedy, other):
        t.join()
    assert [name for _, name in seen][:2] in (["greedy0", "other"], ["greedy1", "other"])
    assert page.per_client._active == {}  # nothing kept once the searches are done


def test_client_slots_refuse_a_pile_of_waiting_searches():
    import threading

    slots, heard = ClientSlots(1, max_waiting=1, wait_s=0.3), []

    def wait_in_line() -> None:
        try:
            with slots.enter("c"):
                heard.append("ran")
        except BusyError as exc:
            heard.append(str(exc))

    with slots.enter("c"):
        waiter = threading.Thread(target=wait_in_line)
        waiter.start()
        time.sleep(0.05)
        with pytest.raises(BusyError, match="already have searches running"):  # one waiting is the most
            slots.enter("c").__enter__()
        waiter.join()
    assert heard and "still running" in heard[0]  # the one waiting gave up after wait_s, with a message
    assert slots._active == {}
    with slots.enter(None), slots.enter("d"):
        assert slots.held("d") == 1
