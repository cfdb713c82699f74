"""GeminiClient: private requests (API key or OAuth) over one keep-alive session, paced and retried.
No Airflow."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

import requests
import tenacity

from airflow_provider_gemini import __version__
from airflow_provider_gemini.arguments import (
    parse_base_url,
    parse_order_id,
    parse_positive,
    parse_positive_int,
)
from airflow_provider_gemini.auth import NONCE_MODES, KeyAuth, NonceSource, RequestAuth, nonce_source
from airflow_provider_gemini.exceptions import (
    ERROR_CLASSES,
    GeminiError,
    MissingScopeError,
    RateLimitedError,
    ServiceError,
    error_from_response,
)
from airflow_provider_gemini.metrics import HTTP_429, NO_METRICS, REQUEST_LATENCY, RETRY, Metrics
from airflow_provider_gemini.models import CancelAllResult, Order, Roles
from airflow_provider_gemini.oauth import REQUIRED_SCOPE, BearerAuth, OAuthSession
from airflow_provider_gemini.retrying import (
    NONCE_EXTRA_ATTEMPTS,
    retry_if_safe_to_repeat,
    stop_after_attempts_or_nonce_grace,
    stop_at_call_deadline,
    wait_for_gemini,
)
from airflow_provider_gemini.state import StateFile
from airflow_provider_gemini.transport import Answer, Failure, ServerClock, open_session, send, server_clock

if TYPE_CHECKING:
    from airflow_provider_gemini.coordination import RedisCoordinator

__all__ = [
    "NONCE_EXTRA_ATTEMPTS",
    "CancelAllResult",
    "ClientCore",
    "ClientStats",
    "GeminiClient",
    "RateLimiter",
    "decode_json",
]

log = logging.getLogger(__name__)

PRODUCTION_URL = "https://api.gemini.com"
SANDBOX_URL = "https://api.sandbox.gemini.com"

RATE_SAFETY_MARGIN = 0.015
RATE_LIMITED_PAUSE_SECONDS = 1.0
"""How long the key's clients on this host hold back after a 429 that gives no Retry-After."""
RATE_LIMITED_PAUSE_JITTER = 0.25
"""A host's pause after a 429 is longer by up to this share, so hosts do not all resume at once."""
PACE_BACKOFF = 0.7
"""After a 429 the key's pace on this host drops to this share of what it was (once per pause) ..."""
MIN_PACE = 0.2
PACE_RECOVERY_PER_SECOND = 0.01
"""... and climbs back by this share of the full rate a second: other hosts on the key, which this
host cannot see, then find their share instead of meeting 429 after 429."""
DEFAULT_CALL_TIMEOUT = 60.0
USER_AGENT = f"airflow-provider-gemini/{__version__}"

Unreadable = Callable[[Mapping[str, Any], ValueError], None]

Sleep = Callable[[float], None]
Clock = Callable[[], float]

_DECODER = json.JSONDecoder(parse_float=Decimal)


def decode_json(raw: bytes | str) -> Any:
    """Decode JSON keeping integers exact at any size and fractions as Decimal (no float rounding)."""
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    return _DECODER.decode(raw)


@dataclass
class ClientStats:
    """What a client sent: HTTP attempts, retries, and retries by the error kind that caused them."""

    requests: int = 0
    retries: int = 0
    retries_by_kind: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count_retry(self, kind: str) -> None:
        with self._lock:
            self.retries += 1
            self.retries_by_kind[kind] = self.retries_by_kind.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "retries_by_kind": dict(self.retries_by_kind),
            }


@dataclass
class Bucket:
    """A token bucket's state at `stamp`: tokens (negative: turns already promised), the pace (share
    of the full rate, below 1 after 429s) and the end of the last 429 pause."""

    tokens: float
    stamp: float
    pace: float = 1.0
    paused_until: float = 0.0

    def encode(self) -> bytes:
        return f"{self.tokens!r} {self.stamp!r} {self.pace!r} {self.paused_until!r}".encode()

    @classmethod
    def decode(cls, stored: bytes) -> Bucket | None:
        try:
            parts = [float(part) for part in stored.split()]
        except ValueError:
            return None
        if len(parts) == 2:
            parts += [1.0, 0.0]
        if len(parts) != 4 or not MIN_PACE <= parts[2] <= 1.0:
            return None
        return cls(*parts)


class RateLimiter:
    """A token bucket that keeps the clients of a key clear of Gemini's own bucket.

    Gemini lets `burst` requests through at once, then `per_minute` a minute. This bucket paces
    RATE_SAFETY_MARGIN under that rate and holds one of the burst in reserve (capacity burst - 1):
    a request that reaches Gemini late (a new connection, a pause) then cannot leave the next one,
    sent on time, without a token there. With `state` (a StateFile) the bucket lives in that file,
    taken under flock, so every process of the host that uses the key shares it; a taken token may
    be due in the future (the bucket goes negative), which gives each waiting process its own turn.
    A 429 (`penalize`) pauses the bucket and slows its pace, which then recovers over time: the key's
    clients on other hosts, which this bucket cannot see, get room that way.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        state: StateFile | None = None,
    ) -> None:
        self.rate, self.capacity = bucket_shape(per_minute, burst)
        self._clock = clock
        self._bucket = Bucket(self.capacity, clock())
        self._lock = threading.Lock()
        self._state = state

    def _refilled(self, bucket: Bucket, now: float) -> Bucket:
        """`bucket` refilled until `now` at its pace, and its pace recovered meanwhile."""
        elapsed = max(0.0, now - bucket.stamp)
        pace = min(1.0, bucket.pace + elapsed * PACE_RECOVERY_PER_SECOND)
        tokens = min(self.capacity, bucket.tokens + elapsed * self.rate * (bucket.pace + pace) / 2.0)
        return Bucket(tokens, now, pace, bucket.paused_until)

    def _update(self, change: Callable[[Bucket], None]) -> Bucket:
        """Apply `change` to the refilled bucket, in this process or in the host's state file."""
        if self._state is None:
            with self._lock:
                bucket = self._bucket = self._refilled(self._bucket, self._clock())
                change(bucket)
                return bucket

        def shared(stored: bytes) -> tuple[bytes, Bucket]:
            now = self._clock()
            bucket = Bucket.decode(stored)
            # A stamp from the future (the monotonic clock restarts with the host) or a bucket more
            # than a minute in debt is not this host's current state: start full.
            if bucket is None or bucket.stamp > now or bucket.tokens < -60.0 * self.rate:
                bucket = Bucket(self.capacity, now)
            bucket = self._refilled(bucket, now)
            change(bucket)
            return bucket.encode(), bucket

        return self._state.update(shared)

    @property
    def pace(self) -> float:
        """The share of the full rate the bucket refills at now (1.0 until a 429 slowed it)."""
        return self._update(lambda bucket: None).pace

    def reserve(self) -> float:
        """Take one token now and return the seconds until it is due (0 when one was there); the
        caller waits that long, with whatever sleep suits it (the async client awaits it)."""

        def take(bucket: Bucket) -> None:
            bucket.tokens -= 1.0

        bucket = self._update(take)
        return 0.0 if bucket.tokens >= 0.0 else -bucket.tokens / (self.rate * bucket.pace)

    def refund(self) -> None:
        """Give back a turn taken by `reserve` and not used."""

        def give(bucket: Bucket) -> None:
            bucket.tokens = min(self.capacity, bucket.tokens + 1.0)

        self._update(give)

    def penalize(self, seconds: float) -> None:
        """Gemini answered 429: no client of the key, in any process sharing the bucket, sends again
        for `seconds`, and the pace drops by PACE_BACKOFF (once per pause: the other 429s of requests
        already in flight say nothing new)."""

        def pause(bucket: Bucket) -> None:
            if bucket.stamp >= bucket.paused_until:
                bucket.pace = max(MIN_PACE, bucket.pace * PACE_BACKOFF)
            held = max(0.0, seconds)
            bucket.tokens = min(bucket.tokens, -held * self.rate * bucket.pace)
            bucket.paused_until = max(bucket.paused_until, bucket.stamp + held)

        self._update(pause)


def bucket_shape(per_minute: float, burst: int) -> tuple[float, float]:
    """The refill rate (a second) and capacity of a bucket that keeps a key's clients clear of
    Gemini's: RATE_SAFETY_MARGIN under the rate, one token of the burst in reserve."""
    return per_minute / 60.0 * (1.0 - RATE_SAFETY_MARGIN), float(max(1, burst - 1))


_limiters: dict[tuple[str, float, int, Clock], RateLimiter] = {}
_limiters_lock = threading.Lock()


def _shared_limiter(api_key: str, per_minute: float, burst: int, *, clock: Clock) -> RateLimiter:
    """One limiter per key and setting in a process, its bucket shared by every process of the host
    through a state file (Gemini counts requests per key, not per client). An injected clock keeps
    the bucket in the process: another process cannot read that clock."""
    with _limiters_lock:
        key = (api_key, per_minute, burst, clock)
        limiter = _limiters.get(key)
        if limiter is None:
            state = StateFile(rate_file_name(api_key)) if clock is time.monotonic else None
            limiter = _limiters[key] = RateLimiter(per_minute, burst, clock=clock, state=state)
        return limiter


def rate_file_name(api_key: str) -> str:
    """The state file of a key's shared token bucket: a hash, never the key."""
    return f"rate-{hashlib.sha256(api_key.encode()).hexdigest()}"


def _masked(api_key: str) -> str:
    prefix, dash, _ = api_key.partition("-")
    return f"{prefix}-***" if dash and len(prefix) <= 8 else "***"


class ClientCore:
    """What the sync and the async client share: settings and their checks, signing with fresh nonces,
    the key's pacing, the retry policy, the answer-to-error mapping, and the requests' fields and
    parsing. A subclass only moves bytes: `GeminiClient` with requests, `AsyncGeminiClient` with httpx.
    """

    def __init__(
        self,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        oauth: OAuthSession | None = None,
        base_url: str = PRODUCTION_URL,
        account: str | None = None,
        nonce_mode: str = "counter",
        timeout: float = 10.0,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        max_attempts: int = 5,
        rate_limit_per_minute: float | None = 600,
        burst: int = 5,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
        coordinator: RedisCoordinator | None = None,
    ) -> None:
        if oauth is not None:
            if api_key is not None or api_secret is not None:
                raise ValueError("api_key, api_secret: not used with oauth; give one auth mode")
            if not isinstance(oauth, OAuthSession):
                raise ValueError(f"oauth: expected an OAuthSession, got {type(oauth).__name__}")
        else:
            if not isinstance(api_key, str) or api_key.split() != [api_key]:
                raise ValueError("api_key: expected a non-empty key without whitespace")
            if not isinstance(api_secret, str) or not api_secret:
                raise ValueError("api_secret: expected a non-empty string")
        if nonce_mode not in NONCE_MODES:
            raise ValueError(f"nonce_mode: expected 'counter' or 'time', got {nonce_mode!r}")
        if account is not None and (not isinstance(account, str) or not account.strip()):
            raise ValueError(f"account: expected a non-empty account nickname or None, got {account!r}")
        self.base_url = parse_base_url(base_url, "base_url")
        self.account = account
        self.nonce_mode = nonce_mode
        self.timeout = parse_positive(timeout, "timeout")
        self.call_timeout = parse_positive(call_timeout, "call_timeout")
        self.max_attempts = parse_positive_int(max_attempts, "max_attempts")
        burst = parse_positive_int(burst, "burst")
        self.rate_limit_per_minute = (
            None
            if rate_limit_per_minute is None
            else parse_positive(rate_limit_per_minute, "rate_limit_per_minute")
        )
        self.oauth = oauth
        self.server_clock: ServerClock = server_clock(self.base_url)
        self._auth: RequestAuth
        if oauth is not None:
            self._auth = BearerAuth(oauth, self._token_request)
            self._is_master = False
        else:
            assert api_key is not None and api_secret is not None
            nonce: NonceSource = nonce_source(nonce_mode, api_key)
            if coordinator is not None and nonce_mode == "counter":
                from airflow_provider_gemini.coordination import RedisNonce  # it imports this module

                # Across hosts (coordination.py): a counter key's nonces from one sequence on Redis.
                nonce = RedisNonce(coordinator)
            self._auth = KeyAuth(
                api_key,
                api_secret.encode(),
                nonce,
                # Shared with every client of this exchange in the process, so a new one starts
                # with what earlier answers taught about the exchange's clock.
                bounds=lambda: self.server_clock.bounds,
            )
            self._is_master = api_key.startswith("master-")
        self._limiter: RateLimiter | RedisCoordinator | None
        if coordinator is not None:
            # The key's bucket on Redis, shared by every host.
            self._limiter = self._coordinated(coordinator, burst)
        elif self.rate_limit_per_minute is None:
            self._limiter = None
        else:
            self._limiter = _shared_limiter(
                self._auth.identity, self.rate_limit_per_minute, burst, clock=clock
            )
        self.stats = ClientStats()
        self.metrics: Metrics = NO_METRICS if metrics is None else metrics
        self._clock = clock
        self._open_transport(sleep)

    def _coordinated(self, coordinator: RedisCoordinator, burst: int) -> RedisCoordinator | None:
        """The coordinator as this client's limiter (None with pacing off), once it is checked to hold
        this key's bucket with this client's rate and burst."""
        if not coordinator.serves(self._auth.identity):
            raise ValueError("coordinator: made for another key than this client's")
        if self.rate_limit_per_minute is None:
            return None
        if (coordinator.per_minute, coordinator.burst) != (self.rate_limit_per_minute, burst):
            raise ValueError(
                f"coordinator: paces {coordinator.per_minute:g}/min with a burst of {coordinator.burst}, "
                f"the client {self.rate_limit_per_minute:g}/min with {burst}; make them alike"
            )
        return coordinator

    def _open_transport(self, sleep: Sleep) -> None:
        """Set up what the subclass sends with (nothing is connected until the first request)."""
        raise NotImplementedError

    def _retry_policy(self) -> dict[str, Any]:
        """The tenacity arguments both clients retry with (each adds its own `sleep`)."""
        return {
            "stop": stop_after_attempts_or_nonce_grace(self.max_attempts)
            | stop_at_call_deadline(self._clock),
            "retry": retry_if_safe_to_repeat,
            "wait": wait_for_gemini(self.nonce_mode),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def __repr__(self) -> str:
        if self.oauth is not None:
            return f"{type(self).__name__}(base_url={self.base_url!r}, oauth={self.oauth.label!r})"
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={_masked(self._auth.identity)!r})"

    def _token_request(self, fields: Mapping[str, str]) -> Any:
        """POST a grant to the OAuth token endpoint; only a client that sends with its own transport
        (the sync one) refreshes tokens."""
        raise NotImplementedError

    # -- one attempt, around the transport ----------------------------------------------------------

    def _reserve_turn(self, path: str, deadline: float) -> float:
        """Take the key's next turn and return the seconds until it; a turn at or past the call's
        deadline (the host slowed down after 429s) ends the call as rate limited, before sending."""
        if self._limiter is None:
            return 0.0
        wait = self._limiter.reserve()
        if wait > 0.0 and self._clock() + wait >= deadline:
            self._limiter.refund()
            # retry_after = the wait, so the retry policy sees that no retry fits the deadline either.
            raise RateLimitedError(
                f"{path}: the key's next turn on this host is {wait:.1f} s away, past the call "
                f"deadline of {self.call_timeout:g} s (its clients slow down after Gemini's 429s)",
                reason="RateLimit",
                retry_after=wait,
            )
        return wait

    def _seconds(self, label: str, deadline: float) -> float:
        """The seconds the next HTTP exchange may take (its timeout, within the call's deadline);
        counts the request, since it is about to be sent."""
        seconds = min(self.timeout, deadline - self._clock())
        if seconds <= 0.0:
            raise self._timeout_error(label, 0.0)
        self.stats.count_request()
        return seconds

    def _answered(
        self, label: str, url: str, answer: Answer | Failure, seconds: float, started: float
    ) -> Answer:
        """A complete answer, or the ServiceError for none; `started` (perf_counter) is when the
        request left, for the latency metric."""
        self._measure(REQUEST_LATENCY, (time.perf_counter() - started) * 1000.0)
        if isinstance(answer, Failure):
            # The transport returns rather than raises, so no HTTP library exception (it holds the
            # signed request) rides along as this error's __cause__ or __context__.
            if answer.timed_out:
                raise self._timeout_error(label, seconds)
            host = url.split("/", 3)[2] if "://" in url else url
            raise ServiceError(
                f"{label}: connection to {host} failed ({answer.error})", reason="ConnectionError"
            )
        if url.startswith(self.base_url):
            self.server_clock.observe(answer.headers.get("Date"), answer.sent_at, answer.received_at)
        return answer

    def _decoded(self, path: str, answer: Answer, credential: object = None) -> Any:
        """The decoded JSON of a 2xx answer; the GeminiError for anything else. `credential` is what
        the request's headers carried (its nonce, its token)."""
        status = answer.status
        if not 200 <= status < 300:
            error = error_from_response(status, answer.headers, answer.body)
            if status == 429:
                self._count(HTTP_429)
                if self._limiter is not None:
                    # Every process on the host that uses the key holds back, not only this one.
                    pause = error.retry_after or RATE_LIMITED_PAUSE_SECONDS
                    self._limiter.penalize(pause * (1.0 + random.uniform(0.0, RATE_LIMITED_PAUSE_JITTER)))
            elif error.kind == "invalid_nonce":
                self._auth.refused(credential)
            if self.oauth is not None and error.kind == "missing_role":
                # Under OAuth the token's scope is what is missing (Gemini names roles and scopes alike).
                needed = REQUIRED_SCOPE.get(path, "a scope")
                raise MissingScopeError(
                    f"{path} needs the OAuth scope {needed}, which the token of connection "
                    f"{self.oauth.label!r} lacks: {error.message}",
                    reason=error.reason,
                    status=status,
                ) from None
            raise error
        try:
            return decode_json(answer.body)
        except ValueError:
            raise ServiceError(f"{path}: answer is not JSON", status=status, reason="InvalidJson") from None

    def _timeout_error(self, path: str, seconds: float) -> ServiceError:
        """The error for an attempt cut short: by its own `timeout`, or by the call's deadline."""
        if seconds >= self.timeout:
            return ServiceError(f"{path}: no answer within {self.timeout:g} s", reason="Timeout")
        return ServiceError(
            f"{path}: no answer within the call deadline of {self.call_timeout:g} s", reason="Deadline"
        )

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        kind = exc.kind if isinstance(exc, GeminiError) else "unknown"
        self.stats.count_retry(kind)
        self._count(RETRY.format(kind=kind))
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "Gemini %s failed (%s); attempt %d in %.2f s",
            state.args[0],
            exc,
            state.attempt_number + 1,
            sleep,
        )

    def _count(self, name: str) -> None:
        # A metrics backend that fails must never fail a cancel.
        try:
            self.metrics.incr(name)
        except Exception:
            log.debug("metric %s not sent", name, exc_info=True)

    def _measure(self, name: str, milliseconds: float) -> None:
        try:
            self.metrics.timing(name, milliseconds)
        except Exception:
            log.debug("metric %s not sent", name, exc_info=True)

    # -- the requests' fields and answers, for both clients ------------------------------------------

    @property
    def clock_offset(self) -> float | None:
        """Seconds the exchange's clock is ahead of this host's (negative: behind); None until an
        answer carrying a Date header arrived."""
        return self.server_clock.offset

    def _with_account(self, fields: dict[str, Any], account: str | None) -> dict[str, Any]:
        chosen = self.account if account is None else account
        if chosen is None:
            if self._is_master:
                raise ValueError(
                    "account: a master API key must name the account (its nickname) on every order "
                    "request; pass account= or set it on the connection"
                )
            return fields
        if not isinstance(chosen, str) or not chosen.strip():
            raise ValueError(f"account: expected a non-empty account nickname, got {chosen!r}")
        fields["account"] = chosen
        return fields

    def _status_fields(
        self,
        order_id: int | str | None,
        client_order_id: str | None,
        include_trades: bool,
        account: str | None,
    ) -> dict[str, Any]:
        if (order_id is None) == (client_order_id is None):
            raise ValueError("order_status: give exactly one of order_id and client_order_id")
        fields: dict[str, Any]
        if order_id is not None:
            fields = {"order_id": parse_order_id(order_id)}
        elif isinstance(client_order_id, str) and client_order_id.strip():
            fields = {"client_order_id": client_order_id}
        else:
            raise ValueError(f"client_order_id: expected a non-empty string, got {client_order_id!r}")
        if include_trades:
            fields["include_trades"] = True
        return self._with_account(fields, account)

    @staticmethod
    def _active_from(data: Any, on_unreadable: Unreadable | None) -> list[Order]:
        if not isinstance(data, list):
            raise ServiceError("/v1/orders: expected a list of orders", status=200, reason="InvalidJson")
        orders: list[Order] = []
        for item in data:
            try:
                orders.append(Order.from_status(item))
            except (ValueError, TypeError, ArithmeticError) as err:
                if on_unreadable is None:
                    raise
                problem = err if isinstance(err, ValueError) else ValueError(f"order status: {err}")
                on_unreadable(item if isinstance(item, Mapping) else {"row": item}, problem)
        return orders


class GeminiClient(ClientCore):
    """A client for Gemini's private REST API, usable with or without Airflow.

    Every attempt takes a rate-limiter token, a fresh nonce and a fresh signature. Connection errors,
    timeouts, 5xx and InvalidNonce are retried up to `max_attempts` attempts in all, 429 (after
    Retry-After when given) until the call's deadline; other errors raise at once. Each attempt must
    have the whole answer within `timeout` seconds, and each call, retries and their waits included,
    ends within `call_timeout` seconds. `sleep` and `clock` (monotonic seconds) are injectable for tests; they
    drive the retry waits, the call deadline and the rate limiter. `metrics` gets each attempt's
    latency, each retry and each 429 (names in `metrics.py`; nothing is sent without it).
    `server_clock` holds the offset of the exchange's clock from ours, learnt from the Date header of
    every answer.

    `coordinator` (coordination.RedisCoordinator, made for the same key, rate and burst) moves the
    key's token bucket and counter nonces to Redis, shared with every host.

    Give `api_key` and `api_secret` (HMAC signing with nonces), or `oauth` (an OAuthSession: Bearer
    tokens, no nonce, the token refreshed before it expires and once more after a 401).
    """

    def _open_transport(self, sleep: Sleep) -> None:
        self._sleep = sleep
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._retrying = tenacity.Retrying(sleep=sleep, **self._retry_policy())

    def __enter__(self) -> GeminiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session (its pooled connections); the client reopens one if used again."""
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # -- transport ---------------------------------------------------------------------------------

    def _open_session(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                self._session = open_session(self.base_url, USER_AGENT)
            return self._session

    def _attempt(self, path: str, fields: Mapping[str, Any], deadline: float) -> Any:
        wait = self._reserve_turn(path, deadline)
        if wait > 0.0:
            self._sleep(wait)
        headers, credential = self._auth.headers(path, fields)
        answer = self._exchange(path, self.base_url + path, headers, None, deadline)
        if answer.status == 401 and self._auth.renew(credential):
            # OAuth: Gemini refused the access token (revoked, expired early): refresh once, resend.
            headers, credential = self._auth.headers(path, fields)
            answer = self._exchange(path, self.base_url + path, headers, None, deadline)
        return self._decoded(path, answer, credential)

    def _exchange(
        self, label: str, url: str, headers: Mapping[str, str], body: bytes | None, deadline: float
    ) -> Answer:
        """One HTTP exchange within this attempt's time: an Answer, or a ServiceError for no answer."""
        seconds = self._seconds(label, deadline)
        session = self._session or self._open_session()
        started = time.perf_counter()
        return self._answered(label, url, send(session, url, headers, seconds, body), seconds, started)

    def _token_request(self, fields: Mapping[str, str]) -> Any:
        """POST a grant to the OAuth token endpoint (JSON body, as Gemini documents), with the same
        deadline, retries and error mapping as any request."""
        assert self.oauth is not None
        body = json.dumps(dict(fields)).encode()
        # A retrying of its own: the token request may run inside an attempt of the outer call.
        retrying = self._retrying.copy()
        return retrying(self._token_attempt, "/auth/token", body, self._clock() + self.call_timeout)

    def _token_attempt(self, label: str, body: bytes, deadline: float) -> Any:
        assert self.oauth is not None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Cache-Control": "no-cache",
        }
        answer = self._exchange(label, self.oauth.token_url, headers, body, deadline)
        if not 200 <= answer.status < 300:
            error = error_from_response(answer.status, answer.headers, answer.body)
            # Name the connection: the token endpoint's own words say nothing of which one failed.
            raise ERROR_CLASSES[error.kind](
                f"OAuth connection {self.oauth.label!r}: {label} refused: {error.message}",
                reason=error.reason,
                status=error.status,
                retry_after=error.retry_after,
            ) from None
        try:
            return decode_json(answer.body)
        except ValueError:
            raise ServiceError(
                f"{label}: answer is not JSON", status=answer.status, reason="InvalidJson"
            ) from None

    # -- API ---------------------------------------------------------------------------------------

    def private(self, path: str, **fields: Any) -> Any:
        """POST a signed private request and return its decoded JSON answer (fields sent as given)."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path: expected an endpoint path such as '/v1/orders', got {path!r}")
        return self._post(path, fields)

    def _post(self, path: str, fields: Mapping[str, Any]) -> Any:
        return self._retrying(self._attempt, path, fields, self._clock() + self.call_timeout)

    def cancel_order(self, order_id: int | str, account: str | None = None) -> Order:
        """Cancel one order; cancelling an already-cancelled order succeeds with no effect."""
        fields = self._with_account({"order_id": parse_order_id(order_id)}, account)
        return Order.from_status(self._post("/v1/order/cancel", fields))

    def cancel_all_orders(self, account: str | None = None) -> CancelAllResult:
        """Cancel every order of the account, including ones placed in the web UI or by other keys."""
        data = self._post("/v1/order/cancel/all", self._with_account({}, account))
        return CancelAllResult.from_response(data)

    def cancel_session_orders(self, account: str | None = None) -> CancelAllResult:
        """Cancel the orders this key's session placed."""
        data = self._post("/v1/order/cancel/session", self._with_account({}, account))
        return CancelAllResult.from_response(data)

    def order_status(
        self,
        order_id: int | str | None = None,
        client_order_id: str | None = None,
        include_trades: bool = False,
        account: str | None = None,
    ) -> Order:
        """The status of one order, by order_id or by client_order_id (exactly one of them)."""
        fields = self._status_fields(order_id, client_order_id, include_trades, account)
        return Order.from_status(self._post("/v1/order/status", fields))

    def active_orders(
        self, account: str | None = None, on_unreadable: Unreadable | None = None
    ) -> list[Order]:
        """The account's live orders. A row that does not read as an order raises ValueError, unless
        `on_unreadable` is given: then it gets the row and the error, and the row is skipped."""
        return self._active_from(self._post("/v1/orders", self._with_account({}, account)), on_unreadable)

    def heartbeat(self) -> dict[str, Any]:
        """Keep a Require-Heartbeat session alive (its orders are cancelled after 30 s of silence)."""
        data = self._post("/v1/heartbeat", {})
        return dict(data) if isinstance(data, Mapping) else {"result": data}

    def roles(self) -> Roles:
        """The key's roles: a safe call for a connection test."""
        return Roles.from_response(self._post("/v1/roles", {}))
