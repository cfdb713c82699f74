"""Wire types: Gemini's order status object (ids kept exact), cancel reasons, roles, cancel-all results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal

from airflow_provider_gemini.arguments import show


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
