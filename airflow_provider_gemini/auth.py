"""Signing of private requests and the nonce sources (counter and time modes)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Literal

NonceMode = Literal["counter", "time"]
NONCE_MODES: tuple[str, ...] = ("counter", "time")


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")  # plain digits: str() would give "1E-8"
    raise TypeError(f"a request field of type {type(value).__name__} cannot be sent as JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def build_private_headers(
    api_key: str,
    api_secret: str | bytes,
    path: str,
    nonce: int | str,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The headers of a signed private request: the payload travels base64 in X-GEMINI-PAYLOAD."""
    payload: dict[str, Any] = {"request": path, "nonce": nonce}
    if fields:
        if "request" in fields or "nonce" in fields:
            raise ValueError("fields: 'request' and 'nonce' are set by the signer, not by the caller")
        payload.update(fields)
    encoded = base64.b64encode(_ENCODER.encode(payload).encode())
    secret = api_secret.encode() if isinstance(api_secret, str) else api_secret
    return {
        "X-GEMINI-APIKEY": api_key,
        "X-GEMINI-PAYLOAD": encoded.decode("ascii"),
        "X-GEMINI-SIGNATURE": hmac.new(secret, encoded, hashlib.sha384).hexdigest(),
        "Content-Type": "text/plain",
        "Content-Length": "0",
        "Cache-Control": "no-cache",
    }


def nonce_file_for(api_key: str) -> str:
    """The lock file that holds the last counter nonce of a key on this host (named by a hash)."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    return os.path.join(tempfile.gettempdir(), f"airflow-provider-gemini-nonce-{digest}")


_live_sources: weakref.WeakSet[CounterNonce | TimeNonce] = weakref.WeakSet()


class CounterNonce:
    """Milliseconds, strictly increasing for one key across every process on the host.

    next = max(now_ms, last + 1), where `last` lives in a lock file under the temp dir; the file is
    kept open and read and written with pread/pwrite under flock, so a nonce costs a few syscalls.
    """

    def __init__(self, api_key: str) -> None:
        self.path = nonce_file_for(api_key)
        self._lock = threading.Lock()
        self._fd = -1
        _live_sources.add(self)

    def __call__(self) -> int:
        with self._lock:
            fd = self._fd
            if fd < 0:
                fd = self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                try:
                    last = int(os.pread(fd, 32, 0))
                except ValueError:
                    last = 0
                nonce = time.time_ns() // 1_000_000
                if nonce <= last:
                    nonce = last + 1
                os.pwrite(fd, b"%020d" % nonce, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return nonce

    def _after_fork(self) -> None:
        # flock belongs to the open file description, which a forked child shares with its parent:
        # the child must open its own, or both could hold the "exclusive" lock at once.
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


class TimeNonce:
    """Whole seconds from the clock, for time-based keys (checked against Gemini's clock, +/-30 s).

    It never hands out the same second twice in one process: a second request within a second waits
    for the next one, since whether Gemini also wants time nonces to increase is unconfirmed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        _live_sources.add(self)

    def __call__(self) -> int:
        with self._lock:
            wait = self._last + 1 - time.time()
            if 0 < wait <= 1:
                time.sleep(wait)
            # After a clock step backwards, keep counting up rather than wait for the clock.
            self._last = max(int(time.time()), self._last + 1)
            return self._last

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _reset_after_fork() -> None:
    for source in list(_live_sources):
        source._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)

_shared: dict[tuple[str, str], Callable[[], int]] = {}
_shared_lock = threading.Lock()


def nonce_source(mode: str, api_key: str) -> Callable[[], int]:
    """The process-wide nonce source for a key in `mode` ("counter" or "time")."""
    if mode not in NONCE_MODES:
        raise ValueError(f"nonce_mode: expected 'counter' or 'time', got {mode!r}")
    with _shared_lock:
        source = _shared.get((mode, api_key))
        if source is None:
            source = CounterNonce(api_key) if mode == "counter" else TimeNonce()
            _shared[(mode, api_key)] = source
        return source
