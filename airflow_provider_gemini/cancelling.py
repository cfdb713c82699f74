"""One cancel run: list, cancel, classify each answer into the report, and stop on key-level errors.

No Airflow here: the operators build a CancelRun from their arguments, call one of `cancel_ids`,
`cancel_everything` or `cancel_stale`, and turn the run's verdict into a task outcome.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.models import Order
from airflow_provider_gemini.report import CancelReport, Log

if TYPE_CHECKING:
    from airflow_provider_gemini.client import GeminiClient

LISTING = "listing live orders (/v1/orders)"

TRANSIENT_FAILURE_LIMIT = 3
"""Consecutive transient failures (each already retried by the client) after which a run stops: the
exchange is down, and Airflow's own retry of the whole task is the better next step."""


@dataclass
class CancelRun:
    """The state of one run: sends the requests, files each answer, and keeps the verdict."""

    client: GeminiClient
    account: str | None
    log: Log
    fail_on_not_found: bool
    transient_limit: int = TRANSIENT_FAILURE_LIMIT
    report: CancelReport = field(default_factory=CancelReport)
    fatal: list[str] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    stop: GeminiError | None = None
    extra_stats: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _streak: int = 0
    _before: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self._before = (self.client.stats.requests, self.client.stats.retries)

    def error(self, order_id: int | str | None, error: GeminiError, what: str = "") -> None:
        """File a failed request; decides whether it fails the task for good and stops the run."""
        if order_id is not None and error.kind == "order_not_found":
            self.report.record(order_id, "not_found")
            self._streak = 0
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
            self.transient.append(f"{subject}: {error.kind}")
            self._streak += 1
            if self._streak >= self.transient_limit:
                self.stop = error
        else:
            self.fatal.append(f"{subject}: {error.kind}" + (f" ({error.reason})" if error.reason else ""))
            if error.key_level:
                self.stop = error

    def skip(self, orders: Sequence[int | Order]) -> None:
        """File the orders the run will not attempt after a stop, with the error that stopped it."""
        stop = self.stop
        if stop is None or not orders:
            return
        self.log.error(
            "Not attempting %d more order(s) after %s: every further request would fail alike",
            len(orders),
            stop.kind,
        )
        for item in orders:
            order = item if isinstance(item, Order) else None
            order_id = item.order_id if isinstance(item, Order) else item
            self.report.fail(order_id, stop.kind, stop.reason, f"not attempted: {stop.kind}", order)

    def list_live(self, what: str = LISTING) -> list[Order] | None:
        """The account's live orders, or None after filing the error."""
        try:
            orders = self.client.active_orders(account=self.account)
        except GeminiError as error:
            self.error(None, error, what)
            return None
        self.extra_stats["listed"] = len(orders)
        return orders

    def cancel(self, order_id: int, was_live: bool | None) -> None:
        """Send one /v1/order/cancel and file the answer; `was_live` None: the listing was unavailable."""
        try:
            order = self.client.cancel_order(order_id, account=self.account)
        except GeminiError as error:
            self.error(order_id, error)
            return
        self._streak = 0
        if order.state == "cancelled":
            self.report.record(order, "already_cancelled" if was_live is False else "cancelled")
        elif order.state == "live":
            self.report.fail(
                order.order_id, "service_error", None, "still live after the cancel was answered", order
            )
            self.transient.append(f"order {order.order_id}: still live")
        else:
            self._filled(order)

    def inspect(self, order_id: int) -> None:
        """Classify an order without touching it (dry runs): one read-only /v1/order/status."""
        try:
            order = self.client.order_status(order_id=order_id, account=self.account)
        except GeminiError as error:
            self.error(order_id, error)
            return
        self._streak = 0
        if order.state == "live":
            self.report.record(order, "dry_run")
        elif order.state == "cancelled":
            self.report.record(order, "already_cancelled")
        else:
            self._filled(order)

    def _filled(self, order: Order) -> None:
        self.report.record(order, "filled")
        self.log.warning(
            "Order %s is %s (executed %s of %s): nothing left to cancel",
            order.order_id,
            order.state,
            order.executed_amount,
            order.original_amount,
        )

    def finish(self) -> dict[str, Any]:
        """Bring the report's stats up to date (this run's requests, retries, duration) and return it."""
        stats = self.client.stats
        self.report.set_stats(
            stats.requests - self._before[0],
            stats.retries - self._before[1],
            time.monotonic() - self.started,
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
            order.order_id: order for order in run.client.active_orders(account=run.account)
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
    for index, order_id in enumerate(order_ids):
        if run.stop is not None:
            run.skip(order_ids[index:])
            break
        listed = None if live is None else live.get(str(order_id))
        if dry_run and listed is not None:
            run.report.record(listed, "dry_run")
        elif dry_run:
            run.inspect(order_id)
        else:
            run.cancel(order_id, was_live=None if live is None else listed is not None)


def cancel_everything(run: CancelRun, scope: str, dry_run: bool, fail_on_reject: bool) -> None:
    """One /v1/order/cancel/session or /cancel/all; a dry run lists the account's live orders instead."""
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
    try:
        if scope == "session":
            result = run.client.cancel_session_orders(account=run.account)
        else:
            result = run.client.cancel_all_orders(account=run.account)
    except GeminiError as error:
        run.error(None, error, path)
        return
    for order_id in result.cancelled:
        run.report.record(order_id, "cancelled")
    for order_id in result.rejected:
        run.report.fail(order_id, "invalid_request", "CancelRejected", f"{path} rejected this order's cancel")
        if fail_on_reject:
            run.fatal.append(f"order {order_id}: cancel rejected")
        else:
            run.log.warning("Order %s: %s rejected its cancel (fail_on_reject is off)", order_id, path)


@dataclass(frozen=True)
class StaleFilter:
    """Which live orders a stale sweep cancels: older than `max_age` seconds and matching every filter."""

    max_age: float
    symbols: tuple[str, ...] | None = None
    side: str | None = None
    client_order_id_prefix: str | None = None

    def select(self, orders: Sequence[Order], cutoff_ms: int) -> list[Order]:
        """The matching orders placed before `cutoff_ms`, oldest first; undated orders never match."""
        prefix = self.client_order_id_prefix
        return sorted(
            (
                order
                for order in orders
                if 0 < order.timestampms < cutoff_ms
                and (self.symbols is None or order.symbol.lower() in self.symbols)
                and (self.side is None or order.side.lower() == self.side)
                and (prefix is None or (order.client_order_id or "").startswith(prefix))
            ),
            key=lambda order: (order.timestampms, int(order.order_id)),
        )


def cancel_stale(run: CancelRun, stale: StaleFilter, dry_run: bool, cap: int | None) -> None:
    """List once, cancel the matching orders oldest first (never cancel/all); refuse all over the cap."""
    cutoff_ms = int(time.time() * 1000) - round(stale.max_age * 1000)
    orders = run.list_live()
    if orders is None:
        return
    undated = [order.order_id for order in orders if order.timestampms <= 0]
    if undated:
        run.log.warning("Skipping %d live order(s) without a timestamp: %s", len(undated), undated)
    matched = stale.select(orders, cutoff_ms)
    run.extra_stats["matched"] = len(matched)
    run.log.info(
        "%d of %d live orders placed before %s ms (max_age %ss) match symbols=%s side=%s prefix=%s",
        len(matched),
        len(orders),
        cutoff_ms,
        stale.max_age,
        stale.symbols,
        stale.side,
        stale.client_order_id_prefix,
    )
    if cap is not None and len(matched) > cap:
        for order in matched:
            run.report.record(order, "dry_run")
        run.fatal.append(
            f"max_cancellations: {len(matched)} orders matched, more than the cap of {cap}; "
            "nothing was cancelled"
        )
        return
    for index, order in enumerate(matched):
        if run.stop is not None:
            run.skip(matched[index:])
            break
        if dry_run:
            run.report.record(order, "dry_run")
        else:
            run.cancel(int(order.order_id), was_live=True)
