"""SharedPoller: one poll loop per key and account in a process, serving every watch on it. No Airflow.

A triggerer may run hundreds of order-status triggers on one key. Each polling on its own would spend
the key's whole rate limit on listings (and starve the tasks that cancel); here a round costs one
`/v1/orders` listing for all of them, plus one `/v1/order/status` per watched order that left the
book (asked once however many watches hold it). Each watch gets its own PollResult every round and
fires its own event; rounds run at the shortest interval any subscriber asked for, never faster than
the share of the key's rate limit given to watching allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from airflow_provider_gemini.client import ClientStats
from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.models import Order
from airflow_provider_gemini.report import Log
from airflow_provider_gemini.watch import OrderWatch, PollResult

__all__ = ["DEFAULT_WATCH_SHARE", "GEMINI_RATE_PER_MINUTE", "SharedPoller", "Subscription", "shared_poller"]

DEFAULT_WATCH_SHARE = 0.25
"""Watching may use a quarter of the key's rate limit; the rest stays for the tasks that cancel."""

GEMINI_RATE_PER_MINUTE = 600.0
"""Gemini's documented private-API limit per key, used for the watch budget when pacing is off."""

MIN_ROUND_SECONDS = 0.05
"""Rounds never follow each other closer than this, whatever the intervals asked for."""

_log = logging.getLogger(__name__)


class PollingClient(Protocol):
    """What a poller reads with: AsyncGeminiClient (API keys), or ThreadedClient (OAuth)."""

    stats: ClientStats
    rate_limit_per_minute: float | None

    async def order_status(
        self,
        order_id: int | str | None = None,
        client_order_id: str | None = None,
        include_trades: bool = False,
        account: str | None = None,
    ) -> Order: ...

    async def active_orders(self, account: str | None = None) -> list[Order]: ...

    async def aclose(self) -> None: ...


@dataclass(eq=False)
class Subscription:
    """One watch served by a poller: it gets one PollResult per round, in `results`."""

    watch: OrderWatch
    interval: float
    log: Log
    results: asyncio.Queue[PollResult] = field(default_factory=asyncio.Queue)


class SharedPoller:
    """The poll loop of one key and account. Subscribe watches; it runs while any is subscribed.

    `share` of the key's rate (`client.rate_limit_per_minute`, or Gemini's 600/min when pacing is
    off) bounds watching: after a round of n requests the next waits at least n / (share * rate).
    """

    def __init__(self, client: PollingClient, account: str | None, *, share: float = DEFAULT_WATCH_SHARE):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"watch_share: expected a fraction in (0, 1], got {share!r}")
        self.client = client
        self.account = account
        per_minute = client.rate_limit_per_minute or GEMINI_RATE_PER_MINUTE
        self.requests_per_second = share * per_minute / 60.0
        self._subscribers: list[Subscription] = []
        self.closed = False
        self.polling = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, watch: OrderWatch, interval: float, log: Log = _log) -> Subscription:
        """Serve `watch` from the next round on. A poller of its own starts its first round after
        `interval` (the task that deferred has just polled); one that is already running serves it
        at its next round, which costs nothing more."""
        if self.closed:
            raise RuntimeError("this poller has ended; take one from shared_poller()")
        sub = Subscription(watch, max(0.0, float(interval)), log)
        self._subscribers.append(sub)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gemini-shared-poller")
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop serving `sub`; the loop ends (and the client closes) when nobody is left."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)
        self._wake.set()

    def _interval(self) -> float:
        return min((sub.interval for sub in self._subscribers), default=0.0)

    async def _run(self) -> None:
        last_round, last_cost = time.monotonic(), 0
        try:
            while self._subscribers:
                # Wait for the shortest interval asked for (a new subscriber may shorten it), and for
                # the budget the last round's requests used up.
                self._wake.clear()
                due = last_round + max(
                    MIN_ROUND_SECONDS, self._interval(), last_cost / self.requests_per_second
                )
                wait = due - time.monotonic()
                if wait > 0.0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
                last_round = time.monotonic()
                try:
                    self.polling = True
                    last_cost = await self._round()
                except Exception as err:
                    # A fault here must not leave the watches waiting for rounds that never come.
                    _log.exception("Gemini shared poller round failed")
                    for sub in self._subscribers:
                        sub.results.put_nowait(
                            PollResult(fatal=f"poller failed: {type(err).__name__}: {err}")
                        )
                    last_cost = 1
                finally:
                    self.polling = False
        finally:
            # Before any await: from here shared_poller() builds a new poller for new subscribers.
            self.closed = True
            await self.client.aclose()

    async def _round(self) -> int:
        """Poll once for every subscriber; returns the number of requests it took."""
        subs = list(self._subscribers)
        pending = {oid for sub in subs for oid in sub.watch.pending()}
        if not pending:
            for sub in subs:
                sub.results.put_nowait(sub.watch.verdict(None, 0))
            return 0
        spent = _Spent(self.client)
        listed: dict[str, Order] | None = None
        listing_error: Exception | None = None
        listing_cost: Cost = (0, 0)
        # One watched order in all: its status alone answers, and costs the same as a listing.
        if len(pending) > 1:
            try:
                listed = {o.order_id: o for o in await self.client.active_orders(account=self.account)}
            except (GeminiError, ValueError) as err:
                listing_error = err
            listing_cost = spent.take()
        answers: dict[int, tuple[Order | Exception, Cost]] = {}
        if listing_error is None:
            # One at a time: a key's nonces must reach Gemini in order, so its requests never overlap.
            for oid in sorted(oid for oid in pending if listed is None or str(oid) not in listed):
                try:
                    answer: Order | Exception = await self.client.order_status(
                        order_id=oid, account=self.account
                    )
                except (GeminiError, ValueError) as err:
                    answer = err
                answers[oid] = (answer, spent.take())
        for sub in subs:
            sub.results.put_nowait(self._serve(sub, listed, listing_error, listing_cost, answers))
            # Hundreds of watches read a listing of thousands of orders: let the loop breathe between
            # them rather than hold it for the whole round (each watch changes only between awaits).
            await asyncio.sleep(0)
        return spent.total

    def _serve(
        self,
        sub: Subscription,
        listed: dict[str, Order] | None,
        listing_error: Exception | None,
        listing_cost: Cost,
        answers: dict[int, tuple[Order | Exception, Cost]],
    ) -> PollResult:
        watch = sub.watch
        pending = watch.pending()
        if not pending:
            return watch.verdict(None, 0)
        if listing_error is not None:
            watch.add_requests(*listing_cost)
            return watch.verdict(watch.take_listing_error(listing_error), 0)
        # Every watch a listing served is charged it (listing_cost is (0, 0) when none was made).
        costs = [listing_cost, *(answers[oid][1] for oid in pending if oid in answers)]
        watch.add_requests(sum(c[0] for c in costs), sum(c[1] for c in costs))
        transient: str | None = None
        live = 0
        for oid in pending:
            answer = answers[oid][0] if oid in answers else None
            if answer is None and listed is not None:
                answer = listed.get(str(oid))
            if answer is None:
                continue
            message, counted = watch.take_answer(oid, answer, sub.log)
            transient = transient or message
            live += counted
        return watch.verdict(transient, live)


Cost = tuple[int, int]
"""(requests, retries) one call of a round took, retries included: what each watch it served is charged."""


class _Spent:
    """Reads the poller client's counters call by call, so each watch is charged what its calls cost."""

    def __init__(self, client: PollingClient) -> None:
        self._client = client
        self._mark = self._now()
        self.total = 0

    def _now(self) -> Cost:
        stats = self._client.stats
        return stats.requests, stats.retries

    def take(self) -> Cost:
        now = self._now()
        cost = (now[0] - self._mark[0], now[1] - self._mark[1])
        self._mark = now
        self.total += cost[0]
        return cost


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, SharedPoller]] = (
    weakref.WeakKeyDictionary()
)


def shared_poller(key: Hashable, build: Callable[[], SharedPoller]) -> SharedPoller:
    """The running loop's poller for `key` (a connection and account), built by `build` when there is
    none or it has ended. Synchronous, so two triggers starting at once cannot both build one."""
    table = _pollers.setdefault(asyncio.get_running_loop(), {})
    poller = table.get(key)
    if poller is None or poller.closed:
        poller = table[key] = build()
    return poller
