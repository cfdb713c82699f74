"""OrderWatch: what is known about a set of orders, poll after poll; read-only unless asked to cancel.

Shared by the sensor's poke (which may also send cancels) and the trigger (which only reads), so both
decide "cancelled", "filled" and "still live" the same way and return the same report. No Airflow here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.models import Order
from airflow_provider_gemini.recording import CancelRecorder
from airflow_provider_gemini.report import OUTCOMES, CancelReport, Log

if TYPE_CHECKING:
    from airflow_provider_gemini.client import GeminiClient


class WatchStatus(StrEnum):
    """The status of the one event a watch's trigger fires (its payload's "status")."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCEL_NEEDED = "cancel_needed"


_MAX_IDS_IN_MESSAGE = 10


@dataclass(frozen=True)
class PollResult:
    """One poll's verdict. `fatal`: the task must fail; `transient`: ask again at the next poll."""

    done: bool = False
    fatal: str | None = None
    transient: str | None = None
    live: int = 0


def ids_text(ids: Sequence[str]) -> str:
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
                f"order_id {ids_text(self.report.not_found)}: not found at the exchange (OrderNotFound); "
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

    def poll(
        self,
        client: GeminiClient,
        *,
        request_cancel: bool,
        log: Log,
        recorder: CancelRecorder | None = None,
    ) -> PollResult:
        """Read the pending orders (and cancel the live ones when `request_cancel`, each answer filed
        with `recorder`: audit trail, metrics); blocking I/O."""
        requests, retries = client.stats.requests, client.stats.retries
        try:
            transient, live = self._poll(client, request_cancel, log, recorder or CancelRecorder())
        finally:
            self.add_requests(client.stats.requests - requests, client.stats.retries - retries)
        return self.verdict(transient, live)

    def _poll(
        self, client: GeminiClient, request_cancel: bool, log: Log, recorder: CancelRecorder
    ) -> tuple[str | None, int]:
        pending = self.pending()
        if not pending:
            return None, 0
        listed: dict[str, Order] | None = None
        if len(pending) > 1:
            try:
                listed = {order.order_id: order for order in client.active_orders(account=self.account)}
            except (GeminiError, ValueError) as err:
                return self.take_listing_error(err), 0
        live = 0
        for oid in pending:
            key = str(oid)
            answer: Order | Exception
            cancelling: Order | None = None
            sent = 0
            try:
                order = listed.get(key) if listed is not None else None
                if order is None:
                    order = client.order_status(order_id=oid, account=self.account)
                if order.state == "live" and request_cancel:
                    self.cancel_sent.add(key)
                    cancelling, sent = order, client.stats.requests
                    recorder.request_sent()
                    order = client.cancel_order(oid, account=self.account)
                answer = order
            except (GeminiError, ValueError) as err:
                if cancelling is not None and isinstance(err, GeminiError):
                    recorder.failed(
                        err, order_id=key, requests=client.stats.requests - sent, order=cancelling
                    )
                answer = err
            if cancelling is not None and isinstance(answer, Order) and answer.order_id == key:
                state = answer.state
                outcome = (
                    "cancelled" if state == "cancelled" else "still_live" if state == "live" else "filled"
                )
                recorder.answered(outcome, order=answer, requests=client.stats.requests - sent)
            transient, counted = self.take_answer(oid, answer, log)
            if transient:
                return transient, live
            live += counted
        return None, live

    def take_listing_error(self, err: Exception) -> str | None:
        """Record a failed `/v1/orders` listing; the message when it may pass (ask again next poll)."""
        if isinstance(err, GeminiError):
            if err.transient:
                return f"/v1/orders: {err}"
            self.report.fail(None, err.kind, err.reason, f"/v1/orders: {err.message}")
        else:
            self.report.fail(None, "invalid_request", None, f"/v1/orders: {err}")
        return None

    def take_answer(self, oid: int, answer: Order | Exception, log: Log) -> tuple[str | None, int]:
        """Settle one pending order from what the exchange said of it (its status, or the error that
        came instead); returns (the message of a transient error, 1 if the order is still live)."""
        key = str(oid)
        if isinstance(answer, GeminiError):
            if answer.transient:
                return f"order {key}: {answer}", 0
            if answer.kind == "order_not_found":
                self.report.record(oid, "not_found")
            else:
                self.report.fail(oid, answer.kind, answer.reason, answer.message)
            return None, 0
        if isinstance(answer, Exception):
            self.report.fail(oid, "invalid_request", None, str(answer))
            return None, 0
        if answer.order_id != key:
            self.report.fail(
                oid, "invalid_request", None, f"the exchange answered for order {answer.order_id}"
            )
            return None, 0
        return None, self._settle(answer, log)

    def verdict(self, transient: str | None, live: int) -> PollResult:
        """The PollResult once a poll's answers are taken."""
        fatal = self.fatal_message()
        if fatal:
            return PollResult(fatal=fatal, live=live)
        if transient:
            return PollResult(transient=transient, live=live)
        return PollResult(done=not self.pending(), live=live)

    def add_requests(self, requests: int, retries: int = 0) -> None:
        """Count requests made for this watch (a shared listing counts once for each watch it served)."""
        self.report.set_stats(
            requests=int(self.report.stats.get("requests", 0)) + requests,
            retries=int(self.report.stats.get("retries", 0)) + retries,
            elapsed_seconds=max(0.0, time.time() - self.started_at),
        )

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
