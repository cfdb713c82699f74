"""The /v1 endpoints: one typed `Route` per path, with the roles (keys) or the scope (OAuth tokens) that
may call it, and its handler.

Handlers run with the exchange's lock held, after the key, signature, nonce, role and account checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .book import Book
from .rules import Key

Handler = Callable[[Book, Key, str | None, dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    roles: frozenset[str] | None  # the roles that may call it; None: any key
    needs_account: bool  # acts on one account: a master key must name it
    handler: Handler
    scope: str | None  # the OAuth scope a bearer token needs; None: any token


def new_order(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    assert account is not None
    return book.new_order(account, key.api_key, p, None, check_market=True).status()


def cancel(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    order = book.find(account, p)
    if order.is_live:
        order.cancel("Requested")
    return order.status()


def cancel_all(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    return book.cancel_where(lambda o: o.account == account)


def cancel_session(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    return book.cancel_where(lambda o: o.account == account and o.session == key.api_key)


def status(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    return book.find(account, p, allow_client_id=True).status(
        include_trades=p.get("include_trades") in (True, "true", "True")
    )


def orders(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> list[dict[str, Any]]:
    assert account is not None
    return book.listing(account)


def heartbeat(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    return {"result": "ok"}


def roles(book: Book, key: Key, account: str | None, p: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "isAuditor": "Auditor" in key.roles,
        "isFundManager": "Fund Manager" in key.roles,
        "isTrader": "Trader" in key.roles,
    }
    if key.is_master:
        answer["counterparty_id"] = hashlib.sha256(key.api_key.encode()).hexdigest()[:8].upper()
        answer["isAccountAdmin"] = "Administrator" in key.roles
    return answer


_TRADER = frozenset({"Trader"})
_CREATE, _READ = "orders:create", "orders:read"
ROUTES: Mapping[str, Route] = {
    route.path: route
    for route in (
        Route("/v1/order/new", _TRADER, True, new_order, _CREATE),
        Route("/v1/order/cancel", _TRADER, True, cancel, _CREATE),
        Route("/v1/order/cancel/all", _TRADER, True, cancel_all, _CREATE),
        Route("/v1/order/cancel/session", _TRADER, True, cancel_session, _CREATE),
        Route("/v1/order/status", _TRADER, True, status, _READ),
        Route("/v1/orders", frozenset({"Trader", "Auditor"}), True, orders, _READ),
        Route("/v1/heartbeat", None, False, heartbeat, None),
        Route("/v1/roles", None, False, roles, None),
    )
}
