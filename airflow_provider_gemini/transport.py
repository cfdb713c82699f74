"""How one HTTP attempt ends by its deadline, and what the exchange's clock says. No Airflow.

requests' `timeout` bounds each socket read, so a server that trickles a byte at a time can hold an
answer open for ever. Here each attempt gets a wall-clock deadline for the whole answer (connect,
status line, headers, body): a process-wide watchdog thread shuts down the socket of a connection
still in use at its attempt's deadline, which ends any blocked read or write at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import requests.adapters
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "Answer",
    "AttemptDeadline",
    "DeadlineAdapter",
    "Failure",
    "ServerClock",
    "open_session",
    "send",
    "server_clock",
]

BODY_CHUNK_BYTES = 64 * 1024


class AttemptDeadline:
    """One attempt's deadline (monotonic seconds) and the connections it used; `expired` once fired."""

    __slots__ = ("_conns", "_done", "_lock", "expired", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.expired = False
        self._done = False
        self._conns: list[HTTPConnection] = []
        self._lock = threading.Lock()

    def track(self, conn: HTTPConnection) -> None:
        """Watch `conn` until the attempt ends; shut it down now if the deadline has already passed
        (the watchdog fired while the connection was still being opened and had no socket yet)."""
        with self._lock:
            if self._done:
                return
            if self.expired:
                _shut(conn)
            elif not any(known is conn for known in self._conns):
                self._conns.append(conn)

    def fire(self) -> None:
        """The deadline passed: end every read or write blocked on this attempt's connections."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            for conn in self._conns:
                _shut(conn)

    def finish(self) -> None:
        """The attempt ended: its connections go back to the pool untouched from now on."""
        with self._lock:
            self._done = True
            self._conns.clear()

    @property
    def done(self) -> bool:
        return self._done


def _shut(conn: HTTPConnection) -> None:
    # shutdown(2), not close: the socket object stays valid for the thread blocked on it, which sees
    # end-of-stream and unwinds through urllib3's own error handling (the connection is then dropped).
    sock: Any = conn.sock
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)  # TLS-in-TLS
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(raw, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread per process that fires attempt deadlines in time order.

    A heap instead of a timer thread per attempt: scheduling costs a push, and an attempt that ends
    early is only marked done (its entry is dropped when it reaches the top).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, AttemptDeadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, attempt: AttemptDeadline) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gemini-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (attempt.when, next(self._seq), attempt))
            if self._heap[0][2] is attempt:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            due: list[AttemptDeadline] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    attempt = heapq.heappop(self._heap)[2]
                    if not attempt.done:
                        due.append(attempt)
                if not due:
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            for attempt in due:
                attempt.fire()


_watchdog = _Watchdog()


def _reset_after_fork() -> None:
    # A forked child (Airflow's executors fork) has no watchdog thread and may hold a copy of its lock
    # taken by a thread that does not exist there: start from a fresh one.
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_reset_after_fork)

_current = threading.local()


def _track(conn: HTTPConnection) -> None:
    attempt: AttemptDeadline | None = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.track(conn)


class _Watched(HTTPConnection):
    """Registers the connection with the attempt running on this thread before it connects (so a TLS
    handshake that trickles is cut at the deadline too), after, and before each request."""

    def connect(self) -> None:
        _track(self)
        super().connect()
        _track(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _track(self)
        super().request(*args, **kwargs)


class WatchedHTTPConnection(_Watched):
    """An HTTP connection watched by the attempt's deadline."""


class WatchedHTTPSConnection(_Watched, HTTPSConnection):
    """An HTTPS connection watched by the attempt's deadline."""


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


_WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections (direct or through an HTTP proxy) the watchdog can cut.

    SOCKS proxies keep urllib3's own connection classes; there the read timeout and the check between
    body chunks still bound an answer, a trickled status line excepted.
    """

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


def open_session(base_url: str, user_agent: str) -> requests.Session:
    """A keep-alive session whose connections honour attempt deadlines (see `send`)."""
    session = requests.Session()
    session.mount("https://", DeadlineAdapter())
    session.mount("http://", DeadlineAdapter())
    session.headers["User-Agent"] = user_agent
    # Read the proxy and CA-bundle variables once, not on every request (requests scans the whole
    # environment per call otherwise); netrc is never wanted for signed requests.
    settings = session.merge_environment_settings(base_url, {}, None, None, None)
    session.trust_env = False
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    return session


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer, and the local wall-clock times the request left and its headers came."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    sent_at: float
    received_at: float


@dataclass(frozen=True)
class Failure:
    """No complete answer: `timed_out` when the deadline passed, else the connection failed;
    `error` is the name of the exception's type only (the exception itself holds the signed request)."""

    timed_out: bool
    error: str


_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def send(
    session: requests.Session, url: str, headers: Mapping[str, str], seconds: float, body: bytes | None = None
) -> Answer | Failure:
    """POST `headers` (and `body`; Gemini's private endpoints take none) to `url` and read the whole
    answer within `seconds` of now.

    Never raises for a transport problem: it returns a Failure, so no requests exception (holding the
    prepared request, signed headers included) can travel on as an error's cause or context.
    """
    attempt = AttemptDeadline(time.monotonic() + seconds)
    _watchdog.schedule(attempt)
    _current.attempt = attempt
    problem: BaseException | None = None
    response: requests.Response | None = None
    try:
        sent_at = time.time()
        response = session.post(
            url, headers=headers, data=body, timeout=seconds, allow_redirects=False, stream=True
        )
        received_at = time.time()
        chunks: list[bytes] = []
        for chunk in response.iter_content(BODY_CHUNK_BYTES):
            chunks.append(chunk)
            if time.monotonic() > attempt.when:
                attempt.fire()
                break
        else:
            return Answer(response.status_code, response.headers, b"".join(chunks), sent_at, received_at)
    except _TRANSPORT_ERRORS as exc:
        problem = exc
    finally:
        _current.attempt = None
        attempt.finish()
    if response is not None:
        response.close()
    timed_out = attempt.expired or isinstance(
        problem, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError
    )
    return Failure(timed_out=timed_out, error="" if problem is None else type(problem).__name__)


class ServerClock:
    """The exchange's clock, learnt from the Date header of its answers, as an offset from ours.

    A Date is whole seconds, stamped between the request leaving and the headers arriving, so each
    answer bounds the offset to an interval; the intervals are intersected answer after answer, and
    one that does not overlap (a clock was stepped) starts afresh. Thread-safe; reads take no lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bounds: tuple[float, float] | None = None
        self._last_date: tuple[str, float] | None = None

    def observe(self, date: str | None, sent_at: float, received_at: float) -> None:
        """Take one answer's Date header (RFC 7231) and the local times around it; a bad Date is ignored."""
        if not date:
            return
        cached = self._last_date
        if cached is not None and cached[0] == date:
            stamp = cached[1]
        else:
            try:
                stamp = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError, OverflowError):
                return
            self._last_date = (date, stamp)
        low, high = stamp - received_at, stamp + 1.0 - sent_at
        with self._lock:
            if self._bounds is not None:
                low_seen, high_seen = self._bounds
                if max(low, low_seen) <= min(high, high_seen):
                    low, high = max(low, low_seen), min(high, high_seen)
            self._bounds = (low, high)

    @property
    def offset(self) -> float | None:
        """Seconds the exchange's clock is ahead of ours (negative: behind); None before any Date."""
        bounds = self._bounds
        return None if bounds is None else (bounds[0] + bounds[1]) / 2.0

    def correction(self) -> float | None:
        """The least change that puts our clock within what the exchange's Dates allow: 0 while they
        agree with ours (so hosts that agree with each other stay as they are), else the nearest edge
        of the offset's interval, which narrows towards the true offset answer after answer; None
        before any Date."""
        bounds = self._bounds
        if bounds is None:
            return None
        low, high = bounds
        return low if low > 0.0 else high if high < 0.0 else 0.0


_clocks: dict[str, ServerClock] = {}
_clocks_lock = threading.Lock()


def server_clock(base_url: str) -> ServerClock:
    """The process's one ServerClock for an exchange: every client of it learns from and uses it."""
    with _clocks_lock:
        clock = _clocks.get(base_url)
        if clock is None:
            clock = _clocks[base_url] = ServerClock()
        return clock
