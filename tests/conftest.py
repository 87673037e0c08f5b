"""Shared fixtures: everything offline, on the CPU, with the tiny 2-layer ViT or random ViT-B/32."""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
from PIL import Image, ImageDraw

from zsdemo.limits import CANVAS_SIZE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# exported query paths and remembered choices go to a folder of this run, not the user's ~/.cache
os.environ.setdefault("ZSDEMO_QUERY_CACHE", tempfile.mkdtemp(prefix="zsdemo-query-paths-"))

TINY_MODEL = "zsdemo-tiny-vit"  # zsdemo/model/configs/zsdemo-tiny-vit.json


@pytest.fixture(scope="session")
def tiny_encoder():
    from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder

    return SketchPhotoEncoder.load(EncoderConfig(model=TINY_MODEL, pretrained="none"))


def draw_sketch(size: int = 256, shape: str = "line", offset: int = 0) -> Image.Image:
    """Black strokes on white, like the app's canvas."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    o = offset
    if shape == "line":
        draw.line((30 + o, 30 + o, 150 + o, 200 + o), fill="black", width=6)
    elif shape == "circle":
        draw.ellipse((40 + o, 40 + o, 160 + o, 160 + o), outline="black", width=6)
    elif shape == "box":
        draw.rectangle((50 + o, 60 + o, 180 + o, 140 + o), outline="black", width=6)
    return image


def canvas_value(shape: str = "line", offset: int = 0, size: int = CANVAS_SIZE) -> str:
    """What the page's canvas sends after a stroke: the strokes as JSON, in canvas pixels."""
    import json
    import math

    o = offset
    if shape == "line":
        strokes = [[30 + o, 30 + o, 90 + o, 115 + o, 150 + o, 200 + o]]
    elif shape == "circle":
        strokes = [[c for t in range(64) for c in (round(100 + o + 60 * math.cos(t / 10)),
                                                   round(100 + o + 60 * math.sin(t / 10)))]]
    elif shape == "box":
        strokes = [[50 + o, 60 + o, 180 + o, 60 + o, 180 + o, 140 + o, 50 + o, 140 + o, 50 + o, 60 + o]]
    else:
        raise ValueError(shape)
    return json.dumps({"width": size, "height": size, "brush": 6, "strokes": strokes})


@contextlib.contextmanager
def running_app(args: list[str], env_extra: dict[str, str], timeout: float = 180.0, log_file=None):
    """`python app.py ARGS` as a user starts it (tiny random model, a free port on 127.0.0.1); yields a connected
    gradio_client and the deadline for the rest of the test, and stops the app afterwards. With `log_file` (a path)
    the server's output goes there, for the test to read."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ZSDEMO_MODEL": TINY_MODEL, "ZSDEMO_PRETRAINED": "none", "GRADIO_SERVER_PORT": str(port),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    root = Path(__file__).resolve().parent.parent
    sink = open(log_file, "w") if log_file else subprocess.PIPE  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, str(root / "app.py"), *args, "--host", "127.0.0.1"], cwd=root, env=env,
                            stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else Path(log_file).read_text()
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
                break
            except Exception:
                assert time.monotonic() < end, "app did not come up"
                time.sleep(0.5)
        yield client, end
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if log_file:
            sink.close()
