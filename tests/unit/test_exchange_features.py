"""The local exchange's test switches: trickled answers, answers lost after acting, the `Date`
header and the clock offset, and odd rows in the order listing. Driven with raw `requests` and an
HMAC written here, not the provider's client."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from airflow_provider_gemini.testing.exchange import GeminiExchange
from airflow_provider_gemini.testing.plugin import GeminiCredentials

Factory = Callable[..., GeminiExchange]
NONCES = itertools.count(int(time.time() * 1000))
NEW_ORDER: dict[str, Any] = {
    "symbol": "btcusd",
    "amount": "1",
    "price": "100.00",
    "side": "buy",
    "type": "exchange limit",
}


def post(
    url: str,
    path: str,
    creds: GeminiCredentials,
    nonce: int | None = None,
    timeout: float | tuple[float, float] = 10,
    **fields: Any,
) -> requests.Response:
    payload = {"request": path, "nonce": next(NONCES) if nonce is None else nonce, **fields}
    text = base64.b64encode(json.dumps(payload).encode()).decode()
    headers = {
        "X-GEMINI-APIKEY": creds.api_key,
        "X-GEMINI-PAYLOAD": text,
        "X-GEMINI-SIGNATURE": hmac.new(creds.api_secret.encode(), text.encode(), hashlib.sha384).hexdigest(),
        "Content-Type": "text/plain",
        "Content-Length": "0",
        "Cache-Control": "no-cache",
    }
    return requests.post(url + path, headers=headers, timeout=timeout)


def date_of(response: requests.Response) -> float:
    return email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()


# ---- trickle ---------------------------------------------------------------------------------------


def test_trickle_keeps_a_per_read_timeout_waiting_for_the_whole_delay(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials
) -> None:
    gemini_exchange.inject_fault("trickle", path="/v1/heartbeat", delay=1.5, chunk_bytes=4)
    start = time.monotonic()
    response = post(gemini_exchange.url, "/v1/heartbeat", gemini_credentials, timeout=(2, 0.3))
    elapsed = time.monotonic() - start
    assert response.status_code == 200 and response.json() == {"result": "ok"}
    assert elapsed >= 1.4  # far past the 0.3 s read timeout, which never fired
    [entry] = gemini_exchange.journal
    assert (entry.status, entry.fault) == (200, "trickle")
    # the next answer is whole again
    start = time.monotonic()
    assert post(gemini_exchange.url, "/v1/heartbeat", gemini_credentials).status_code == 200
    assert time.monotonic() - start < 1


def test_trickle_sends_the_same_bytes_and_acts(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials
) -> None:
    order = gemini_exchange.place_order(gemini_exchange.api_key)
    gemini_exchange.inject_fault("trickle", delay=0.2)  # one byte at a time by default
    response = post(
        gemini_exchange.url, "/v1/order/cancel", gemini_credentials, order_id=int(order["order_id"])
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == gemini_exchange.order(order["order_id"])
    assert response.json()["is_cancelled"] is True


def test_trickle_needs_a_delay_and_a_positive_chunk(gemini_exchange: GeminiExchange) -> None:
    with pytest.raises(ValueError, match="delay"):
        gemini_exchange.inject_fault("trickle")
    with pytest.raises(ValueError, match="chunk_bytes"):
        gemini_exchange.inject_fault("trickle", delay=1, chunk_bytes=0)


def test_stop_ends_a_trickling_answer(gemini_exchange_factory: Factory) -> None:
    exchange = gemini_exchange_factory()
    creds = GeminiCredentials(exchange.api_key or "", exchange.api_secret or "")
    exchange.inject_fault("trickle", delay=30)
    threading.Timer(0.5, exchange.stop).start()
    sent = time.monotonic()
    with pytest.raises(requests.RequestException):
        post(exchange.url, "/v1/heartbeat", creds, timeout=(2, 5))
    assert time.monotonic() - sent < 5


# ---- answers lost after acting -----------------------------------------------------------------------


@pytest.mark.gemini_exchange(rate_limit_per_minute=None)
@pytest.mark.parametrize("path", ["/v1/order/cancel/all", "/v1/order/cancel/session"])
def test_drop_after_cancels_then_loses_the_answer(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials, path: str
) -> None:
    ids = [
        gemini_exchange.place_order(gemini_exchange.api_key, price=f"{100 + i}.00")["order_id"]
        for i in range(3)
    ]
    gemini_exchange.inject_fault("drop_after", path=path)
    with pytest.raises(requests.ConnectionError):
        post(gemini_exchange.url, path, gemini_credentials)
    assert gemini_exchange.live_orders() == []
    assert all(gemini_exchange.order(oid)["is_cancelled"] for oid in ids)
    [entry] = gemini_exchange.journal
    assert (entry.path, entry.status, entry.fault) == (path, 200, "drop_after")
    # asking again finds nothing left to cancel
    again = post(gemini_exchange.url, path, gemini_credentials).json()
    assert again == {"result": "ok", "details": {"cancelledOrders": [], "cancelRejects": []}}


@pytest.mark.gemini_exchange(rate_limit_per_minute=None)
@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/order/new", NEW_ORDER),
        ("/v1/order/cancel", {}),
        ("/v1/order/status", {}),
        ("/v1/orders", {}),
        ("/v1/heartbeat", {}),
        ("/v1/roles", {}),
    ],
)
def test_drop_after_works_on_every_endpoint(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials, path: str, fields: dict[str, Any]
) -> None:
    if path in ("/v1/order/cancel", "/v1/order/status"):
        fields = {"order_id": int(gemini_exchange.place_order(gemini_exchange.api_key)["order_id"])}
    gemini_exchange.inject_fault("drop_after", path=path)
    with pytest.raises(requests.ConnectionError):
        post(gemini_exchange.url, path, gemini_credentials, **fields)
    [entry] = gemini_exchange.journal
    assert (entry.status, entry.fault) == (200, "drop_after")
    if path == "/v1/order/new":
        assert len(gemini_exchange.live_orders()) == 1  # placed, though the client never heard
    if path == "/v1/order/cancel":
        assert gemini_exchange.live_orders() == []


# ---- Date header and the clock offset --------------------------------------------------------------


def test_every_answer_has_a_date_from_the_exchange_clock(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials
) -> None:
    ok = post(gemini_exchange.url, "/v1/heartbeat", gemini_credentials)
    refused = post(gemini_exchange.url, "/v1/heartbeat", gemini_credentials, nonce=1)
    admin = requests.get(gemini_exchange.url + "/_admin/health", timeout=10)
    unknown = requests.get(gemini_exchange.url + "/v1/orders", timeout=10)
    for response in (ok, refused, admin, unknown):
        text = response.headers["Date"]
        assert (
            text.endswith(" GMT")
            and email.utils.format_datetime(email.utils.parsedate_to_datetime(text), usegmt=True) == text
        )
        assert abs(date_of(response) - time.time()) < 5
    assert refused.status_code == 400


def test_clock_offset_moves_dates_new_orders_and_the_time_nonce_window(
    gemini_exchange_factory: Factory,
) -> None:
    exchange = gemini_exchange_factory(nonce_mode="time", rate_limit_per_minute=None, clock_offset=3600)
    creds = GeminiCredentials(exchange.api_key or "", exchange.api_secret or "")
    host_now = time.time()
    late = post(exchange.url, "/v1/heartbeat", creds, nonce=int(host_now))
    assert late.status_code == 400 and late.json()["reason"] == "InvalidNonce"
    assert abs(date_of(late) - (host_now + 3600)) < 5
    ok = post(exchange.url, "/v1/order/new", creds, nonce=int(time.time()) + 3600, **NEW_ORDER)
    assert ok.status_code == 200, ok.text
    assert abs(ok.json()["timestampms"] / 1000 - (host_now + 3600)) < 5
    explicit = exchange.place_order(exchange.api_key, timestampms=1_700_000_000_000)
    assert explicit["timestampms"] == 1_700_000_000_000  # explicit stamps are left alone

    exchange.set_clock_offset(-120)
    assert exchange.clock_offset == -120.0
    moved = post(exchange.url, "/v1/heartbeat", creds, nonce=int(time.time()) - 120)
    assert moved.status_code == 200
    assert abs(date_of(moved) - (time.time() - 120)) < 5
    with pytest.raises(ValueError, match="clock_offset"):
        exchange.set_clock_offset(float("nan"))


# ---- odd rows in the listing -----------------------------------------------------------------------


def test_listing_rows_come_back_as_given_after_the_live_orders(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials
) -> None:
    order = gemini_exchange.place_order(gemini_exchange.api_key)
    odd: list[Any] = [{"order_id": "123", "timestampms": "1.7e12"}, {"id": None}, "not a row"]
    gemini_exchange.inject_listing_rows(odd)
    gemini_exchange.inject_listing_rows([{"order_id": "elsewhere"}], account="another")
    odd[0]["order_id"] = "changed after"  # the exchange keeps what it was given
    response = post(gemini_exchange.url, "/v1/orders", gemini_credentials)
    assert response.status_code == 200
    assert response.json() == [
        order,
        {"order_id": "123", "timestampms": "1.7e12"},
        {"id": None},
        "not a row",
    ]
    assert gemini_exchange.live_orders() == [order]  # not orders: nothing else sees them
    gemini_exchange.clear_listing_rows()
    assert post(gemini_exchange.url, "/v1/orders", gemini_credentials).json() == [order]
    with pytest.raises(ValueError, match="rows"):
        gemini_exchange.inject_listing_rows({"order_id": "1"})  # type: ignore[arg-type]
