"""The order book: orders and their status objects; placing, filling, finding and cancelling them.

Not locked: callers hold the exchange's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from .clock import Clock
from .records import Reject, as_int

PERPETUALS_SUFFIX = "perp"  # btcgusdperp, ethgusdperp: Gemini's perpetuals symbols
FIRST_ORDER_ID = 9007199254740993  # 2**53 + 1: the first id a float cannot hold
OPTION_CANCEL_REASON = {
    "immediate-or-cancel": "ImmediateOrCancelWouldPost",
    "fill-or-kill": "FillOrKillWouldNotFill",
}

# (age in seconds, symbol, side, price, amount, client_order_id)
DEMO_BOOK: tuple[tuple[int, str, str, str, str, str | None], ...] = (
    (10_680, "btcusd", "buy", "61250.00", "0.25", "mm-btc-bid-1"),
    (9_000, "btcusd", "sell", "64900.00", "0.10", "mm-btc-ask-1"),
    (8_400, "ethusd", "buy", "3120.50", "2", "manual-eth-dip"),
    (7_800, "solusd", "sell", "182.40", "40", "mm-sol-ask-1"),
    (7_260, "ethusd", "sell", "3480.00", "1.5", None),
    (540, "btcusd", "buy", "62980.00", "0.05", "mm-btc-bid-2"),
    (360, "ethusd", "sell", "3399.90", "3", "mm-eth-ask-1"),
    (240, "solusd", "buy", "171.05", "25", "manual-sol-1"),
    (120, "solusd", "sell", "176.80", "10", None),
    (60, "btcusd", "sell", "63510.00", "0.2", "manual-btc-1"),
)


def _fmt(value: Decimal) -> str:
    return "0" if value == 0 else str(value)


def _positive(value: object, reason: str, name: str) -> str:
    """A positive decimal, kept as the exact string sent (Gemini wants quoted decimals)."""
    text = value if isinstance(value, str) else None
    try:
        ok = text is not None and Decimal(text).is_finite() and Decimal(text) > 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise Reject(400, reason, f"{name} must be a positive quoted decimal, not {value!r}")
    return cast(str, text)


@dataclass(slots=True)
class Order:
    order_id: int
    account: str
    session: str | None  # the api key that placed it; None for an order from the web UI
    symbol: str
    side: str
    type: str
    price: str
    original_amount: str
    client_order_id: str | None
    timestampms: int
    options: list[str]
    stop_price: str | None = None
    executed: Decimal = Decimal(0)
    is_live: bool = True
    is_cancelled: bool = False
    reason: str | None = None
    trades: list[dict[str, Any]] = field(default_factory=list)

    def remaining(self) -> Decimal:
        return Decimal(self.original_amount) - self.executed

    def state(self) -> str:
        if self.is_live:
            return "live"
        if self.is_cancelled:
            return "cancelled"
        return "filled" if self.executed > 0 and self.remaining() == 0 else "closed"

    def cancel(self, reason: str) -> None:
        self.is_live = False
        self.is_cancelled = True
        self.reason = reason

    def status(self, include_trades: bool = False) -> dict[str, Any]:
        """Gemini's order status object."""
        oid = str(self.order_id)
        remaining = self.remaining()
        data: dict[str, Any] = {
            "order_id": oid,
            "id": oid,
            "symbol": self.symbol,
            "exchange": "gemini",
            "avg_execution_price": self.price if self.executed > 0 else "0.00",
            "side": self.side,
            "type": self.type,
            "timestamp": str(self.timestampms // 1000),
            "timestampms": self.timestampms,
            "is_live": self.is_live,
            "is_cancelled": self.is_cancelled,
            "is_hidden": False,
            "was_forced": False,
            "executed_amount": _fmt(self.executed),
            "remaining_amount": _fmt(remaining),
            "options": list(self.options),
            "price": self.price,
            "original_amount": self.original_amount,
        }
        if self.client_order_id is not None:
            data["client_order_id"] = self.client_order_id
        if self.stop_price is not None:
            data["stop_price"] = self.stop_price
        if self.reason is not None:
            data["reason"] = self.reason
        if include_trades:
            data["trades"] = [dict(t) for t in self.trades]
        return data


class Book:
    """Every order of every account, by id; plus the markets closed to new orders, the orders that
    cancel/all and cancel/session refuse to cancel, the raw rows /v1/orders lists after the
    live orders (for an account, or None: every account), and the perpetuals accounts (the only
    ones that hold `...perp` orders, and that hold nothing else)."""

    def __init__(self, first_order_id: int, clock: Clock) -> None:
        self.orders: dict[int, Order] = {}
        self.closed_markets: set[str] = set()
        self.reject_cancels: set[int] = set()
        self.listing_rows: list[tuple[str | None, Any]] = []
        self.perpetuals_accounts: set[str] = set()
        self._clock = clock
        self._by_client_id: dict[tuple[str, str], int] = {}
        self._next_id = first_order_id

    def take_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def get(self, order_id: int | str) -> Order:
        """Any order by id, for test setup; KeyError if unknown."""
        oid = as_int(order_id)
        order = self.orders.get(oid) if oid is not None else None
        if order is None:
            raise KeyError(f"order_id: no order {order_id!r} on this exchange")
        return order

    def find(self, account: str | None, p: dict[str, Any], allow_client_id: bool = False) -> Order:
        """The order a request names (by `order_id`, or `client_order_id` if allowed) in `account`."""
        has_id = p.get("order_id") is not None
        coid = p.get("client_order_id") if allow_client_id else None
        if has_id and coid is not None:
            raise Reject(400, "ConflictingOrderIdentifiers", "Send order_id or client_order_id, not both")
        if coid is not None:
            oid: int | None = self._by_client_id.get((account or "", str(coid)))
        elif has_id:
            oid = as_int(p["order_id"])
            if oid is None:
                raise Reject(400, "InvalidOrderId", f"order_id {p['order_id']!r} is not an integer")
        else:
            raise Reject(400, "MissingOrderField", "order_id is required")
        order = self.orders.get(oid) if oid is not None else None
        if order is None or order.account != account:
            raise Reject(404, "OrderNotFound", "Order not found")
        return order

    def live(self, account: str | None = None) -> list[Order]:
        """Live orders (of one account, or all), oldest id first."""
        return [o for o in self.orders.values() if o.is_live and account in (None, o.account)]

    def listing(self, account: str) -> list[Any]:
        """What /v1/orders answers: the account's live status objects, then its raw rows."""
        rows = [o.status() for o in self.live(account)]
        rows.extend(row for where, row in self.listing_rows if where in (None, account))
        return rows

    def cancel_where(self, match: Callable[[Order], bool]) -> dict[str, Any]:
        """Cancel the matching live orders: the answer of cancel/all and cancel/session."""
        cancelled, rejected = [], []
        for order in self.orders.values():
            if order.is_live and match(order):
                if order.order_id in self.reject_cancels:
                    rejected.append(order.order_id)
                    continue
                order.cancel("Requested")
                cancelled.append(order.order_id)
        return {"result": "ok", "details": {"cancelledOrders": cancelled, "cancelRejects": rejected}}

    def cancel_sessions(self, sessions: Collection[str]) -> None:
        """Cancel the live orders these keys placed, as cancel/session would."""
        for order in self.orders.values():
            if order.is_live and order.session in sessions:
                order.cancel("Requested")

    def fill(self, order_id: int | str, amount: str | None) -> Order:
        """Fill a live order (all of what remains, or `amount` of it) at its price."""
        order = self.get(order_id)
        if not order.is_live:
            raise ValueError(f"order_id: {order_id!r} is not live ({order.state()})")
        qty = order.remaining() if amount is None else Decimal(amount)
        if not 0 < qty <= order.remaining():
            raise ValueError(f"amount: {amount!r} must be positive and at most what remains")
        order.executed += qty
        now_ms = self._clock.ms()
        order.trades.append(
            {
                "price": order.price,
                "amount": _fmt(qty),
                "timestamp": now_ms // 1000,
                "timestampms": now_ms,
                "type": order.side.capitalize(),
                "aggressor": False,
                "fee_currency": "USD",
                "fee_amount": "0.00",
                "tid": self.take_id(),
                "order_id": str(order.order_id),
                "exchange": "gemini",
            }
        )
        if order.remaining() == 0:
            order.is_live = False
        return order

    def new_order(
        self,
        account: str,
        session: str | None,
        p: dict[str, Any],
        timestampms: int | None,
        check_market: bool,
    ) -> Order:
        """Check a new order's fields as /v1/order/new does and rest it (IOC and FOK cancel at once:
        there is no liquidity here, so they never fill)."""
        for name in ("symbol", "amount", "price", "side", "type"):
            if p.get(name) in (None, ""):
                raise Reject(400, "MissingOrderField", f"New orders need '{name}'")
        symbol = str(p["symbol"]).lower()
        if not (symbol.isascii() and symbol.isalnum() and 6 <= len(symbol) <= 12):
            raise Reject(400, "InvalidSymbol", f"Unknown symbol {p['symbol']!r}")
        perpetual = symbol.endswith(PERPETUALS_SUFFIX)
        if perpetual != (account in self.perpetuals_accounts):
            where = "a perpetuals account" if perpetual else "a spot account"
            raise Reject(
                400, "InvalidSymbol", f"{symbol} trades only on {where}; account {account!r} is not one"
            )
        side = p["side"]
        if side not in ("buy", "sell"):
            raise Reject(400, "InvalidSide", f"side must be 'buy' or 'sell', not {side!r}")
        order_type = p["type"]
        if order_type not in ("exchange limit", "exchange stop limit"):
            raise Reject(400, "InvalidOrderType", f"Unsupported order type {order_type!r}")
        price = _positive(p["price"], "InvalidPrice", "price")
        amount = _positive(p["amount"], "InvalidQuantity", "amount")
        stop_price = None
        if order_type == "exchange stop limit":
            stop_price = _positive(p.get("stop_price"), "InvalidStopPrice", "stop_price")
        options = p.get("options", [])
        if not isinstance(options, list):
            raise Reject(400, "OptionsMustBeArray", "options must be an array")
        if len(options) > 1:
            raise Reject(400, "ConflictingOptions", "At most one order execution option is supported")
        if options and options[0] not in OPTION_CANCEL_REASON and options[0] != "maker-or-cancel":
            raise Reject(400, "UnsupportedOption", f"Unsupported option {options[0]!r}")
        coid = p.get("client_order_id")
        if coid is not None and not isinstance(coid, str):
            raise Reject(400, "ClientOrderIdMustBeString", "client_order_id must be a string")
        if coid is not None and len(coid) >= 100:
            raise Reject(400, "ClientOrderIdTooLong", "client_order_id must be under 100 characters")
        if check_market and symbol in self.closed_markets:
            raise Reject(400, "MarketClosed", f"Market {symbol} is closed for new orders")
        order = Order(
            order_id=self.take_id(),
            account=account,
            session=session,
            symbol=symbol,
            side=side,
            type=order_type,
            price=price,
            original_amount=amount,
            client_order_id=coid,
            timestampms=self._clock.ms() if timestampms is None else timestampms,
            options=list(options),
            stop_price=stop_price,
        )
        self.orders[order.order_id] = order
        if coid is not None:
            self._by_client_id[(account, coid)] = order.order_id
        if options and options[0] in OPTION_CANCEL_REASON:
            order.cancel(OPTION_CANCEL_REASON[options[0]])
        return order
