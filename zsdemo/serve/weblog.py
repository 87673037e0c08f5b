"""Quiet server logs: a browser that closes a tab mid-upload is not an error worth a traceback.

uvicorn logs "Exception in ASGI application" with a full traceback when a client disconnects while the
server is still reading its request (starlette's ClientDisconnect) or writing the response. Those are
ordinary on the web; they become one INFO line, and every other error is logged as before.
"""

from __future__ import annotations

import logging

DISCONNECT_ERRORS = ("ClientDisconnect", "ConnectionResetError", "BrokenPipeError", "ClosedResourceError",
                     "EndOfStream")


class DroppedConnectionFilter(logging.Filter):
    """Turns tracebacks caused by a dropped client connection into one short INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if type(exc).__name__ in DISCONNECT_ERRORS:
                record.msg, record.args = "client disconnected before the request finished (%s)", (type(exc).__name__,)
                record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
                return True
            exc = exc.__cause__ or exc.__context__
        return True


def quiet_dropped_connections() -> None:
    """Install the filter on the loggers uvicorn and starlette report request errors through."""
    for name in ("uvicorn.error", "uvicorn", "starlette"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DroppedConnectionFilter) for f in logger.filters):
            logger.addFilter(DroppedConnectionFilter())
