"""CancelReport: the one report shape every cancel operator and the sensor return (JSON for XCom)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_provider_gemini.models import Order


class Log(Protocol):
    """The part of a logger a run writes to (a logging.Logger or Airflow's task logger)."""

    def info(self, msg: str, /, *args: Any) -> object: ...

    def warning(self, msg: str, /, *args: Any) -> object: ...

    def error(self, msg: str, /, *args: Any) -> object: ...


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
            elif key == "retries_by_kind" and isinstance(mine, dict) and isinstance(value, dict):
                self.stats[key] = {kind: mine.get(kind, 0) + value.get(kind, 0) for kind in {*mine, *value}}
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


MAX_EVENT_IDS = 100
"""How many ids of each outcome an asset event's extra lists; the rest are counted in `omitted`.
Airflow keeps the extra in its metadata database and passes it to every consumer run: it stays small."""


def event_extra(report: Mapping[str, Any], max_ids: int = MAX_EVENT_IDS, **about: Any) -> dict[str, Any]:
    """An asset event's `extra` for a cancel report: `about` (dag/run/task ids, the connection, where
    the audit trail is), every outcome's count, up to `max_ids` ids of each outcome (failures by id,
    a request-level failure as null), and in `omitted` how many ids each list left out."""
    rebuilt = CancelReport.from_dict(report)
    lists: dict[str, list[str | None]] = {name: list(getattr(rebuilt, name)) for name in OUTCOMES}
    lists["failed"] = [entry["order_id"] for entry in rebuilt.failed]
    extra: dict[str, Any] = dict(about)
    extra["counts"] = rebuilt.counts()
    omitted: dict[str, int] = {}
    for name, ids in lists.items():
        extra[name] = ids[:max_ids]
        if len(ids) > max_ids:
            omitted[name] = len(ids) - max_ids
    extra["omitted"] = omitted
    return extra
