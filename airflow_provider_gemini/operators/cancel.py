"""Operators that cancel Gemini orders: given ids, a whole session or account, or the stale ones.

DAG files import this module, so it stays cheap to parse: the hook (requests, tenacity) is imported
inside `execute`. Every operator returns the same JSON report (`models.CancelReport.to_dict()`), and
pushes it to XCom before it fails, so a failure part-way never hides what was cancelled.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_gemini.arguments import is_none, parse_account, show, unrendered
from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.models import CancelReport, Order, list_from_text, parse_order_ids

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

    from airflow_provider_gemini.client import GeminiClient

__all__ = [
    "GeminiCancelAllOrdersOperator",
    "GeminiCancelOrderOperator",
    "GeminiCancelStaleOrdersOperator",
]

SCOPES = ("session", "all")
SIDES = ("buy", "sell")

_TRUE_TEXTS = frozenset({"true", "1", "yes", "on"})
_FALSE_TEXTS = frozenset({"false", "0", "no", "off"})
_SYMBOL = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TIMEDELTA_TEXT = re.compile(r"(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")

# Errors about the key or the account rather than one order: every further request would fail alike.
_KEY_LEVEL_KINDS = frozenset({"invalid_signature", "missing_role", "terms_required", "missing_nonce"})
_KEY_LEVEL_REASONS = frozenset(
    {
        "InvalidApiKey",
        "InvalidSignature",
        "MissingApikeyHeader",
        "ApiKeyIpFilteringFailure",
        "MissingAccounts",
        "InvalidAccount",
        "InvalidAccountName",
        "AccountNotFound",
        "EndpointMismatch",
    }
)


# --- arguments: literal values are checked in __init__, rendered ones before execute --------------


def _parse_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_TEXTS:
            return True
        if text in _FALSE_TEXTS:
            return False
    raise ValueError(f"{name}: expected true or false, got {show(value)}")


def _parse_scope(value: object, name: str = "scope") -> str:
    if isinstance(value, str) and value.strip().lower() in SCOPES:
        return value.strip().lower()
    raise ValueError(f"{name}: expected 'session' or 'all', got {show(value)}")


def _parse_side(value: object, name: str = "side") -> str | None:
    if is_none(value):
        return None
    if isinstance(value, str) and value.strip().lower() in SIDES:
        return value.strip().lower()
    raise ValueError(f"{name}: expected 'buy', 'sell' or None (both sides), got {show(value)}")


def _parse_prefix(value: object, name: str = "client_order_id_prefix") -> str | None:
    if is_none(value):
        return None
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"{name}: expected a non-empty string or None (any client order id), got {show(value)}")


def _parse_seconds(value: object, name: str = "max_age") -> float:
    """A non-negative age in seconds: a timedelta, a number, or its text ("3600", "1:00:00")."""
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _TIMEDELTA_TEXT.fullmatch(text)
        if match:
            days, hours, minutes, secs = match.groups()
            seconds = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs)
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(
            f"{name}: expected a timedelta or a number of seconds (e.g. 3600), got {show(value)}"
        )
    if seconds < 0:
        raise ValueError(f"{name}: must not be negative, got {show(value)}")
    return seconds


def _parse_cap(value: object, name: str = "max_cancellations") -> int | None:
    if is_none(value):
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number < 1:
        raise ValueError(f"{name}: expected an integer >= 1 or None (no cap), got {show(value)}")
    return number


def _parse_symbols(value: object, name: str = "symbols") -> tuple[str, ...] | None:
    """None (every symbol), one symbol, "btcusd,ethusd", a list, or a list's text; lower-cased."""
    if is_none(value):
        return None
    items: list[Any]
    if isinstance(value, str):
        text = value.strip()
        items = list_from_text(text, name) if text[:1] in ("[", "(") else text.split(",")
    elif isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else list(value)
    else:
        raise ValueError(f"{name}: expected a symbol, a list of symbols or None, got {show(value)}")
    symbols: dict[str, None] = {}
    for item in items:
        symbol = item.strip().lower() if isinstance(item, str) else None
        if not symbol or not _SYMBOL.fullmatch(symbol):
            raise ValueError(f"{name}: not a symbol: {show(item)} (in {show(value)})")
        symbols.setdefault(symbol, None)
    if not symbols:
        raise ValueError(f"{name}: empty; pass None to match every symbol")
    return tuple(symbols)


Parser = Callable[[Any, str], Any]


# --- one run: the client, the report, and what went wrong --------------------------------------------


def _key_level(error: GeminiError) -> bool:
    """True when the error concerns the key or account, so every further request would fail alike."""
    return (
        error.kind in _KEY_LEVEL_KINDS
        or error.reason in _KEY_LEVEL_REASONS
        or (error.status is not None and error.status in (401, 403))
    )


@dataclass
class _Run:
    """The state of one execute: sends the requests, files each answer, and keeps the verdict."""

    client: GeminiClient
    account: str | None
    log: Any
    fail_on_not_found: bool
    transient_limit: int
    report: CancelReport = field(default_factory=CancelReport)
    fatal: list[str] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    stop: GeminiError | None = None
    extra_stats: dict[str, Any] = field(default_factory=dict)
    _streak: int = 0

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
            if _key_level(error):
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

    def list_live(self, what: str = "listing live orders (/v1/orders)") -> list[Order] | None:
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

    def verdict(self, pushed: bool) -> str:
        problems = self.fatal or self.transient
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        where = "Report pushed to XCom (return_value)" if pushed else "Report (in the log above)"
        return f"{shown}. {where}: {self.report.summary_line()}"


# --- operators -----------------------------------------------------------------------------------------


class _GeminiCancelBase(BaseOperator):
    """What the cancel operators share: argument checks, the hook, the report, and the verdict."""

    ui_color = "#00dcfa"
    parsers: ClassVar[dict[str, Parser]] = {}
    # Consecutive transient failures (each already retried by the client) after which the run stops:
    # the exchange is down, and Airflow's own retry of the whole task is the better next step.
    transient_failure_limit: ClassVar[int] = 3
    fail_on_not_found: bool = True

    def __init__(
        self,
        *,
        gemini_conn_id: str = "gemini_default",
        account: str | None = None,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gemini_conn_id = gemini_conn_id
        self.account = account
        # Shadows BaseOperator.dry_run(), a leftover nothing in Airflow 3 calls: a template field needs
        # an attribute of the argument's name, and the issue names the argument `dry_run`.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]

    def _arguments(self, *, literal_only: bool) -> dict[str, Any]:
        """Parse every argument; with `literal_only`, leave what Airflow still has to render."""
        if not isinstance(self.gemini_conn_id, str) or not self.gemini_conn_id.strip():
            raise ValueError(f"gemini_conn_id: expected a connection id, got {show(self.gemini_conn_id)}")
        parsed: dict[str, Any] = {}
        for name, parser in self.parsers.items():
            value = getattr(self, name)
            if literal_only and unrendered(value):
                continue
            parsed[name] = parser(value, name)
        return parsed

    def _checked(self) -> dict[str, Any]:
        try:
            return self._arguments(literal_only=False)
        except ValueError as error:
            raise AirflowFailException(str(error)) from error

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render, then check the rendered arguments, so a bad value fails before any request."""
        super().render_template_fields(context, jinja_env)
        self._checked()

    def execute(self, context: Context) -> dict[str, Any]:
        arguments = self._checked()
        from airflow_provider_gemini.hooks.gemini import GeminiHook

        started = time.monotonic()
        try:
            client = GeminiHook(gemini_conn_id=self.gemini_conn_id).get_client()
        except ValueError as error:  # the connection's fields cannot make a client: retrying won't help
            raise AirflowFailException(str(error)) from error
        with client:
            return self._execute_with(client, context, arguments, started)

    def _execute_with(
        self, client: GeminiClient, context: Context, arguments: dict[str, Any], started: float
    ) -> dict[str, Any]:
        run = _Run(
            client=client,
            account=arguments["account"],
            log=self.log,
            fail_on_not_found=self.fail_on_not_found,
            transient_limit=self.transient_failure_limit,
        )
        before = (client.stats.requests, client.stats.retries)
        try:
            self._run(run, arguments)
        except ValueError as error:
            # The client refused a request before sending it (a master key without an account) or could
            # not use an answer: the same task run again would do the same, so no Airflow retries.
            self._publish(context, run, started, before, push=True)
            raise AirflowFailException(str(error)) from error
        except Exception:
            self._publish(context, run, started, before, push=True)
            raise
        failing = bool(run.fatal or run.transient)
        data = self._publish(context, run, started, before, push=failing)
        if run.fatal:
            raise AirflowFailException(run.verdict(self.do_xcom_push))
        if run.transient:
            raise AirflowException(run.verdict(self.do_xcom_push))
        return data

    def _run(self, run: _Run, arguments: dict[str, Any]) -> None:
        raise NotImplementedError

    def _publish(
        self, context: Context, run: _Run, started: float, before: tuple[int, int], *, push: bool
    ) -> dict[str, Any]:
        """Finish the stats, log the table and the summary, and push the report when the task will fail."""
        stats = run.client.stats
        run.report.set_stats(
            stats.requests - before[0],
            stats.retries - before[1],
            time.monotonic() - started,
            **run.extra_stats,
        )
        self.log.info("Gemini cancel report:\n%s", run.report.format_table())
        self.log.info("%s summary: %s", type(self).__name__, run.report.summary_line())
        data = run.report.to_dict()
        if push and self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=data)
        return data


class GeminiCancelOrderOperator(_GeminiCancelBase):
    """Cancel one order or a list of orders by id, each through `/v1/order/cancel` (idempotent).

    `order_id` is an int, a digit string, a list of them, or a rendered list ("{{ params.order_ids }}",
    an upstream XCom); duplicates are cancelled once. One `/v1/orders` listing first tells which ids
    were live, so the report can separate `cancelled` from `already_cancelled`; an order that had
    already filled lands in `filled` (a warning, not a failure). Unknown ids land in `not_found` and,
    with `fail_on_not_found`, fail the task once every id was attempted. A dry run sends no cancel:
    live ids land in `dry_run`, the rest are classified with a read-only `/v1/order/status`, and the
    task fails exactly where the real run would.
    """

    template_fields: Sequence[str] = ("order_id", "account", "dry_run")
    parsers: ClassVar[dict[str, Parser]] = {
        "order_id": parse_order_ids,
        "account": parse_account,
        "dry_run": _parse_bool,
    }

    def __init__(
        self,
        *,
        order_id: int | str | Sequence[int | str],
        gemini_conn_id: str = "gemini_default",
        account: str | None = None,
        fail_on_not_found: bool = True,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, account=account, dry_run=dry_run, **kwargs)
        self.order_id = order_id
        self.fail_on_not_found = _parse_bool(fail_on_not_found, "fail_on_not_found")
        self._arguments(literal_only=True)

    def _run(self, run: _Run, arguments: dict[str, Any]) -> None:
        order_ids: list[int] = arguments["order_id"]
        dry_run: bool = arguments["dry_run"]
        try:
            live: dict[str, Order] | None = {
                order.order_id: order for order in run.client.active_orders(account=run.account)
            }
        except GeminiError as error:
            if not error.retryable:
                run.error(None, error, "listing live orders (/v1/orders)")
                run.stop = error
                run.skip(order_ids)
                return
            self.log.warning(
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


class GeminiCancelAllOrdersOperator(_GeminiCancelBase):
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
        "scope": _parse_scope,
        "account": parse_account,
        "dry_run": _parse_bool,
    }

    def __init__(
        self,
        *,
        scope: str = "session",
        gemini_conn_id: str = "gemini_default",
        account: str | None = None,
        fail_on_reject: bool = True,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, account=account, dry_run=dry_run, **kwargs)
        self.scope = scope
        self.fail_on_reject = _parse_bool(fail_on_reject, "fail_on_reject")
        self._arguments(literal_only=True)

    def _run(self, run: _Run, arguments: dict[str, Any]) -> None:
        scope: str = arguments["scope"]
        if arguments["dry_run"]:
            if scope == "session":
                self.log.warning(
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
            run.report.fail(
                order_id, "invalid_request", "CancelRejected", f"{path} rejected this order's cancel"
            )
            if self.fail_on_reject:
                run.fatal.append(f"order {order_id}: cancel rejected")
            else:
                self.log.warning("Order %s: %s rejected its cancel (fail_on_reject is off)", order_id, path)


class GeminiCancelStaleOrdersOperator(_GeminiCancelBase):
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
    task unless `fail_on_not_found`.
    """

    template_fields: Sequence[str] = (
        "max_age",
        "symbols",
        "side",
        "client_order_id_prefix",
        "dry_run",
        "max_cancellations",
        "account",
    )
    parsers: ClassVar[dict[str, Parser]] = {
        "max_age": _parse_seconds,
        "symbols": _parse_symbols,
        "side": _parse_side,
        "client_order_id_prefix": _parse_prefix,
        "dry_run": _parse_bool,
        "max_cancellations": _parse_cap,
        "account": parse_account,
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
        gemini_conn_id: str = "gemini_default",
        account: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, account=account, dry_run=dry_run, **kwargs)
        self.max_age = max_age
        self.symbols = symbols
        self.side = side
        self.client_order_id_prefix = client_order_id_prefix
        self.max_cancellations = max_cancellations
        self.fail_on_not_found = _parse_bool(fail_on_not_found, "fail_on_not_found")
        self._arguments(literal_only=True)

    def _run(self, run: _Run, arguments: dict[str, Any]) -> None:
        cutoff_ms = int(time.time() * 1000) - round(arguments["max_age"] * 1000)
        orders = run.list_live()
        if orders is None:
            return
        symbols: tuple[str, ...] | None = arguments["symbols"]
        side: str | None = arguments["side"]
        prefix: str | None = arguments["client_order_id_prefix"]
        undated = [order.order_id for order in orders if order.timestampms <= 0]
        if undated:
            self.log.warning("Skipping %d live order(s) without a timestamp: %s", len(undated), undated)
        matched = sorted(
            (
                order
                for order in orders
                if 0 < order.timestampms < cutoff_ms
                and (symbols is None or order.symbol.lower() in symbols)
                and (side is None or order.side.lower() == side)
                and (prefix is None or (order.client_order_id or "").startswith(prefix))
            ),
            key=lambda order: (order.timestampms, int(order.order_id)),
        )
        run.extra_stats["matched"] = len(matched)
        self.log.info(
            "%d of %d live orders placed before %s ms (max_age %ss) match symbols=%s side=%s prefix=%s",
            len(matched),
            len(orders),
            cutoff_ms,
            arguments["max_age"],
            symbols,
            side,
            prefix,
        )
        cap: int | None = arguments["max_cancellations"]
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
            if arguments["dry_run"]:
                run.report.record(order, "dry_run")
            else:
                run.cancel(int(order.order_id), was_live=True)
