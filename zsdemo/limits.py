"""What a request may hold, and how much of the server one client may take: the checks every endpoint runs
before any work, for an app that strangers can reach (a public Hugging Face Space).

- `parse_strokes`: the canvas's strokes JSON against a schema, parsed with a nesting-depth limit, finite
  numbers only, bounded sizes and point counts;
- `read_k`, `read_text`, `read_text_weight`, `read_mode`: the other search parameters;
- `UploadPolicy` / `UploadQuota`: whether strangers may add photos (off by default in public) and how many;
- `Gate`: a per-kind concurrency limit with a bounded number of waiting requests and a bounded wait, answering
  "busy, try again" instead of queueing without end; `RateLimiter`: a cheap per-client token bucket;
- `safe_stem`, `neutralise`, `Redactor`: names that can be stored and shown, messages without server paths.

Every refusal is a ZsdemoError subclass whose message is meant for the person who sent the request.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsdemo.errors import ImageError, ZsdemoError


class RequestError(ZsdemoError):
    """A request's parameters are malformed or out of range (the client's mistake, not the server's)."""


class BusyError(ZsdemoError):
    """Too many requests of one kind are running or waiting; the client should try again shortly."""


# ---- strokes ----------------------------------------------------------------------------------------
CANVAS_SIZE = 448  # the page's canvas, pixels a side: what its strokes' coordinates are in when none is given
BRUSH_SIZE = 4  # the page's pen width in canvas pixels


@dataclass(frozen=True)
class StrokeLimits:
    """What a drawn-strokes value may hold (the page's canvas sends a few hundred points per sketch)."""

    max_chars: int = 400_000  # the JSON text
    max_points: int = 40_000
    max_side: int = 2048  # canvas width/height in pixels
    max_brush: int = 16  # the page draws with BRUSH_SIZE; drawing cost grows with the width (a wider brush is clamped)
    max_depth: int = 4  # {"strokes": [[x, y, ...]]} is 3 deep; one more level of slack
    max_digits: int = 12  # an integer literal longer than this is no canvas coordinate


DEFAULT_STROKE_LIMITS = StrokeLimits()


@dataclass(frozen=True)
class Strokes:
    width: int
    height: int
    brush: int
    strokes: list[list[float]]


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPEN = np.zeros(256, np.int32)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in a JSON text, found without parsing it (so a deeply nested
    text never reaches the recursive parser). Brackets inside strings do not count."""
    data = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "replace"), np.uint8)
    return int(np.cumsum(_OPEN[data]).max(initial=0)) if data.size else 0


def _refuse_constant(name: str) -> Any:
    raise RequestError(f"The drawing could not be read: {name} is not a number a canvas sends.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if not _is_number(value) or not math.isfinite(value) or value != int(value) or not low <= value <= high:
        raise ImageError(f"The drawing could not be read: the canvas {what} must be a whole number of pixels, "
                         f"between {low} and {high}.")
    return int(value)


def parse_strokes(value: Any, limits: StrokeLimits = DEFAULT_STROKE_LIMITS) -> Strokes:
    """The canvas's value (JSON text or the parsed dict) -> validated strokes; ImageError with a readable reason
    for anything else. Schema: {"width": int, "height": int, "brush": int (optional), "strokes": [[x0, y0, x1,
    y1, ...], ...]}: finite numbers, x/y pairs, at most `max_points` points, coordinates within two canvases of
    the canvas (the PIL drawing clips them anyway; the bound keeps every number small)."""
    if isinstance(value, str):
        value = _decode_json(value, limits)
    if not isinstance(value, dict):
        raise ImageError("The drawing could not be read (expected an object with width, height and strokes).")
    width = _whole(value.get("width", CANVAS_SIZE), "width", 8, limits.max_side)
    height = _whole(value.get("height", CANVAS_SIZE), "height", 8, limits.max_side)
    brush = value.get("brush", BRUSH_SIZE)
    if not _is_number(brush) or not math.isfinite(brush):
        raise ImageError("The drawing could not be read: brush must be a number.")
    brush = max(1, min(int(brush), limits.max_brush))
    return Strokes(width, height, brush, _read_strokes(value.get("strokes") or [], limits))


def _decode_json(text: str, limits: StrokeLimits) -> Any:
    """JSON text -> its value, refusing what would cost the server (size, nesting, huge numbers, NaN)."""
    if len(text) > limits.max_chars:
        raise ImageError(f"The drawing is too large to read (over {limits.max_chars // 1000} KB of strokes).")
    if json_depth(text) > limits.max_depth:
        raise ImageError("The drawing could not be read (strokes nested too deeply).")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_digits:
            raise ImageError("The drawing could not be read (a number with too many digits).")
        return int(digits)

    try:
        return json.loads(text, parse_int=parse_int, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ImageError("The drawing could not be read (malformed strokes).") from None
    except RequestError as exc:
        raise ImageError(str(exc)) from None


def _read_strokes(raw: Any, limits: StrokeLimits) -> list[list[float]]:
    if not isinstance(raw, list) or len(raw) > limits.max_points:
        raise ImageError("The drawing could not be read (strokes must be a list of at most "
                         f"{limits.max_points} strokes).")
    bound = 2 * limits.max_side
    strokes: list[list[float]] = []
    total = 0
    for stroke in raw:
        if not isinstance(stroke, list) or len(stroke) % 2:
            raise ImageError("The drawing could not be read (strokes must be lists of numbers: x, y pairs).")
        total += len(stroke)
        if total > 2 * limits.max_points:
            raise ImageError(f"The drawing has too many points (the limit is {limits.max_points}); "
                             "clear it and draw again.")
        if not all(_is_number(c) and math.isfinite(c) and -bound <= c <= bound for c in stroke):
            raise ImageError(f"The drawing could not be read (strokes must be lists of numbers: finite x, y "
                             f"within ±{bound} pixels).")
        strokes.append([float(c) for c in stroke])
    return strokes


# ---- the other search parameters --------------------------------------------------------------------
MAX_TEXT_CHARS = 300  # CLIP's tokenizer keeps 77 tokens: a few hundred characters is more than it reads
MAX_MODE_CHARS = 100


def read_k(k: Any, default: int, max_k: int) -> int:
    """The number of results: a finite number (None or 0 = default), clamped to 1..max_k."""
    if k is None or k == "" or (k == 0 and not isinstance(k, bool)):
        return default
    if isinstance(k, str):
        with contextlib.suppress(ValueError):
            k = float(k.strip()[:20])
    if not _is_number(k) or not math.isfinite(k):
        raise RequestError(f"The number of results must be a number from 1 to {max_k}.")
    return max(1, min(int(k), max_k))


def read_text(text: Any) -> str | None:
    """The optional text refinement: a string of at most MAX_TEXT_CHARS characters (None or blank = none)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise RequestError("The text must be a string.")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(f"The text is {len(text)} characters long; the limit is {MAX_TEXT_CHARS} "
                           "(the model reads only the first 77 tokens).")
    return neutralise(text).strip() or None


def read_text_weight(weight: Any) -> float:
    """The text weight: a finite number from 0 to 1 (None = 0)."""
    if weight is None or weight == "":
        return 0.0
    if isinstance(weight, str):
        with contextlib.suppress(ValueError):
            weight = float(weight.strip()[:20])
    if not _is_number(weight) or not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise RequestError("The text weight must be a number from 0 to 1.")
    return float(weight)


def read_mode(mode: Any) -> str | None:
    """A mode's name or label as a short string (None or blank = the default mode); the service checks it is served."""
    if mode is None or mode == "":
        return None
    if not isinstance(mode, str) or len(mode) > MAX_MODE_CHARS:
        raise RequestError("The mode must be the name of one of the modes this app serves.")
    return mode


# ---- names and messages -----------------------------------------------------------------------------
_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")  # controls, format (bidi overrides, zero-width), ...


def neutralise(text: str) -> str:
    """Control, format (bidi overrides, zero-width) and unassigned characters -> U+FFFD, so a name shows as what
    it is (an RTL override can make "gpj.exe" read as "exe.jpg"). Ordinary spaces are kept."""
    return "".join("\ufffd" if unicodedata.category(c) in _INVISIBLE and c != " " else c for c in text)


_UNSAFE_NAME = re.compile(r"[^\w .()+,=@-]+")


def safe_stem(name: str, limit: int = 60) -> str:
    """A file name stem that can be stored and listed: no path separators, no leading dot (the gallery scan
    skips hidden files), no control or bidi characters, at most `limit` characters; "photo" if nothing is left."""
    stem = unicodedata.normalize("NFC", name)
    stem = "".join("_" if unicodedata.category(c) in _INVISIBLE else c for c in stem)
    stem = _UNSAFE_NAME.sub("_", stem.replace("/", "_").replace("\\", "_"))
    stem = re.sub(r"_+", "_", stem).strip(" ._")
    return stem[:limit].strip(" ._") or "photo"


class Redactor:
    """Replaces the server's own folders in messages by short labels ("the cache folder", ...), longest first, so a
    message never shows where the app lives on disk."""

    def __init__(self, paths: Mapping[str, str | os.PathLike | None]) -> None:
        pairs: dict[str, str] = {}
        for label, path in paths.items():
            if not path:
                continue
            for variant in {str(path), str(Path(path).expanduser().resolve())}:
                if len(variant) > 1 and os.path.isabs(variant):
                    pairs[variant] = label
        self._pairs = sorted(pairs.items(), key=lambda item: -len(item[0]))

    def __call__(self, text: str) -> str:
        for path, label in self._pairs:
            text = text.replace(path, label)
        return text


# ---- who may add photos, and how many ---------------------------------------------------------------
LOOPBACK_NAMES = ("", "localhost", "127.0.0.1", "::1")


def is_loopback(host: str | None) -> bool:
    if host is None or host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        raise ZsdemoError(f"{name}={raw!r} is not a whole number.") from None


@dataclass(frozen=True)
class UploadPolicy:
    """Whether photos may be added through the app, and the quotas (0 = no limit). Public = on a Hugging Face
    Space (SPACE_ID set), with --share, or listening on a non-loopback address: there uploads are off unless
    ZSDEMO_ALLOW_UPLOADS=1 (or --allow-uploads), and when on, the public quotas apply."""

    public: bool
    enabled: bool
    why_public: str = ""
    session_photos: int = 0
    session_mb: int = 0
    total_photos: int = 0
    total_mb: int = 0

    PUBLIC_DEFAULTS = {"ZSDEMO_UPLOAD_SESSION_PHOTOS": 20, "ZSDEMO_UPLOAD_SESSION_MB": 50,
                       "ZSDEMO_UPLOAD_TOTAL_PHOTOS": 500, "ZSDEMO_UPLOAD_TOTAL_MB": 1024}

    @classmethod
    def resolve(cls, host: str | None, share: bool, environ: Mapping[str, str] | None = None) -> UploadPolicy:
        environ = os.environ if environ is None else environ
        why = ("on a Hugging Face Space" if environ.get("SPACE_ID") else "with --share" if share
               else f"listening on {host}" if not is_loopback(host) else "")
        raw = environ.get("ZSDEMO_ALLOW_UPLOADS", "").strip().lower()
        enabled = raw in ("1", "true", "yes", "on") if raw else not why
        defaults = cls.PUBLIC_DEFAULTS if why else dict.fromkeys(cls.PUBLIC_DEFAULTS, 0)
        values = {name: _env_int(environ, name, default) for name, default in defaults.items()}
        return cls(bool(why), enabled, why, values["ZSDEMO_UPLOAD_SESSION_PHOTOS"], values["ZSDEMO_UPLOAD_SESSION_MB"],
                   values["ZSDEMO_UPLOAD_TOTAL_PHOTOS"], values["ZSDEMO_UPLOAD_TOTAL_MB"])

    def off_message(self) -> str:
        return (f"Adding photos is turned off on this public app ({self.why_public}). Whoever runs it can turn it on "
                "with ZSDEMO_ALLOW_UPLOADS=1 (or --allow-uploads).")


class UploadQuota:
    """Per-session and total upload quotas of an UploadPolicy. Totals are read from the uploads folder (so they
    hold across restarts); sessions are counted in memory (the most recent 10,000 sessions)."""

    def __init__(self, policy: UploadPolicy) -> None:
        self.policy = policy
        self._used: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _folder_usage(folder: Path) -> tuple[int, int]:
        count = size = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.is_file() and not entry.name.startswith("."):
                    count, size = count + 1, size + entry.stat().st_size
        return count, size

    def check(self, session: str | None, photos: int, nbytes: int, uploads_dir: Path) -> None:
        """RequestError saying what is left when adding `photos` files of `nbytes` would pass a quota."""
        p = self.policy
        mb = 2**20
        with self._lock:
            used_photos, used_bytes = self._used.get(session or "", (0, 0))
        if p.session_photos and used_photos + photos > p.session_photos:
            raise RequestError(f"Each visitor may add {p.session_photos} photos; you have added {used_photos}, "
                               f"so at most {max(0, p.session_photos - used_photos)} more.")
        if p.session_mb and used_bytes + nbytes > p.session_mb * mb:
            raise RequestError(f"Each visitor may add {p.session_mb} MB of photos; you have "
                               f"{max(0, p.session_mb * mb - used_bytes) / mb:.1f} MB left and sent "
                               f"{nbytes / mb:.1f} MB.")
        if p.total_photos or p.total_mb:
            total_photos, total_bytes = self._folder_usage(uploads_dir)
            if p.total_photos and total_photos + photos > p.total_photos:
                raise RequestError(f"The gallery takes no more uploads: it holds {total_photos} added photos and the "
                                   f"limit is {p.total_photos}.")
            if p.total_mb and total_bytes + nbytes > p.total_mb * mb:
                raise RequestError(f"The gallery takes no more uploads: added photos already use "
                                   f"{total_bytes / mb:.0f} MB of the {p.total_mb} MB allowed.")

    def record(self, session: str | None, photos: int, nbytes: int) -> None:
        with self._lock:
            used = self._used.pop(session or "", (0, 0))
            self._used[session or ""] = (used[0] + photos, used[1] + nbytes)
            while len(self._used) > 10_000:
                self._used.popitem(last=False)


# ---- fair sharing -----------------------------------------------------------------------------------
class Gate:
    """At most `limit` requests of one kind at a time, at most `max_waiting` waiting for a turn, each for at most
    `wait_s` seconds; beyond that, BusyError at once (a clear answer instead of a queue without end)."""

    def __init__(self, kind: str, limit: int, max_waiting: int, wait_s: float) -> None:
        self.kind, self.limit, self.max_waiting, self.wait_s = kind, max(1, limit), max(0, max_waiting), wait_s
        self._slots = threading.BoundedSemaphore(self.limit)
        self._lock = threading.Lock()
        self.waiting = 0

    def _busy(self) -> BusyError:
        return BusyError(f"The server is busy with other {self.kind} requests; try again in a few seconds.")

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        if self._slots.acquire(blocking=False):
            got = True
        else:
            with self._lock:
                if self.waiting >= self.max_waiting:
                    raise self._busy()
                self.waiting += 1
            try:
                got = self._slots.acquire(timeout=self.wait_s)
            finally:
                with self._lock:
                    self.waiting -= 1
        if not got:
            raise self._busy()
        try:
            yield
        finally:
            self._slots.release()


class ClientSlots:
    """Fair sharing of the search slots: per client (`client_key`), at most `limit` searches running or waiting for a
    slot; the client's next one waits (at most `wait_s`) for one of its own to finish, outside the shared gate, and at
    most `max_waiting` of a client's wait at all (beyond: "busy" at once). So one client on two connections (two tabs,
    a script) cannot hold both of two slots while others wait. Only clients with a search in progress are kept."""

    def __init__(self, limit: int, max_waiting: int = 2, wait_s: float = 10.0) -> None:
        self.limit, self.max_waiting, self.wait_s = max(1, limit), max(0, max_waiting), wait_s
        self._cond = threading.Condition()
        self._active: dict[str, list[int]] = {}  # client -> [searches holding a turn, searches waiting for one]

    @contextlib.contextmanager
    def enter(self, client: str | None) -> Iterator[None]:
        if client is None:
            yield
            return
        self._take(client)
        try:
            yield
        finally:
            with self._cond:
                counts = self._active[client]
                counts[0] -= 1
                if counts == [0, 0]:
                    del self._active[client]
                self._cond.notify_all()

    def _take(self, client: str) -> None:
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            counts = self._active.setdefault(client, [0, 0])
            if counts[0] >= self.limit and counts[1] >= self.max_waiting:
                raise BusyError("You already have searches running; wait for them and try again.")
            counts[1] += 1
            try:
                while counts[0] >= self.limit:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BusyError("Your earlier searches are still running; try again in a few seconds.")
                    self._cond.wait(left)
            except BaseException:
                counts[1] -= 1
                if counts == [0, 0]:
                    del self._active[client]
                raise
            counts[1] -= 1
            counts[0] += 1

    def held(self, client: str) -> int:
        with self._cond:
            return self._active.get(client, [0, 0])[0]


class RateLimiter:
    """A token bucket per client: `burst` requests at once, then `per_second` on average. Remembers the most recent
    `max_clients` clients (a new client past that evicts the oldest, so memory stays bounded)."""

    def __init__(self, kind: str, per_second: float, burst: int, max_clients: int = 10_000) -> None:
        self.kind, self.per_second, self.burst, self.max_clients = kind, per_second, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, client: str | None) -> None:
        """RequestError when `client` is over its rate (None: not limited)."""
        if client is None or self.per_second <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        if not allowed:
            raise BusyError(f"Too many {self.kind} requests from you in a short time; wait a moment and try again.")


__all__ = ["DEFAULT_STROKE_LIMITS", "MAX_TEXT_CHARS", "BusyError", "Gate", "RateLimiter", "Redactor", "RequestError",
           "StrokeLimits", "Strokes", "UploadPolicy", "UploadQuota", "is_loopback", "json_depth", "neutralise",
           "parse_strokes", "read_k", "read_mode", "read_text", "read_text_weight", "safe_stem"]
