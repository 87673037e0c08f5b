"""A launched app for the end-to-end benchmarks (bench/browser.py, bench/load.py): start it as a separate
process, talk to it over Gradio's queue protocol with plain HTTP, stop it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.synthetic import stroke_json

APP_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(cache_dir: Path, model: str, pretrained: str, log_path: Path, *extra: str,
              env: dict[str, str] | None = None, launcher: list[str] | None = None) -> tuple[Any, str]:
    """`python app.py --cache DIR ...` as a separate process on 127.0.0.1: (Popen, url). `launcher` replaces
    `python app.py` (a wrapper that takes the same arguments)."""
    port = free_port()
    cmd = [*(launcher or [sys.executable, str(ROOT / "app.py")]), "--cache", str(cache_dir), "--model", model,
           "--pretrained", pretrained, "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **APP_ENV, **(env or {})},
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/"


def stop_app(proc: Any) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


class QueueClient:
    """Gradio's queue protocol over raw HTTP (what the page's JS client does; no gradio_client), and the one POST of
    an unqueued event:
    POST /gradio_api/queue/join {data, fn_index, session_hash} -> {event_id}, then
    GET /gradio_api/queue/data?session_hash=... (server-sent events) until `process_completed`."""

    def __init__(self, url: str, timeout: float = 120.0, headers: dict[str, str] | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout, headers=headers)
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

    def _join(self, fn_index: int, data: list[Any], session: str) -> str:
        joined = self.http.post(f"{self.url}/gradio_api/queue/join",
                                json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                                      "trigger_id": None})
        if joined.status_code != 200:
            raise RuntimeError(f"join refused: HTTP {joined.status_code} {joined.text[:200]}")
        return str(joined.json()["event_id"])

    def queued(self, fn_index: int) -> bool:
        """Whether the event goes through Gradio's queue (else the page sends one POST /gradio_api/run/predict)."""
        return self.config["dependencies"][fn_index].get("queue") is not False

    def predict(self, fn_index: int, data: list[Any], session_hash: str | None = None) -> dict[str, Any]:
        """An unqueued event as the page sends it: one POST /gradio_api/run/predict, the result in its response.
        The same answer as `call` (messages: the POST sent and its answer, as process_starts / process_completed)."""
        started = time.perf_counter()
        response = self.http.post(f"{self.url}/gradio_api/run/predict",
                                  json={"data": data, "fn_index": fn_index, "session_hash": session_hash or
                                        uuid.uuid4().hex[:11], "event_data": None, "trigger_id": None})
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"predict refused: HTTP {response.status_code} {response.text[:200]}")
        output = response.json()
        return {"output": output.get("data"), "messages": [(0.0, "process_starts"), (seconds, "process_completed")],
                "duration": output.get("duration"), "seconds": seconds}

    def call(self, fn_index: int, data: list[Any], session_hash: str | None = None,
             queue: bool | None = None) -> dict[str, Any]:
        """One event: {'output': [...], 'messages': [(seconds since the join was sent, msg), ...], 'seconds',
        'duration' (the function's own time, as Gradio measured it)}. Raises RuntimeError on failure. `queue`: None
        = the way the page sends it (an unqueued event, the canvas's /search: `predict`), True = through the queue."""
        if not (self.queued(fn_index) if queue is None else queue):
            return self.predict(fn_index, data, session_hash)
        session = session_hash or uuid.uuid4().hex[:11]
        started = time.perf_counter()
        event_id = self._join(fn_index, data, session)
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


def wait_query_path(log_path: Path | None, timeout: float = 900.0) -> str:
    """Wait until the launched app has switched to its sketch query path (its log says "answers sketches on" or
    "stays on fp32"; zsdemo.serve.service prepares it in the background after the gallery is ready): until then its
    searches run on fp32 while the choice competes for the CPU, which would make any reference measured then too
    slow. Returns the log line ("" without a log, or when the app never says within `timeout`)."""
    if log_path is None:
        return ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        said = [line for line in lines if "answers sketches on" in line or "stays on fp32" in line]
        if said:
            return said[-1]
        time.sleep(1.0)
    return ""

