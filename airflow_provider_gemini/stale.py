"""The stale sweep: which live orders are old enough to cancel, judged by the exchange's clock.

An order's `timestampms` is stamped by the exchange, so its age is measured against the exchange's
time (learnt from the `Date` header of the listing's answer), never the worker's: a worker ten minutes
fast would otherwise cancel orders ten minutes younger than `max_age`. When the two clocks differ by
more than `max_clock_skew` the sweep refuses to run and names both, since one of them is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from airflow_provider_gemini.arguments import DEFAULT_MAX_CLOCK_SKEW_SECONDS
from airflow_provider_gemini.cancelling import CancelRun
from airflow_provider_gemini.models import Order


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


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")


def exchange_cutoff_ms(run: CancelRun, max_age: float, max_clock_skew: float) -> int | None:
    """The exchange's time now minus `max_age`, in epoch ms; None (filed as a transient failure) when
    the clocks differ by more than `max_clock_skew`. Without a Date header the worker's clock is used,
    with a warning: there is nothing to check it against."""
    worker_ms = time.time() * 1000.0
    offset = run.client.clock_offset
    if offset is None:
        run.log.warning(
            "The exchange's answer carried no Date header: the age cutoff uses this worker's clock (%s), "
            "unchecked",
            _iso(worker_ms),
        )
        run.extra_stats["clock"] = "worker"
        return round(worker_ms - max_age * 1000.0)
    exchange_ms = worker_ms + offset * 1000.0
    run.extra_stats["clock"] = "exchange"
    run.extra_stats["clock_offset_s"] = round(offset, 3)
    if abs(offset) > max_clock_skew:
        why = (
            f"clock skew: this worker's clock reads {_iso(worker_ms)}, the exchange's (its Date header) "
            f"{_iso(exchange_ms)}: {abs(offset):.1f} s apart, more than max_clock_skew "
            f"{max_clock_skew:g} s; nothing was cancelled (fix the worker's NTP, or raise max_clock_skew)"
        )
        run.report.fail(None, "service_error", "ClockSkew", why)
        run.refuse(why)
        return None
    return round(exchange_ms - max_age * 1000.0)


def cancel_stale(
    run: CancelRun,
    stale: StaleFilter,
    dry_run: bool,
    cap: int | None,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
) -> None:
    """List once, cancel the matching orders oldest first (never cancel/all); refuse all over the cap.

    Rows of the listing that do not read as orders are skipped, and fail the task once the rest is
    done: their orders were neither judged nor cancelled, and someone has to look.
    """
    orders = run.list_live()
    if orders is None:
        return
    if run.unreadable:
        run.fatal.append(
            f"{len(run.unreadable)} row(s) of /v1/orders could not be read (order ids "
            f"{', '.join(run.unreadable[:10])}): those orders were neither judged nor cancelled"
        )
    cutoff_ms = exchange_cutoff_ms(run, stale.max_age, max_clock_skew)
    if cutoff_ms is None:
        return
    undated = [order.order_id for order in orders if order.timestampms <= 0]
    if undated:
        run.log.warning("Skipping %d live order(s) without a timestamp: %s", len(undated), undated)
    matched = stale.select(orders, cutoff_ms)
    run.extra_stats["matched"] = len(matched)
    run.log.info(
        "%d of %d live orders placed before %s (max_age %ss, by the %s clock) match symbols=%s side=%s "
        "prefix=%s",
        len(matched),
        len(orders),
        _iso(cutoff_ms),
        stale.max_age,
        run.extra_stats["clock"],
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
    if dry_run:
        for order in matched:
            run.report.record(order, "dry_run")
        return
    run.in_passes(
        matched,
        lambda order: run.cancel(int(order.order_id), was_live=True, listed=order),
        lambda order: order,
    )
