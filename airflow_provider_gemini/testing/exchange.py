"""A local, Gemini-compatible exchange for tests, benchmarks, the demo and users' own DAG tests.

`GeminiExchange` speaks Gemini's private REST protocol on 127.0.0.1: HMAC-SHA384 signed payload
headers, counter and time nonces, roles, master-key accounts, a per-key rate limit, orders that can be
live, cancelled or filled, and switches that make it misbehave (maintenance, closed markets, injected
faults). It imports nothing from the provider: it is the independent peer the client is tested against.

Choices where Gemini's documentation is silent (see also the README):
- cancelling a filled order answers 200 with its status object, unchanged (is_live and is_cancelled
  both false); cancelling a cancelled order answers 200 with its status object, unchanged;
- an unknown path answers 404 `{"result":"error","reason":"EndpointNotFound",...}` (the empty-bodied
  404 is the `not_found_empty` fault);
- a closed market rejects new orders (400 `MarketClosed`) but still accepts cancels; closing it does
  not touch resting orders (use `cancel_by_exchange` for that);
- a "require heartbeat" key that stays silent past its timeout has its session's live orders
  cancelled with reason `Requested` (what `/v1/order/cancel/session` would do);
- time-nonce keys need a nonce in seconds within +/-30 s and need not increase; counter keys need a
  strictly increasing nonce;
- a master key naming an account outside its group gets 400 `InvalidAccount`; an account key's
  `account` field is ignored.

Run it alone with `python -m airflow_provider_gemini.testing.exchange --port 8765 --seed demo`.
`GET /_admin/orders`, `/_admin/journal` and `/_admin/health` are unauthenticated, test-only views.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import http
import json
import math
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, ClassVar, cast

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "FAULT_KINDS",
    "GeminiExchange",
    "JournalEntry",
    "main",
]

DEFAULT_API_KEY = "account-demo-key"
DEFAULT_API_SECRET = "demo-secret"
FIRST_ORDER_ID = 9007199254740993  # 2**53 + 1: the first id a float cannot hold
FAULT_KINDS = (
    "rate_limit",
    "maintenance",
    "server_error_text",
    "not_found_empty",
    "drop",
    "drop_after",
    "delay",
)
RANDOM_FAULT_KINDS = ("rate_limit", "maintenance", "server_error_text", "drop")
ROLES = ("Trader", "Fund Manager", "Auditor", "Administrator")
TIME_NONCE_WINDOW = 30
ADMIN_PREFIX = "/_admin/"
_JSON = "application/json"
_MAINTENANCE_MESSAGE = "The Gemini Exchange is currently undergoing maintenance. Please try again later."


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One request as the exchange saw it; never the signature or the raw payload header."""

    time: float
    path: str
    api_key: str | None
    payload: dict[str, Any]
    status: int  # 0 when no answer was sent (the "drop" fault)
    reason: str | None
    fault: str | None

    @property
    def nonce(self) -> Any:
        return self.payload.get("nonce")


class _Reject(Exception):
    """An error answer: Gemini's `{"result":"error","reason":...,"message":...}` body."""

    def __init__(self, status: int, reason: str, message: str, headers: Sequence[tuple[str, str]] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = list(headers)


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    content_type: str | None = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None
    drop: bool = False


@dataclass(slots=True)
class _Key:
    api_key: str
    secret: bytes
    roles: frozenset[str]
    nonce_mode: str
    accounts: tuple[str, ...]
    require_heartbeat: bool
    heartbeat_timeout: float
    is_master: bool
    last_nonce: int = 0
    tokens: float = 0.0
    bucket_time: float = 0.0
    last_seen: float = 0.0


@dataclass(slots=True)
class _Fault:
    kind: str
    path: str | None
    count: int
    retry_after: float | None
    delay: float | None


@dataclass(slots=True)
class _Order:
    order_id: int
    account: str
    session: str | None
    symbol: str
    side: str
    type: str
    price: str
    original_amount: str
    client_order_id: str | None
    timestampms: int
    options: list[str]
    stop_price: str | None = None
    executed: Decimal = Decimal(0)
    is_live: bool = True
    is_cancelled: bool = False
    reason: str | None = None
    trades: list[dict[str, Any]] = field(default_factory=list)

    def remaining(self) -> Decimal:
        return Decimal(self.original_amount) - self.executed

    def state(self) -> str:
        if self.is_live:
            return "live"
        if self.is_cancelled:
            return "cancelled"
        return "filled" if self.executed > 0 and self.remaining() == 0 else "closed"

    def status(self, include_trades: bool = False) -> dict[str, Any]:
        oid = str(self.order_id)
        remaining = self.remaining()
        data: dict[str, Any] = {
            "order_id": oid,
            "id": oid,
            "symbol": self.symbol,
            "exchange": "gemini",
            "avg_execution_price": self.price if self.executed > 0 else "0.00",
            "side": self.side,
            "type": self.type,
            "timestamp": str(self.timestampms // 1000),
            "timestampms": self.timestampms,
            "is_live": self.is_live,
            "is_cancelled": self.is_cancelled,
            "is_hidden": False,
            "was_forced": False,
            "executed_amount": _fmt(self.executed),
            "remaining_amount": _fmt(remaining),
            "options": list(self.options),
            "price": self.price,
            "original_amount": self.original_amount,
        }
        if self.client_order_id is not None:
            data["client_order_id"] = self.client_order_id
        if self.stop_price is not None:
            data["stop_price"] = self.stop_price
        if self.reason is not None:
            data["reason"] = self.reason
        if include_trades:
            data["trades"] = [dict(t) for t in self.trades]
        return data


def _fmt(value: Decimal) -> str:
    return "0" if value == 0 else str(value)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _error_body(reason: str, message: str) -> bytes:
    return _dumps({"result": "error", "reason": reason, "message": message})


def _seconds_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _decode_payload(text: str) -> dict[str, Any] | None:
    """The payload header as a dict (ints exact, fractions as Decimal), or None if it is not one."""
    try:
        value = json.loads(base64.b64decode(text, validate=True), parse_float=Decimal)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _as_int(value: object) -> int | None:
    """An int from a JSON integer or a string of ASCII digits; None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
    return None


_Handler = Callable[["GeminiExchange", _Key, str | None, dict[str, Any]], Any]


class GeminiExchange:
    """A Gemini-compatible exchange on loopback; `with GeminiExchange() as ex:` starts and stops it.

    `rate_limit_per_minute=None` turns the per-key token bucket off; `burst` is its capacity.
    `heartbeat_timeout` is the default silence (seconds) after which a "require heartbeat" key's
    session orders are cancelled. Every public method is thread-safe.
    """

    _ROUTES: ClassVar[dict[str, tuple[str, frozenset[str] | None, bool]]] = {
        # path -> (method name, roles that may call it (None: any), needs an account)
        "/v1/order/new": ("_ep_new", frozenset({"Trader"}), True),
        "/v1/order/cancel": ("_ep_cancel", frozenset({"Trader"}), True),
        "/v1/order/cancel/all": ("_ep_cancel_all", frozenset({"Trader"}), True),
        "/v1/order/cancel/session": ("_ep_cancel_session", frozenset({"Trader"}), True),
        "/v1/order/status": ("_ep_status", frozenset({"Trader"}), True),
        "/v1/orders": ("_ep_orders", frozenset({"Trader", "Auditor"}), True),
        "/v1/heartbeat": ("_ep_heartbeat", None, False),
        "/v1/roles": ("_ep_roles", None, False),
    }

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_per_minute: float | None = 600,
        burst: int = 5,
        first_order_id: int = FIRST_ORDER_ID,
        heartbeat_timeout: float = 30.0,
        journal_limit: int = 200_000,
    ) -> None:
        if rate_limit_per_minute is not None and rate_limit_per_minute <= 0:
            raise ValueError("rate_limit_per_minute: must be positive, or None to turn the limit off")
        if burst < 1:
            raise ValueError(f"burst: must be at least 1, got {burst!r}")
        self.host = host
        self.port = port
        self.rate_limit_per_minute = rate_limit_per_minute
        self.burst = burst
        self.heartbeat_timeout = heartbeat_timeout
        self.api_key: str | None = None
        self.api_secret: str | None = None
        self._rate = None if rate_limit_per_minute is None else rate_limit_per_minute / 60.0
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._orders: dict[int, _Order] = {}
        self._by_client_id: dict[tuple[str, str], int] = {}
        self._next_id = first_order_id
        self._closed_markets: set[str] = set()
        self._reject_cancels: set[int] = set()
        self._maintenance = False
        self._maintenance_until = 0.0
        self._faults: list[_Fault] = []
        self._fault_rate = 0.0
        self._fault_rng = random.Random(0)
        self._fault_kinds: tuple[str, ...] = RANDOM_FAULT_KINDS
        self._fault_delay: float | None = None
        self._fault_retry_after: float | None = None
        self._journal: collections.deque[JournalEntry] = collections.deque(maxlen=journal_limit)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"GeminiExchange({where})"

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> GeminiExchange:
        """Bind and serve in daemon threads; returns self so `ex = GeminiExchange().start()` works."""
        if self._server is not None:
            raise RuntimeError("GeminiExchange is already running")
        self._stopping.clear()
        server = _Server((self.host, self.port), _RequestHandler)
        server.exchange = self
        self._server = server
        self.port = server.server_address[1]
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="gemini-exchange", daemon=True
        )
        reaper = threading.Thread(target=self._heartbeat_loop, name="gemini-exchange-heartbeat", daemon=True)
        self._threads = [serve, reaper]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every open connection and release the port. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> GeminiExchange:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("GeminiExchange is not running: call start() or use it as a context manager")
        return f"http://{self.host}:{self.port}"

    # ---- keys ------------------------------------------------------------------------------------

    def add_key(
        self,
        api_key: str,
        api_secret: str,
        roles: Sequence[str] = ("Trader",),
        nonce_mode: str = "counter",
        accounts: Sequence[str] = ("primary",),
        require_heartbeat: bool = False,
        heartbeat_timeout: float | None = None,
    ) -> None:
        """Register a key. "master-..." keys may name several accounts and must send `account`.

        The first key added becomes `self.api_key` / `self.api_secret` (what the fixtures hand out).
        """
        roles = tuple(roles)
        accounts = tuple(accounts)
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"roles: unknown {unknown!r}; choose from {ROLES!r}")
        if "Auditor" in roles and len(roles) > 1:
            raise ValueError("roles: Auditor cannot be combined with other roles")
        if nonce_mode not in ("counter", "time"):
            raise ValueError(f"nonce_mode: must be 'counter' or 'time', got {nonce_mode!r}")
        if not accounts:
            raise ValueError("accounts: at least one account is needed")
        is_master = api_key.startswith("master-")
        if not is_master and len(accounts) != 1:
            raise ValueError("accounts: only a 'master-...' key may name several accounts")
        if is_master and require_heartbeat:
            raise ValueError("require_heartbeat: Gemini does not support it on master keys")
        key = _Key(
            api_key=api_key,
            secret=api_secret.encode(),
            roles=frozenset(roles),
            nonce_mode=nonce_mode,
            accounts=accounts,
            require_heartbeat=require_heartbeat,
            heartbeat_timeout=self.heartbeat_timeout if heartbeat_timeout is None else heartbeat_timeout,
            is_master=is_master,
            tokens=float(self.burst),
            bucket_time=time.monotonic(),
            last_seen=time.monotonic(),
        )
        with self._lock:
            self._keys[api_key] = key
            if self.api_key is None:
                self.api_key, self.api_secret = api_key, api_secret

    def airflow_connection(self, api_key: str | None = None) -> str:
        """The JSON value of an `AIRFLOW_CONN_...` variable that points a GeminiHook at this exchange.

        Uses `api_key` (default: the first key added); carries `nonce_mode` for time keys and the
        first account for master keys. It holds the key's secret: keep it out of logs.
        """
        with self._lock:
            key = self._keys.get(api_key or self.api_key or "")
        if key is None:
            raise ValueError("api_key: not registered with this exchange (add_key first)")
        conn: dict[str, Any] = {
            "conn_type": "gemini_exchange",
            "login": key.api_key,
            "password": key.secret.decode(),
            "host": self.url,
        }
        extra = {"nonce_mode": "time"} if key.nonce_mode == "time" else {}
        if key.is_master:
            extra["account"] = key.accounts[0]
        if extra:
            conn["extra"] = extra
        return json.dumps(conn)

    # ---- orders from Python ------------------------------------------------------------------------

    def place_order(
        self,
        api_key: str | None,
        symbol: str = "btcusd",
        side: str = "buy",
        price: str = "100.00",
        amount: str = "1",
        client_order_id: str | None = None,
        timestampms: int | None = None,
        account: str | None = None,
        options: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Place an order as `api_key`'s session (None: an order from the web UI, in no session).

        Bypasses maintenance and closed markets (it is test setup) and counts as activity of the key
        for "require heartbeat". Returns the status object.
        """
        with self._lock:
            if api_key is None:
                acct = account or "primary"
            else:
                key = self._keys.get(api_key)
                if key is None:
                    raise ValueError("api_key: not registered with this exchange (add_key first)")
                acct = account or key.accounts[0]
                if acct not in key.accounts:
                    raise ValueError(f"account: {acct!r} is not one of this key's accounts")
                key.last_seen = time.monotonic()
            fields: dict[str, Any] = {
                "symbol": symbol,
                "side": side,
                "price": price,
                "amount": amount,
                "type": "exchange limit",
                "options": list(options),
            }
            if client_order_id is not None:
                fields["client_order_id"] = client_order_id
            try:
                order = self._new_order(acct, api_key, fields, timestampms, check_market=False)
            except _Reject as exc:
                raise ValueError(exc.message) from None
            return order.status()

    def fill_order(self, order_id: int | str, amount: str | None = None) -> dict[str, Any]:
        """Fill a live order (all of what remains, or `amount` of it) at its price."""
        with self._lock:
            order = self._get(order_id)
            if not order.is_live:
                raise ValueError(f"order_id: {order_id!r} is not live ({order.state()})")
            qty = order.remaining() if amount is None else Decimal(amount)
            if not 0 < qty <= order.remaining():
                raise ValueError(f"amount: {amount!r} must be positive and at most what remains")
            order.executed += qty
            now = int(time.time() * 1000)
            order.trades.append(
                {
                    "price": order.price,
                    "amount": _fmt(qty),
                    "timestamp": now // 1000,
                    "timestampms": now,
                    "type": order.side.capitalize(),
                    "aggressor": False,
                    "fee_currency": "USD",
                    "fee_amount": "0.00",
                    "tid": self._take_id(),
                    "order_id": str(order.order_id),
                    "exchange": "gemini",
                }
            )
            if order.remaining() == 0:
                order.is_live = False
            return order.status()

    def cancel_by_exchange(self, order_id: int | str, reason: str = "MarketClosed") -> dict[str, Any]:
        """Cancel a live order as the exchange would (any reason string, e.g. from the seed's table)."""
        with self._lock:
            order = self._get(order_id)
            if order.is_live:
                self._cancel(order, reason)
            return order.status()

    def order(self, order_id: int | str) -> dict[str, Any]:
        """The status object of any order, in any state and account; KeyError if unknown."""
        with self._lock:
            return self._get(order_id).status()

    def live_orders(self, account: str | None = None) -> list[dict[str, Any]]:
        """Live orders (of one account, or all), oldest id first."""
        with self._lock:
            return [o.status() for o in self._orders.values() if o.is_live and account in (None, o.account)]

    def place_demo_book(self, api_key: str, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Seed a mixed book for `api_key`: stale (2-3 h) and fresh (minutes) orders over btcusd,
        ethusd and solusd, both sides, "mm-" / "manual-" / no client ids; plus one filled and one
        cancelled order. Returns every order's status object, in placing order."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        placed = [
            self.place_order(
                api_key,
                symbol=symbol,
                side=side,
                price=price,
                amount=amount,
                client_order_id=coid,
                timestampms=now - age * 1000,
            )
            for age, symbol, side, price, amount, coid in _DEMO_BOOK
        ]
        filled = self.place_order(api_key, "ethusd", "buy", "3050.00", "1", "mm-eth-bid-0", now - 9000 * 1000)
        cancelled = self.place_order(
            api_key, "btcusd", "sell", "66000.00", "0.5", "manual-btc-0", now - 8000 * 1000
        )
        placed.append(self.fill_order(filled["order_id"]))
        placed.append(self.cancel_by_exchange(cancelled["order_id"], "MarketClosed"))
        return placed

    # ---- exchange switches -------------------------------------------------------------------------

    def set_maintenance(self, on: bool) -> None:
        """While on, every /v1 request answers 503 `Maintenance`."""
        with self._lock:
            self._maintenance = on
            self._maintenance_until = 0.0

    def maintenance_for(self, seconds: float) -> None:
        """Maintenance that ends by itself after `seconds`."""
        with self._lock:
            self._maintenance = False
            self._maintenance_until = time.monotonic() + seconds

    def close_market(self, symbol: str) -> None:
        """New orders for `symbol` get 400 `MarketClosed`; cancels still work; resting orders stay."""
        with self._lock:
            self._closed_markets.add(symbol.lower())

    def open_market(self, symbol: str) -> None:
        with self._lock:
            self._closed_markets.discard(symbol.lower())

    def reject_cancels(self, *order_ids: int | str) -> None:
        """cancel/all and cancel/session leave these orders live and list them under `cancelRejects`."""
        with self._lock:
            self._reject_cancels.update(self._get(order_id).order_id for order_id in order_ids)

    # ---- faults ----------------------------------------------------------------------------------

    def inject_fault(
        self,
        kind: str,
        path: str | None = None,
        count: int = 1,
        retry_after: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Queue `count` faults for requests to `path` (None: any /v1 path), used in queue order.

        Kinds: "rate_limit" (429 RateLimit), "maintenance" (503 Maintenance), "server_error_text"
        (500 text/plain), "not_found_empty" (404, empty body), "drop" (close without answering),
        all sent before the request is processed; "drop_after" (process it, then close without
        answering); "delay" (sleep `delay` seconds, then process and answer). `retry_after` adds a
        Retry-After header to the 429 and 503 answers.
        """
        _check_fault(kind, delay)
        if count < 1:
            raise ValueError(f"count: must be at least 1, got {count!r}")
        with self._lock:
            self._faults.append(_Fault(kind, path, count, retry_after, delay))

    def set_fault_rate(
        self,
        rate: float,
        seed: int | str,
        kinds: Sequence[str] = RANDOM_FAULT_KINDS,
        delay: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Fault a `rate` share of /v1 requests at random (seeded, so a run can be replayed);
        queued faults go first. `rate=0` turns it off."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate: must be between 0 and 1, got {rate!r}")
        if not kinds:
            raise ValueError("kinds: at least one fault kind is needed")
        for kind in kinds:
            _check_fault(kind, delay)
        with self._lock:
            self._fault_rate = rate
            self._fault_rng = random.Random(seed)
            self._fault_kinds = tuple(kinds)
            self._fault_delay = delay
            self._fault_retry_after = retry_after

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fault_rate = 0.0

    # ---- journal ---------------------------------------------------------------------------------

    @property
    def journal(self) -> list[JournalEntry]:
        with self._lock:
            return list(self._journal)

    def clear_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    def count(self, path: str | None = None, status: int | None = None) -> int:
        """How many journalled requests match `path` and `status` (None matches any)."""
        with self._lock:
            return sum(
                1
                for e in self._journal
                if (path is None or e.path == path) and (status is None or e.status == status)
            )

    # ---- request handling ------------------------------------------------------------------------

    def _handle_post(self, path: str, api_key: str | None, payload: str | None, sig: str | None) -> _Answer:
        fault = self._take_fault(path)
        if fault is not None and fault.kind not in ("delay", "drop_after"):
            answer = _fault_answer(fault)
            decoded = _decode_payload(payload) if payload else None
            self._record(
                path, api_key, decoded or {}, 0 if answer.drop else answer.status, answer.reason, fault.kind
            )
            return answer
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay or 0.0)
        answer, who, decoded = self._process(path, api_key, payload, sig)
        if fault is not None and fault.kind == "drop_after":
            answer.drop = True
        self._record(path, who, decoded, answer.status, answer.reason, fault.kind if fault else None)
        return answer

    def _process(
        self, path: str, api_key: str | None, payload: str | None, sig: str | None
    ) -> tuple[_Answer, str | None, dict[str, Any]]:
        decoded: dict[str, Any] = {}
        try:
            if self._in_maintenance():
                raise _Reject(503, "Maintenance", _MAINTENANCE_MESSAGE)
            route = self._ROUTES.get(path)
            if route is None:
                raise _Reject(404, "EndpointNotFound", "API entry point not found")
            if not api_key:
                raise _Reject(401, "MissingApikeyHeader", "Must provide 'X-GEMINI-APIKEY' header")
            if not payload:
                raise _Reject(400, "MissingPayloadHeader", "Must provide 'X-GEMINI-PAYLOAD' header")
            parsed = _decode_payload(payload)
            decoded = parsed or {}
            if not sig:
                raise _Reject(400, "MissingSignatureHeader", "Must provide 'X-GEMINI-SIGNATURE' header")
            key = self._keys.get(api_key)
            if key is None:
                raise _Reject(400, "InvalidApiKey", "Invalid API key")
            self._take_token(key)
            expected = hmac.new(key.secret, payload.encode(), hashlib.sha384).hexdigest()
            if not hmac.compare_digest(expected, sig.strip().lower()):
                raise _Reject(400, "InvalidSignature", "Invalid signature for this request")
            if parsed is None:
                raise _Reject(400, "InvalidJson", "X-GEMINI-PAYLOAD is not base64-encoded JSON object text")
            method, roles, needs_account = route
            requested = decoded.get("request")
            if requested != path:
                raise _Reject(
                    400, "EndpointMismatch", f"Payload request {requested!r} does not match the path {path!r}"
                )
            with self._lock:
                key.last_seen = time.monotonic()
                self._check_nonce(key, decoded)
                if roles is not None and not roles & key.roles:
                    raise _Reject(
                        403,
                        "MissingRole",
                        f"This endpoint needs one of the roles {sorted(roles)}; "
                        f"the key has {sorted(key.roles)}",
                    )
                account = self._account(key, decoded) if needs_account else None
                handler = cast(_Handler, getattr(type(self), method))
                result = handler(self, key, account, decoded)
            return _Answer(200, _dumps(result)), api_key, decoded
        except _Reject as exc:
            answer = _Answer(
                exc.status, _error_body(exc.reason, exc.message), headers=exc.headers, reason=exc.reason
            )
            return answer, api_key, decoded
        except Exception:  # a bug in the exchange: answer like Gemini's 500 and show the traceback
            traceback.print_exc()
            return _Answer(500, _error_body("System", "Internal error"), reason="System"), api_key, decoded

    def _in_maintenance(self) -> bool:
        return self._maintenance or (
            self._maintenance_until > 0 and time.monotonic() < self._maintenance_until
        )

    def _take_token(self, key: _Key) -> None:
        rate = self._rate
        if rate is None:
            return
        with self._lock:
            now = time.monotonic()
            key.tokens = min(float(self.burst), key.tokens + (now - key.bucket_time) * rate)
            key.bucket_time = now
            if key.tokens < 1.0:
                wait = max(1, math.ceil((1.0 - key.tokens) / rate))
                raise _Reject(429, "RateLimit", "Rate limit exceeded", headers=[("Retry-After", str(wait))])
            key.tokens -= 1.0

    def _check_nonce(self, key: _Key, payload: dict[str, Any]) -> None:
        if "nonce" not in payload or payload["nonce"] in (None, ""):
            raise _Reject(400, "MissingNonce", "Payload must contain a nonce")
        nonce = _as_int(payload["nonce"])
        if nonce is None:
            raise _Reject(400, "InvalidNonce", f"Nonce '{payload['nonce']}' is not an integer")
        if key.nonce_mode == "time":
            if abs(nonce - time.time()) > TIME_NONCE_WINDOW:
                raise _Reject(
                    400,
                    "InvalidNonce",
                    f"Nonce '{nonce}' is not within {TIME_NONCE_WINDOW} seconds of server time",
                )
            return
        if nonce <= key.last_nonce:
            raise _Reject(400, "InvalidNonce", f"Nonce '{nonce}' has not increased since your last call")
        key.last_nonce = nonce

    def _account(self, key: _Key, payload: dict[str, Any]) -> str:
        if not key.is_master:
            return key.accounts[0]
        account = payload.get("account")
        if not account:
            raise _Reject(400, "MissingAccounts", "Master API keys must name an 'account' in the payload")
        if account not in key.accounts:
            raise _Reject(400, "InvalidAccount", f"Account {account!r} is not in this key's group")
        return str(account)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    fault.count -= 1
                    if fault.count <= 0:
                        del self._faults[i]
                    return fault
            if self._fault_rate and self._fault_rng.random() < self._fault_rate:
                kind = self._fault_rng.choice(self._fault_kinds)
                return _Fault(kind, None, 1, self._fault_retry_after, self._fault_delay)
        return None

    def _record(
        self,
        path: str,
        api_key: str | None,
        payload: dict[str, Any],
        status: int,
        reason: str | None,
        fault: str | None,
    ) -> None:
        entry = JournalEntry(time.time(), path, api_key, payload, status, reason, fault)
        with self._lock:
            self._journal.append(entry)

    # ---- endpoints (called with the lock held) -----------------------------------------------------

    def _ep_new(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        assert account is not None
        return self._new_order(account, key.api_key, p, None, check_market=True).status()

    def _ep_cancel(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        order = self._find(account, p)
        if order.is_live:
            self._cancel(order, "Requested")
        return order.status()

    def _ep_cancel_all(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        return self._cancel_where(lambda o: o.account == account)

    def _ep_cancel_session(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        return self._cancel_where(lambda o: o.account == account and o.session == key.api_key)

    def _ep_status(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        return self._find(account, p, allow_client_id=True).status(
            include_trades=p.get("include_trades") in (True, "true", "True")
        )

    def _ep_orders(self, key: _Key, account: str | None, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [o.status() for o in self._orders.values() if o.is_live and o.account == account]

    def _ep_heartbeat(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        return {"result": "ok"}

    def _ep_roles(self, key: _Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
        roles: dict[str, Any] = {
            "isAuditor": "Auditor" in key.roles,
            "isFundManager": "Fund Manager" in key.roles,
            "isTrader": "Trader" in key.roles,
        }
        if key.is_master:
            roles["counterparty_id"] = hashlib.sha256(key.api_key.encode()).hexdigest()[:8].upper()
            roles["isAccountAdmin"] = "Administrator" in key.roles
        return roles

    # ---- order book internals (lock held) ----------------------------------------------------------

    def _take_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def _get(self, order_id: int | str) -> _Order:
        oid = _as_int(order_id)
        order = self._orders.get(oid) if oid is not None else None
        if order is None:
            raise KeyError(f"order_id: no order {order_id!r} on this exchange")
        return order

    def _find(self, account: str | None, p: dict[str, Any], allow_client_id: bool = False) -> _Order:
        has_id = p.get("order_id") is not None
        coid = p.get("client_order_id") if allow_client_id else None
        if has_id and coid is not None:
            raise _Reject(400, "ConflictingOrderIdentifiers", "Send order_id or client_order_id, not both")
        if coid is not None:
            oid: int | None = self._by_client_id.get((account or "", str(coid)))
        elif has_id:
            oid = _as_int(p["order_id"])
            if oid is None:
                raise _Reject(400, "InvalidOrderId", f"order_id {p['order_id']!r} is not an integer")
        else:
            raise _Reject(400, "MissingOrderField", "order_id is required")
        order = self._orders.get(oid) if oid is not None else None
        if order is None or order.account != account:
            raise _Reject(404, "OrderNotFound", "Order not found")
        return order

    def _cancel(self, order: _Order, reason: str) -> None:
        order.is_live = False
        order.is_cancelled = True
        order.reason = reason

    def _cancel_where(self, match: Callable[[_Order], bool]) -> dict[str, Any]:
        cancelled, rejected = [], []
        for order in self._orders.values():
            if order.is_live and match(order):
                if order.order_id in self._reject_cancels:
                    rejected.append(order.order_id)
                    continue
                self._cancel(order, "Requested")
                cancelled.append(order.order_id)
        return {"result": "ok", "details": {"cancelledOrders": cancelled, "cancelRejects": rejected}}

    def _new_order(
        self,
        account: str,
        session: str | None,
        p: dict[str, Any],
        timestampms: int | None,
        check_market: bool,
    ) -> _Order:
        for name in ("symbol", "amount", "price", "side", "type"):
            if p.get(name) in (None, ""):
                raise _Reject(400, "MissingOrderField", f"New orders need '{name}'")
        symbol = str(p["symbol"]).lower()
        if not (symbol.isascii() and symbol.isalnum() and 6 <= len(symbol) <= 12):
            raise _Reject(400, "InvalidSymbol", f"Unknown symbol {p['symbol']!r}")
        side = p["side"]
        if side not in ("buy", "sell"):
            raise _Reject(400, "InvalidSide", f"side must be 'buy' or 'sell', not {side!r}")
        order_type = p["type"]
        if order_type not in ("exchange limit", "exchange stop limit"):
            raise _Reject(400, "InvalidOrderType", f"Unsupported order type {order_type!r}")
        price = _positive(p["price"], "InvalidPrice", "price")
        amount = _positive(p["amount"], "InvalidQuantity", "amount")
        stop_price = None
        if order_type == "exchange stop limit":
            stop_price = _positive(p.get("stop_price"), "InvalidStopPrice", "stop_price")
        options = p.get("options", [])
        if not isinstance(options, list):
            raise _Reject(400, "OptionsMustBeArray", "options must be an array")
        if len(options) > 1:
            raise _Reject(400, "ConflictingOptions", "At most one order execution option is supported")
        if options and options[0] not in _OPTION_CANCEL_REASON and options[0] != "maker-or-cancel":
            raise _Reject(400, "UnsupportedOption", f"Unsupported option {options[0]!r}")
        coid = p.get("client_order_id")
        if coid is not None and not isinstance(coid, str):
            raise _Reject(400, "ClientOrderIdMustBeString", "client_order_id must be a string")
        if coid is not None and len(coid) >= 100:
            raise _Reject(400, "ClientOrderIdTooLong", "client_order_id must be under 100 characters")
        if check_market and symbol in self._closed_markets:
            raise _Reject(400, "MarketClosed", f"Market {symbol} is closed for new orders")
        order = _Order(
            order_id=self._take_id(),
            account=account,
            session=session,
            symbol=symbol,
            side=side,
            type=order_type,
            price=price,
            original_amount=amount,
            client_order_id=coid,
            timestampms=int(time.time() * 1000) if timestampms is None else timestampms,
            options=list(options),
            stop_price=stop_price,
        )
        self._orders[order.order_id] = order
        if coid is not None:
            self._by_client_id[(account, coid)] = order.order_id
        if options and options[0] in _OPTION_CANCEL_REASON:
            self._cancel(order, _OPTION_CANCEL_REASON[options[0]])  # no liquidity here: never fills
        return order

    # ---- require heartbeat ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(0.05):
            self._expire_heartbeats()

    def _expire_heartbeats(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = {
                k.api_key
                for k in self._keys.values()
                if k.require_heartbeat and now - k.last_seen > k.heartbeat_timeout
            }
            if expired:
                for order in self._orders.values():
                    if order.is_live and order.session in expired:
                        self._cancel(order, "Requested")

    # ---- admin (unauthenticated, test-only) --------------------------------------------------------

    def _admin(self, path: str) -> _Answer:
        if path == "/_admin/orders":
            with self._lock:
                rows = [
                    {
                        **o.status(),
                        "account": o.account,
                        "state": o.state(),
                        "placed_via": "api" if o.session else "web",
                    }
                    for o in self._orders.values()
                ]
            return _Answer(200, _dumps(rows))
        if path == "/_admin/journal":
            return _Answer(200, _dumps([asdict(e) for e in self.journal]))
        if path == "/_admin/health":
            return _Answer(200, _dumps({"result": "ok"}))
        return _Answer(
            404, _error_body("EndpointNotFound", "Unknown admin endpoint"), reason="EndpointNotFound"
        )


_OPTION_CANCEL_REASON = {
    "immediate-or-cancel": "ImmediateOrCancelWouldPost",
    "fill-or-kill": "FillOrKillWouldNotFill",
}

# (age in seconds, symbol, side, price, amount, client_order_id)
_DEMO_BOOK: tuple[tuple[int, str, str, str, str, str | None], ...] = (
    (10_680, "btcusd", "buy", "61250.00", "0.25", "mm-btc-bid-1"),
    (9_000, "btcusd", "sell", "64900.00", "0.10", "mm-btc-ask-1"),
    (8_400, "ethusd", "buy", "3120.50", "2", "manual-eth-dip"),
    (7_800, "solusd", "sell", "182.40", "40", "mm-sol-ask-1"),
    (7_260, "ethusd", "sell", "3480.00", "1.5", None),
    (540, "btcusd", "buy", "62980.00", "0.05", "mm-btc-bid-2"),
    (360, "ethusd", "sell", "3399.90", "3", "mm-eth-ask-1"),
    (240, "solusd", "buy", "171.05", "25", "manual-sol-1"),
    (120, "solusd", "sell", "176.80", "10", None),
    (60, "btcusd", "sell", "63510.00", "0.2", "manual-btc-1"),
)


def _positive(value: object, reason: str, name: str) -> str:
    """A positive decimal, kept as the exact string sent (Gemini wants quoted decimals)."""
    text = value if isinstance(value, str) else None
    try:
        ok = text is not None and Decimal(text).is_finite() and Decimal(text) > 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise _Reject(400, reason, f"{name} must be a positive quoted decimal, not {value!r}")
    return cast(str, text)


def _check_fault(kind: str, delay: float | None) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {FAULT_KINDS!r}")
    if kind == "delay" and (delay is None or delay < 0):
        raise ValueError("delay: the 'delay' fault needs a delay in seconds")


def _fault_answer(fault: _Fault) -> _Answer:
    retry = [("Retry-After", _seconds_header(fault.retry_after))] if fault.retry_after is not None else []
    if fault.kind == "rate_limit":
        return _Answer(
            429, _error_body("RateLimit", "Rate limit exceeded"), headers=retry, reason="RateLimit"
        )
    if fault.kind == "maintenance":
        return _Answer(
            503, _error_body("Maintenance", _MAINTENANCE_MESSAGE), headers=retry, reason="Maintenance"
        )
    if fault.kind == "server_error_text":
        return _Answer(500, b"upstream unavailable", content_type="text/plain")
    if fault.kind == "not_found_empty":
        return _Answer(404, b"", content_type=None)
    return _Answer(0, b"", drop=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    exchange: GeminiExchange

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet for connections the client (or stop()) closed; a traceback for anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Wake keep-alive handler threads blocked on reads so stop() leaves nothing behind."""
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GeminiLocalExchange"
    sys_version = ""
    fields: dict[str, str] = {}  # noqa: RUF012 - replaced per request by parse_request
    raw_requestline: bytes

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._srv.track(self.connection, True)

    def finish(self) -> None:
        self._srv.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    @property
    def _srv(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a log line per request would slow the benchmarks and could leak headers."""

    def parse_request(self) -> bool:
        """A lean HTTP/1.x parser: headers into a plain dict (the email parser is most of the cost)."""
        self.command, self.request_version = "", "HTTP/1.1"
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.close_connection = True
            self.send_error(400, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        fields: dict[str, str] = {}
        for _ in range(100):
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("iso-8859-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        else:
            self.close_connection = True
            self.send_error(431, "Too many headers")
            return False
        self.fields = fields
        connection = fields.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive"
        )
        return True

    def _path(self) -> str:
        length = self.fields.get("content-length", "")
        if length.isdigit() and int(length) > 0:
            self.rfile.read(int(length))
        return self.path.split("?", 1)[0]

    def do_POST(self) -> None:
        path = self._path()
        exchange = self._srv.exchange
        if path.startswith(ADMIN_PREFIX):
            self._send(exchange._admin(path))
            return
        fields = self.fields
        answer = exchange._handle_post(
            path,
            fields.get("x-gemini-apikey"),
            fields.get("x-gemini-payload"),
            fields.get("x-gemini-signature"),
        )
        self._send(answer)

    def do_GET(self) -> None:
        path = self._path()
        exchange = self._srv.exchange
        if path.startswith(ADMIN_PREFIX):
            self._send(exchange._admin(path))
            return
        answer = _Answer(
            404, _error_body("EndpointNotFound", "API entry point not found"), reason="EndpointNotFound"
        )
        exchange._record(path, None, {}, 404, answer.reason, None)
        self._send(answer)

    def _send(self, answer: _Answer) -> None:
        if answer.drop:
            self.close_connection = True
            return
        lines = [f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}"]
        if answer.content_type:
            lines.append(f"Content-Type: {answer.content_type}")
        lines.append(f"Content-Length: {len(answer.body)}")
        lines.extend(f"{name}: {value}" for name, value in answer.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + answer.body)


# ---- command line ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_gemini.testing.exchange",
        description="Run the local Gemini-compatible exchange (for tests and demos only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--seed", choices=("none", "demo"), default="none", help="'demo' places a mixed book")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help=f"Trader key (default {DEFAULT_API_KEY})")
    parser.add_argument(
        "--api-secret", default=DEFAULT_API_SECRET, help="its secret (default: the demo secret)"
    )
    parser.add_argument("--nonce-mode", choices=("counter", "time"), default="counter")
    parser.add_argument(
        "--rate-limit-per-minute", type=float, default=600, help="per-key limit; 0 turns it off (default 600)"
    )
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--first-order-id", type=int, default=FIRST_ORDER_ID)
    parser.add_argument(
        "--require-heartbeat", action="store_true", help="cancel the key's orders when silent"
    )
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0)
    parser.add_argument("--ready-file", help="write the URL to this file once listening")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM; print the URL and an AIRFLOW_CONN_GEMINI_DEFAULT line first."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rate = args.rate_limit_per_minute or None
    exchange = GeminiExchange(
        args.host, args.port, rate, args.burst, args.first_order_id, heartbeat_timeout=args.heartbeat_timeout
    )
    exchange.add_key(
        args.api_key, args.api_secret, nonce_mode=args.nonce_mode, require_heartbeat=args.require_heartbeat
    )
    try:
        exchange.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        if args.seed == "demo":
            book = exchange.place_demo_book(args.api_key)
            live = sum(1 for o in book if o["is_live"])
            seeded = f"; seeded {len(book)} demo orders ({live} live)"
        else:
            seeded = ""
        limit = "off" if rate is None else f"{rate:g}/min, burst {args.burst}"
        print(f"Local Gemini exchange (test only) listening on {exchange.url} (rate limit {limit}{seeded})")
        print(f"export AIRFLOW_CONN_GEMINI_DEFAULT='{exchange.airflow_connection()}'")
        print(f"Admin (unauthenticated): GET {exchange.url}/_admin/orders and {exchange.url}/_admin/journal")
        print("Stop with Ctrl-C.", flush=True)
        if args.ready_file:
            tmp = f"{args.ready_file}.tmp"
            with open(tmp, "w") as fh:
                fh.write(exchange.url + "\n")
            os.replace(tmp, args.ready_file)
        while not stop.wait(0.1):
            pass
    finally:
        exchange.stop()
    print("Local Gemini exchange stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
