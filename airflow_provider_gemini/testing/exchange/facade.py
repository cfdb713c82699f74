"""`GeminiExchange`: the one object tests, benchmarks and the demo drive; it owns the exchange's
state and its lock, and starts the server and the heartbeat reaper."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from airflow_provider_gemini import CONN_TYPE

from .book import DEMO_BOOK, FIRST_ORDER_ID, Book
from .clock import Clock, check_offset
from .dispatch import Dispatcher
from .faults import RANDOM_FAULT_KINDS, Faults, Maintenance
from .journal import Journal, JournalEntry
from .oauth import DEFAULT_ACCESS_TOKEN_LIFETIME, OAuthServer, check_error_style
from .records import Reject
from .rules import Key, TokenBucket, make_key, silent_sessions
from .server import Server


class GeminiExchange:
    """A Gemini-compatible exchange on loopback; `with GeminiExchange() as ex:` starts and stops it.

    `rate_limit_per_minute=None` turns the per-key token bucket off; `burst` is its capacity.
    `heartbeat_timeout` is the default silence (seconds) after which a "require heartbeat" key's
    session orders are cancelled. `clock_offset` (seconds) sets the exchange's clock ahead of the
    host's (or behind, if negative). `access_token_lifetime` (seconds) is how long OAuth access
    tokens last, `oauth_error_style` ("oauth" or "gemini") the shape of a refused token request.
    Every public method is thread-safe.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_per_minute: float | None = 600,
        burst: int = 5,
        first_order_id: int = FIRST_ORDER_ID,
        heartbeat_timeout: float = 30.0,
        journal_limit: int = 200_000,
        clock_offset: float = 0.0,
        access_token_lifetime: float = DEFAULT_ACCESS_TOKEN_LIFETIME,
        oauth_error_style: str = "oauth",
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
        self._clock = Clock(clock_offset)
        self._keys: dict[str, Key] = {}
        self._book = Book(first_order_id, self._clock)
        self._faults = Faults()
        self._maintenance = Maintenance()
        self._journal = Journal(journal_limit)
        self._oauth = OAuthServer(
            _check_lifetime(access_token_lifetime), check_error_style(oauth_error_style)
        )
        self._dispatcher = Dispatcher(
            self._lock,
            self._keys,
            self._book,
            self._faults,
            self._maintenance,
            self._journal,
            self._clock,
            self._oauth,
            self._rate,
            burst,
        )
        self._server: Server | None = None
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
        server = Server((self.host, self.port), self._dispatcher, self._clock)
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
        now = time.monotonic()
        key = make_key(
            api_key,
            api_secret,
            roles,
            nonce_mode,
            accounts,
            require_heartbeat,
            self.heartbeat_timeout if heartbeat_timeout is None else heartbeat_timeout,
            TokenBucket(self._rate, self.burst, float(self.burst), now),
            now,
        )
        with self._lock:
            self._keys[api_key] = key
            if self.api_key is None:
                self.api_key, self.api_secret = api_key, api_secret

    def accounts_of(self, api_key: str) -> tuple[str, ...]:
        """The accounts a registered key acts on (KeyError if unknown)."""
        with self._lock:
            return self._keys[api_key].accounts

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
            "conn_type": CONN_TYPE,
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

    # ---- OAuth --------------------------------------------------------------------------------------

    def add_oauth_app(
        self,
        client_id: str,
        client_secret: str,
        redirect_uri: str = "http://127.0.0.1/callback",
        account: str = "primary",
    ) -> None:
        """Register an OAuth app (a confidential client) that acts for `account` once a user consents."""
        with self._lock:
            self._oauth.add_app(client_id, client_secret, redirect_uri, account)

    def authorize(self, client_id: str, scopes: str | Sequence[str], redirect_uri: str | None = None) -> str:
        """What the user's consent on the authorize page yields: a one-time code for the token endpoint."""
        with self._lock:
            app = self._oauth.apps.get(client_id)
            uri = redirect_uri if redirect_uri is not None else (app.redirect_uri if app else "")
            return self._oauth.authorize(client_id, scopes, uri, self._clock.time())

    def grant_refresh_token(
        self, client_id: str, scopes: str | Sequence[str] = "orders:create,orders:read"
    ) -> str:
        """Consent and redeem the code at once (test setup): the first refresh token of a new grant.
        The app's own client must send it to /auth/token to get an access token."""
        code = self.authorize(client_id, scopes)
        with self._lock:
            app = self._oauth.apps[client_id]
            body = json.dumps(
                {
                    "grant_type": "authorization_code",
                    "client_id": client_id,
                    "client_secret": app.client_secret,
                    "code": code,
                    "redirect_uri": app.redirect_uri,
                }
            ).encode()
            answer, _ = self._oauth.token_answer(body, "application/json", self._clock.time())
        return str(json.loads(answer.body)["refresh_token"])

    def oauth_connection(self, client_id: str, refresh_token: str, **extra: Any) -> str:
        """The JSON value of an `AIRFLOW_CONN_...` variable for an OAuth connection to this exchange:
        login = client_id, password = client secret, the refresh token in the extra. Holds secrets."""
        with self._lock:
            app = self._oauth.apps.get(client_id)
        if app is None:
            raise ValueError("client_id: not registered with this exchange (add_oauth_app first)")
        conn = {
            "conn_type": CONN_TYPE,
            "login": client_id,
            "password": app.client_secret,
            "host": self.url,
            "extra": {"auth_type": "oauth", "refresh_token": refresh_token, **extra},
        }
        return json.dumps(conn)

    def set_access_token_lifetime(self, seconds: float) -> None:
        """Access tokens issued from now on last `seconds` (on the exchange's clock)."""
        lifetime = _check_lifetime(seconds)
        with self._lock:
            self._oauth.access_token_lifetime = lifetime

    def set_oauth_error_style(self, style: str) -> None:
        """'oauth': refused grants answer {"error": "invalid_grant", ...}; 'gemini': Gemini's own
        {"result": "error", "reason": "InvalidGrant", ...}."""
        checked = check_error_style(style)
        with self._lock:
            self._oauth.error_style = checked

    def expire_access_tokens(self) -> None:
        """Every access token issued so far expires now (refresh tokens keep working)."""
        with self._lock:
            self._oauth.expire_access_tokens(self._clock.time())

    def revoke_oauth(self, client_id: str | None = None) -> int:
        """Revoke the grants of one app (None: all), as a user removing the app's access would: its
        refresh and access tokens stop working. Returns how many grants were revoked."""
        with self._lock:
            return self._oauth.revoke(client_id)

    def current_refresh_tokens(self, client_id: str | None = None) -> list[str]:
        """The refresh tokens that would work now, one per live grant."""
        with self._lock:
            return self._oauth.current_refresh_tokens(client_id)

    def oauth_tokens_issued(self) -> list[str]:
        """Every access and refresh token ever issued (for tests that search logs for them)."""
        with self._lock:
            return list(self._oauth.issued)

    def token_scopes(self, access_token: str) -> tuple[str, ...]:
        """The scopes of an access token (KeyError if unknown)."""
        with self._lock:
            return self._oauth.access[access_token].grant.scopes

    def hold_token_requests(self, parties: int = 2, timeout: float = 10.0) -> None:
        """The next `parties` requests to /auth/token wait for each other (at most `timeout` s), then
        are answered one by one: two processes refreshing the same token at once, deterministically."""
        self._dispatcher.hold_token_requests(parties, timeout)

    # ---- perpetuals ----------------------------------------------------------------------------------

    def add_perpetuals_account(self, account: str) -> None:
        """Make `account` a perpetuals account: it holds `...perp` orders (btcgusdperp) and only those."""
        if not isinstance(account, str) or not account:
            raise ValueError(f"account: expected an account nickname, got {account!r}")
        with self._lock:
            self._book.perpetuals_accounts.add(account)

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
                order = self._book.new_order(acct, api_key, fields, timestampms, check_market=False)
            except Reject as exc:
                raise ValueError(exc.message) from None
            return order.status()

    def fill_order(self, order_id: int | str, amount: str | None = None) -> dict[str, Any]:
        """Fill a live order (all of what remains, or `amount` of it) at its price."""
        with self._lock:
            return self._book.fill(order_id, amount).status()

    def cancel_by_exchange(self, order_id: int | str, reason: str = "MarketClosed") -> dict[str, Any]:
        """Cancel a live order as the exchange would (any reason string, e.g. from the seed's table)."""
        with self._lock:
            order = self._book.get(order_id)
            if order.is_live:
                order.cancel(reason)
            return order.status()

    def order(self, order_id: int | str) -> dict[str, Any]:
        """The status object of any order, in any state and account; KeyError if unknown."""
        with self._lock:
            return self._book.get(order_id).status()

    def live_orders(self, account: str | None = None) -> list[dict[str, Any]]:
        """Live orders (of one account, or all), oldest id first."""
        with self._lock:
            return [o.status() for o in self._book.live(account)]

    def place_demo_book(self, api_key: str, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Seed a mixed book for `api_key`: stale (2-3 h) and fresh (minutes) orders over btcusd,
        ethusd and solusd, both sides, "mm-" / "manual-" / no client ids; plus one filled and one
        cancelled order. Returns every order's status object, in placing order."""
        now = self._clock.ms() if now_ms is None else now_ms
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
            for age, symbol, side, price, amount, coid in DEMO_BOOK
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
            self._maintenance.set(on)

    def maintenance_for(self, seconds: float) -> None:
        """Maintenance that ends by itself after `seconds`."""
        with self._lock:
            self._maintenance.for_seconds(seconds)

    def close_market(self, symbol: str) -> None:
        """New orders for `symbol` get 400 `MarketClosed`; cancels still work; resting orders stay."""
        with self._lock:
            self._book.closed_markets.add(symbol.lower())

    def open_market(self, symbol: str) -> None:
        with self._lock:
            self._book.closed_markets.discard(symbol.lower())

    def reject_cancels(self, *order_ids: int | str) -> None:
        """cancel/all and cancel/session leave these orders live and list them under `cancelRejects`."""
        with self._lock:
            self._book.reject_cancels.update(self._book.get(order_id).order_id for order_id in order_ids)

    def inject_listing_rows(self, rows: Sequence[Any], account: str | None = None) -> None:
        """Make /v1/orders list these raw rows, as given, after the live orders (of `account`, or
        of every account): rows a client cannot parse, such as `{"order_id": "123", "timestampms":
        "1.7e12"}`. They are not orders: nothing else sees them. They stay until cleared."""
        if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
            raise ValueError(f"rows: a list of rows is needed, got {type(rows).__name__}")
        copied = [copy.deepcopy(row) for row in rows]
        with self._lock:
            self._book.listing_rows.extend((account, row) for row in copied)

    def clear_listing_rows(self) -> None:
        with self._lock:
            self._book.listing_rows.clear()

    @property
    def clock_offset(self) -> float:
        return self._clock.offset

    def set_clock_offset(self, seconds: float) -> None:
        """Set the exchange's clock `seconds` ahead of the host's (negative: behind). It dates every
        answer (`Date`), stamps new orders and trades, and anchors the time-nonce window."""
        offset = check_offset(seconds)
        with self._lock:
            self._clock.offset = offset

    # ---- faults ----------------------------------------------------------------------------------

    def inject_fault(
        self,
        kind: str,
        path: str | None = None,
        count: int = 1,
        retry_after: float | None = None,
        delay: float | None = None,
        chunk_bytes: int | None = None,
    ) -> None:
        """Queue `count` faults for requests to `path` (None: any /v1 path), used in queue order.

        Kinds: "rate_limit" (429 RateLimit), "maintenance" (503 Maintenance), "server_error_text"
        (500 text/plain), "not_found_empty" (404, empty body), "unauthorized" (401 InvalidToken, as
        for a refused OAuth token), "drop" (close without answering),
        all sent before the request is processed; "drop_after" (process it, then close without
        answering); "delay" (sleep `delay` seconds, then process and answer); "trickle" (process
        it, then send the answer `chunk_bytes` bytes at a time (default 1), with pauses adding up to
        `delay` seconds, so a client whose timeout is per read waits the whole `delay`).
        `retry_after` adds a Retry-After header to the 429 and 503 answers.
        """
        with self._lock:
            self._faults.inject(kind, path, count, retry_after, delay, chunk_bytes)

    def set_fault_rate(
        self,
        rate: float,
        seed: int | str,
        kinds: Sequence[str] = RANDOM_FAULT_KINDS,
        delay: float | None = None,
        retry_after: float | None = None,
        chunk_bytes: int | None = None,
    ) -> None:
        """Fault a `rate` share of /v1 requests at random (seeded, so a run can be replayed);
        queued faults go first. `rate=0` turns it off."""
        with self._lock:
            self._faults.set_rate(rate, seed, kinds, delay, retry_after, chunk_bytes)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # ---- journal ---------------------------------------------------------------------------------

    @property
    def journal(self) -> list[JournalEntry]:
        with self._lock:
            return self._journal.entries()

    def clear_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    def count(self, path: str | None = None, status: int | None = None) -> int:
        """How many journalled requests match `path` and `status` (None matches any)."""
        with self._lock:
            return self._journal.count(path, status)

    # ---- require heartbeat ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(0.05):
            self._expire_heartbeats()

    def _expire_heartbeats(self) -> None:
        now = time.monotonic()
        with self._lock:
            silent = silent_sessions(self._keys.values(), now)
            if silent:
                self._book.cancel_sessions(silent)


def _check_lifetime(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"access_token_lifetime: expected a positive number of seconds, got {seconds!r}")
    return float(seconds)
