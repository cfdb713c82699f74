"""The local exchange, driven over real HTTP with `requests` and an HMAC written here (not the client's)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from airflow_provider_gemini.testing.exchange import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    FIRST_ORDER_ID,
    GeminiExchange,
)
from airflow_provider_gemini.testing.plugin import GeminiCredentials

Factory = Callable[..., GeminiExchange]
WIDE = FIRST_ORDER_ID  # 2**53 + 1


def sign(secret: str, payload: dict[str, Any]) -> tuple[str, str]:
    text = base64.b64encode(json.dumps(payload).encode()).decode()
    return text, hmac.new(secret.encode(), text.encode(), hashlib.sha384).hexdigest()


class Trader:
    """A minimal signed-request sender, independent of the provider's client."""

    def __init__(self, url: str, api_key: str, api_secret: str, time_nonce: bool = False) -> None:
        self.url, self.api_key, self.api_secret = url, api_key, api_secret
        self.time_nonce = time_nonce
        self.session = requests.Session()
        self._nonces = itertools.count(int(time.time() * 1000))

    def nonce(self) -> int:
        return int(time.time()) if self.time_nonce else next(self._nonces)

    def headers(self, path: str, **fields: Any) -> dict[str, str]:
        payload = {"request": path, "nonce": self.nonce(), **fields}
        text, signature = sign(self.api_secret, payload)
        return {
            "X-GEMINI-APIKEY": self.api_key,
            "X-GEMINI-PAYLOAD": text,
            "X-GEMINI-SIGNATURE": signature,
            "Content-Type": "text/plain",
            "Content-Length": "0",
            "Cache-Control": "no-cache",
        }

    def post(self, path: str, headers: dict[str, str] | None = None, **fields: Any) -> requests.Response:
        return self.session.post(self.url + path, headers=headers or self.headers(path, **fields), timeout=10)

    def raw(self, path: str, payload: dict[str, Any]) -> requests.Response:
        """Sign an arbitrary payload (no nonce or request added)."""
        text, signature = sign(self.api_secret, payload)
        headers = {"X-GEMINI-APIKEY": self.api_key, "X-GEMINI-PAYLOAD": text, "X-GEMINI-SIGNATURE": signature}
        return self.session.post(self.url + path, headers=headers, timeout=10)


def error(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    assert body["result"] == "error" and body["message"]
    return response.status_code, body["reason"]


@pytest.fixture
def ex(gemini_exchange_factory: Factory) -> GeminiExchange:
    """An exchange without the rate limit, holding the default Trader key."""
    return gemini_exchange_factory(rate_limit_per_minute=None)


@pytest.fixture
def trader(ex: GeminiExchange) -> Iterator[Trader]:
    client = Trader(ex.url, DEFAULT_API_KEY, DEFAULT_API_SECRET)
    yield client
    client.session.close()


# ---- authentication, in Gemini's order ------------------------------------------------------------


def test_heartbeat_and_roles(trader: Trader) -> None:
    assert trader.post("/v1/heartbeat").json() == {"result": "ok"}
    assert trader.post("/v1/roles").json() == {"isAuditor": False, "isFundManager": False, "isTrader": True}


@pytest.mark.parametrize(
    ("drop", "status", "reason"),
    [
        ("X-GEMINI-APIKEY", 401, "MissingApikeyHeader"),
        ("X-GEMINI-PAYLOAD", 400, "MissingPayloadHeader"),
        ("X-GEMINI-SIGNATURE", 400, "MissingSignatureHeader"),
    ],
)
def test_missing_headers(trader: Trader, drop: str, status: int, reason: str) -> None:
    headers = trader.headers("/v1/heartbeat")
    del headers[drop]
    assert error(trader.post("/v1/heartbeat", headers=headers)) == (status, reason)


def test_unknown_key_is_checked_before_the_signature(trader: Trader) -> None:
    headers = trader.headers("/v1/heartbeat")
    headers["X-GEMINI-APIKEY"] = "account-nobody"
    headers["X-GEMINI-SIGNATURE"] = "00" * 48
    assert error(trader.post("/v1/heartbeat", headers=headers)) == (400, "InvalidApiKey")


def test_bad_signature_is_checked_before_the_payload(trader: Trader) -> None:
    headers = trader.headers("/v1/order/cancel", order_id=WIDE)  # wrong endpoint in the payload, too
    headers["X-GEMINI-SIGNATURE"] = hmac.new(
        b"wrong", headers["X-GEMINI-PAYLOAD"].encode(), "sha384"
    ).hexdigest()
    assert error(trader.post("/v1/heartbeat", headers=headers)) == (400, "InvalidSignature")


def test_signature_covers_the_exact_base64_text(trader: Trader) -> None:
    headers = trader.headers("/v1/heartbeat")
    headers["X-GEMINI-PAYLOAD"] = base64.b64encode(
        base64.b64decode(headers["X-GEMINI-PAYLOAD"]) + b" "
    ).decode()
    assert error(trader.post("/v1/heartbeat", headers=headers)) == (400, "InvalidSignature")


def test_payload_that_is_not_json(trader: Trader) -> None:
    text = base64.b64encode(b"not json").decode()
    headers = {
        "X-GEMINI-APIKEY": trader.api_key,
        "X-GEMINI-PAYLOAD": text,
        "X-GEMINI-SIGNATURE": hmac.new(trader.api_secret.encode(), text.encode(), "sha384").hexdigest(),
    }
    assert error(trader.post("/v1/heartbeat", headers=headers)) == (400, "InvalidJson")


def test_endpoint_mismatch(trader: Trader) -> None:
    headers = trader.headers("/v1/order/cancel/all")
    assert error(trader.post("/v1/order/cancel/session", headers=headers)) == (400, "EndpointMismatch")
    assert error(trader.raw("/v1/heartbeat", {"nonce": trader.nonce()})) == (400, "EndpointMismatch")


def test_missing_nonce(trader: Trader) -> None:
    assert error(trader.raw("/v1/heartbeat", {"request": "/v1/heartbeat"})) == (400, "MissingNonce")


def test_counter_nonce_must_increase(trader: Trader) -> None:
    nonce = trader.nonce()
    assert trader.raw("/v1/heartbeat", {"request": "/v1/heartbeat", "nonce": nonce}).status_code == 200
    for stale in (nonce, nonce - 1, str(nonce)):
        reply = trader.raw("/v1/heartbeat", {"request": "/v1/heartbeat", "nonce": stale})
        assert error(reply) == (400, "InvalidNonce")
    assert (
        trader.raw("/v1/heartbeat", {"request": "/v1/heartbeat", "nonce": str(nonce + 1)}).status_code == 200
    )
    assert error(trader.raw("/v1/heartbeat", {"request": "/v1/heartbeat", "nonce": 1.5e15})) == (
        400,
        "InvalidNonce",
    )


def test_counter_nonce_is_atomic_under_concurrency(ex: GeminiExchange) -> None:
    """Four threads send each nonce at once: exactly one of them may be accepted per nonce."""
    clients = [Trader(ex.url, DEFAULT_API_KEY, DEFAULT_API_SECRET) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []
    first = int(time.time() * 1000)

    def run(client: Trader) -> None:
        for nonce in range(first, first + 20):
            barrier.wait(timeout=10)
            reply = client.raw("/v1/heartbeat", {"request": "/v1/heartbeat", "nonce": nonce})
            statuses.append(reply.status_code)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert statuses.count(200) == 20 and statuses.count(400) == 60


def test_time_nonce_window(ex: GeminiExchange) -> None:
    ex.add_key("account-timekey", "tsecret", nonce_mode="time")
    client = Trader(ex.url, "account-timekey", "tsecret", time_nonce=True)
    now = int(time.time())
    ok = {"request": "/v1/heartbeat", "nonce": now}
    assert client.raw("/v1/heartbeat", ok).status_code == 200
    assert client.raw("/v1/heartbeat", ok).status_code == 200  # time nonces need not increase
    # Each nonce is taken from the clock just before its request, rounded away from the window: the
    # exchange compares with its float time, so `int(now) + 31` may be only 30.x s ahead of it.
    for off in (
        lambda: math.floor(time.time()) - 31,
        lambda: math.ceil(time.time()) + 31,
        lambda: now * 1000,
    ):
        assert error(client.raw("/v1/heartbeat", {"request": "/v1/heartbeat", "nonce": off()})) == (
            400,
            "InvalidNonce",
        )


def test_missing_role(ex: GeminiExchange) -> None:
    ex.add_key("account-auditor", "asecret", roles=("Auditor",))
    auditor = Trader(ex.url, "account-auditor", "asecret")
    assert error(auditor.post("/v1/order/cancel", order_id=WIDE)) == (403, "MissingRole")
    assert error(auditor.post("/v1/order/cancel/all")) == (403, "MissingRole")
    assert auditor.post("/v1/orders").json() == []
    assert auditor.post("/v1/roles").json()["isAuditor"] is True


def test_master_key_needs_an_account_of_its_group(ex: GeminiExchange) -> None:
    ex.add_key("master-group", "msecret", roles=("Trader", "Administrator"), accounts=("primary", "desk"))
    desk = ex.place_order("master-group", account="desk")
    ex.place_order(DEFAULT_API_KEY)
    master = Trader(ex.url, "master-group", "msecret")
    assert error(master.post("/v1/orders")) == (400, "MissingAccounts")
    assert error(master.post("/v1/orders", account="elsewhere")) == (400, "InvalidAccount")
    assert [o["order_id"] for o in master.post("/v1/orders", account="desk").json()] == [desk["order_id"]]
    assert len(master.post("/v1/orders", account="primary").json()) == 1
    roles = master.post("/v1/roles").json()
    assert roles["isAccountAdmin"] is True and isinstance(roles["counterparty_id"], str)
    with pytest.raises(ValueError, match="master"):
        ex.add_key("master-hb", "x", require_heartbeat=True)


def test_unknown_paths(trader: Trader, ex: GeminiExchange) -> None:
    assert error(trader.post("/v1/nope")) == (404, "EndpointNotFound")
    assert error(trader.session.get(ex.url + "/v1/orders", timeout=10)) == (404, "EndpointNotFound")


# ---- the rate limit ---------------------------------------------------------------------------------


def test_sixth_request_of_a_fast_burst_is_rate_limited(gemini_exchange_factory: Factory) -> None:
    exchange = gemini_exchange_factory(rate_limit_per_minute=30, burst=5)
    client = Trader(exchange.url, DEFAULT_API_KEY, DEFAULT_API_SECRET)
    replies = []
    for _ in range(6):
        replies.append(client.post("/v1/heartbeat"))
        time.sleep(0.1)
    assert [r.status_code for r in replies[:5]] == [200] * 5
    assert error(replies[5]) == (429, "RateLimit")
    assert int(replies[5].headers["Retry-After"]) >= 1
    exchange.add_key("account-other", "osecret")  # the bucket is per key
    assert Trader(exchange.url, "account-other", "osecret").post("/v1/heartbeat").status_code == 200


def test_rate_limit_off(trader: Trader) -> None:
    assert {trader.post("/v1/heartbeat").status_code for _ in range(40)} == {200}


# ---- orders -----------------------------------------------------------------------------------------


def test_new_order_ids_are_wide_and_exact(trader: Trader, ex: GeminiExchange) -> None:
    placed = trader.post(
        "/v1/order/new", symbol="BTCUSD", amount="0.5", price="61000.10", side="sell", type="exchange limit"
    )
    body = json.loads(placed.text)  # ints exact: the id is a string anyway, as Gemini sends it
    assert body["order_id"] == body["id"] == str(WIDE)
    assert body["symbol"] == "btcusd" and body["is_live"] is True and body["remaining_amount"] == "0.5"
    assert ex.order(WIDE)["order_id"] == str(WIDE)
    status = trader.post("/v1/order/status", order_id=WIDE).json()
    assert status["order_id"] == str(WIDE)
    assert trader.post("/v1/order/status", order_id=str(WIDE)).json()["order_id"] == str(WIDE)
    assert error(trader.post("/v1/order/status", order_id=WIDE - 1)) == (404, "OrderNotFound")
    float_id = trader.post("/v1/order/cancel", order_id=float(WIDE))
    assert error(float_id) == (400, "InvalidOrderId")
    assert ex.order(WIDE)["is_live"] is True


def test_new_order_validation_and_market_closed(trader: Trader, ex: GeminiExchange) -> None:
    order: dict[str, Any] = {
        "symbol": "ethusd",
        "amount": "1",
        "price": "3000",
        "side": "buy",
        "type": "exchange limit",
    }
    assert error(trader.post("/v1/order/new", **{**order, "price": 3000})) == (400, "InvalidPrice")
    assert error(trader.post("/v1/order/new", **{**order, "side": "long"})) == (400, "InvalidSide")
    resting = trader.post("/v1/order/new", **order).json()
    ex.close_market("ETHUSD")
    assert error(trader.post("/v1/order/new", **order)) == (400, "MarketClosed")
    cancelled = trader.post("/v1/order/cancel", order_id=int(resting["order_id"])).json()
    assert cancelled["is_cancelled"] is True and cancelled["reason"] == "Requested"
    ex.open_market("ethusd")
    ioc = trader.post("/v1/order/new", **order, options=["immediate-or-cancel"]).json()
    assert ioc["is_cancelled"] is True and ioc["reason"] == "ImmediateOrCancelWouldPost"
    with pytest.raises(ValueError, match="price"):
        ex.place_order(DEFAULT_API_KEY, price="-1")


def test_cancel_is_idempotent(trader: Trader, ex: GeminiExchange) -> None:
    oid = int(ex.place_order(DEFAULT_API_KEY, client_order_id="mm-1")["order_id"])
    first = trader.post("/v1/order/cancel", order_id=oid).json()
    second = trader.post("/v1/order/cancel", order_id=oid).json()
    assert first == second
    assert (first["is_live"], first["is_cancelled"], first["reason"]) == (False, True, "Requested")
    by_exchange = int(ex.place_order(DEFAULT_API_KEY)["order_id"])
    ex.cancel_by_exchange(by_exchange, "TradingClosed")
    assert trader.post("/v1/order/cancel", order_id=by_exchange).json()["reason"] == "TradingClosed"


def test_cancel_of_a_filled_order_answers_its_status_unchanged(trader: Trader, ex: GeminiExchange) -> None:
    oid = int(ex.place_order(DEFAULT_API_KEY, amount="2")["order_id"])
    filled = ex.fill_order(oid)
    answer = trader.post("/v1/order/cancel", order_id=oid)
    assert answer.status_code == 200 and answer.json() == filled
    assert (filled["is_live"], filled["is_cancelled"], filled["remaining_amount"]) == (False, False, "0")
    partial = int(ex.place_order(DEFAULT_API_KEY, amount="2")["order_id"])
    ex.fill_order(partial, "0.5")
    rest = trader.post("/v1/order/cancel", order_id=partial).json()
    assert (rest["is_cancelled"], rest["executed_amount"], rest["remaining_amount"]) == (True, "0.5", "1.5")


def test_unknown_and_foreign_orders_are_not_found(trader: Trader, ex: GeminiExchange) -> None:
    ex.add_key("account-elsewhere", "esecret", accounts=("other",))
    foreign = int(ex.place_order("account-elsewhere")["order_id"])
    assert error(trader.post("/v1/order/cancel", order_id=foreign)) == (404, "OrderNotFound")
    assert error(trader.post("/v1/order/cancel", order_id=2**63 - 1)) == (404, "OrderNotFound")
    assert error(trader.post("/v1/order/cancel")) == (400, "MissingOrderField")
    assert ex.order(foreign)["is_live"] is True


def test_cancel_session_only_touches_this_keys_orders(trader: Trader, ex: GeminiExchange) -> None:
    ex.add_key("account-second", "ssecret")  # a second key on the same account
    mine = [int(ex.place_order(DEFAULT_API_KEY)["order_id"]) for _ in range(2)]
    theirs = int(ex.place_order("account-second")["order_id"])
    web = int(ex.place_order(None)["order_id"])
    session = trader.post("/v1/order/cancel/session").json()
    assert session == {"result": "ok", "details": {"cancelledOrders": mine, "cancelRejects": []}}
    assert {o["order_id"] for o in ex.live_orders()} == {str(theirs), str(web)}
    everything = trader.post("/v1/order/cancel/all").json()
    assert everything["details"]["cancelledOrders"] == [theirs, web]
    assert ex.live_orders() == []


def test_status_by_client_order_id_and_active_orders(trader: Trader, ex: GeminiExchange) -> None:
    a = ex.place_order(DEFAULT_API_KEY, client_order_id="mm-a", timestampms=1_700_000_000_000)
    b = ex.place_order(DEFAULT_API_KEY, symbol="solusd", side="sell", client_order_id="manual-b")
    ex.fill_order(b["order_id"])
    by_coid = trader.post("/v1/order/status", client_order_id="mm-a").json()
    assert by_coid == a and by_coid["timestamp"] == "1700000000"
    with_trades = trader.post("/v1/order/status", client_order_id="manual-b", include_trades=True).json()
    assert [t["amount"] for t in with_trades["trades"]] == ["1"]
    assert error(trader.post("/v1/order/status", order_id=WIDE, client_order_id="mm-a"))[0] == 400
    assert error(trader.post("/v1/order/status", client_order_id="nope")) == (404, "OrderNotFound")
    assert trader.post("/v1/orders").json() == [a]


def test_require_heartbeat_cancels_the_silent_sessions_orders(gemini_exchange_factory: Factory) -> None:
    exchange = gemini_exchange_factory(rate_limit_per_minute=None, heartbeat_timeout=1.0)
    exchange.add_key("account-hb", "hsecret", require_heartbeat=True)
    client = Trader(exchange.url, "account-hb", "hsecret")
    watched = exchange.place_order("account-hb")["order_id"]
    other = exchange.place_order(DEFAULT_API_KEY)["order_id"]
    for _ in range(8):  # heartbeats keep the session alive
        assert client.post("/v1/heartbeat").status_code == 200
        time.sleep(0.1)
    assert exchange.order(watched)["is_live"] is True
    deadline = time.monotonic() + 10
    while exchange.order(watched)["is_live"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exchange.order(watched)["reason"] == "Requested"
    assert exchange.order(other)["is_live"] is True


def test_maintenance(trader: Trader, ex: GeminiExchange) -> None:
    ex.set_maintenance(True)
    assert error(trader.post("/v1/heartbeat")) == (503, "Maintenance")
    assert error(trader.post("/v1/nope")) == (503, "Maintenance")
    ex.set_maintenance(False)
    assert trader.post("/v1/heartbeat").status_code == 200
    ex.maintenance_for(0.3)
    assert error(trader.post("/v1/heartbeat")) == (503, "Maintenance")
    deadline = time.monotonic() + 10
    while trader.post("/v1/heartbeat").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# ---- faults -----------------------------------------------------------------------------------------


def test_faults_answered_before_processing(trader: Trader, ex: GeminiExchange) -> None:
    oid = int(ex.place_order(DEFAULT_API_KEY)["order_id"])
    ex.inject_fault("rate_limit", "/v1/order/cancel", retry_after=2)
    ex.inject_fault("maintenance", "/v1/order/cancel")
    ex.inject_fault("server_error_text", "/v1/order/cancel")
    ex.inject_fault("not_found_empty", "/v1/order/cancel")
    assert trader.post("/v1/heartbeat").status_code == 200  # other paths are not faulted
    limited = trader.post("/v1/order/cancel", order_id=oid)
    assert error(limited) == (429, "RateLimit") and limited.headers["Retry-After"] == "2"
    assert error(trader.post("/v1/order/cancel", order_id=oid)) == (503, "Maintenance")
    text = trader.post("/v1/order/cancel", order_id=oid)
    assert (text.status_code, text.headers["Content-Type"], text.text) == (
        500,
        "text/plain",
        "upstream unavailable",
    )
    empty = trader.post("/v1/order/cancel", order_id=oid)
    assert (empty.status_code, empty.content) == (404, b"")
    assert ex.order(oid)["is_live"] is True  # no faulted cancel took effect
    assert trader.post("/v1/order/cancel", order_id=oid).json()["is_cancelled"] is True
    assert [e.fault for e in ex.journal if e.path == "/v1/order/cancel"] == [
        "rate_limit",
        "maintenance",
        "server_error_text",
        "not_found_empty",
        None,
    ]


def test_drop_and_drop_after(trader: Trader, ex: GeminiExchange) -> None:
    oid = int(ex.place_order(DEFAULT_API_KEY)["order_id"])
    ex.inject_fault("drop", "/v1/order/cancel")
    with pytest.raises(requests.ConnectionError):
        trader.post("/v1/order/cancel", order_id=oid)
    assert ex.order(oid)["is_live"] is True
    ex.inject_fault("drop_after")
    with pytest.raises(requests.ConnectionError):
        trader.post("/v1/order/cancel", order_id=oid)
    assert ex.order(oid)["is_cancelled"] is True  # the server acted; the answer was lost
    entries = [(e.status, e.fault) for e in ex.journal]
    assert entries == [(0, "drop"), (200, "drop_after")]


def test_delay_and_counted_faults(trader: Trader, ex: GeminiExchange) -> None:
    ex.inject_fault("delay", "/v1/heartbeat", delay=0.2)
    assert trader.post("/v1/heartbeat").status_code == 200
    ex.inject_fault("maintenance", count=2)
    assert [trader.post("/v1/roles").status_code for _ in range(3)] == [503, 503, 200]
    assert [e.fault for e in ex.journal] == ["delay", "maintenance", "maintenance", None]
    with pytest.raises(ValueError, match="delay"):
        ex.inject_fault("delay")
    with pytest.raises(ValueError, match="kind"):
        ex.inject_fault("meteor")


def test_seeded_fault_rate_replays(gemini_exchange_factory: Factory) -> None:
    def run() -> list[int]:
        exchange = gemini_exchange_factory(rate_limit_per_minute=None)
        exchange.set_fault_rate(0.4, seed=7, kinds=("rate_limit", "maintenance", "server_error_text"))
        client = Trader(exchange.url, DEFAULT_API_KEY, DEFAULT_API_SECRET)
        statuses = [client.post("/v1/heartbeat").status_code for _ in range(30)]
        exchange.clear_faults()
        assert client.post("/v1/heartbeat").status_code == 200
        return statuses

    first = run()
    assert first == run()
    assert 200 in first and {429, 503, 500} & set(first)


# ---- the journal and the admin views ----------------------------------------------------------------


def test_journal_keeps_decoded_payloads_never_the_signature(trader: Trader, ex: GeminiExchange) -> None:
    headers = trader.headers("/v1/order/cancel", order_id=WIDE)
    trader.post("/v1/order/cancel", headers=headers)
    bad = trader.headers("/v1/heartbeat")
    bad["X-GEMINI-SIGNATURE"] = "ab" * 48
    trader.post("/v1/heartbeat", headers=bad)
    first, second = ex.journal
    assert (first.path, first.api_key, first.status, first.reason) == (
        "/v1/order/cancel",
        DEFAULT_API_KEY,
        404,
        "OrderNotFound",
    )
    assert first.payload["order_id"] == WIDE and type(first.payload["order_id"]) is int
    assert first.nonce == first.payload["nonce"]
    assert (second.status, second.reason) == (400, "InvalidSignature")
    admin = trader.session.get(ex.url + "/_admin/journal", timeout=10).text
    for text in (repr(ex.journal), admin):
        for secret in (headers["X-GEMINI-SIGNATURE"], headers["X-GEMINI-PAYLOAD"], bad["X-GEMINI-PAYLOAD"]):
            assert secret not in text
        assert DEFAULT_API_SECRET not in text
    assert ex.count("/v1/order/cancel") == 1 and ex.count(status=400) == 1
    ex.clear_journal()
    assert ex.journal == []


def test_admin_orders_and_demo_book(ex: GeminiExchange) -> None:
    now = 1_700_000_000_000
    book = ex.place_demo_book(DEFAULT_API_KEY, now_ms=now)
    live = [o for o in book if o["is_live"]]
    ages = [(now - o["timestampms"]) / 3_600_000 for o in live]
    assert len(book) == 12 and len(live) == 10
    assert sum(2 <= a <= 3 for a in ages) == 5 and sum(a < 0.25 for a in ages) == 5
    assert {o["symbol"] for o in live} == {"btcusd", "ethusd", "solusd"} and {o["side"] for o in live} == {
        "buy",
        "sell",
    }
    prefixes = {(o.get("client_order_id") or "-").split("-")[0] for o in live}
    assert prefixes == {"mm", "manual", ""}
    rows = requests.get(ex.url + "/_admin/orders", timeout=10).json()
    assert sorted(r["state"] for r in rows) == ["cancelled", "filled"] + ["live"] * 10
    assert all(r["account"] == "primary" for r in rows)
    assert requests.get(ex.url + "/_admin/health", timeout=10).json() == {"result": "ok"}


# ---- lifecycle and the pytest plugin ----------------------------------------------------------------


def test_lifecycle_closes_keep_alive_connections() -> None:
    exchange = GeminiExchange(rate_limit_per_minute=None)
    with pytest.raises(RuntimeError):
        exchange.url  # noqa: B018
    with exchange:
        exchange.add_key("account-x", "xsecret")
        client = Trader(exchange.url, "account-x", "xsecret")
        assert client.post("/v1/heartbeat").status_code == 200  # leaves a keep-alive connection open
        url = exchange.url
    deadline = time.monotonic() + 10
    while any("process_request" in t.name for t in threading.enumerate()):  # handler threads end
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(requests.ConnectionError):
        requests.post(url + "/v1/heartbeat", timeout=5)
    exchange.stop()  # twice is fine
    assert "secret" not in repr(exchange)


def test_default_fixture_is_rate_limited_like_gemini(
    gemini_exchange: GeminiExchange, gemini_credentials: GeminiCredentials
) -> None:
    assert (gemini_exchange.rate_limit_per_minute, gemini_exchange.burst) == (600, 5)
    assert gemini_credentials == GeminiCredentials(DEFAULT_API_KEY, DEFAULT_API_SECRET)
    assert DEFAULT_API_SECRET not in repr(gemini_credentials)
    client = Trader(gemini_exchange.url, gemini_credentials.api_key, gemini_credentials.api_secret)
    assert client.post("/v1/roles").json()["isTrader"] is True


@pytest.mark.gemini_exchange(
    rate_limit_per_minute=None, nonce_mode="time", api_key="account-t", api_secret="s"
)
def test_marker_configures_the_fixture_and_connection(
    gemini_exchange: GeminiExchange, gemini_connection: str
) -> None:
    assert gemini_connection == "gemini_default"
    conn = json.loads(os.environ["AIRFLOW_CONN_GEMINI_DEFAULT"])
    assert conn == {
        "conn_type": "geminiexchange",
        "login": "account-t",
        "password": "s",
        "host": gemini_exchange.url,
        "extra": {"nonce_mode": "time"},
    }
    client = Trader(conn["host"], conn["login"], conn["password"], time_nonce=True)
    assert {client.post("/v1/heartbeat").status_code for _ in range(20)} == {200}
