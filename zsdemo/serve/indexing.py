"""Indexing while the page keeps answering searches: a worker thread at a lower CPU priority, with torch's
intra-op threads capped while it runs."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def index_gently(work: Callable[[], T], threads: int) -> T:
    """Run `work` on its own thread at nice +10 with torch's intra-op threads capped to `threads`, and return its
    result (or raise its error). The cap is process-wide (torch has one intra-op pool): a torch query path
    shares it meanwhile; ONNX Runtime query paths have their own pool."""
    import torch

    result: dict[str, Any] = {}

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):  # not every platform has per-thread priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            result["value"] = work()
        except BaseException as exc:  # handed to the caller's thread below
            result["error"] = exc

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        worker = threading.Thread(target=run, name="zsdemo-index", daemon=True)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    if "error" in result:
        raise result["error"]
    return result["value"]
