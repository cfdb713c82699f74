"""GeminiOrderStatusTrigger: waits in the triggerer until watched orders are gone, then fires once.

Glue over `watch.OrderWatch` (the same verdicts the sensor reaches on the worker) and
`polling.SharedPoller` (one poll loop per connection and account for every trigger in the triggerer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.arguments import parse_conn_id, parse_order_ids
from airflow_provider_gemini.report import CancelReport
from airflow_provider_gemini.watch import OrderWatch, PollResult, WatchStatus, ids_text

if TYPE_CHECKING:
    from airflow_provider_gemini.polling import SharedPoller, Subscription

LAST_LOOK_SECONDS = 1.0
"""How long a poll started at (or just before) end_time may take before the timeout fires anyway."""


class GeminiOrderStatusTrigger(BaseTrigger):
    """Poll order status until every order is cancelled (or filled, with accept_filled), then fire once.

    Read-only: it never sends a cancel, because a triggerer restart may run a trigger twice. Its
    orders are polled by the triggerer's shared poller for the connection and account, on an async
    client: one listing a round serves every trigger there, and no request takes a thread. The first
    result comes `poll_interval` seconds after it starts at the earliest (the deferring task has just
    polled). It gives up at `end_time` (epoch seconds), on time even while a poll is still waiting for
    the exchange (a round already out at end_time gets LAST_LOOK_SECONDS). With `return_on_live` it fires
    as soon as a pending order is seen live, so the worker can send the cancel a transient error kept
    it from sending.

    The single event's payload is plain JSON: {"status": "success" | "error" | "timeout" |
    "cancel_needed", "message": str | None, "report": {...}, "state": {"cancel_sent", "started_at"}}.
    """

    def __init__(
        self,
        order_ids: Sequence[int | str] | int | str,
        gemini_conn_id: str = DEFAULT_CONN_ID,
        account: str | None = None,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        accept_filled: bool = False,
        return_on_live: bool = False,
        report: Mapping[str, Any] | None = None,
        cancel_sent: Sequence[str] | None = None,
        started_at: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        given = order_ids if isinstance(order_ids, str | int) else list(order_ids)
        self.order_ids = [str(oid) for oid in parse_order_ids(given, "order_ids")]
        parse_conn_id(gemini_conn_id)
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float) or poll_interval < 0:
            raise ValueError(f"poll_interval: expected seconds >= 0, got {poll_interval!r}")
        self.gemini_conn_id = gemini_conn_id
        self.account = account
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.accept_filled = bool(accept_filled)
        self.return_on_live = bool(return_on_live)
        self.report: dict[str, Any] = CancelReport.from_dict(report or {}).to_dict()
        self.cancel_sent = sorted({str(oid) for oid in cancel_sent or ()}, key=int)
        self.started_at = time.time() if started_at is None else float(started_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and JSON kwargs; the connection id only, never a key or secret."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "order_ids": list(self.order_ids),
                "gemini_conn_id": self.gemini_conn_id,
                "account": self.account,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "accept_filled": self.accept_filled,
                "return_on_live": self.return_on_live,
                "report": self.report,
                "cancel_sent": list(self.cancel_sent),
                "started_at": self.started_at,
            },
        )

    def _watch(self) -> OrderWatch:
        return OrderWatch.from_state(
            self.order_ids,
            accept_filled=self.accept_filled,
            account=self.account,
            state={"report": self.report, "cancel_sent": self.cancel_sent, "started_at": self.started_at},
        )

    async def _poller(self) -> SharedPoller:
        """The triggerer's poller for this connection and account, shared with every trigger on them;
        the connection is read with the async API, so the event loop never blocks on it."""
        from airflow.sdk import BaseHook

        from airflow_provider_gemini.async_client import AsyncGeminiClient, ThreadedClient
        from airflow_provider_gemini.client import GeminiClient
        from airflow_provider_gemini.hooks.gemini import StatsMetrics, client_kwargs, watch_share
        from airflow_provider_gemini.polling import PollingClient, SharedPoller, shared_poller

        conn = await BaseHook.aget_connection(self.gemini_conn_id)
        extra = await conn.aextra_dejson()
        kwargs = client_kwargs(conn, extra)
        share = watch_share(conn, extra)
        account = self.account if self.account is not None else kwargs["account"]

        def build() -> SharedPoller:
            metrics = StatsMetrics(self.gemini_conn_id)
            client: PollingClient
            if kwargs.get("oauth") is not None:
                client = ThreadedClient(GeminiClient(**kwargs, metrics=metrics))
            else:
                client = AsyncGeminiClient(**kwargs, metrics=metrics)
            return SharedPoller(client, account, share=share)

        return shared_poller((self.gemini_conn_id, account), build)

    def _event(self, watch: OrderWatch, status: WatchStatus, message: str | None) -> TriggerEvent:
        state = watch.to_state()
        return TriggerEvent(  # type: ignore[no-untyped-call]
            {
                "status": str(status),
                "message": message,
                "report": watch.final_report(),
                "state": {"cancel_sent": state["cancel_sent"], "started_at": state["started_at"]},
            }
        )

    def _timeout_message(self, watch: OrderWatch) -> str:
        pending = [str(oid) for oid in watch.pending()]
        assert self.end_time is not None
        deadline = datetime.fromtimestamp(self.end_time, tz=UTC).isoformat(timespec="seconds")
        return (
            f"{len(pending)} of {len(self.order_ids)} order(s) still not cancelled at {deadline}: "
            f"{ids_text(pending)}"
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Take each round's result until done, a fatal answer, a live order to hand back, or
        end_time; yield one event."""
        watch = self._watch()
        try:
            poller = await self._poller()
        except Exception as err:
            message = (
                f"gemini_conn_id {self.gemini_conn_id!r}: no usable client ({type(err).__name__}: {err})"
            )
            yield self._event(watch, WatchStatus.ERROR, message)
            return
        self.log.info(
            "Watching %d order(s), %d pending, every %.1f s (%d other trigger(s) share this key's poller)",
            len(self.order_ids),
            len(watch.pending()),
            self.poll_interval,
            poller.subscribers,
        )
        sub = poller.subscribe(watch, self.poll_interval, self.log)
        try:
            event = await self._until_event(watch, poller, sub)
        finally:
            # Before the event is yielded: the triggerer may never resume this generator after it.
            poller.unsubscribe(sub)
        yield event

    async def _until_event(self, watch: OrderWatch, poller: SharedPoller, sub: Subscription) -> TriggerEvent:
        while True:
            result = await self._next(poller, sub)
            if result is None:
                return self._event(watch, WatchStatus.TIMEOUT, self._timeout_message(watch))
            if result.fatal:
                return self._event(watch, WatchStatus.ERROR, result.fatal)
            if result.done:
                return self._event(watch, WatchStatus.SUCCESS, None)
            if self.return_on_live and result.live:
                message = f"{result.live} order(s) still live: the worker sends their cancel"
                return self._event(watch, WatchStatus.CANCEL_NEEDED, message)
            if result.transient:
                self.log.warning("Exchange not answering (%s); polling again", result.transient)

    async def _next(self, poller: SharedPoller, sub: Subscription) -> PollResult | None:
        """The next round's result for this trigger, or None at end_time (a round already out at
        end_time gets LAST_LOOK_SECONDS more). The watch is only changed between awaits, so the
        event built after a timeout is consistent."""
        if self.end_time is None:
            return await sub.results.get()
        remaining = self.end_time - time.time()
        try:
            if remaining > 0.0:
                return await asyncio.wait_for(sub.results.get(), remaining)
            if not sub.results.empty():
                return sub.results.get_nowait()
        except TimeoutError:
            pass
        if poller.polling:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(sub.results.get(), LAST_LOOK_SECONDS)
            self.log.warning("A poll was still waiting for the exchange at end_time")
        return None
