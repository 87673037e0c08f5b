"""A real browser (Debian's chromium via Playwright) draws on the canvas and watches the results.

Needs `apt-get install chromium` (Playwright's own browser download does not work offline). Without
it the test is skipped locally and FAILS when CI=true. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import app
from tests.conftest import TINY_MODEL
from zsdemo.config import ServeConfig
from zsdemo.serve.service import SearchService

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def ink(value: Any) -> int:
    """How much was drawn: the number of points in the canvas's strokes."""
    try:
        return sum(len(stroke) // 2 for stroke in json.loads(value)["strokes"])
    except (TypeError, ValueError, KeyError):
        return 0


class Recorder:
    """Wraps SearchService.search: records the ink of every sketch the server searched; can slow searches down."""

    def __init__(self, service: SearchService) -> None:
        self.search = service.search
        self.calls: list[int] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    def __call__(self, sketch: Any, *args: Any) -> Any:
        with self.lock:
            self.calls.append(ink(sketch))
        time.sleep(self.delay)
        return self.search(sketch, *args)


@pytest.fixture(scope="module")
def browser_app(tiny_encoder, tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        message = f"chromium not found at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("browser")
    config = ServeConfig(cache=str(root / "cache"), model=TINY_MODEL, pretrained="none")
    backend = SearchService(config, encoder=tiny_encoder)
    backend.prepare()
    recorder = Recorder(backend)
    backend.search = recorder  # type: ignore[method-assign]
    demo = app.build_demo(backend)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                            **{**app.launch_kwargs(config), "server_name": "127.0.0.1", "server_port": None})
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(30_000)
        try:
            yield page, url, recorder, browser
        finally:
            browser.close()
            demo.close()


def captions(page) -> list[str]:
    return page.eval_on_selector_all("#zs-results .caption-label", "els => els.map(e => e.textContent.trim())")


def wait_for(predicate, timeout: float = 45.0, what: str = "condition", describe=None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" (page shows: {describe()!r})" if describe else ""))


class Canvas:
    def __init__(self, page) -> None:
        box = page.locator("#zs-sketch canvas").first.bounding_box()
        assert box is not None
        self.page = page
        self.side = min(box["width"], box["height"])
        self.x0, self.y0 = box["x"], box["y"]

    def stroke(self, *points: tuple[float, float]) -> None:
        mouse = self.page.mouse
        mouse.move(self.x0 + points[0][0] * self.side, self.y0 + points[0][1] * self.side)
        mouse.down()
        for x, y in points[1:]:
            mouse.move(self.x0 + x * self.side, self.y0 + y * self.side, steps=10)
        mouse.up()


def test_drawing_updates_results_after_every_stroke(browser_app):
    page, url, recorder, _ = browser_app
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(url)
    page.wait_for_selector("#zs-sketch canvas[data-ready]")
    assert captions(page) == []
    canvas = Canvas(page)  # no tool to pick: the first stroke draws

    strokes = [((0.15, 0.2), (0.85, 0.25), (0.8, 0.8)),
               ((0.2, 0.85), (0.5, 0.3)),
               ((0.1, 0.5), (0.9, 0.55))]
    seen: list[list[str]] = []
    for i, points in enumerate(strokes):
        calls_before = len(recorder.calls)
        canvas.stroke(*points)
        wait_for(lambda before=calls_before: len(recorder.calls) > before, what=f"search call after stroke {i + 1}")
        wait_for(lambda: captions(page) and captions(page) not in seen, what=f"new results after stroke {i + 1}")
        page.screenshot(path=str(ARTIFACTS / f"browser-stroke-{i + 1}.png"), full_page=True)
        seen.append(captions(page))
        assert len(seen[-1]) == 12 and all(" · " in c for c in seen[-1])
        assert page.locator("#zs-results img").count() == 12
        assert "best of" in page.inner_text("#zs-status")
    # every stroke added ink, and the server saw each sketch in turn
    assert recorder.calls == sorted(recorder.calls) and len(set(recorder.calls)) == 3 and recorder.calls[0] > 0
    assert page.locator("#zs-preview img").count() == 1  # what the model sees

    page.locator("#zs-results img").first.click()
    page.wait_for_selector("#zs-large img")
    page.screenshot(path=str(ARTIFACTS / "browser-search.png"), full_page=True)
    assert (ARTIFACTS / "browser-search.png").stat().st_size > 10_000


def test_fast_strokes_newest_sketch_wins(browser_app):
    page, url, recorder, _ = browser_app
    page.goto(url)
    page.wait_for_selector("#zs-sketch canvas[data-ready]")
    canvas = Canvas(page)
    recorder.calls.clear()
    recorder.delay = 1.5  # searches slower than the strokes come
    try:
        for i in range(5):
            canvas.stroke((0.1 + 0.15 * i, 0.1), (0.15 + 0.15 * i, 0.9))
            page.wait_for_timeout(150)
        wait_for(lambda: "best of" in page.inner_text("#zs-status"), what="results")
        time.sleep(3 * recorder.delay + 1)  # let any pending call finish
    finally:
        recorder.delay = 0.0
    calls = list(recorder.calls)
    assert 1 <= len(calls) < 5, calls  # intermediate strokes were dropped...
    assert calls[-1] == max(calls) and calls == sorted(calls), calls  # ...and the last search saw the whole sketch
    page.screenshot(path=str(ARTIFACTS / "browser-fast-strokes.png"), full_page=True)


def launch_not_started(encoder: Any, tmp_path: Path) -> tuple[SearchService, Any, str]:
    """A launched app whose service has not started yet (its gallery is prepared when the test says so)."""
    config = ServeConfig(cache=str(tmp_path / "cache"), model=TINY_MODEL, pretrained="none")
    backend = SearchService(config, encoder=encoder)
    demo = app.build_demo(backend)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                            **{**app.launch_kwargs(config), "server_name": "127.0.0.1", "server_port": None})
    return backend, demo, url


def test_page_shows_startup_progress_until_ready(browser_app, tiny_encoder, tmp_path):
    """Before the gallery is ready the page says so; the timer then clears the banner and shows the size."""
    page = browser_app[0]
    backend, demo, url = launch_not_started(tiny_encoder, tmp_path)
    try:
        page.goto(url)
        page.wait_for_selector("#zs-banner .zs-banner")
        assert "Starting" in page.inner_text("#zs-banner")
        page.screenshot(path=str(ARTIFACTS / "browser-starting.png"), full_page=True)
        backend.start()
        page.wait_for_function("() => !document.querySelector('#zs-banner .zs-banner')", timeout=60_000)
        assert backend.ready
        wait_for(lambda: f"{len(backend.engine.gallery)} photos" in page.inner_text("#zs-info"), what="gallery size")
    finally:
        demo.close()


def test_upload_a_sketch_in_the_page(browser_app, tmp_path):
    from tests.conftest import draw_sketch

    page, url, _, _ = browser_app
    path = tmp_path / "uploaded-sketch.png"
    draw_sketch(shape="box").save(path)
    page.goto(url)
    page.get_by_role("tab", name="Upload a sketch").click()
    page.locator("#zs-upload input[type=file]").set_input_files(str(path))
    wait_for(lambda: len(captions(page)) == 12, what="results for the uploaded sketch")
    assert "best of" in page.inner_text("#zs-status")
    page.screenshot(path=str(ARTIFACTS / "browser-upload.png"), full_page=True)


def test_touch_draws_on_a_phone_and_gets_results(browser_app):
    """A touch-enabled mobile viewport: a finger stroke draws (no tool to pick) and results appear."""
    _, url, recorder, browser = browser_app
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("#zs-sketch canvas[data-ready]")
        box = page.locator("#zs-sketch canvas").bounding_box()
        cdp = context.new_cdp_session(page)
        before = len(recorder.calls)
        points = [(box["x"] + box["width"] * (0.2 + 0.06 * i), box["y"] + box["height"] * (0.3 + 0.04 * i)) for i in range(10)]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0], "y": points[0][1]}]})
        for x, y in points[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        wait_for(lambda: len(recorder.calls) > before and recorder.calls[-1] >= 5, what="a search after the touch stroke",
                 describe=lambda: f"status {page.inner_text('#zs-status')!r}; searched inks {recorder.calls[before:]}")
        wait_for(lambda: len(captions(page)) == 12, what="results on the phone")
        page.screenshot(path=str(ARTIFACTS / "browser-touch.png"), full_page=True)
    finally:
        context.close()


@pytest.fixture(scope="module")
def modes_app(browser_app, tmp_path_factory):
    """An app serving both modes, with prompts trained by train/fit.py on the tiny configs (tests/test_modes.py)."""
    from tests.test_modes import trained_prompts

    category, fine, photos = trained_prompts(tmp_path_factory.getbasetemp() / "trained-prompts")
    config = ServeConfig(galleries=[str(photos)], cache=str(tmp_path_factory.mktemp("modes") / "cache"), model=TINY_MODEL,
                         pretrained="none", prompts=str(category), fine_grained_prompts=str(fine), query_precision="fp32")
    backend = SearchService(config)
    backend.prepare()
    assert backend.wait_all(0), backend.describe()
    demo = app.build_demo(backend)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                            **{**app.launch_kwargs(config), "server_name": "127.0.0.1", "server_port": None})
    page = browser_app[3].new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(30_000)
    try:
        yield page, url, backend
    finally:
        page.close()
        demo.close()


def test_switch_modes_and_see_why_a_photo_matched(modes_app):
    """Both modes in the page: the switch re-runs the current sketch in the other mode; a click on a result shows the
    similarity map over the photo with its caption. The last screenshot is the README's picture (docs/modes.png)."""
    page, url, backend = modes_app
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(url)
    page.wait_for_selector("#zs-sketch canvas[data-ready]")
    switch = page.locator("#zs-mode")
    assert switch.is_visible()
    assert "Find this kind of thing" in switch.inner_text() and "Find this exact one" in switch.inner_text()
    canvas = Canvas(page)
    canvas.stroke((0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3))
    wait_for(lambda: len(captions(page)) == 12 and "(Find this kind of thing)" in page.inner_text("#zs-status"),
             what="category-level results", describe=lambda: page.inner_text("#zs-status"))
    kind = captions(page)
    assert "best of 61 photos in" in page.inner_text("#zs-status")
    page.screenshot(path=str(ARTIFACTS / "browser-mode-category.png"), full_page=True)

    switch.get_by_text("Find this exact one").click()  # no new stroke: the switch re-runs the same sketch
    wait_for(lambda: "(Find this exact one)" in page.inner_text("#zs-status") and len(captions(page)) == 12,
             what="fine-grained results after the switch")
    exact = captions(page)
    assert exact != kind

    page.locator("#zs-results img").first.click()
    page.wait_for_selector("#zs-large img")
    wait_for(lambda: "not a segmentation" in page.inner_text("#zs-why"), what="the why-this-photo caption")
    why = page.inner_text("#zs-why")
    assert exact[0].split(" · ")[1] in why and "Find this exact one" in why and "Why this photo" in why
    page.locator("#zs-large").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "browser-modes-why.png"), full_page=True)
    assert (ARTIFACTS / "browser-modes-why.png").stat().st_size > 10_000
    if os.environ.get("ZSDEMO_UPDATE_DOCS"):  # refresh the README's picture on request only
        shutil.copyfile(ARTIFACTS / "browser-modes-why.png", ARTIFACTS.parent / "docs" / "modes.png")

    switch.get_by_text("Find this kind of thing").click()  # back: the same results as before, the map cleared
    wait_for(lambda: "(Find this kind of thing)" in page.inner_text("#zs-status") and captions(page) == kind,
             what="category-level results again")


def test_a_sketch_drawn_while_the_gallery_loads_gets_results_when_it_is_ready(browser_app, tiny_encoder, tmp_path):
    """Issue 16 item 4: the stroke made during start-up hears "still preparing"; once the gallery is ready the page
    searches that sketch itself (the start-up timer), with no further stroke."""
    page = browser_app[0]
    backend, demo, url = launch_not_started(tiny_encoder, tmp_path)
    try:
        page.goto(url)
        page.wait_for_selector("#zs-sketch canvas[data-ready]")
        Canvas(page).stroke((0.2, 0.2), (0.8, 0.3), (0.5, 0.8))
        wait_for(lambda: "Still preparing" in page.inner_text("#zs-status"), what="the still-preparing message",
                 describe=lambda: page.inner_text("#zs-status"))
        assert captions(page) == []
        backend.start()  # no stroke from here on
        wait_for(lambda: len(captions(page)) == 12, timeout=90, what="results for the waiting sketch",
                 describe=lambda: page.inner_text("#zs-status"))
        assert "best of" in page.inner_text("#zs-status")
        page.screenshot(path=str(ARTIFACTS / "browser-waiting-sketch.png"), full_page=True)
    finally:
        demo.close()


def rects(page, *selectors: str) -> list[dict[str, float]]:
    """The boxes of the first element of each selector, all measured at the same moment."""
    return page.evaluate("sels => sels.map(s => { const r = document.querySelector(s).getBoundingClientRect(); "
                         "return {x: r.x, y: r.y, width: r.width, height: r.height}; })", list(selectors))


def horizontal_overflow(page) -> dict[str, float]:
    """How far the page and the results grid reach past their width (0 = no sideways scroll anywhere)."""
    return page.evaluate("""() => {
        const doc = document.documentElement;
        const wraps = [...document.querySelectorAll('#zs-results, #zs-view')];
        return {page: doc.scrollWidth - doc.clientWidth,
                results: Math.max(0, ...wraps.map(w => w.scrollWidth - w.clientWidth))};
    }""")


def test_phone_shows_every_result_and_a_readable_why_view(browser_app):
    """Issue 16 item 6, at 390x844: the results grid adapts to the width (no sideways scroll, every result within the
    viewport's width and reachable by scrolling down), and "why this photo" is wide and clear of the toolbar."""
    _, url, _, browser = browser_app
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(url)
        page.wait_for_selector("#zs-sketch canvas[data-ready]")
        canvas = page.locator("#zs-sketch canvas").bounding_box()
        assert canvas["x"] >= 0 and canvas["x"] + canvas["width"] <= 390
        Canvas(page).stroke((0.2, 0.3), (0.7, 0.6), (0.3, 0.8))
        wait_for(lambda: len(captions(page)) == 12, what="results on the phone")
        assert horizontal_overflow(page) == {"page": 0, "results": 0}
        items = page.locator("#zs-results .thumbnail-item")
        assert items.count() == 12
        for i in range(12):  # every result: within the width; in view once scrolled to vertically
            items.nth(i).scroll_into_view_if_needed()
            box = items.nth(i).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (i, box)
            assert box["y"] >= 0 and box["y"] + box["height"] <= 844, (i, box)
            assert box["width"] >= 80, (i, box)  # a thumbnail one can see, not a sliver
        page.screenshot(path=str(ARTIFACTS / "browser-phone-results.png"), full_page=True)

        assert not page.locator("#zs-why-box").is_visible()
        items.first.click()
        page.wait_for_selector("#zs-large img")
        wait_for(lambda: "Why this photo" in page.inner_text("#zs-why"), what="the why-this-photo caption")
        image, caption = rects(page, "#zs-large img", "#zs-why")  # at one moment: the page scrolls them into view
        assert image["width"] >= 0.7 * 390 and image["x"] >= 0 and image["x"] + image["width"] <= 390, image
        assert caption["y"] >= image["y"] + image["height"] - 1, (image, caption)  # below the photo, not over it
        assert page.locator("#zs-large label").filter(has_text="Why this photo").count() == 0  # no label under the toolbar
        assert horizontal_overflow(page) == {"page": 0, "results": 0}
        page.screenshot(path=str(ARTIFACTS / "browser-phone-why.png"), full_page=True)
    finally:
        context.close()


def test_desktop_results_sit_beside_the_canvas_and_why_appears_when_filled(browser_app):
    """Issue 16 item 7, at 1280x1100: the results fill the space beside the canvas, the random-weights warning is at
    the top, and the "why this photo" area appears only once a result is clicked."""
    page, url, _, _ = browser_app
    page.goto(url)
    page.wait_for_selector("#zs-sketch canvas[data-ready]")
    warning = page.locator("#zs-warning")
    assert warning.is_visible() and "Random backbone weights" in warning.inner_text()
    canvas = page.locator("#zs-sketch canvas").bounding_box()
    assert warning.bounding_box()["y"] + warning.bounding_box()["height"] <= canvas["y"]  # above the canvas, in view
    assert not page.locator("#zs-why-box").is_visible() and page.locator("#zs-large img").count() == 0
    Canvas(page).stroke((0.2, 0.2), (0.8, 0.5), (0.4, 0.8))
    wait_for(lambda: len(captions(page)) == 12, what="results")
    results = page.locator("#zs-results").bounding_box()
    assert results["x"] >= canvas["x"] + canvas["width"], (canvas, results)  # beside the canvas, not below it
    assert results["x"] - (canvas["x"] + canvas["width"]) < 80, (canvas, results)  # no wide empty gap between
    assert results["y"] < canvas["y"] + canvas["height"]
    assert results["x"] + results["width"] > 1280 - 80  # and they use the width that is left
    assert horizontal_overflow(page) == {"page": 0, "results": 0}
    page.locator("#zs-results img").first.click()
    page.wait_for_selector("#zs-large img")
    assert page.locator("#zs-why-box").is_visible()
    page.screenshot(path=str(ARTIFACTS / "browser-desktop-why.png"), full_page=True)


def test_both_modes_on_a_phone(modes_app, browser_app):
    """The two-mode page at 390x844: switch, results in a grid that fits, why-this-photo below them. With
    ZSDEMO_UPDATE_DOCS=1 its screenshot becomes the README's phone picture (docs/phone.png)."""
    _, url, _ = modes_app
    context = browser_app[3].new_context(viewport={"width": 390, "height": 844}, is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(url)
        page.wait_for_selector("#zs-sketch canvas[data-ready]")
        Canvas(page).stroke((0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3))
        wait_for(lambda: len(captions(page)) == 12 and "(Find this kind of thing)" in page.inner_text("#zs-status"),
                 what="category-level results on the phone", describe=lambda: page.inner_text("#zs-status"))
        assert horizontal_overflow(page) == {"page": 0, "results": 0}
        page.locator("#zs-results img").first.click()
        wait_for(lambda: "not a segmentation" in page.inner_text("#zs-why"), what="the why-this-photo caption")
        page.wait_for_timeout(800)  # the page scrolls to the why-this-photo area (smoothly); then show status and results
        page.evaluate("() => document.querySelector('#zs-preview').scrollIntoView({block: 'start'})")
        page.mouse.move(0, 0)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "browser-phone-modes.png"))  # the viewport: what a phone shows
        if os.environ.get("ZSDEMO_UPDATE_DOCS"):
            shutil.copyfile(ARTIFACTS / "browser-phone-modes.png", ARTIFACTS.parent / "docs" / "phone.png")
    finally:
        context.close()
