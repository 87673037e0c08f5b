"""Two modes in one app: category-level ("this kind of thing") and fine-grained ("this exact one") prompts,
trained here by train/fit.py on the tiny configs, served on one backbone; and "why this photo"."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import app
from tests.conftest import TINY_MODEL, canvas_value, running_app
from zsdemo.config import ServeConfig
from zsdemo.serve.modes import CATEGORY, FINE_GRAINED, PLAIN
from zsdemo.serve.service import SearchService

ROOT = Path(__file__).resolve().parent.parent
TRAIN_STEPS = 4  # a few optimiser steps: enough for a real checkpoint of each kind, ~20-40 s per run on 2 cores


@functools.cache
def trained_prompts(root: Path) -> tuple[Path, Path, Path]:
    """(category checkpoint, fine-grained checkpoint, synthetic photo folder): train/fit.py on the tiny configs, both
    runs at once, once per test session (the browser test shares them)."""
    from train.synthetic import generate

    done = (root / "category" / "prompts.safetensors", root / "fine_grained" / "prompts.safetensors", root / "gallery")
    if all(path.exists() for path in done):  # imported under two module names (test_modes, tests.test_modes)
        return done
    data = generate(root / "data", photos_per_class=6, sketches_per_photo=1, size=64)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, config in (("category", "tiny.yaml"), ("fine_grained", "tiny_fine_grained.yaml")):
        cmd = [sys.executable, str(ROOT / "train" / "fit.py"), "--config", str(ROOT / "train" / "configs" / config),
               f"data_root={data}", f"out_dir={root / name}", f"max_steps={TRAIN_STEPS}", "checkpoint_every=1000",
               "progress=false"]
        runs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"train/fit.py ({name}) failed:\n{out[-3000:]}"
    photos = root / "gallery"
    photos.mkdir(exist_ok=True)
    for src in sorted((data / "photo").glob("*/*.jpg")):
        (photos / src.parent.name).mkdir(exist_ok=True)
        (photos / src.parent.name / src.name).write_bytes(src.read_bytes())
    Image.fromarray(disc_photo()).save(photos / "disc.png")
    return done


def disc_photo(size: tuple[int, int] = (96, 64), centre: tuple[int, int] = (30, 32), radius: int = 14) -> np.ndarray:
    """A white photo with one dark disc on one side (landscape, so the model's centre crop cuts its margins)."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius),
                                  fill="black")
    return np.asarray(image)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> tuple[Path, Path, Path]:
    return trained_prompts(tmp_path_factory.getbasetemp() / "trained-prompts")


def config_for(trained, cache: Path, **kw) -> ServeConfig:
    category, fine, photos = trained
    values = {"galleries": [str(photos)], "cache": str(cache), "model": TINY_MODEL, "pretrained": "none",
              "prompts": str(category), "fine_grained_prompts": str(fine), "query_precision": "fp32", **kw}
    return ServeConfig(**values)


@pytest.fixture(scope="module")
def both(prompts, tmp_path_factory) -> SearchService:
    s = SearchService(config_for(prompts, tmp_path_factory.mktemp("modes") / "cache"))
    s.prepare()
    assert s.wait_all(0) and s.ready, s.describe()
    return s


def test_checkpoints_are_the_two_kinds(prompts):
    from zsdemo.model.prompts import read_checkpoint

    category, fine, _ = prompts
    assert read_checkpoint(category).spec.shared is False and read_checkpoint(fine).spec.shared is True


def test_both_modes_share_one_backbone(both):
    assert both.modes == [CATEGORY, FINE_GRAINED]
    cat, fine = both.mode(CATEGORY).encoder, both.mode(FINE_GRAINED).encoder
    assert cat is both.encoder and fine is not cat
    assert fine.clip is cat.clip and fine.prompted.visual is cat.prompted.visual  # one set of CLIP weights
    assert {p.data_ptr() for p in fine.clip.parameters()} == {p.data_ptr() for p in cat.clip.parameters()}
    assert fine.prompted.spec.shared and not cat.prompted.spec.shared  # each checkpoint as it says
    assert fine.fingerprint() != cat.fingerprint()


def test_each_mode_has_its_own_cached_gallery(both, prompts):
    first, second = both.mode(CATEGORY), both.mode(FINE_GRAINED)
    assert first.cache_dir == both.cache_dir and second.cache_dir == both.cache_dir / "mode-fine_grained"
    assert len(first.engine.gallery) == len(second.engine.gallery) == 61
    assert not np.allclose(first.engine.gallery.embeddings, second.engine.gallery.embeddings)
    generations = {c: (c / "CURRENT").read_text() for c in (first.cache_dir, second.cache_dir)}
    again = SearchService(config_for(prompts, both.cache_dir))
    again.prepare()
    assert again.wait_all(0)
    assert {c: (c / "CURRENT").read_text() for c in generations} == generations  # both reused, nothing re-encoded
    info = again.describe()
    assert [m["name"] for m in info["modes"]] == [CATEGORY, FINE_GRAINED]
    assert all(m["phase"] == "ready" and m["photos"] == 61 for m in info["modes"])


def test_search_takes_the_mode(both):
    sketch = canvas_value("circle")
    default = both.search(sketch, 5)
    category = both.search(sketch, 5, mode=CATEGORY)
    fine = both.search(sketch, 5, mode=FINE_GRAINED)
    by_label = both.search(sketch, 5, mode="Find this exact one")
    assert default.kind == category.kind == fine.kind == "ok" and "best of 61 photos in" in fine.message
    assert [(h.name, h.score) for h in default.hits] == [(h.name, h.score) for h in category.hits]
    assert [h.score for h in fine.hits] != [h.score for h in category.hits]
    assert [(h.name, h.score) for h in by_label.hits] == [(h.name, h.score) for h in fine.hits]
    unknown = both.search(sketch, 5, mode="nope")
    assert unknown.kind == "error" and "'category'" in unknown.message and "'fine_grained'" in unknown.message


def test_second_mode_is_prepared_in_the_background_after_the_first(prompts, tmp_path):
    import threading

    s = SearchService(config_for(prompts, tmp_path / "cache"))
    gate = threading.Event()
    original = s._build_mode_gallery
    s._build_mode_gallery = lambda mode: (gate.wait(60), original(mode))[1]  # type: ignore[method-assign]
    s.start()
    assert s.wait_ready(120) and s.status.phase == "ready"
    assert s.search(canvas_value(), 3).kind == "ok"
    waiting = s.search(canvas_value(), 3, mode=FINE_GRAINED)
    assert waiting.kind == "not_ready" and "Still preparing “Find this exact one”" in waiting.message
    assert not s.settled and "Preparing “Find this exact one”" in app.banner_html(s)
    gate.set()
    assert s.wait_all(120) and s.settled and app.banner_html(s) == ""
    assert s.search(canvas_value(), 3, mode=FINE_GRAINED).kind == "ok"


def test_one_prompt_file_one_mode_none_plain(prompts, tmp_path, tiny_encoder):
    only_fine = SearchService(config_for(prompts, tmp_path / "a", prompts=None))
    assert only_fine.modes == [FINE_GRAINED]
    only_fine.prepare()
    assert only_fine.wait_all(0) and only_fine.encoder.prompted.spec.shared
    assert only_fine.search(canvas_value(), 3, mode=FINE_GRAINED).kind == "ok"
    assert only_fine.search(canvas_value(), 3, mode=CATEGORY).kind == "error"
    assert SearchService(config_for(prompts, tmp_path / "b", fine_grained_prompts=None)).modes == [CATEGORY]
    assert SearchService(config_for(prompts, tmp_path / "c", prompts=None, fine_grained_prompts=None)).modes == [PLAIN]


def test_a_checkpoint_given_to_the_wrong_flag_is_refused(prompts, tmp_path):
    category, fine, _ = prompts
    swapped = SearchService(config_for(prompts, tmp_path / "cache", prompts=str(fine), fine_grained_prompts=str(category)))
    swapped.prepare()
    assert swapped.status.phase == "error" and "pass it with --fine-grained-prompts" in swapped.status.message
    assert "pass it with --fine-grained-prompts" in app.banner_html(swapped)
    assert not (tmp_path / "cache").exists()  # refused before loading or indexing anything
    with pytest.raises(SystemExit, match="category-level checkpoint .*pass it with --prompts"):
        app.main(["--fine-grained-prompts", str(category), "--model", TINY_MODEL, "--pretrained", "none",
                  "--cache", str(tmp_path / "c2")])
    with pytest.raises(SystemExit, match="fine-grained checkpoint .*pass it with --fine-grained-prompts"):
        app.main(["--prompts", str(fine), "--model", TINY_MODEL, "--pretrained", "none", "--cache", str(tmp_path / "c3")])


def test_flag_and_environment_name_the_fine_grained_prompts(monkeypatch):
    assert app.parse_args(["--fine-grained-prompts", "fg.safetensors"]).fine_grained_prompts == "fg.safetensors"
    monkeypatch.setenv("ZSDEMO_FINE_GRAINED_PROMPTS", "from-env.safetensors")
    monkeypatch.setenv("ZSDEMO_PROMPTS", "cat.safetensors")
    config = app.parse_args([])
    assert (config.prompts, config.fine_grained_prompts) == ("cat.safetensors", "from-env.safetensors")


def test_explain_a_hit_in_each_mode(both):
    sketch = canvas_value("circle", offset=-40)
    for mode in both.modes:
        hit = both.search(sketch, 3, mode=mode).hits[0]
        outcome = both.explain(hit, sketch, mode)
        assert outcome.kind == "ok", outcome.message
        with Image.open(hit.photo) as photo:
            assert outcome.image.size == photo.size
        assert "not a segmentation" in outcome.message and " ms)" in outcome.message
    by_name = both.explain("disc.png", sketch, FINE_GRAINED)
    assert by_name.kind == "ok" and by_name.image.size == (96, 64) and "cropped away" in by_name.message
    for bad in ("/etc/passwd", "../disc.png", "nope.png"):
        assert both.explain(bad, sketch).kind == "error"
    assert both.explain("disc.png", None).kind == "empty"


def test_explanation_is_cheap(both):
    sketch = canvas_value("box")
    times = [both.explain("disc.png", sketch, CATEGORY).seconds for _ in range(3)]
    assert min(times) < 1.0, times  # tiny model; bench/modes.py measures ViT-B/32


def test_added_photos_reach_both_modes(prompts, tmp_path):
    s = SearchService(config_for(prompts, tmp_path / "cache"))
    s.prepare()
    assert s.wait_all(0)
    photo = tmp_path / "mine.png"
    Image.fromarray(disc_photo(centre=(60, 30))).save(photo)
    outcome = s.add_photos([str(photo)])
    assert outcome.ok and outcome.added == 1
    assert len(s.mode(CATEGORY).engine.gallery) == len(s.mode(FINE_GRAINED).engine.gallery) == 62
    assert s.explain(s.search(canvas_value(), 62, mode=FINE_GRAINED).hits[-1], canvas_value(), FINE_GRAINED).kind == "ok"


# ---- through the page's functions and a launched app ---------------------------------------------
def test_page_has_the_switch_only_with_two_modes(both, tiny_encoder, tmp_path):
    demo = app.build_demo(both)
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "zs-mode")
    assert radio.visible and [c[1] for c in radio.choices] == [CATEGORY, FINE_GRAINED]
    assert [c[0] for c in radio.choices] == ["Find this kind of thing", "Find this exact one"]
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert [type(b).__name__ for b in by_name["search"].inputs] == ["HTML", "Slider", "Textbox", "Slider", "Radio"]
    assert "Find this kind of thing: `prompts.safetensors`" in app.info_markdown(both)
    plain = SearchService(ServeConfig(cache=str(tmp_path / "c"), model=TINY_MODEL, pretrained="none"), encoder=tiny_encoder)
    radio = next(b for b in app.build_demo(plain).blocks.values() if getattr(b, "elem_id", None) == "zs-mode")
    assert not radio.visible and [c[1] for c in radio.choices] == [PLAIN]


@pytest.fixture(scope="module")
def client(both, tmp_path_factory):
    from gradio_client import Client

    demo = app.build_demo(both)
    kwargs = {**app.launch_kwargs(both.config), "server_name": "127.0.0.1", "server_port": None}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    finally:
        demo.close()


@pytest.mark.slow
def test_api_search_and_explain_take_the_mode(both, client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/search"]["parameters"]] == ["sketch", "k", "text", "text_weight", "mode"]
    assert [p["parameter_name"] for p in api["/explain"]["parameters"]] == ["sketch", "photo", "mode"]
    sketch = canvas_value("circle")
    old_client = client.predict(sketch, 4, api_name="/search")[0]  # without a mode: the first one
    for mode in both.modes:
        gallery, _, status = client.predict(sketch, 4, "", 0.0, mode, api_name="/search")
        expected = [f"{h.score:.3f} · {h.name}" for h in both.search(sketch, 4, mode=mode).hits]
        assert [item["caption"] for item in gallery] == expected and "best of 61 photos in" in status
        if mode == CATEGORY:
            assert [item["caption"] for item in old_client] == expected
        image, caption = client.predict(sketch, gallery[0]["caption"], mode, api_name="/explain")
        with Image.open(image) as overlay, Image.open(both.find_photo(expected[0].split(" · ")[1], mode).photo) as photo:
            assert overlay.size == photo.size
        assert "not a segmentation" in caption
    image, caption = client.predict(sketch, "disc.png", FINE_GRAINED, api_name="/explain")
    with Image.open(image) as overlay:
        assert overlay.size == (96, 64)
    assert client.predict(sketch, "/etc/passwd", CATEGORY, api_name="/explain")[0] is None


@pytest.mark.slow
def test_python_app_py_with_both_prompt_files(prompts, tmp_path):
    """`python app.py --prompts CAT` with the fine-grained file from the environment (as a Space sets it): both modes
    come up, the second after the first, and /search answers in each."""
    import time

    category, fine, photos = prompts
    args = ["--gallery", str(photos), "--cache", str(tmp_path / "cache"), "--prompts", str(category)]
    with running_app(args, {"ZSDEMO_FINE_GRAINED_PROMPTS": str(fine), "ZSDEMO_QUERY_PRECISION": "fp32"}) as (client, end):
        sketch = canvas_value("circle")
        for mode, label in ((CATEGORY, "Find this kind of thing"), (FINE_GRAINED, "Find this exact one")):
            while True:
                gallery, _, status = client.predict(sketch, 5, "", 0.0, mode, api_name="/search")
                if gallery:
                    break
                assert "Still preparing" in status and time.monotonic() < end, status
                time.sleep(0.5)
            assert len(gallery) == 5 and "best of 61 photos in" in status and f"({label})" in status
        assert (tmp_path / "cache" / "CURRENT").is_file() and (tmp_path / "cache" / "mode-fine_grained" / "CURRENT").is_file()
