"""A launched app on 127.0.0.1 driven through gradio_client: the real HTTP, queue, upload and file paths."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image, ImageDraw

import app
from tests.conftest import TINY_MODEL, canvas_value, draw_sketch, running_app
from zsdemo.config import ServeConfig
from zsdemo.serve.service import SearchService

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    config = ServeConfig(cache=str(root / "cache"), model=TINY_MODEL, pretrained="none", max_upload_mb=2)
    backend = SearchService(config, encoder=tiny_encoder)
    backend.prepare()
    assert backend.ready, backend.status
    demo = app.build_demo(backend)
    kwargs = {**app.launch_kwargs(config), "server_name": "127.0.0.1", "server_port": None}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield backend, url, root
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False, download_files=str(served[2] / "downloads"))


def sketch_file(directory: Path, name: str, **kw) -> str:
    path = directory / f"{name}.png"
    draw_sketch(**kw).save(path)
    return str(path)


def captions(service: SearchService, sketch, k: int) -> list[str]:
    return [f"{h.score:.3f} · {h.name}" for h in service.search(sketch, k).hits]


def test_api_exposes_search(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert "/search" in api["named_endpoints"] and "/add_photos" in api["named_endpoints"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/search"]["parameters"]]
    assert params == ["sketch", "k", "text", "text_weight", "mode"]  # mode last, with a default: old clients work
    assert "/explain" in api["named_endpoints"]


def test_search_endpoint_returns_ranked_results(served, client, tmp_path):
    backend = served[0]
    strokes = canvas_value("circle")
    gallery, preview, status = client.predict(strokes, api_name="/search")
    assert len(gallery) == backend.config.default_k
    scores = [float(item["caption"].split(" · ")[0]) for item in gallery]
    assert scores == sorted(scores, reverse=True)
    assert [item["caption"] for item in gallery] == captions(backend, strokes, backend.config.default_k)
    for item in gallery:  # the thumbnails really came over HTTP
        with Image.open(item["image"]) as thumb:
            assert max(thumb.size) <= 256
    with Image.open(preview) as view:
        assert view.width == view.height
    assert "best of" in status
    gallery, _, _ = client.predict(strokes, 3, api_name="/search")
    assert len(gallery) == 3
    # a picture of a sketch goes to /search_upload
    path = sketch_file(tmp_path, "circle", shape="circle")
    gallery, _, _ = client.predict(handle_file(path), 4, api_name="/search_upload")
    assert [item["caption"] for item in gallery] == captions(backend, path, 4)


def test_empty_sketch_returns_the_hint(client, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (448, 448), "white").save(blank)
    gallery, preview, status = client.predict(handle_file(str(blank)), api_name="/search_upload")
    assert gallery == [] and preview is None and status == app.EMPTY_HINT
    assert client.predict('{"width": 448, "height": 448, "strokes": []}', api_name="/search")[2] == app.EMPTY_HINT
    assert client.predict("", api_name="/search")[2] == app.EMPTY_HINT


def test_non_image_and_oversized_uploads_get_clear_messages(client, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(os.urandom(2000))
    gallery, _, status = client.predict(handle_file(str(fake)), api_name="/search_upload")
    assert gallery == [] and status.startswith("⚠️") and "not a readable image" in status
    assert "/tmp" not in status and "gradio" not in status  # no server temp paths in messages
    assert "/search_upload" in client.predict("/etc/passwd", api_name="/search")[2]  # never opened as a path
    for junk in ("hello", "{not json", '{"width": 99999, "height": 5, "strokes": []}', "[1, 2, 3]" * 100_000):
        gallery, _, status = client.predict(junk, api_name="/search")
        assert gallery == [] and status.startswith(("⚠️", "✏️")), status

    big = tmp_path / "big.png"  # 3 MB of noise > the 2 MB limit of this app
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2 * 2**20
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/search_upload")


def test_concurrent_users_get_their_own_results(served, tmp_path):
    backend, url, root = served
    sketches = []
    for seed in range(6):  # random scribbles: every user draws something different
        rng = np.random.default_rng(seed)
        image = Image.new("RGB", (300, 300), "white")
        ImageDraw.Draw(image).line([tuple(p) for p in rng.integers(10, 290, (6, 2)).tolist()], fill="black", width=5)
        sketches.append(str(tmp_path / f"user-{seed}.png"))
        image.save(sketches[-1])
    expected = [captions(backend, p, 6) for p in sketches]
    assert len({tuple(e) for e in expected}) == len(expected)  # all different, so a mix-up would show
    users = [Client(url, verbose=False, download_files=str(root / f"user{i}")) for i in range(3)]
    jobs = [users[i % 3].submit(handle_file(p), 6, api_name="/search_upload") for i, p in enumerate(sketches)]
    results = [job.result(timeout=60) for job in jobs]
    assert [[item["caption"] for item in r[0]] for r in results] == expected


def test_only_thumbnails_are_served(served, client, tmp_path):
    backend, url, _ = served
    thumb = next(backend.engine.gallery.thumbs_dir.iterdir())
    manifest = next(backend.cache_dir.glob("gen-*/manifest.json"))
    photo = backend.search(canvas_value(), 1).hits[0].photo

    def get(path: Path | str) -> int:
        return httpx.get(f"{url.rstrip('/')}/gradio_api/file={path}", timeout=10).status_code

    assert httpx.get(f"{url.rstrip('/')}{app.THUMB_ROUTE}/{thumb.name}", timeout=10).status_code == 200
    # Gradio's file route serves none of them, not even the thumbnails by their path (no static paths)
    for secret in ("/etc/passwd", Path(app.__file__).resolve(), manifest, photo, backend.cache_dir / "CURRENT", thumb):
        assert get(secret) in (403, 404), secret


def test_no_response_shows_a_server_folder(served, client):
    """Issue 15 ("Leaks"): neither /search over raw HTTP (the page's POST, and Gradio's queue as scripts use it) nor
    the page, its config and its API description contain the cache's absolute path or the working folder; results
    load from the app's thumbnail route by file name."""
    from bench.client import QueueClient

    backend, url, _ = served
    base = url.rstrip("/")
    secrets = {str(backend.cache_dir.resolve()), str(Path.cwd()), str(Path(app.__file__).resolve().parent)}
    raw = QueueClient(url)
    try:
        fn = raw.fn_index("search")
        data = raw.inputs("search", sketch=canvas_value("circle"))
        queued = raw.call(fn, data, queue=True)["output"]
        direct = httpx.post(f"{base}/gradio_api/run/predict", json={"data": data, "fn_index": fn,
                                                                      "session_hash": "leaktest01"}, timeout=60)
        assert direct.status_code == 200, direct.text[:300]
        texts = [str(queued), direct.text]
        for item in direct.json()["data"][0]:
            assert item["image"]["url"].startswith(f"{base}{app.THUMB_ROUTE}/"), item
            assert httpx.get(item["image"]["url"], timeout=10).status_code == 200
        texts += [httpx.get(f"{base}{path}", timeout=10).text for path in ("/", "/config", "/gradio_api/info")]
    finally:
        raw.close()
    for text in texts:
        leaked = [s for s in secrets if s in text]
        assert not leaked, (leaked, text[:500])


def test_uploaded_photos_appear_in_results(served, client, tmp_path):
    backend = served[0]
    before = len(backend.engine.gallery)
    path = canvas_value("box", offset=20)
    _, preview, _ = client.predict(path, api_name="/search")
    photo = tmp_path / "my-photo.png"
    Image.open(preview).convert("RGB").save(photo)  # the model's view of the sketch, uploaded as a photo
    status, info = client.predict([handle_file(str(photo))], api_name="/add_photos")
    assert status.startswith("Added 1 photo;") and f"{before + 1} photos" in info
    gallery, _, _ = client.predict(path, api_name="/search")
    top = gallery[0]["caption"]
    assert top.split(" · ")[1].startswith("my-photo") and float(top.split(" · ")[0]) > 0.999


def test_python_app_py_with_flags_and_environment(tmp_path):
    """`python app.py` as a user starts it: flags plus environment variables, the page up before the index."""
    import time

    photos = tmp_path / "photos" / "cats"
    photos.mkdir(parents=True)
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (64, 48), colour).save(photos / f"cat{i}.jpg")
    args = ["--gallery", str(tmp_path / "photos"), "--cache", str(tmp_path / "cache")]
    with running_app(args, {}, timeout=120) as (client, end):
        sketch = canvas_value("circle")
        while True:
            gallery, _, status = client.predict(sketch, api_name="/search")
            if gallery:
                break
            assert "Still preparing" in status and time.monotonic() < end, status
            time.sleep(0.5)
        assert sorted(item["caption"].split(" · ")[1] for item in gallery) == ["cats/cat0.jpg", "cats/cat1.jpg", "cats/cat2.jpg"]
        assert (tmp_path / "cache" / "CURRENT").is_file()


def test_python_app_py_serves_a_cache_with_the_model_it_was_built_with(tmp_path):
    """Issue 16 item 2: `python -m zsdemo index ... --model M --pretrained none`, then `python app.py --cache DIR` with
    no model flag or variable: the app takes model and weights from the cache's manifest (flag > environment > the
    cache's manifest > default) and serves the cache as built, re-encoding nothing. With the defaults (OpenAI
    weights, not downloadable here) it could not start at all."""
    import subprocess
    import sys
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (64, 48), colour).save(photos / f"p{i}.jpg")
    cache = tmp_path / "cache"
    env = {key: value for key, value in os.environ.items() if key not in ("ZSDEMO_MODEL", "ZSDEMO_PRETRAINED")}
    root = Path(app.__file__).resolve().parent
    built = subprocess.run([sys.executable, "-m", "zsdemo", "index", str(photos), "--cache", str(cache), "--model",
                            TINY_MODEL, "--pretrained", "none"], cwd=root, env={**env, "HF_HUB_OFFLINE": "1"},
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    generation = (cache / "CURRENT").read_text().strip()
    log = tmp_path / "server.log"
    # "" = not set (zsdemo.config): running_app's own ZSDEMO_MODEL / ZSDEMO_PRETRAINED are switched off
    with running_app(["--cache", str(cache)], {"ZSDEMO_MODEL": "", "ZSDEMO_PRETRAINED": ""}, log_file=log) as (
            client, end):
        sketch = canvas_value("circle")
        while True:
            gallery, _, status = client.predict(sketch, api_name="/search")
            if gallery:
                break
            assert "Still preparing" in status and time.monotonic() < end, (status, log.read_text()[-3000:])
            time.sleep(0.5)
        assert sorted(item["caption"].split(" · ")[1] for item in gallery) == ["p0.jpg", "p1.jpg", "p2.jpg"]
        assert "best of 3 photos" in status
    text = log.read_text()
    assert TINY_MODEL in text and "openai" not in text, text[-3000:]
    assert (cache / "CURRENT").read_text().strip() == generation  # served as built: no new generation
