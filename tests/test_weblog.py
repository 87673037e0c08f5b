"""A client that drops its connection mid-request leaves one INFO line in the server log, not a traceback."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsdemo.serve.weblog import DroppedConnectionFilter

REPO = Path(__file__).resolve().parents[1]


def test_filter_rewrites_disconnects_and_keeps_real_errors():
    class ClientDisconnect(Exception):  # the name starlette uses
        pass

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application",
                                     None, sys.exc_info())

    dropped = record(RuntimeError("wrapper"))
    dropped.exc_info[1].__context__ = ClientDisconnect()
    assert DroppedConnectionFilter().filter(dropped) and dropped.exc_info is None and dropped.levelno == logging.INFO
    real = record(ValueError("a real bug"))
    assert DroppedConnectionFilter().filter(real) and real.exc_info is not None and real.levelno == logging.ERROR


@pytest.mark.slow
def test_dropped_upload_leaves_no_traceback_in_the_server_log(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ZSDEMO_MODEL": "zsdemo-tiny-vit", "ZSDEMO_PRETRAINED": "none", "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--cache", str(tmp_path / "cache"), "--port",
                                 str(port), "--query-precision", "fp32"], cwd=tmp_path, env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "Running on local URL" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        for _ in range(3):  # a multipart upload cut off after a few hundred bytes
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                             b"boundary=XX\r\nContent-Length: 100000\r\n\r\n--XX\r\nContent-Disposition: form-data; "
                             b"name=\"files\"; filename=\"a.png\"\r\n\r\n" + b"x" * 500)
                time.sleep(0.3)
        time.sleep(2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "client disconnected before the request finished (ClientDisconnect)" in text
    assert "Traceback" not in text, text[-3000:]
