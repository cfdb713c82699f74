"""One cancel run: list, cancel, classify each answer into the report, retry what failed transiently in
later passes until the run's deadline, and stop early only on key-level errors or termination.

No Airflow here: the operators build a CancelRun from their arguments, call `cancel_ids`,
`cancel_everything` or `stale.cancel_stale`, and turn the run's verdict into a task outcome. Every answered
cancel is logged, and filed with the run's CancelRecorder (audit trail, metrics), the moment it arrives,
so a task killed part-way leaves a record of what it did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_gemini.exceptions import GeminiError, InvalidRequestError
from airflow_provider_gemini.models import Order
from airflow_provider_gemini.recording import CancelRecorder
from airflow_provider_gemini.report import CancelReport, Log

if TYPE_CHECKING:
    from airflow_provider_gemini.client import GeminiClient

LISTING = "listing live orders (/v1/orders)"

DEFAULT_DEADLINE_SECONDS = 300.0
"""How long a bulk run keeps retrying transient failures when neither `deadline` nor the task's
`execution_timeout` says: long enough to ride out a maintenance window, short of a typical close."""
PASS_BACKOFF_SECONDS = (1.0, 30.0)
"""The pause before the second pass, doubling per pass up to the cap, never past the deadline."""


def deadline_at(value: datetime | timedelta | None, execution_timeout: timedelta | None) -> float:
    """The run's deadline as a time.monotonic() value: `value`, else 80% of `execution_timeout` (the rest
    leaves time to publish the report), else DEFAULT_DEADLINE_SECONDS from now."""
    if isinstance(value, datetime):
        seconds = (value - datetime.now(UTC)).total_seconds()
        if seconds <= 0:
            raise ValueError(f"deadline: {value.isoformat()} has already passed")
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif execution_timeout is not None:
        seconds = 0.8 * execution_timeout.total_seconds()
    else:
        seconds = DEFAULT_DEADLINE_SECONDS
    return time.monotonic() + seconds


@dataclass
class CancelRun:
    """The state of one run: sends the requests, files each answer, and keeps the verdict.

    `deadline` is a time.monotonic() value: transiently failed orders are retried in later passes until
    then. `terminate()` (from a signal handler) ends the run at the next order, the rest reported as
    not attempted.
    """

    client: GeminiClient
    account: str | None
    log: Log
    fail_on_not_found: bool
    deadline: float | None = None
    sleep: Callable[[float], None] = time.sleep
    report: CancelReport = field(default_factory=CancelReport)
    recorder: CancelRecorder = field(default_factory=CancelRecorder)
    fatal: list[str] = field(default_factory=list)
    stop: GeminiError | None = None
    terminated: str | None = None
    extra_stats: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    unreadable: list[str] = field(default_factory=list)
    _transient: dict[str | None, str] = field(default_factory=dict)
    _before: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._before = self.client.stats.as_dict()

    @property
    def transient(self) -> list[str]:
        """The transient failures still standing (an order that succeeded in a later pass is gone)."""
        return list(self._transient.values())

    @property
    def halted(self) -> bool:
        """True once no further request should be sent: a key-level error or a termination."""
        return self.stop is not None or self.terminated is not None

    def terminate(self, why: str) -> None:
        """Ask the run to stop before its next request (called from a signal handler: no I/O here)."""
        self.terminated = why

    def refuse(self, why: str) -> None:
        """Fail the run transiently for a reason of its own (not an order's): Airflow may retry it."""
        self._transient[None] = why

    def time_left(self) -> float | None:
        """Seconds until the deadline (negative once past it), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def error(self, order_id: int | str | None, error: GeminiError, what: str = "") -> None:
        """File a failed request; decides whether it fails the task for good and stops the run."""
        if order_id is not None and error.kind == "order_not_found":
            self.report.record(order_id, "not_found")
            self._transient.pop(str(order_id), None)
            self.log.warning("Order %s: not found at the exchange (%s)", order_id, error.reason)
            if self.fail_on_not_found:
                self.fatal.append(f"order {order_id} not found")
            return
        subject = f"order {order_id}" if order_id is not None else what
        self.report.fail(
            order_id, error.kind, error.reason, f"{what}: {error.message}" if what else error.message
        )
        self.log.error("%s: %s", subject, error)
        if error.retryable:
            self._transient[None if order_id is None else str(order_id)] = f"{subject}: {error.kind}"
        else:
            self._transient.pop(None if order_id is None else str(order_id), None)
            self.fatal.append(f"{subject}: {error.kind}" + (f" ({error.reason})" if error.reason else ""))
            if error.key_level:
                self.stop = error

    def skip(self, orders: Sequence[int | Order]) -> None:
        """File the orders the run will not attempt after a stop, termination or the deadline."""
        if not orders:
            return
        if self.stop is not None:
            kind, reason, why = self.stop.kind, self.stop.reason, self.stop.kind
            self.log.error(
                "Not attempting %d more order(s) after %s: every further request would fail alike",
                len(orders),
                kind,
            )
        else:
            kind, reason = "service_error", "Terminated" if self.terminated else "DeadlinePassed"
            why = self.terminated or "the run's deadline passed"
            self.log.error("Not attempting %d more order(s): %s", len(orders), why)
        for item in orders:
            order = item if isinstance(item, Order) else None
            order_id = item.order_id if isinstance(item, Order) else item
            self.report.fail(order_id, kind, reason, f"not attempted: {why}", order)
            if self.stop is None:
                self._transient[str(order_id)] = f"order {order_id}: not attempted ({why})"

    def unreadable_row(self, row: Mapping[str, Any], error: ValueError) -> None:
        """Skip a listing row that does not read as an order, with a warning naming it."""
        order_id = str(row.get("order_id", "?"))
        self.unreadable.append(order_id)
        self.extra_stats["unreadable"] = list(self.unreadable)
        self.log.warning("Skipping a /v1/orders row that does not read as an order (%s): %s", order_id, error)

    def list_live(self, what: str = LISTING) -> list[Order] | None:
        """The account's live orders (unreadable rows skipped and logged), or None after filing the error."""
        try:
            orders = self.client.active_orders(account=self.account, on_unreadable=self.unreadable_row)
        except GeminiError as error:
            self.error(None, error, what)
            return None
        self._transient.pop(None, None)
        self.extra_stats["listed"] = len(orders)
        return orders

    def cancel(self, order_id: int, was_live: bool | None, listed: Order | None = None) -> bool:
        """Send one /v1/order/cancel and file the answer; `was_live` None: the listing was unavailable;
        `listed`: the order as the listing showed it. Returns False when it failed transiently (worth
        another pass)."""
        sent = self.client.stats.requests
        self.recorder.request_sent()
        try:
            order = self.client.cancel_order(order_id, account=self.account)
        except GeminiError as error:
            self.recorder.failed(
                error, order_id=order_id, requests=self.client.stats.requests - sent, order=listed
            )
            self.error(order_id, error)
            return not error.retryable
        requests = self.client.stats.requests - sent
        self._transient.pop(str(order_id), None)
        if order.state == "cancelled":
            outcome = "already_cancelled" if was_live is False else "cancelled"
            self.recorder.answered(outcome, order=order, requests=requests)
            self.report.record(order, outcome)
            self.log.info(
                "Order %s: %s (%s %s %s @ %s, remaining %s)",
                order.order_id,
                outcome,
                order.symbol,
                order.side,
                order.original_amount,
                order.price,
                order.remaining_amount,
            )
        elif order.state == "live":
            self.recorder.answered("still_live", order=order, requests=requests)
            self.report.fail(
                order.order_id, "service_error", None, "still live after the cancel was answered", order
            )
            self._transient[order.order_id] = f"order {order.order_id}: still live"
            return False
        else:
            self.recorder.answered("filled", order=order, requests=requests)
            self._filled(order)
        return True

    def inspect(self, order_id: int) -> bool:
        """Classify an order without touching it (dry runs): one read-only /v1/order/status."""
        try:
            order = self.client.order_status(order_id=order_id, account=self.account)
        except GeminiError as error:
            self.error(order_id, error)
            return not error.retryable
        self._transient.pop(str(order_id), None)
        if order.state == "live":
            self.report.record(order, "dry_run")
        elif order.state == "cancelled":
            self.report.record(order, "already_cancelled")
        else:
            self._filled(order)
        return True

    def _filled(self, order: Order) -> None:
        self.report.record(order, "filled")
        self.log.warning(
            "Order %s is %s (executed %s of %s): nothing left to cancel",
            order.order_id,
            order.state,
            order.executed_amount,
            order.original_amount,
        )

    def in_passes(
        self, items: Sequence[Any], attempt: Callable[[Any], bool], order_id: Callable[[Any], Any]
    ) -> None:
        """Run `attempt` on every item; items that failed transiently get later passes, with backoff,
        while the deadline allows. A halt files the rest as not attempted."""
        pending = list(items)
        passes = 0
        while pending:
            passes += 1
            retry: list[Any] = []
            for index, item in enumerate(pending):
                left = self.time_left()
                if self.halted or (left is not None and left <= 0):
                    self.skip([order_id(rest) for rest in pending[index:]] + [order_id(r) for r in retry])
                    self.extra_stats["passes"] = passes
                    return
                if not attempt(item):
                    retry.append(item)
            pending = retry
            if not pending:
                break
            pause = min(PASS_BACKOFF_SECONDS[1], PASS_BACKOFF_SECONDS[0] * 2 ** (passes - 1))
            left = self.time_left()
            if left is not None and left <= pause:
                self.log.error(
                    "%d order(s) still failing after pass %d; the deadline leaves no time for another",
                    len(pending),
                    passes,
                )
                break
            self.extra_stats["requeued"] = int(self.extra_stats.get("requeued", 0)) + len(pending)
            self.log.warning(
                "%d order(s) failed transiently in pass %d; pass %d in %.1f s",
                len(pending),
                passes,
                passes + 1,
                pause,
            )
            self.sleep(pause)
        self.extra_stats["passes"] = passes

    def finish(self) -> dict[str, Any]:
        """Bring the report's stats up to date (this run's requests, retries by kind, duration) and
        return it."""
        now, before = self.client.stats.as_dict(), self._before
        by_kind = {
            kind: count - before["retries_by_kind"].get(kind, 0)
            for kind, count in now["retries_by_kind"].items()
            if count > before["retries_by_kind"].get(kind, 0)
        }
        self.report.set_stats(
            now["requests"] - before["requests"],
            now["retries"] - before["retries"],
            time.monotonic() - self.started,
            retries_by_kind=by_kind,
            **self.extra_stats,
        )
        return self.report.to_dict()

    def verdict(self, pushed: bool) -> str:
        """Why the task fails: the first problems, and where the report is."""
        problems = self.fatal or self.transient
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        where = "Report pushed to XCom (return_value)" if pushed else "Report (in the log above)"
        return f"{shown}. {where}: {self.report.summary_line()}"


# -- the three kinds of run -------------------------------------------------------------------------


def cancel_ids(run: CancelRun, order_ids: list[int], dry_run: bool) -> None:
    """Cancel the given ids one by one, after one listing that tells `cancelled` from `already_cancelled`.

    A dry run sends no cancel: listed ids land in `dry_run`, the rest are classified read-only.
    """
    try:
        live: dict[str, Order] | None = {
            order.order_id: order
            for order in run.client.active_orders(account=run.account, on_unreadable=run.unreadable_row)
        }
    except GeminiError as error:
        if not error.retryable:
            run.error(None, error, LISTING)
            run.stop = error
            run.skip(order_ids)
            return
        run.log.warning(
            "Listing live orders failed (%s); going on without it: every cancelled order is reported "
            "as 'cancelled', since the listing could not tell which were cancelled before",
            error,
        )
        live = None

    def attempt(order_id: int) -> bool:
        listed = None if live is None else live.get(str(order_id))
        if dry_run and listed is not None:
            run.report.record(listed, "dry_run")
            return True
        if dry_run:
            return run.inspect(order_id)
        # An id whose row could not be read is of unknown state: its answer says cancelled, no more.
        unknown = live is None or str(order_id) in run.unreadable
        return run.cancel(order_id, was_live=None if unknown else listed is not None, listed=listed)

    run.in_passes(order_ids, attempt, lambda order_id: order_id)


def cancel_everything(run: CancelRun, scope: str, dry_run: bool, fail_on_reject: bool) -> None:
    """One /v1/order/cancel/session or /cancel/all; a dry run lists the account's live orders instead.

    The book is listed first: when the cancel's answer was lost or needed a retry (whose answer lists
    only what was left to cancel), the book is listed again and what left it is reported, marked in
    `stats.reconciled`.
    """
    if dry_run:
        if scope == "session":
            run.log.warning(
                "Dry run of scope=session: listing every live order of the account; the listing "
                "cannot tell which of them this key's session placed"
            )
        for order in run.list_live() or ():
            run.report.record(order, "dry_run")
        return
    path = f"/v1/order/cancel/{scope}"
    before = run.list_live(f"listing live orders before {path}")
    retries, sent = run.client.stats.retries, run.client.stats.requests
    send = run.client.cancel_session_orders if scope == "session" else run.client.cancel_all_orders
    run.recorder.request_sent()
    try:
        result = send(account=run.account)
    except GeminiError as error:
        run.recorder.failed(error, order_id=None, requests=run.client.stats.requests - sent, endpoint=path)
        run.error(None, error, path)
        if error.retryable and before is not None:
            _reconcile(run, path, before, answered=(), lost=error.kind)
        return
    # The one bulk request's attempts are on each of its lines (`requests`), the same number on each.
    requests = run.client.stats.requests - sent
    for order_id in result.cancelled:
        run.recorder.answered("cancelled", order_id=order_id, requests=requests, endpoint=path)
        run.report.record(order_id, "cancelled")
    for order_id in result.rejected:
        rejected = InvalidRequestError(f"{path} rejected this order's cancel", reason="CancelRejected")
        run.recorder.failed(rejected, order_id=order_id, requests=requests, endpoint=path)
        run.report.fail(order_id, "invalid_request", "CancelRejected", f"{path} rejected this order's cancel")
        if fail_on_reject:
            run.fatal.append(f"order {order_id}: cancel rejected")
        else:
            run.log.warning("Order %s: %s rejected its cancel (fail_on_reject is off)", order_id, path)
    run.log.info("%s answered: %d cancelled, %d rejected", path, len(result.cancelled), len(result.rejected))
    if run.client.stats.retries > retries:
        if before is None:
            run.report.fail(
                None,
                "service_error",
                "Unreconciled",
                f"{path} needed a retry and the book could not be listed "
                "before it: orders the lost answer cancelled are not in this report",
            )
            run._transient[None] = f"{path}: answer lost, not reconciled"
        else:
            _reconcile(run, path, before, answered=(*result.cancelled, *result.rejected))


def _reconcile(
    run: CancelRun, path: str, before: list[Order], answered: Sequence[str], lost: str | None = None
) -> None:
    """After a lost or retried answer: list again; what was live before and is gone now (and was not in
    the answer) is classified by its status, and the report says it was reconciled. `lost`: the kind of
    the error that lost the whole answer, whose failure entry the listings replace."""
    after = run.list_live(f"listing live orders after {path}")
    if after is None:
        return
    still = {order.order_id for order in after}
    known = set(answered)
    gone = [order for order in before if order.order_id not in still and order.order_id not in known]
    reconciled: list[str] = []
    for order in gone:
        try:
            status = run.client.order_status(order_id=int(order.order_id), account=run.account)
        except GeminiError as error:
            run.error(order.order_id, error, f"status of {order.order_id} after {path}")
            continue
        if status.state == "cancelled":
            run.recorder.answered("cancelled", order=status, requests=0, endpoint=path, reconciled=True)
            run.report.record(status, "cancelled")
        elif status.state != "live":
            run.recorder.answered("filled", order=status, requests=0, endpoint=path, reconciled=True)
            run._filled(status)
        else:
            continue
        reconciled.append(status.order_id)
    if lost:
        # The cancel's answer never came, but the two listings show what it did: that is the answer.
        run.report.failed = [e for e in run.report.failed if e["order_id"] is not None or e["kind"] != lost]
        run._transient.pop(None, None)
    # cancel/session leaves other sessions' orders live by design: only cancel/all must empty the book.
    listed_before = {o.order_id for o in before} if path.endswith("/all") else set()
    for order in after:
        if order.order_id in listed_before:
            run.report.fail(order.order_id, "service_error", "StillLive", f"still live after {path}", order)
            run._transient[order.order_id] = f"order {order.order_id}: still live after {path}"
    run.extra_stats["reconciled"] = reconciled
    run.log.warning(
        "%s: the answer was lost or retried; reconciled from the book: %d order(s) left it (%s)",
        path,
        len(reconciled),
        ", ".join(reconciled[:20]) + (" ..." if len(reconciled) > 20 else ""),
    )
