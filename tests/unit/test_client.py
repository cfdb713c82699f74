"""The client's pure parts: JSON decoding, order ids, models, error mapping, arguments, the limiter."""

from __future__ import annotations

import pickle
from decimal import Decimal
from email.utils import formatdate
from typing import Any

import pytest

import airflow_provider_gemini.client as client_module
from airflow_provider_gemini.arguments import parse_order_id, parse_order_ids
from airflow_provider_gemini.client import ClientStats, GeminiClient, RateLimiter, decode_json
from airflow_provider_gemini.exceptions import (
    ERROR_CLASSES,
    GeminiError,
    InvalidNonceError,
    RateLimitedError,
    ServiceError,
    error_from_response,
)
from airflow_provider_gemini.models import CancelAllResult, CancelReason, Order, Roles

SECRET = "never-show-this-secret"
KEY = "account-K3yThatStaysPrivate"


# ---- decode_json -------------------------------------------------------------------------------------


def test_decode_json_keeps_integers_exact_and_fractions_decimal() -> None:
    data = decode_json(b'{"a": 9007199254740993, "b": 0.1, "c": [1e400, -0.00000001], "d": "1.10"}')
    assert data["a"] == 9007199254740993 and type(data["a"]) is int
    assert data["b"] == Decimal("0.1")
    assert data["c"] == [Decimal("1e400"), Decimal("-0.00000001")]
    assert data["d"] == "1.10"
    assert decode_json(str(2**200)) == 2**200


def test_decode_json_refuses_text_that_is_not_json() -> None:
    with pytest.raises(ValueError):
        decode_json(b"<html>502 Bad Gateway</html>")


# ---- order ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("42", 42), (" 9007199254740993\n", 9007199254740993), (2**63 - 1, 2**63 - 1)],
)
def test_parse_order_id_accepts_ints_and_digit_strings(value: object, expected: int) -> None:
    assert parse_order_id(value) == expected


NOT_ORDER_IDS = [True, False, 1.0, 9007199254740993.0, -5, 0, "", "  ", "-1", "+1", "1e3", "12a"]
NOT_ORDER_IDS += ["\uff11\uff12", 2**63, str(2**63), None, Decimal("7"), [1]]


@pytest.mark.parametrize("value", NOT_ORDER_IDS)
def test_parse_order_id_rejects_everything_else_naming_field_and_value(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_order_id(value, field="order_ids")
    assert str(caught.value).startswith("order_ids: ")
    assert repr(value)[:40] in str(caught.value)


def test_parse_order_ids_takes_one_a_list_or_the_text_of_a_list() -> None:
    assert parse_order_ids("17") == [17]
    assert parse_order_ids([3, "1", 3, " 2 "]) == [3, 1, 2]
    assert parse_order_ids((5,)) == [5]
    assert parse_order_ids("[9007199254740993, 4]") == [9007199254740993, 4]
    assert parse_order_ids("['9007199254740993', '4', '4']") == [9007199254740993, 4]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "order_id: no order ids given"),
        ("[]", "order_id: no order ids given"),
        ([1, "x"], "order_id[1]: expected an order id"),
        ("[1, 2", "order_id: not a list of order ids"),
        ("{'a': 1}", "order_id: expected an order id"),
        ("[1.5]", "order_id[0]: expected an order id"),
    ],
)
def test_parse_order_ids_errors_name_the_item(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_order_ids(value)


# ---- models ------------------------------------------------------------------------------------------

STATUS = {
    "order_id": "9007199254740993",
    "id": "9007199254740993",
    "client_order_id": "mm-1",
    "symbol": "btcusd",
    "side": "buy",
    "type": "exchange limit",
    "price": "2960.00",
    "original_amount": "5",
    "executed_amount": "3.76",
    "remaining_amount": "1.24",
    "is_live": False,
    "is_cancelled": True,
    "reason": "Requested",
    "timestampms": 1495742383345,
}


def order(**changes: Any) -> Order:
    return Order.from_status({**STATUS, **changes})


def test_order_keeps_ids_and_amounts_exactly() -> None:
    parsed = order()
    assert parsed.order_id == "9007199254740993"
    assert (parsed.price, parsed.executed_amount, parsed.remaining_amount) == ("2960.00", "3.76", "1.24")
    assert parsed.state == "cancelled"
    assert parsed.summary() == {
        "symbol": "btcusd",
        "side": "buy",
        "price": "2960.00",
        "original_amount": "5",
        "remaining_amount": "1.24",
        "reason": "Requested",
        "client_order_id": "mm-1",
    }
    assert order(order_id=9007199254740993).order_id == "9007199254740993"


def test_order_states() -> None:
    assert order(is_live=True, is_cancelled=False).state == "live"
    assert order(is_cancelled=False, executed_amount="5", remaining_amount="0").state == "filled"
    assert order(is_cancelled=False, executed_amount="0", remaining_amount="5").state == "closed"
    assert order(is_cancelled=False, executed_amount="0.0", remaining_amount="0").state == "closed"


def test_unknown_cancel_reasons_pass_through() -> None:
    assert order(reason="SomethingNew").reason == "SomethingNew"
    assert CancelReason("AuctionCancelled") is CancelReason.AuctionCancelled
    assert order(reason="MarketClosed").reason == CancelReason.MarketClosed


def test_order_without_an_id_is_refused() -> None:
    with pytest.raises(ValueError, match="order_id"):
        Order.from_status({"symbol": "btcusd"})


def test_roles_and_cancel_all_results() -> None:
    roles = Roles.from_response({"isTrader": True, "isAuditor": False, "isFundManager": True})
    assert roles == Roles(True, False, True, None)
    assert roles.names() == ["Trader", "FundManager"]
    result = CancelAllResult.from_response(
        {
            "result": "ok",
            "details": {"cancelledOrders": [9007199254740993, 7], "cancelRejects": [{"order_id": 8}]},
        }
    )
    assert result == CancelAllResult(cancelled=["9007199254740993", "7"], rejected=["8"])


# ---- errors ------------------------------------------------------------------------------------------


def test_every_kind_has_its_class() -> None:
    assert set(ERROR_CLASSES) == {
        "invalid_nonce",
        "missing_nonce",
        "invalid_signature",
        "missing_role",
        "terms_required",
        "insufficient_funds",
        "rate_limited",
        "order_not_found",
        "market_closed",
        "not_found",
        "service_error",
        "invalid_request",
        # The provider's own, for OAuth: a token without the endpoint's scope, a refused refresh token.
        "missing_scope",
        "invalid_grant",
    }
    for kind, cls in ERROR_CLASSES.items():
        assert issubclass(cls, GeminiError) and cls.kind == kind


def error_body(reason: str) -> str:
    return f'{{"result":"error","reason":"{reason}","message":"m"}}'


ERROR_SHAPES = [
    (503, {"Retry-After": "2"}, error_body("Maintenance"), "service_error", "Maintenance", True),
    (502, {}, "<html>bad gateway</html>", "service_error", None, True),
    (401, {}, error_body("MissingApikeyHeader"), "invalid_request", "MissingApikeyHeader", False),
    (400, {}, error_body("InvalidSignature"), "invalid_signature", "InvalidSignature", False),
    (400, {}, error_body("MissingAccounts"), "invalid_request", "MissingAccounts", False),
    (400, {}, error_body("MissingNonce"), "missing_nonce", "MissingNonce", False),
    (400, {}, error_body("InvalidNonce"), "invalid_nonce", "InvalidNonce", True),
    (404, {}, error_body("EndpointNotFound"), "not_found", "EndpointNotFound", False),
    (400, {}, "[1, 2]", "invalid_request", None, False),
    (429, {}, "", "rate_limited", None, True),
]


@pytest.mark.parametrize(("status", "headers", "body", "kind", "reason", "retryable"), ERROR_SHAPES)
def test_error_shapes(
    status: int, headers: dict[str, str], body: str, kind: str, reason: str | None, retryable: bool
) -> None:
    error = error_from_response(status, headers, body.encode())
    assert (error.kind, error.reason, error.status, error.retryable) == (kind, reason, status, retryable)
    assert type(error) is ERROR_CLASSES[kind]


def test_retry_after_as_http_date_and_long_bodies_are_cut() -> None:
    error = error_from_response(429, {"retry-after": formatdate(usegmt=True)}, "x" * 5000)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is not None and 0 <= error.retry_after <= 1
    assert len(error.message) <= 300
    assert error_from_response(429, {"Retry-After": "soon"}, "").retry_after is None


def test_errors_survive_pickling_and_read_well() -> None:
    error = InvalidNonceError("Nonce '5' has not increased", reason="InvalidNonce", status=400)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.message, copy.reason, copy.status) == (
        InvalidNonceError,
        error.message,
        "InvalidNonce",
        400,
    )
    assert str(copy) == "invalid_nonce (HTTP 400, InvalidNonce): Nonce '5' has not increased"
    transport = ServiceError("/v1/orders: connection failed", reason="ConnectionError")
    assert transport.retryable and transport.status is None
    assert str(transport) == "service_error (no HTTP answer, ConnectionError): /v1/orders: connection failed"


# ---- the client's arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "ftp://x"}, "base_url: expected http"),
        ({"base_url": "http://"}, "base_url: expected http"),
        ({"base_url": "http://h:port"}, "base_url: not a valid URL"),
        ({"nonce_mode": "micro"}, "nonce_mode: expected 'counter' or 'time', got 'micro'"),
        ({"timeout": 0}, "timeout: expected a positive number, got 0"),
        ({"timeout": True}, "timeout: expected a positive number"),
        ({"timeout": float("nan")}, "timeout: expected a positive number"),
        ({"max_attempts": 0}, "max_attempts: expected an integer >= 1, got 0"),
        ({"rate_limit_per_minute": -1}, "rate_limit_per_minute: expected a positive number"),
        ({"burst": 0}, "burst: expected an integer >= 1"),
        ({"account": ""}, "account: expected a non-empty account nickname"),
    ],
)
def test_bad_client_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GeminiClient(KEY, SECRET, **kwargs)


@pytest.mark.parametrize(
    ("key", "secret"), [("", SECRET), (" account-x", SECRET), ("account\nx", SECRET), (KEY, "")]
)
def test_empty_credentials_are_refused_without_echoing_them(key: str, secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        GeminiClient(key, secret)
    assert SECRET not in str(caught.value) and (not key.strip() or key.strip() not in str(caught.value))


def test_repr_shows_the_url_and_a_masked_key_only() -> None:
    client = GeminiClient(KEY, SECRET, base_url="http://127.0.0.1:9/")
    text = repr(client)
    assert text == "GeminiClient(base_url='http://127.0.0.1:9', api_key='account-***')"
    assert SECRET not in text and KEY not in text
    assert "K3y" not in repr(GeminiClient("K3yWithoutPrefix", SECRET))


def test_order_arguments_are_checked_before_any_request() -> None:
    client = GeminiClient(KEY, SECRET, base_url="http://127.0.0.1:9", max_attempts=1)
    for bad in (True, 1.5, -1, "", "12x", 2**63):
        with pytest.raises(ValueError, match="order_id"):
            client.cancel_order(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one of order_id and client_order_id"):
        client.order_status()
    with pytest.raises(ValueError, match="exactly one of order_id and client_order_id"):
        client.order_status(order_id=1, client_order_id="a")
    with pytest.raises(ValueError, match="client_order_id: expected a non-empty string"):
        client.order_status(client_order_id=" ")
    with pytest.raises(ValueError, match="path: expected an endpoint path"):
        client.private("v1/orders")
    assert client.stats.requests == 0


def test_master_key_without_account_is_refused_before_sending() -> None:
    client = GeminiClient("master-K3y", SECRET, base_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(ValueError, match="account: a master API key must name the account"):
        client.cancel_order(5)
    with pytest.raises(ValueError, match="account: a master API key"):
        client.cancel_all_orders()
    assert client.stats.requests == 0


def test_stats_as_dict() -> None:
    stats = ClientStats()
    stats.count_request()
    stats.count_request()
    stats.count_retry("rate_limited")
    assert stats.as_dict() == {"requests": 2, "retries": 1, "retries_by_kind": {"rate_limited": 1}}


# ---- the rate limiter, on a fake clock ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_limiter_lets_a_burst_through_then_paces_just_under_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(600, 5, clock=clock.monotonic)

    def take() -> float:
        wait = limiter.reserve()
        clock.sleep(wait)  # as the clients do before sending
        return wait

    waits = [take() for _ in range(104)]
    # One token of Gemini's burst of 5 stays in reserve against a request that arrives late.
    assert waits[:4] == [0.0] * 4
    assert all(w > 0 for w in waits[4:])
    achieved = 100 / (clock.now - 1000.0)
    assert achieved == pytest.approx(10 * (1 - client_module.RATE_SAFETY_MARGIN))
    assert 0.98 * 10 <= achieved < 10
    clock.now += 60
    assert [take() for _ in range(4)] == [0.0] * 4
    assert take() > 0
    assert RateLimiter(600, 1).capacity == 1


def test_limiter_is_shared_by_clients_of_one_key() -> None:
    first = GeminiClient(KEY + "shared", SECRET)
    second = GeminiClient(KEY + "shared", SECRET)
    other = GeminiClient(KEY + "other", SECRET)
    assert first._limiter is second._limiter is not None
    assert other._limiter is not first._limiter
    assert GeminiClient(KEY, SECRET, rate_limit_per_minute=None)._limiter is None
