"""GeminiOrderStatusTrigger, and OrderWatch: what is known about a set of orders, poll after poll.

OrderWatch is shared by the sensor's poke (which may also send cancels) and the trigger (which only
reads), so both decide "cancelled", "filled" and "still live" the same way and return the same report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.models import OUTCOMES, CancelReport, Order, parse_order_ids

if TYPE_CHECKING:
    from airflow_provider_gemini.client import GeminiClient

_MAX_IDS_IN_MESSAGE = 10


class Log(Protocol):
    """The part of a logger OrderWatch uses (a logging.Logger or Airflow's task logger)."""

    def info(self, msg: str, /, *args: Any) -> object: ...

    def warning(self, msg: str, /, *args: Any) -> object: ...


@dataclass(frozen=True)
class PollResult:
    """One poll's verdict. `fatal`: the task must fail; `transient`: ask again at the next poll."""

    done: bool = False
    fatal: str | None = None
    transient: str | None = None
    live: int = 0


def is_transient(err: GeminiError) -> bool:
    """Errors that pass by themselves: maintenance, 5xx, rate limits, nonce races, a closed market."""
    return err.retryable or err.kind == "market_closed"


def _ids_text(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_IDS_IN_MESSAGE])
    more = len(ids) - _MAX_IDS_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


@dataclass
class OrderWatch:
    """The orders being waited on, which of them are settled (in `report`), and which we asked to cancel.

    An order is settled once it is cancelled (`cancelled` when this task sent a cancel for it,
    `already_cancelled` otherwise) or ended without a cancel (`filled`). Settled orders are never asked
    about again, so a poll costs one `/v1/orders` listing plus one `/v1/order/status` per order that
    left the book since the last poll (one status request when a single order is left).
    """

    order_ids: list[int]
    accept_filled: bool = False
    account: str | None = None
    report: CancelReport = field(default_factory=CancelReport)
    cancel_sent: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)

    # -- state ---------------------------------------------------------------------------------------

    def _decided(self) -> set[str]:
        ids = {oid for name in OUTCOMES for oid in getattr(self.report, name)}
        ids.update(entry["order_id"] for entry in self.report.failed if entry["order_id"] is not None)
        return ids

    def pending(self) -> list[int]:
        """Order ids not settled yet, in the order given."""
        decided = self._decided()
        return [oid for oid in self.order_ids if str(oid) not in decided]

    def to_state(self) -> dict[str, Any]:
        """Plain JSON: enough to rebuild the watch in another process (trigger, rescheduled poke)."""
        return {
            "report": self.report.to_dict(),
            "cancel_sent": sorted(self.cancel_sent, key=int),
            "started_at": self.started_at,
        }

    @classmethod
    def from_state(
        cls,
        order_ids: Sequence[int | str],
        *,
        accept_filled: bool,
        account: str | None,
        state: Mapping[str, Any] | None,
    ) -> OrderWatch:
        """A watch over `order_ids`, carrying on from `state` (from to_state) when given."""
        watch = cls([int(oid) for oid in order_ids], accept_filled=accept_filled, account=account)
        if state:
            watch.report = CancelReport.from_dict(state.get("report") or {})
            watch.cancel_sent = {str(oid) for oid in state.get("cancel_sent") or ()}
            watch.started_at = float(state.get("started_at") or watch.started_at)
        return watch

    def forget_failures(self) -> None:
        """Drop unknown-id and failed verdicts so the next poll asks about those orders again."""
        self.report.not_found.clear()
        self.report.failed.clear()

    def final_report(self) -> dict[str, Any]:
        """The report (same shape as the cancel operators'), stats brought up to date."""
        self.report.set_stats(
            requests=int(self.report.stats.get("requests", 0)),
            retries=int(self.report.stats.get("retries", 0)),
            elapsed_seconds=max(0.0, time.time() - self.started_at),
        )
        return self.report.to_dict()

    def fatal_message(self) -> str | None:
        """Why the wait cannot succeed (unknown ids, unaccepted fills, refused requests), or None."""
        parts: list[str] = []
        if self.report.not_found:
            parts.append(
                f"order_id {_ids_text(self.report.not_found)}: not found at the exchange (OrderNotFound); "
                "check the id and the account"
            )
        if self.report.filled and not self.accept_filled:
            described = []
            for oid in self.report.filled[:_MAX_IDS_IN_MESSAGE]:
                s = self.report.orders.get(oid, {})
                described.append(
                    f"{oid} ({s.get('symbol')} {s.get('side')} {s.get('original_amount')} "
                    f"@ {s.get('price')}, remaining {s.get('remaining_amount')})"
                )
            more = len(self.report.filled) - len(described)
            parts.append(
                f"order {', '.join(described)}{f' and {more} more' if more > 0 else ''} filled instead of "
                "being cancelled; pass accept_filled=True to count fills as done"
            )
        for entry in self.report.failed[:_MAX_IDS_IN_MESSAGE]:
            who = f"order {entry['order_id']}" if entry["order_id"] else "request"
            parts.append(f"{who}: {entry['kind']} ({entry['reason'] or '-'}): {entry['message']}")
        return "; ".join(parts) or None

    # -- polling -------------------------------------------------------------------------------------

    def poll(self, client: GeminiClient, *, request_cancel: bool, log: Log) -> PollResult:
        """Read the pending orders (and cancel the live ones when `request_cancel`); blocking I/O."""
        requests, retries = client.stats.requests, client.stats.retries
        try:
            transient, live = self._poll(client, request_cancel, log)
        finally:
            self.report.set_stats(
                requests=int(self.report.stats.get("requests", 0)) + client.stats.requests - requests,
                retries=int(self.report.stats.get("retries", 0)) + client.stats.retries - retries,
                elapsed_seconds=max(0.0, time.time() - self.started_at),
            )
        fatal = self.fatal_message()
        if fatal:
            return PollResult(fatal=fatal, live=live)
        if transient:
            return PollResult(transient=transient, live=live)
        return PollResult(done=not self.pending(), live=live)

    def _poll(self, client: GeminiClient, request_cancel: bool, log: Log) -> tuple[str | None, int]:
        pending = self.pending()
        if not pending:
            return None, 0
        listed: dict[str, Order] | None = None
        if len(pending) > 1:
            try:
                listed = {order.order_id: order for order in client.active_orders(account=self.account)}
            except GeminiError as err:
                if is_transient(err):
                    return f"/v1/orders: {err}", 0
                self.report.fail(None, err.kind, err.reason, f"/v1/orders: {err.message}")
                return None, 0
            except ValueError as err:
                self.report.fail(None, "invalid_request", None, f"/v1/orders: {err}")
                return None, 0
        live = 0
        for oid in pending:
            key = str(oid)
            try:
                order = listed.get(key) if listed is not None else None
                if order is None:
                    order = client.order_status(order_id=oid, account=self.account)
                if order.state == "live" and request_cancel:
                    self.cancel_sent.add(key)
                    order = client.cancel_order(oid, account=self.account)
            except GeminiError as err:
                if is_transient(err):
                    return f"order {key}: {err}", live
                if err.kind == "order_not_found":
                    self.report.record(oid, "not_found")
                else:
                    self.report.fail(oid, err.kind, err.reason, err.message)
                continue
            except ValueError as err:
                self.report.fail(oid, "invalid_request", None, str(err))
                continue
            if order.order_id != key:
                self.report.fail(
                    oid, "invalid_request", None, f"the exchange answered for order {order.order_id}"
                )
                continue
            live += self._settle(order, log)
        return None, live

    def _settle(self, order: Order, log: Log) -> int:
        state = order.state
        if state == "live":
            self.report.note(order)
            return 1
        if state == "cancelled":
            outcome = "cancelled" if order.order_id in self.cancel_sent else "already_cancelled"
        else:
            outcome = "filled"
        self.report.record(order, outcome)
        log.info(
            "Order %s is %s (%s %s, remaining %s, reason %s)",
            order.order_id,
            state,
            order.symbol,
            order.side,
            order.remaining_amount,
            order.reason,
        )
        return 0


class GeminiOrderStatusTrigger(BaseTrigger):
    """Poll order status until every order is cancelled (or filled, with accept_filled), then fire once.

    Read-only: it never sends a cancel, because a triggerer restart may run a trigger twice. Requests
    run in a worker thread (`asyncio.to_thread`), so the triggerer's event loop never blocks. It waits
    `poll_interval` seconds before each poll (the deferring task has just polled) and gives up at
    `end_time` (epoch seconds). With `return_on_live` it fires as soon as a pending order is seen live,
    so the worker can send the cancel a transient error kept it from sending.

    The single event's payload is plain JSON: {"status": "success" | "error" | "timeout" |
    "cancel_needed", "message": str | None, "report": {...}, "state": {"cancel_sent", "started_at"}}.
    """

    def __init__(
        self,
        order_ids: Sequence[int | str] | int | str,
        gemini_conn_id: str = "gemini_default",
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
        if not isinstance(gemini_conn_id, str) or not gemini_conn_id:
            raise ValueError(f"gemini_conn_id: expected a connection id, got {gemini_conn_id!r}")
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

    def _event(self, watch: OrderWatch, status: str, message: str | None) -> TriggerEvent:
        state = watch.to_state()
        return TriggerEvent(  # type: ignore[no-untyped-call]
            {
                "status": status,
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
            f"{_ids_text(pending)}"
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
            yield self._event(watch, "error", message)
            return
        self.log.info(
            "Watching %d order(s), %d pending, every %.1f s",
            len(self.order_ids),
            len(watch.pending()),
            self.poll_interval,
        )
        try:
            while True:
                now = time.time()
                if self.end_time is not None and now >= self.end_time:
                    yield self._event(watch, "timeout", self._timeout_message(watch))
                    return
                wait = (
                    self.poll_interval
                    if self.end_time is None
                    else min(self.poll_interval, self.end_time - now)
                )
                await asyncio.sleep(wait)
                result = await asyncio.to_thread(watch.poll, client, request_cancel=False, log=self.log)
                if result.fatal:
                    yield self._event(watch, "error", result.fatal)
                    return
                if result.done:
                    yield self._event(watch, "success", None)
                    return
                if self.return_on_live and result.live:
                    message = f"{result.live} order(s) still live: the worker sends their cancel"
                    yield self._event(watch, "cancel_needed", message)
                    return
                if result.transient:
                    self.log.warning("Exchange not answering (%s); polling again", result.transient)
        finally:
            client.close()
