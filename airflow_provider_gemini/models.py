"""Plain data: order id validation, Gemini's order status object, roles, cancel-all results."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal

from airflow_provider_gemini.arguments import show

MAX_ORDER_ID = 2**63 - 1


def parse_order_id(value: object, field: str = "order_id") -> int:
    """An order id as an exact int: an int (not bool) or a string of ASCII digits, 1..2**63-1."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
    if number is None:
        raise ValueError(f"{field}: expected an order id (an int or a string of digits), got {show(value)}")
    if not 1 <= number <= MAX_ORDER_ID:
        raise ValueError(f"{field}: order id must be between 1 and 2**63-1, got {show(value)}")
    return number


def list_from_text(text: str, field: str, what: str = "list") -> list[Any]:
    """The list a template rendered as text: JSON (`tojson`) or a Python literal (`{{ value }}`)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{field}: not a {what}: {show(text)}") from None
    if not isinstance(parsed, list | tuple):
        raise ValueError(f"{field}: not a {what}: {show(text)}")
    return list(parsed)


def parse_order_ids(value: object, field: str = "order_id") -> list[int]:
    """One id, a list/tuple of ids, or the text of a list (a rendered template); deduplicated, in order."""
    items: list[Any]
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str) and value.strip()[:1] in ("[", "("):
        items = list_from_text(value.strip(), field, "list of order ids")
    else:
        return [parse_order_id(value, field)]
    if not items:
        raise ValueError(f"{field}: no order ids given (empty list)")
    seen: dict[int, None] = {}
    for index, item in enumerate(items):
        seen.setdefault(parse_order_id(item, f"{field}[{index}]"), None)
    return list(seen)


class CancelReason(StrEnum):
    """Why Gemini cancelled an order; unknown reasons stay plain strings wherever they appear."""

    MakerOrCancelWouldTake = "MakerOrCancelWouldTake"
    ExceedsPriceLimits = "ExceedsPriceLimits"
    SelfCrossPrevented = "SelfCrossPrevented"
    ImmediateOrCancelWouldPost = "ImmediateOrCancelWouldPost"
    FillOrKillWouldNotFill = "FillOrKillWouldNotFill"
    Requested = "Requested"
    MarketClosed = "MarketClosed"
    TradingClosed = "TradingClosed"
    AuctionCancelled = "AuctionCancelled"


def _text(value: Any, default: str = "0") -> str:
    return default if value is None else str(value)


def _is_zero(text: str) -> bool:
    try:
        return Decimal(text) == 0
    except InvalidOperation:
        return False


OrderState = Literal["live", "cancelled", "filled", "closed"]


@dataclass(frozen=True)
class Order:
    """Gemini's order status object, ids and amounts kept exactly as sent (strings)."""

    order_id: str
    client_order_id: str | None
    symbol: str
    side: str
    type: str
    price: str | None
    original_amount: str
    executed_amount: str
    remaining_amount: str
    is_live: bool
    is_cancelled: bool
    reason: str | None
    timestampms: int

    @classmethod
    def from_status(cls, data: Mapping[str, Any]) -> Order:
        """Build from a status object; raises ValueError when it has no order_id."""
        if not isinstance(data, Mapping) or data.get("order_id") is None:
            raise ValueError(f"order status: expected an object with an order_id, got {show(data)}")
        client_order_id = data.get("client_order_id")
        price = data.get("price")
        reason = data.get("reason")
        return cls(
            order_id=str(data["order_id"]),
            client_order_id=None if client_order_id is None else str(client_order_id),
            symbol=_text(data.get("symbol"), ""),
            side=_text(data.get("side"), ""),
            type=_text(data.get("type"), ""),
            price=None if price is None else str(price),
            original_amount=_text(data.get("original_amount")),
            executed_amount=_text(data.get("executed_amount")),
            remaining_amount=_text(data.get("remaining_amount")),
            is_live=bool(data.get("is_live")),
            is_cancelled=bool(data.get("is_cancelled")),
            reason=None if reason is None else str(reason),
            timestampms=int(data.get("timestampms") or 0),
        )

    @property
    def state(self) -> OrderState:
        """live, cancelled, filled (fully executed), or closed (ended otherwise)."""
        if self.is_cancelled:
            return "cancelled"
        if self.is_live:
            return "live"
        if not _is_zero(self.executed_amount) and _is_zero(self.remaining_amount):
            return "filled"
        return "closed"

    def summary(self) -> dict[str, str | None]:
        """The fields a report shows for the order (JSON-ready)."""
        return {
            "symbol": self.symbol,
            "side": self.side,
            "price": self.price,
            "original_amount": self.original_amount,
            "remaining_amount": self.remaining_amount,
            "reason": self.reason,
            "client_order_id": self.client_order_id,
        }


@dataclass(frozen=True)
class Roles:
    """What an API key may do, from /v1/roles."""

    is_trader: bool
    is_auditor: bool
    is_fund_manager: bool
    counterparty_id: str | None = None

    @classmethod
    def from_response(cls, data: Mapping[str, Any]) -> Roles:
        if not isinstance(data, Mapping):
            raise ValueError(f"roles: expected an object, got {show(data)}")
        counterparty = data.get("counterparty_id")
        return cls(
            is_trader=bool(data.get("isTrader")),
            is_auditor=bool(data.get("isAuditor")),
            is_fund_manager=bool(data.get("isFundManager")),
            counterparty_id=None if counterparty is None else str(counterparty),
        )

    def names(self) -> list[str]:
        """The role names the key holds, as Gemini spells them."""
        flags = {"Trader": self.is_trader, "Auditor": self.is_auditor, "FundManager": self.is_fund_manager}
        return [name for name, held in flags.items() if held]


@dataclass(frozen=True)
class CancelAllResult:
    """The answer of /v1/order/cancel/all and /cancel/session: ids as exact strings."""

    cancelled: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    @classmethod
    def from_response(cls, data: Mapping[str, Any]) -> CancelAllResult:
        details = data.get("details") if isinstance(data, Mapping) else None
        if not isinstance(details, Mapping):
            raise ValueError(f"cancel all: expected an object with details, got {show(data)}")
        return cls(
            cancelled=[_id_text(item) for item in details.get("cancelledOrders") or ()],
            rejected=[_id_text(item) for item in details.get("cancelRejects") or ()],
        )


def _id_text(item: Any) -> str:
    if isinstance(item, Mapping) and item.get("order_id") is not None:
        return str(item["order_id"])
    return str(item)


# --- CancelReport [operators engineer] -------------------------------------------------------------

OUTCOMES: tuple[str, ...] = ("cancelled", "already_cancelled", "filled", "not_found", "dry_run")
"""The per-order outcomes of a report, in the order they are listed; failures are kept apart."""

_REPORT_STAT_KEYS = ("requests", "retries", "elapsed_seconds")
_MAX_MESSAGE_CHARS = 500
_MAX_TABLE_CELL = 120


def _report_id(value: int | str) -> str:
    """An id as the report keeps it: exact digits; an odd id from the exchange is kept, not rejected."""
    return str(value).strip()


@dataclass
class CancelReport:
    """What a cancel task did, order by order: the JSON report every operator and the sensor push.

    Each order id (a string, exact) sits in at most one outcome list or in `failed`; recording it
    again moves it, so a later, better-informed answer wins. Lists keep the order ids were recorded
    in, so the same run always yields the same JSON.
    """

    cancelled: list[str] = field(default_factory=list)
    already_cancelled: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    dry_run: list[str] = field(default_factory=list)
    failed: list[dict[str, str | None]] = field(default_factory=list)
    orders: dict[str, dict[str, str | None]] = field(default_factory=dict)
    stats: dict[str, Any] = field(
        default_factory=lambda: {"requests": 0, "retries": 0, "elapsed_seconds": 0.0}
    )

    _recorded: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    """Every id ever filed here: a new id (the usual case) is filed without scanning every list."""

    def __post_init__(self) -> None:
        self._index()

    def _index(self) -> None:
        self._recorded.update(oid for name in OUTCOMES for oid in getattr(self, name))
        self._recorded.update(entry["order_id"] for entry in self.failed if entry["order_id"] is not None)

    def _forget(self, order_id: str) -> None:
        if order_id not in self._recorded:
            self._recorded.add(order_id)
            return
        for name in OUTCOMES:
            ids: list[str] = getattr(self, name)
            if order_id in ids:
                ids.remove(order_id)
        self.failed = [entry for entry in self.failed if entry["order_id"] != order_id]

    def record(self, order: Order | int | str, outcome: str) -> str:
        """File an order (or a bare id, when there is no status object) under `outcome`; returns the id."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
        if isinstance(order, Order):
            order_id = order.order_id
            self.orders[order_id] = order.summary()
        else:
            order_id = _report_id(order)
        self._forget(order_id)
        getattr(self, outcome).append(order_id)
        return order_id

    def fail(
        self,
        order_id: int | str | None,
        kind: str,
        reason: str | None,
        message: str,
        order: Order | None = None,
    ) -> str | None:
        """File an order as failed with the error's kind, Gemini's reason and a secret-free message.

        `order_id` None records a failure of a whole request (a listing, cancel/all), not of one order.
        """
        oid = None if order_id is None else _report_id(order_id)
        if oid is not None:
            if order is not None:
                self.orders[oid] = order.summary()
            self._forget(oid)
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
        self.failed.append({"order_id": oid, "kind": kind, "reason": reason, "message": message})
        return oid

    def note(self, order: Order) -> None:
        """Keep an order's summary without filing it under an outcome (e.g. orders a listing showed)."""
        self.orders[order.order_id] = order.summary()

    def outcome_of(self, order_id: int | str) -> str | None:
        """The list an id sits in ("failed" included), or None when it was never recorded."""
        oid = _report_id(order_id)
        for name in OUTCOMES:
            if oid in getattr(self, name):
                return name
        if any(entry["order_id"] == oid for entry in self.failed):
            return "failed"
        return None

    def counts(self) -> dict[str, int]:
        """How many ids each outcome holds, `failed` last."""
        result = {name: len(getattr(self, name)) for name in OUTCOMES}
        result["failed"] = len(self.failed)
        return result

    def set_stats(self, requests: int, retries: int, elapsed_seconds: float, **extra: Any) -> None:
        """Record the run's request count, retries and duration (rounded to milliseconds)."""
        self.stats.update(
            requests=int(requests), retries=int(retries), elapsed_seconds=round(float(elapsed_seconds), 3)
        )
        self.stats.update(extra)

    def merge(self, other: CancelReport) -> None:
        """Fold a later report into this one: its outcomes win per id, and its stats are added."""
        for name in OUTCOMES:
            for oid in getattr(other, name):
                self._forget(oid)
                getattr(self, name).append(oid)
        for entry in other.failed:
            if entry["order_id"] is not None:
                self._forget(entry["order_id"])
            self.failed.append(dict(entry))
        self.orders.update({oid: dict(summary) for oid, summary in other.orders.items()})
        for key, value in other.stats.items():
            mine = self.stats.get(key)
            if key in _REPORT_STAT_KEYS and isinstance(mine, int | float) and isinstance(value, int | float):
                self.stats[key] = round(mine + value, 3) if key == "elapsed_seconds" else mine + value
            else:
                self.stats[key] = value

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data (ids as strings), a copy safe to push to XCom."""
        result: dict[str, Any] = {name: list(getattr(self, name)) for name in OUTCOMES}
        result["failed"] = [dict(entry) for entry in self.failed]
        result["orders"] = {oid: dict(summary) for oid, summary in self.orders.items()}
        result["stats"] = dict(self.stats)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CancelReport:
        """Rebuild a report from `to_dict()` output (e.g. read back from XCom); missing keys are empty."""
        report = cls()
        for name in OUTCOMES:
            setattr(report, name, [str(oid) for oid in data.get(name) or []])
        report.failed = [
            {
                "order_id": None if entry.get("order_id") is None else str(entry["order_id"]),
                "kind": entry.get("kind"),
                "reason": entry.get("reason"),
                "message": entry.get("message"),
            }
            for entry in data.get("failed") or []
        ]
        report.orders = {str(oid): dict(summary) for oid, summary in (data.get("orders") or {}).items()}
        report.stats.update(data.get("stats") or {})
        report._index()
        return report

    def summary_line(self) -> str:
        """One log line: the counts, elapsed seconds, requests sent and retries."""
        counts = " ".join(f"{name}={n}" for name, n in self.counts().items())
        return (
            f"{counts} elapsed={self.stats.get('elapsed_seconds', 0.0)}s "
            f"requests={self.stats.get('requests', 0)} retries={self.stats.get('retries', 0)}"
        )

    def format_table(self) -> str:
        """A fixed-width table of every recorded id and its outcome, for the task log."""
        header = ("order_id", "outcome", "symbol", "side", "price", "remaining", "client_order_id", "reason")
        rows: list[tuple[str, ...]] = []

        def row(oid: str, outcome: str, why: str | None) -> tuple[str, ...]:
            summary = self.orders.get(oid, {})
            why = why if why is not None else summary.get("reason") or ""
            return (
                oid,
                outcome,
                summary.get("symbol") or "",
                summary.get("side") or "",
                summary.get("price") or "",
                summary.get("remaining_amount") or "",
                summary.get("client_order_id") or "",
                why if len(why) <= _MAX_TABLE_CELL else why[: _MAX_TABLE_CELL - 3] + "...",
            )

        for name in OUTCOMES:
            rows.extend(row(oid, name, None) for oid in getattr(self, name))
        for entry in self.failed:
            why = f"{entry['kind']}/{entry['reason'] or '-'}: {entry['message']}"
            rows.append(row(entry["order_id"] or "-", "failed", why))
        widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in [header, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if not rows:
            lines.append("(no orders)")
        return "\n".join(lines)
