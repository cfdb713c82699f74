"""AsyncGeminiClient: the read-only requests a triggerer needs, on httpx, in the event loop. No Airflow.

The same settings, signing, nonces, pacing (the process's token bucket for the key, awaited instead
of slept), retry policy, deadlines and error mapping as `GeminiClient`: both are `ClientCore`; only
the bytes move differently. No thread is borrowed for a request.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import httpcore  # noqa: F401  (httpx imports it on a client's first use: here, once, not mid-loop)
import httpx
import tenacity

from airflow_provider_gemini.client import USER_AGENT, ClientCore, GeminiClient, Sleep, Unreadable
from airflow_provider_gemini.models import Order, Roles
from airflow_provider_gemini.transport import Answer, Failure

__all__ = ["AsyncGeminiClient", "AsyncSleep", "ThreadedClient"]

AsyncSleep = Callable[[float], Awaitable[None]]

_TLS = httpx.create_ssl_context()
"""One TLS context a process, built as the module loads: building one (the CA bundle read) takes
tens of milliseconds, which every new client would otherwise spend inside the event loop."""

PARSE_SLICE = 200
"""Listing rows parsed between two turns of the event loop (about 1 ms of work)."""


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _turn(identity: str) -> asyncio.Lock:
    """The running loop's lock for one key."""
    locks = _turns.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get(identity)
    if lock is None:
        lock = locks[identity] = asyncio.Lock()
    return lock


class AsyncGeminiClient(ClientCore):
    """Order status, the live-order listing and the key's roles, awaited. Takes GeminiClient's
    arguments, plus `async_sleep` (awaited for pacing and retry waits; injectable for tests).

    Each attempt must have its whole answer within `timeout` seconds (one asyncio deadline over
    connect, headers and body, so a trickling server cannot hold it), each call within `call_timeout`.
    """

    def __init__(
        self, api_key: str, api_secret: str, *, async_sleep: AsyncSleep = asyncio.sleep, **options: Any
    ) -> None:
        if options.get("oauth") is not None:
            # Refreshing a token writes the Airflow Variable that holds it, which blocks: OAuth
            # connections poll through ThreadedClient instead.
            raise ValueError("oauth: AsyncGeminiClient signs with API keys; use ThreadedClient for OAuth")
        self._async_sleep = async_sleep
        super().__init__(api_key, api_secret, **options)

    def _open_transport(self, sleep: Sleep) -> None:
        self._http: httpx.AsyncClient | None = None
        self._retrying = tenacity.AsyncRetrying(sleep=self._async_sleep, **self._retry_policy())

    async def __aenter__(self) -> AsyncGeminiClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections; the client reopens them if used again."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- transport ---------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        # Made on first use, inside the running loop: an httpx client belongs to the loop it runs in.
        if self._http is None:
            self._http = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                verify=_TLS,
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                limits=httpx.Limits(max_connections=10, max_keepalive_connections=5),
            )
        return self._http

    async def _send(self, url: str, headers: Mapping[str, str], seconds: float) -> Answer | Failure:
        """POST with an empty body and read the whole answer within `seconds`; never raises for a
        transport problem (httpx's exceptions hold the signed request, so none may travel on)."""
        timed_out = False
        error = ""
        try:
            async with asyncio.timeout(seconds):
                sent_at = time.time()
                async with self._client().stream("POST", url, headers=headers, content=b"") as response:
                    received_at = time.time()
                    body = await response.aread()
                    return Answer(response.status_code, response.headers, body, sent_at, received_at)
        except TimeoutError:
            timed_out = True
        except httpx.TimeoutException as exc:
            timed_out, error = True, type(exc).__name__
        except (httpx.HTTPError, OSError) as exc:
            error = type(exc).__name__
        return Failure(timed_out=timed_out, error=error)

    async def _attempt(self, path: str, fields: Mapping[str, Any], deadline: float) -> Any:
        wait = self._reserve_turn(path, deadline)
        if wait > 0.0:
            await self._async_sleep(wait)
        url = self.base_url + path
        # A key's nonces must reach Gemini in the order they were signed: the loop's clients of one
        # key (a master key's accounts, say) take turns from signing to answer, instead of
        # overtaking each other into InvalidNonce.
        async with _turn(self._auth.identity):
            headers, credential = self._auth.headers(path, fields)
            seconds = self._seconds(path, deadline)
            started = time.perf_counter()
            answer = await self._send(url, headers, seconds)
        return self._decoded(path, self._answered(path, url, answer, seconds, started), credential)

    async def _post(self, path: str, fields: Mapping[str, Any]) -> Any:
        return await self._retrying(self._attempt, path, fields, self._clock() + self.call_timeout)

    # -- API ---------------------------------------------------------------------------------------

    async def order_status(
        self,
        order_id: int | str | None = None,
        client_order_id: str | None = None,
        include_trades: bool = False,
        account: str | None = None,
    ) -> Order:
        """The status of one order, by order_id or by client_order_id (exactly one of them)."""
        fields = self._status_fields(order_id, client_order_id, include_trades, account)
        return Order.from_status(await self._post("/v1/order/status", fields))

    async def active_orders(
        self, account: str | None = None, on_unreadable: Unreadable | None = None
    ) -> list[Order]:
        """The account's live orders (see GeminiClient.active_orders for unreadable rows)."""
        data = await self._post("/v1/orders", self._with_account({}, account))
        if not isinstance(data, list):
            return self._active_from(data, on_unreadable)  # raises the error for a non-list answer
        # A book of thousands of orders is read a slice at a time, the loop free between slices.
        orders: list[Order] = []
        for start in range(0, len(data), PARSE_SLICE):
            orders += self._active_from(data[start : start + PARSE_SLICE], on_unreadable)
            await asyncio.sleep(0)
        return orders

    async def roles(self) -> Roles:
        """The key's roles: a safe call for a connection test."""
        return Roles.from_response(await self._post("/v1/roles", {}))


class ThreadedClient:
    """A GeminiClient behind AsyncGeminiClient's read API, each request in a worker thread: for OAuth
    connections, whose token refresh (an Airflow Variable write) blocks. The poller stays shared, so
    it is still one listing a round for every trigger on the connection."""

    def __init__(self, client: GeminiClient) -> None:
        self.client = client
        self.stats = client.stats
        self.rate_limit_per_minute = client.rate_limit_per_minute

    async def order_status(
        self,
        order_id: int | str | None = None,
        client_order_id: str | None = None,
        include_trades: bool = False,
        account: str | None = None,
    ) -> Order:
        return await asyncio.to_thread(
            self.client.order_status, order_id, client_order_id, include_trades, account
        )

    async def active_orders(self, account: str | None = None) -> list[Order]:
        return await asyncio.to_thread(self.client.active_orders, account=account)

    async def aclose(self) -> None:
        self.client.close()
