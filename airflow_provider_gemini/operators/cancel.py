"""Operators that cancel Gemini orders: given ids, a whole session or account, or the stale ones.

Glue over `cancelling.py`: arguments in, one run, the report out. DAG files import this module, so it
stays cheap to parse: the hook (requests, tenacity) is imported inside `execute`. Every operator returns
the same JSON report (`report.CancelReport.to_dict()`) and pushes it to XCom before it fails, so a
failure part-way never hides what was cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.arguments import (
    DEFAULT_MAX_CLOCK_SKEW_SECONDS,
    Parser,
    parse_account,
    parse_bool,
    parse_cap,
    parse_deadline,
    parse_order_ids,
    parse_prefix,
    parse_scope,
    parse_seconds,
    parse_side,
    parse_symbols,
)
from airflow_provider_gemini.operators.base import GeminiCancelBase

if TYPE_CHECKING:
    from airflow_provider_gemini.cancelling import CancelRun

__all__ = [
    "GeminiCancelAllOrdersOperator",
    "GeminiCancelOrderOperator",
    "GeminiCancelStaleOrdersOperator",
]


class GeminiCancelOrderOperator(GeminiCancelBase):
    """Cancel one order or a list of orders by id, each through `/v1/order/cancel` (idempotent).

    `order_id` is an int, a digit string, a list of them, or a rendered list ("{{ params.order_ids }}",
    an upstream XCom); duplicates are cancelled once. One `/v1/orders` listing first tells which ids
    were live, so the report can separate `cancelled` from `already_cancelled`; an order that had
    already filled lands in `filled` (a warning, not a failure). Unknown ids land in `not_found` and,
    with `fail_on_not_found`, fail the task once every id was attempted. A dry run sends no cancel:
    live ids land in `dry_run`, the rest are classified with a read-only `/v1/order/status`, and the
    task fails exactly where the real run would. Ids that failed transiently are tried again in later
    passes until `deadline` (an aware datetime, a timedelta from the start, or by default 80% of
    `execution_timeout`, else 5 minutes).
    """

    template_fields: Sequence[str] = ("order_id", "account", "dry_run", "deadline")
    parsers: ClassVar[dict[str, Parser]] = {
        "order_id": parse_order_ids,
        "account": parse_account,
        "dry_run": parse_bool,
        "deadline": parse_deadline,
    }

    def __init__(
        self,
        *,
        order_id: int | str | Sequence[int | str],
        gemini_conn_id: str = DEFAULT_CONN_ID,
        account: str | None = None,
        fail_on_not_found: bool = True,
        dry_run: bool | str = False,
        deadline: datetime | timedelta | float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, account=account, dry_run=dry_run, **kwargs)
        self.order_id = order_id
        self.deadline = deadline
        self.fail_on_not_found = parse_bool(fail_on_not_found, "fail_on_not_found")
        self._arguments(literal_only=True)

    def _run(self, run: CancelRun, arguments: dict[str, Any]) -> None:
        from airflow_provider_gemini.cancelling import cancel_ids

        cancel_ids(run, arguments["order_id"], arguments["dry_run"])


class GeminiCancelAllOrdersOperator(GeminiCancelBase):
    """Cancel every live order of this key's session (`scope="session"`) or of the account (`"all"`).

    `scope="all"` sends `/v1/order/cancel/all`: it ALSO CANCELS ORDERS PLACED IN THE WEB UI AND BY
    EVERY OTHER API KEY of the account. `scope="session"` (the default, Gemini's preference) sends
    `/v1/order/cancel/session` and touches only orders placed with this connection's key.

    Ids in `cancelledOrders` land in `cancelled` (the answer carries no order details). Ids in
    `cancelRejects` land in `failed` (kind "invalid_request", reason "CancelRejected"); with
    `fail_on_reject` they fail the task without Airflow retries, since a later retry of cancel/all
    would also cancel orders placed after the intended moment.

    A dry run sends no cancel and lists the account's live orders under `dry_run`. The listing cannot
    tell which orders belong to this key's session, so a dry run of `scope="session"` lists every
    live order of the account (the log says so).
    """

    template_fields: Sequence[str] = ("scope", "account", "dry_run")
    parsers: ClassVar[dict[str, Parser]] = {
        "scope": parse_scope,
        "account": parse_account,
        "dry_run": parse_bool,
    }

    def __init__(
        self,
        *,
        scope: str = "session",
        gemini_conn_id: str = DEFAULT_CONN_ID,
        account: str | None = None,
        fail_on_reject: bool = True,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, account=account, dry_run=dry_run, **kwargs)
        self.scope = scope
        self.fail_on_reject = parse_bool(fail_on_reject, "fail_on_reject")
        self._arguments(literal_only=True)

    def _run(self, run: CancelRun, arguments: dict[str, Any]) -> None:
        from airflow_provider_gemini.cancelling import cancel_everything

        cancel_everything(run, arguments["scope"], arguments["dry_run"], self.fail_on_reject)


class GeminiCancelStaleOrdersOperator(GeminiCancelBase):
    """Cancel the live orders older than `max_age` that match every given filter, one by one.

    Lists live orders once (`/v1/orders`), keeps those whose `timestampms` is before the moment the
    task runs minus `max_age` (a timedelta or seconds) and that match `symbols` (one, a list, or
    "btcusd,ethusd"; case-insensitive), `side` ("buy"/"sell") and `client_order_id_prefix`
    (case-sensitive; orders without a client order id never match a prefix). It cancels exactly
    those, oldest first, through `/v1/order/cancel` (never cancel/all, which would hit orders that
    do not match). An order without a timestamp is never treated as stale.

    `max_cancellations` is a safety cap: when more orders match, nothing is cancelled, the matching
    ids are reported under `dry_run` (with `stats.matched`), and the task fails without retries. An
    order that vanished between the listing and its cancel lands in `not_found` without failing the
    task unless `fail_on_not_found`. Orders that failed transiently are tried again in later passes
    until `deadline` (as for GeminiCancelOrderOperator); only key-level errors end the run early.

    Ages are measured on the exchange's clock (the listing's Date header); when the worker's clock is
    more than `max_clock_skew` (seconds or a timedelta, default 5 s) away from it, nothing is
    cancelled and the task fails, naming both clocks.
    """

    template_fields: Sequence[str] = (
        "max_age",
        "symbols",
        "side",
        "client_order_id_prefix",
        "dry_run",
        "max_cancellations",
        "account",
        "deadline",
    )
    parsers: ClassVar[dict[str, Parser]] = {
        "max_age": parse_seconds,
        "symbols": parse_symbols,
        "side": parse_side,
        "client_order_id_prefix": parse_prefix,
        "dry_run": parse_bool,
        "max_cancellations": parse_cap,
        "account": parse_account,
        "deadline": parse_deadline,
        "max_clock_skew": parse_seconds,
    }

    def __init__(
        self,
        *,
        max_age: timedelta | float | str,
        symbols: str | Sequence[str] | None = None,
        side: str | None = None,
        client_order_id_prefix: str | None = None,
        dry_run: bool | str = False,
        max_cancellations: int | str | None = None,
        fail_on_not_found: bool = False,
        gemini_conn_id: str = DEFAULT_CONN_ID,
        account: str | None = None,
        deadline: datetime | timedelta | float | str | None = None,
        max_clock_skew: timedelta | float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, account=account, dry_run=dry_run, **kwargs)
        self.deadline = deadline
        self.max_clock_skew = max_clock_skew
        self.max_age = max_age
        self.symbols = symbols
        self.side = side
        self.client_order_id_prefix = client_order_id_prefix
        self.max_cancellations = max_cancellations
        self.fail_on_not_found = parse_bool(fail_on_not_found, "fail_on_not_found")
        self._arguments(literal_only=True)

    def _run(self, run: CancelRun, arguments: dict[str, Any]) -> None:
        from airflow_provider_gemini.stale import StaleFilter, cancel_stale

        stale = StaleFilter(
            max_age=arguments["max_age"],
            symbols=arguments["symbols"],
            side=arguments["side"],
            client_order_id_prefix=arguments["client_order_id_prefix"],
        )
        cancel_stale(
            run, stale, arguments["dry_run"], arguments["max_cancellations"], arguments["max_clock_skew"]
        )
