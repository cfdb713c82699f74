"""How a private request proves who sends it: HMAC signing with an API key and its nonce sources
(counter and time modes), or an OAuth bearer token (see oauth.py); both behind `RequestAuth`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from airflow_provider_gemini.state import StateFile, state_dir

NonceMode = Literal["counter", "time"]
NONCE_MODES: tuple[str, ...] = ("counter", "time")

log = logging.getLogger(__name__)


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")  # plain digits: str() would give "1E-8"
    raise TypeError(f"a request field of type {type(value).__name__} cannot be sent as JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def encode_payload(path: str, fields: Mapping[str, Any] | None, nonce: int | str | None = None) -> bytes:
    """The base64 text of X-GEMINI-PAYLOAD: `request`, the nonce when there is one, then the fields."""
    payload: dict[str, Any] = {"request": path} if nonce is None else {"request": path, "nonce": nonce}
    if fields:
        if "request" in fields or "nonce" in fields:
            raise ValueError("fields: 'request' and 'nonce' are set by the signer, not by the caller")
        payload.update(fields)
    return base64.b64encode(_ENCODER.encode(payload).encode())


_BODYLESS = {"Content-Type": "text/plain", "Content-Length": "0", "Cache-Control": "no-cache"}


def build_private_headers(
    api_key: str,
    api_secret: str | bytes,
    path: str,
    nonce: int | str,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The headers of a signed private request: the payload travels base64 in X-GEMINI-PAYLOAD."""
    encoded = encode_payload(path, fields, nonce)
    secret = api_secret.encode() if isinstance(api_secret, str) else api_secret
    return {
        "X-GEMINI-APIKEY": api_key,
        "X-GEMINI-PAYLOAD": encoded.decode("ascii"),
        "X-GEMINI-SIGNATURE": hmac.new(secret, encoded, hashlib.sha384).hexdigest(),
        **_BODYLESS,
    }


def build_oauth_headers(
    access_token: str, path: str, fields: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The headers of an OAuth request: `Authorization: Bearer` and the payload, no nonce, no signature."""
    return {
        "Authorization": f"Bearer {access_token}",
        "X-GEMINI-PAYLOAD": encode_payload(path, fields).decode("ascii"),
        **_BODYLESS,
    }


class RequestAuth(Protocol):
    """What the client needs of an auth mode: headers for one attempt, and what to do on a 401."""

    @property
    def identity(self) -> str:
        """Who sends (the key, or the OAuth client id): the rate budget is shared per identity."""
        ...

    def headers(self, path: str, fields: Mapping[str, Any]) -> tuple[dict[str, str], object]:
        """The headers of one attempt, and a handle on the credential they carry (for `renew`)."""
        ...

    def renew(self, used: object) -> bool:
        """After a 401 to headers carrying `used`: True if new credentials are in place to resend with."""
        ...

    def refused(self, used: object) -> None:
        """Gemini answered InvalidNonce to headers carrying `used`."""
        ...


class NonceSource(Protocol):
    """Where a key's nonces come from. `offset` (seconds) moves the local clock onto the exchange's;
    None: not known in this process yet."""

    def __call__(self, offset: float | None = None) -> int: ...

    def refused(self, nonce: int) -> None:
        """Gemini refused `nonce` as not increasing: another host or tool is ahead of this host."""
        ...


class KeyAuth:
    """API key mode: HMAC-SHA384 over the payload, with a fresh nonce from the key's source each time,
    on the exchange's clock when `offset` (seconds to add to ours, e.g. ServerClock's; None while not
    known) says ours is off."""

    def __init__(
        self,
        api_key: str,
        api_secret: bytes,
        nonce: NonceSource,
        offset: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._api_key = api_key
        self._secret = api_secret
        self._nonce = nonce
        self._offset = offset

    @property
    def identity(self) -> str:
        return self._api_key

    def headers(self, path: str, fields: Mapping[str, Any]) -> tuple[dict[str, str], object]:
        nonce = self._nonce(self._offset())
        return build_private_headers(self._api_key, self._secret, path, nonce, fields), nonce

    def renew(self, used: object) -> bool:
        return False  # a key does not change: a 401 is final

    def refused(self, used: object) -> None:
        if isinstance(used, int):
            self._nonce.refused(used)


def nonce_file_name(api_key: str) -> str:
    """The name of the state file that holds a key's last counter nonce: a hash, never the key."""
    return f"nonce-{hashlib.sha256(api_key.encode()).hexdigest()}"


def nonce_file_for(api_key: str, directory: str | os.PathLike[str] | None = None) -> str:
    """The state file that holds the last counter nonce of a key on this host, in the checked
    private state directory (created if missing; see state.py)."""
    return str(state_dir(directory) / nonce_file_name(api_key))


# Legitimately, the stored nonce runs ahead of the clock by a few milliseconds (more than one nonce a
# millisecond) or by a small clock step back after it was sent. A value further ahead is not from this
# client: sending it would move the key to where every other host and tool, counting from their
# clocks, fails until the clock gets there (for a planted 10**15, never). A clock step back larger than
# this costs InvalidNonce answers until the clock passes the last value, as it does for other tools.
MAX_STORED_LEAD_MS = 60_000

# A time-based nonce may lead the clock by this much, so a burst of requests need not wait a second
# each; the rest of Gemini's +/-30 s window is left for the difference between this host's clock and
# Gemini's.
TIME_NONCE_LEAD_SECONDS = 2
# Gemini's window for time-based nonces: a lead beyond it cannot be waited out usefully.
GEMINI_NONCE_WINDOW_SECONDS = 30

_live_sources: weakref.WeakSet[TimeNonce] = weakref.WeakSet()


# After an InvalidNonce the host's counter runs this much ahead of its clock, doubling with each
# refusal of a nonce issued since the last raise, up to MAX_NONCE_LEAD_MS, halving every
# NONCE_LEAD_HALF_LIFE_MS without one: enough to pass another host whose clock (or anchoring) is a
# little ahead, and never far from real time.
NONCE_LEAD_STEP_MS = 50
MAX_NONCE_LEAD_MS = 3_000
NONCE_LEAD_HALF_LIFE_MS = 60_000


@dataclass
class CounterState:
    """A key's counter on this host: the last nonce, the lead (ms) and the nonce at its last raise,
    and the last offset (s) onto the exchange's clock a process learnt, for processes yet to learn it."""

    last: int = 0
    lead: float = 0.0
    raised: int = 0
    offset: float = 0.0

    @classmethod
    def decode(cls, stored: bytes) -> CounterState:
        """The state in a file (a lone number: an older file's last nonce); a fresh one if unreadable."""
        parts = stored.split()
        try:
            state = cls(
                last=int(parts[0]) if parts else 0,
                lead=float(parts[1]) if len(parts) > 1 else 0.0,
                raised=int(parts[2]) if len(parts) > 2 else 0,
                offset=float(parts[3]) if len(parts) > 3 else 0.0,
            )
        except ValueError:
            return cls()
        if not 0.0 <= state.lead <= MAX_NONCE_LEAD_MS:
            state.lead = 0.0
        if not abs(state.offset) <= MAX_ANCHOR_OFFSET_SECONDS:
            state.offset = 0.0
        return state

    def encode(self) -> bytes:
        return b"%020d %r %d %r" % (self.last, self.lead, self.raised, self.offset)

    def lead_at(self, now: int) -> float:
        """The lead after halving every NONCE_LEAD_HALF_LIFE_MS since its raise."""
        if self.lead <= 0.0:
            return 0.0
        return float(self.lead * 0.5 ** (max(0, now - self.raised) / NONCE_LEAD_HALF_LIFE_MS))


# An offset onto the exchange's clock beyond this is not a clock a host runs on: a day.
MAX_ANCHOR_OFFSET_SECONDS = 86_400.0


class CounterNonce:
    """Milliseconds, strictly increasing for one key across every process of this user on the host.

    next = max(now_ms + lead, last + 1), where `now` is this host's clock plus `offset` (the
    exchange's clock when ours is known to be off; a process that has no offset yet takes the one last
    stored), and `last`, `lead` and the offset live in a private state file (state.py) that is kept
    open and read and written under flock, so a nonce costs a few syscalls. `lead` is 0 until Gemini
    refuses a nonce (`refused`). A stored value more than MAX_STORED_LEAD_MS ahead of both clocks is
    discarded with a warning.
    """

    def __init__(
        self,
        api_key: str,
        *,
        clock: Callable[[], float] = time.time,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self._file = StateFile(nonce_file_name(api_key), directory)
        self.path = str(self._file.path)
        self._clock = clock

    def __call__(self, offset: float | None = None) -> int:
        return self._file.update(lambda stored: self._next(stored, offset))

    def _next(self, stored: bytes, offset: float | None) -> tuple[bytes, int]:
        state = CounterState.decode(stored)
        if offset is not None and abs(offset) <= MAX_ANCHOR_OFFSET_SECONDS:
            state.offset = offset
        local = int(self._clock() * 1000)
        now = local + int(state.offset * 1000)
        if state.last - max(local, now) > MAX_STORED_LEAD_MS:
            log.warning(
                "Nonce state %s holds %d, more than %d ms ahead of the clock (%d ms): not sent by this "
                "client; starting again from the clock",
                self.path,
                state.last,
                MAX_STORED_LEAD_MS,
                now,
            )
            state = CounterState(offset=state.offset)
        state.last = max(now + int(state.lead_at(now)), state.last + 1)
        return state.encode(), state.last

    def refused(self, nonce: int) -> None:
        """Gemini has seen a nonce at least as large as `nonce` from elsewhere: raise the lead (once
        per raise; refusals of nonces issued before the last raise say nothing new)."""

        def raise_lead(stored: bytes) -> tuple[bytes, None]:
            state = CounterState.decode(stored)
            if nonce > state.raised:
                lead = max(2.0 * state.lead_at(nonce), float(NONCE_LEAD_STEP_MS))
                state.lead = min(float(MAX_NONCE_LEAD_MS), lead)
                state.raised = state.last = max(state.last, nonce)
                log.info(
                    "Nonce %d refused: this host's nonces now lead its clock by %.0f ms", nonce, state.lead
                )
            return state.encode(), None

        self._file.update(raise_lead)

    def close(self) -> None:
        self._file.close()


class TimeNonce:
    """Whole seconds from the clock, for time-based keys (checked against Gemini's clock, +/-30 s).

    It never hands out the same second twice in one process, since whether Gemini also wants time
    nonces to increase is unconfirmed, and never leads the clock by more than TIME_NONCE_LEAD_SECONDS:
    it waits instead. After the clock steps back by more than Gemini's window, waiting would take too
    long and the values it leads with would be refused anyway, so it restarts from the clock.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last = 0
        _live_sources.add(self)

    def __call__(self, offset: float | None = None) -> int:
        with self._lock:
            while True:
                now = self._clock() + (offset or 0.0)
                nonce = max(int(now), self._last + 1)
                lead = nonce - now
                if lead <= TIME_NONCE_LEAD_SECONDS:
                    break
                if lead > GEMINI_NONCE_WINDOW_SECONDS:
                    log.warning(
                        "Time nonce: the clock (%d) is %d s behind the last nonce (%d), more than "
                        "Gemini's %d s window; starting again from the clock",
                        int(now),
                        int(lead),
                        self._last,
                        GEMINI_NONCE_WINDOW_SECONDS,
                    )
                    nonce = int(now)
                    break
                self._sleep(lead - TIME_NONCE_LEAD_SECONDS)
            self._last = nonce
            return nonce

    def refused(self, nonce: int) -> None:
        """Nothing to move: the retry waits for the next second (see retrying.wait_for_gemini)."""

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _reset_after_fork() -> None:
    for source in list(_live_sources):
        source._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)

_shared: dict[tuple[str, str], NonceSource] = {}
_shared_lock = threading.Lock()


def nonce_source(mode: str, api_key: str) -> NonceSource:
    """The process-wide nonce source for a key in `mode` ("counter" or "time")."""
    if mode not in NONCE_MODES:
        raise ValueError(f"nonce_mode: expected 'counter' or 'time', got {mode!r}")
    with _shared_lock:
        source = _shared.get((mode, api_key))
        if source is None:
            source = CounterNonce(api_key) if mode == "counter" else TimeNonce()
            _shared[(mode, api_key)] = source
        return source
