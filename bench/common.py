"""Shared helpers of the benchmarks in bench/: machine facts, interleaved timing, percentiles, inputs.

Every figure a benchmark prints sits next to the machine it was measured on (CPU model and the SIMD/bf16
flags that decide which query path is fast) and next to a reference measured in the same run, with the
compared things timed round-robin so a noisy neighbour on a shared machine slows all of them alike.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANVAS = 800  # Gradio Sketchpad composite size used for end-to-end queries


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, SIMD level / VNNI / native bf16 (zsdemo.query.precision.cpu_features), cores, threads, load."""
    import torch

    from zsdemo.query.precision import cpu_features, cpu_label

    features = cpu_features()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cpu_label": cpu_label(features),
        "features": features,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1m": round(load[0], 2),
    }


def machine_line(info: dict[str, Any]) -> str:
    f = info["features"]
    return (f"machine: {info['cpu']} [{info['cpu_label']}: AVX2 {f['avx2']}, AVX-512 {f['avx512']}, VNNI {f['vnni']}, "
            f"native bf16 {f['native_bf16']}; torch capability {f['capability']}]; {info['cores']} cores; "
            f"torch {info['torch']} with {info['torch_threads']} threads; load average (1 min) {info['load_avg_1m']}")


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2, budget_s: float | None = None,
                min_repeats: int = 5) -> dict[str, np.ndarray]:
    """Time each function `repeats` times, round-robin (rotating the order), in milliseconds; with `budget_s`,
    stop once that many seconds have passed and at least `min_repeats` rounds are in (busy machines).
    The same timing loop the encoder uses to choose its query path at start."""
    from zsdemo.query.precision import time_interleaved

    times = time_interleaved(fns, repeats, warmup=warmup, budget_s=budget_s, min_repeats=min_repeats)
    return {name: np.asarray(t) for name, t in times.items()}


def p50(t: np.ndarray) -> float:
    return float(np.percentile(t, 50))


def p95(t: np.ndarray) -> float:
    return float(np.percentile(t, 95))


def row(*cells: Any, widths: tuple[int, ...] = (34, 12, 12, 12, 30)) -> str:
    out = []
    for cell, width in zip(cells, widths, strict=False):
        text = f"{cell:.2f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width) if not out else text.rjust(width))
    return " ".join(out)


def draw_canvas(seed: int, size: int = CANVAS) -> np.ndarray:
    """A Sketchpad-like composite: black strokes on white, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(size // 8, size - size // 8, 4))
        kind = int(rng.integers(0, 3))
        box = (min(x0, x1), min(y0, y1), max(x0, x1) + 10, max(y0, y1) + 10)
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill="black", width=int(rng.integers(4, 12)))
        elif kind == 1:
            draw.ellipse(box, outline="black", width=int(rng.integers(4, 12)))
        else:
            draw.rectangle(box, outline="black", width=int(rng.integers(4, 12)))
    return np.asarray(image).copy()


def sketchpad_value(seed: int, size: int = CANVAS) -> dict[str, Any]:
    """The value a gr.Sketchpad sends: {"background", "layers", "composite"}."""
    composite = draw_canvas(seed, size)
    layer = np.dstack([composite, np.full(composite.shape[:2], 255, np.uint8)])
    return {"background": None, "layers": [layer], "composite": composite}


def synthetic_embeddings(n: int, dim: int, seed: int, n_queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like image embeddings: (gallery (n, dim), queries (n_queries, dim)), float32.

    Plain clusters make nearest-neighbour search too easy (every method gets recall 1.0), so this mimics
    CLIP embeddings more closely: a power-law spectrum (low intrinsic dimension), coarse clusters with fine
    sub-clusters, and a shared direction (mean pairwise cosine ~0.35, top-10 neighbours at cosine ~0.93).
    Queries come from the same distribution and are not in the gallery.
    """
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.75).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)

    def gaussian(m: int) -> np.ndarray:
        return (rng.standard_normal((m, dim)).astype(np.float32) * scale) @ basis

    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    n_coarse, n_fine = max(10, n // 1000), max(50, n // 20)
    coarse = gaussian(n_coarse)
    fine = coarse[rng.integers(0, n_coarse, n_fine)] + 0.6 * gaussian(n_fine)

    def draw(m: int) -> np.ndarray:
        x = fine[rng.integers(0, n_fine, m)] + 0.5 * gaussian(m)
        x = x / np.linalg.norm(x, axis=1, keepdims=True) + 0.7 * common
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(n_queries)


def photo_files(folder: Path, n: int) -> None:
    """`n` generated 640x480 JPEG photos (colour gradients), for building real galleries."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([(xx * a) % 256, (yy * b) % 256, ((xx + yy) * c) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i:04d}.jpg", quality=90)


def synthetic_gallery(cache_dir: Path, encoder: Any, n: int, n_real: int = 8, index_cfg: Any = None) -> Any:
    """A gallery of `n` photos: `n_real` generated photos indexed for real (Gallery.build), the rest synthetic
    embedding-like vectors reusing the real entries' thumbnails, made with the public Gallery.create."""
    import dataclasses

    from zsdemo.store.gallery import Gallery
    from zsdemo.store.index import IndexConfig

    photos = cache_dir.parent / f"{cache_dir.name}-photos"
    photo_files(photos, n_real)
    real, _ = Gallery.build([photos], cache_dir, encoder)
    extra = max(0, n - len(real))
    vectors, _ = synthetic_embeddings(extra, real.embeddings.shape[1], seed=1)
    entries = list(real.entries)
    for i in range(extra):
        base = real.entries[i % len(real.entries)]
        name = f"synthetic/{i:06d}-{base.name if dataclasses.is_dataclass(base) else base['name']}"
        entries.append(dataclasses.replace(base, name=name) if dataclasses.is_dataclass(base) else {**base, "name": name})
    matrix = np.concatenate([real.embeddings, vectors]).astype(np.float32)
    return Gallery.create(cache_dir, entries, matrix, list(real.sources), encoder, index_cfg or IndexConfig())


# ---- a launched app, for the end-to-end benchmarks (bench/browser.py, bench/load.py) -------------
APP_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_gallery(cache_dir: Path, encoder: Any, n: int, photos_dir: Path | None = None) -> Any:
    """A gallery cache of `n` photos for a launched app: the starter photos (real images) indexed for real
    with `Gallery.build`, then enlarged with the public `Gallery.create` to `n` entries whose embeddings are
    embedding-like synthetic vectors. Every synthetic entry gets a thumbnail file of its own (a hard link to
    a real thumbnail, so no disk space), so the browser loads new thumbnails for new results as it would
    for a real gallery instead of hitting its cache."""
    import dataclasses
    import shutil

    from zsdemo.store.gallery import Gallery
    from zsdemo.store.starter import starter_photos_dir

    photos = photos_dir or starter_photos_dir(cache_dir.parent)
    real, _ = Gallery.build([photos], cache_dir, encoder)
    extra = max(0, n - len(real))
    vectors, _ = synthetic_embeddings(extra, real.embeddings.shape[1], seed=1)
    thumbs = cache_dir / "thumbs"
    entries = list(real.entries)
    for i in range(extra):
        base = real.entries[i % len(real.entries)]
        thumb = f"bench-{i:06d}-{base.thumb}"
        if not (thumbs / thumb).exists():
            try:
                os.link(thumbs / base.thumb, thumbs / thumb)
            except OSError:
                shutil.copyfile(thumbs / base.thumb, thumbs / thumb)
        entries.append(dataclasses.replace(base, name=f"synthetic/{i:06d}-{base.name}", thumb=thumb))
    matrix = np.concatenate([np.asarray(real.embeddings), vectors]).astype(np.float32)
    return Gallery.create(cache_dir, entries, matrix, list(real.sources), encoder)


def start_app(cache_dir: Path, model: str, pretrained: str, log_path: Path, *extra: str,
              env: dict[str, str] | None = None, launcher: list[str] | None = None) -> tuple[Any, str]:
    """`python app.py --cache DIR ...` as a separate process on 127.0.0.1: (Popen, url). `launcher` replaces
    `python app.py` (a wrapper that takes the same arguments)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    cmd = [*(launcher or [sys.executable, str(root / "app.py")]), "--cache", str(cache_dir), "--model", model, "--pretrained",
           pretrained, "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **APP_ENV, **(env or {})},
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/"


def stop_app(proc: Any) -> None:
    import subprocess

    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB; nan if unreadable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def stroke_json(seed: int, n_strokes: int, size: int = 448) -> str:
    """What the page's canvas sends after its `n_strokes`-th stroke: the strokes so far, as JSON."""
    import json

    rng = np.random.default_rng(seed)
    strokes = []
    for _ in range(n_strokes):
        n = int(rng.integers(3, 8))
        anchor = rng.integers(size // 8, size - size // 8, 2)
        points = np.clip(anchor + np.cumsum(rng.integers(-60, 61, (n, 2)), axis=0), 4, size - 4)
        strokes.append([int(v) for v in points.reshape(-1)])
    return json.dumps({"width": size, "height": size, "brush": 4, "strokes": strokes})


class QueueClient:
    """Gradio's queue protocol over raw HTTP (what the page's JS client does; no gradio_client):
    POST /gradio_api/queue/join {data, fn_index, session_hash} -> {event_id}, then
    GET /gradio_api/queue/data?session_hash=... (server-sent events) until `process_completed`."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout)
        self.config = self.http.get(f"{self.url}/config").json()

    def close(self) -> None:
        self.http.close()

    def fn_index(self, api_name: str) -> int:
        for i, dep in enumerate(self.config["dependencies"]):
            if dep.get("api_name") == api_name:
                return int(dep.get("id", i))
        raise KeyError(api_name)

    def inputs(self, api_name: str, **values: Any) -> list[Any]:
        """The endpoint's input values: each input component's default from /config, with the first ones
        replaced by `values` in order (so the client keeps working when the app adds an input)."""
        dep = self.config["dependencies"][self.fn_index(api_name)]
        components = {c["id"]: c for c in self.config["components"]}
        data = [components[i].get("props", {}).get("value") for i in dep["inputs"]]
        for i, value in enumerate(values.values()):
            data[i] = value
        return data

    def upload(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Files -> FileData values (POST /gradio_api/upload, as the page does)."""
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        response = self.http.post(f"{self.url}/gradio_api/upload", files=files)
        response.raise_for_status()
        return [{"path": path, "orig_name": p.name, "meta": {"_type": "gradio.FileData"}}
                for path, p in zip(response.json(), paths, strict=True)]

    def call(self, fn_index: int, data: list[Any], session_hash: str | None = None) -> dict[str, Any]:
        """One event: {'output': [...], 'messages': [(seconds since the join was sent, msg), ...], 'seconds',
        'duration' (the function's own time, as Gradio measured it)}. Raises RuntimeError on failure."""
        import json
        import uuid

        session = session_hash or uuid.uuid4().hex[:11]
        started = time.perf_counter()
        joined = self.http.post(f"{self.url}/gradio_api/queue/join",
                                json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                                      "trigger_id": None})
        if joined.status_code != 200:
            raise RuntimeError(f"join refused: HTTP {joined.status_code} {joined.text[:200]}")
        event_id = joined.json()["event_id"]
        messages: list[tuple[float, str]] = [(time.perf_counter() - started, "joined")]
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                msg = message.get("msg")
                messages.append((time.perf_counter() - started, str(msg)))
                if msg == "process_completed" and message.get("event_id") == event_id:
                    output = message.get("output") or {}
                    if not message.get("success"):
                        raise RuntimeError(f"event failed: {str(output)[:300]}")
                    return {"output": output.get("data"), "messages": messages, "duration": output.get("duration"),
                            "seconds": time.perf_counter() - started}
                if msg in ("unexpected_error", "close_stream"):
                    raise RuntimeError(f"stream ended: {str(message)[:300]}")
        raise RuntimeError("stream closed before the result")


def wait_app_ready(url: str, proc: Any, timeout: float = 600.0) -> QueueClient:
    """Poll the launched app until a search returns results; the connected client."""
    end = time.monotonic() + timeout
    client = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode}")
        try:
            client = client or QueueClient(url)
            out = client.call(client.fn_index("search"), client.inputs("search", sketch=stroke_json(0, 2)))["output"]
            if out and out[0]:
                return client
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1.0)
    raise SystemExit(f"the app at {url} was not ready within {timeout:.0f} s")


def verdict_cpu() -> str:
    """The CPU model as one token, for verdict lines (key=value, space-separated)."""
    return "_".join(cpu_model().replace("(R)", "").replace("(TM)", "").split())
