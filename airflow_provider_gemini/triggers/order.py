"""GeminiOrderStatusTrigger: waits in the triggerer until watched orders are gone, then fires once.

Glue over `watch.OrderWatch`, the same poll logic the sensor uses on the worker.
"""

from __future__ import annotations

import asyncio
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
    from airflow_provider_gemini.client import GeminiClient

LAST_LOOK_SECONDS = 1.0
"""How long a poll started at (or just before) end_time may take before the timeout fires anyway."""


class GeminiOrderStatusTrigger(BaseTrigger):
    """Poll order status until every order is cancelled (or filled, with accept_filled), then fire once.

    Read-only: it never sends a cancel, because a triggerer restart may run a trigger twice. Requests
    run in a worker thread (`asyncio.to_thread`), so the triggerer's event loop never blocks. It waits
    `poll_interval` seconds before each poll (the deferring task has just polled) and gives up at
    `end_time` (epoch seconds), on time even while a poll is still waiting for the exchange (a poll
    started within LAST_LOOK_SECONDS of end_time may take that long). With `return_on_live` it fires
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

    async def _client(self) -> GeminiClient:
        """A client for the connection, fetched with the async API so the event loop never blocks."""
        from airflow.sdk import BaseHook

        from airflow_provider_gemini.hooks.gemini import GeminiHook

        conn = await BaseHook.aget_connection(self.gemini_conn_id)
        extra = await conn.aextra_dejson()
        return await asyncio.to_thread(GeminiHook.client_from_connection, conn, extra)

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
        """Poll until done, a fatal answer, a live order to hand back, or end_time; yield one event."""
        watch = self._watch()
        try:
            client = await self._client()
        except Exception as err:
            message = (
                f"gemini_conn_id {self.gemini_conn_id!r}: no usable client ({type(err).__name__}: {err})"
            )
            yield self._event(watch, WatchStatus.ERROR, message)
            return
        self.log.info(
            "Watching %d order(s), %d pending, every %.1f s",
            len(self.order_ids),
            len(watch.pending()),
            self.poll_interval,
        )
        poll: asyncio.Task[PollResult] | None = None
        try:
            while True:
                now = time.time()
                if self.end_time is not None and now >= self.end_time:
                    yield self._event(watch, WatchStatus.TIMEOUT, self._timeout_message(watch))
                    return
                wait = (
                    self.poll_interval
                    if self.end_time is None
                    else min(self.poll_interval, self.end_time - now)
                )
                await asyncio.sleep(wait)
                before = watch.to_state()
                poll = asyncio.ensure_future(
                    asyncio.to_thread(watch.poll, client, request_cancel=False, log=self.log)
                )
                # A poll started at end_time (the sleep above ends there) still gets a last look.
                remaining = (
                    None if self.end_time is None else max(LAST_LOOK_SECONDS, self.end_time - time.time())
                )
                # asyncio.wait, not wait_for: a thread cannot be cancelled, so at end_time the poll is
                # left to finish on its own (within the client's call deadline) while the event fires.
                await asyncio.wait({poll}, timeout=remaining)
                if not poll.done():
                    # The poll thread still writes to `watch`; the event is built from its state before.
                    stale = OrderWatch.from_state(
                        self.order_ids, accept_filled=self.accept_filled, account=self.account, state=before
                    )
                    self.log.warning("A poll was still waiting for the exchange at end_time")
                    yield self._event(stale, WatchStatus.TIMEOUT, self._timeout_message(stale))
                    return
                result, poll = poll.result(), None
                if result.fatal:
                    yield self._event(watch, WatchStatus.ERROR, result.fatal)
                    return
                if result.done:
                    yield self._event(watch, WatchStatus.SUCCESS, None)
                    return
                if self.return_on_live and result.live:
                    message = f"{result.live} order(s) still live: the worker sends their cancel"
                    yield self._event(watch, WatchStatus.CANCEL_NEEDED, message)
                    return
                if result.transient:
                    self.log.warning("Exchange not answering (%s); polling again", result.transient)
        finally:
            _close_when_idle(client, poll)


def _close_when_idle(client: GeminiClient, poll: asyncio.Task[PollResult] | None) -> None:
    """Close the client now, or once a poll still running in its thread has ended (closing under it
    would only make its next request open a new session that nothing closes)."""
    if poll is None or poll.done():
        client.close()
        return

    def close(task: asyncio.Task[PollResult]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        client.close()

    poll.add_done_callback(close)
