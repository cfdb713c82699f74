"""Bad input, table-driven: each case must fail with a message that names the field and says what is
wrong with the value, before any request reaches the exchange (its journal stays empty).

Operator arguments are checked twice: as literals when the DAG file is parsed (ValueError), and after
Airflow renders the templates (AirflowFailException: no Airflow retries, since a retry renders the same
value). The rendered path is driven as Airflow drives it: the attribute holds what the template
rendered, then `execute` runs with the connection from the environment. Connection problems fail the
same way, without retries, and so does anything the client refuses to send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from helpers import RecordingTI

from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.operators.cancel import (
    GeminiCancelAllOrdersOperator,
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor
from airflow_provider_gemini.testing.exchange import GeminiExchange

EXPECTED_ID = "expected an order id"
ID_RANGE = "between 1 and 2**63-1"


def cancel_ids(value: Any) -> GeminiCancelOrderOperator:
    op = GeminiCancelOrderOperator(task_id="cancel", order_id="{{ params.order_ids }}")
    op.order_id = value
    return op


def stale(**rendered: Any) -> GeminiCancelStaleOrdersOperator:
    op = GeminiCancelStaleOrdersOperator(task_id="stale", max_age="{{ params.max_age }}")
    op.max_age = 3600
    for name, value in rendered.items():
        setattr(op, name, value)
    return op


def cancel_all(scope: Any) -> GeminiCancelAllOrdersOperator:
    op = GeminiCancelAllOrdersOperator(task_id="all", scope="{{ params.scope }}")
    op.scope = scope
    return op


# (case id, operator whose rendered field holds the bad value, the message's field, its problem)
RENDERED: list[tuple[str, Callable[[], Any], str, str]] = [
    ("id-bool", lambda: cancel_ids(True), "order_id", EXPECTED_ID),
    ("id-float", lambda: cancel_ids(1.5), "order_id", EXPECTED_ID),
    ("id-negative", lambda: cancel_ids(-3), "order_id", ID_RANGE),
    ("id-zero", lambda: cancel_ids(0), "order_id", ID_RANGE),
    ("id-empty", lambda: cancel_ids(""), "order_id", EXPECTED_ID),
    ("id-blank", lambda: cancel_ids(" "), "order_id", EXPECTED_ID),
    ("id-not-digits", lambda: cancel_ids("12a"), "order_id", EXPECTED_ID),
    ("id-exponent", lambda: cancel_ids("1e3"), "order_id", EXPECTED_ID),
    ("id-too-large", lambda: cancel_ids(2**63), "order_id", ID_RANGE),
    ("id-too-large-text", lambda: cancel_ids(str(2**63)), "order_id", ID_RANGE),
    ("id-none", lambda: cancel_ids(None), "order_id", EXPECTED_ID),
    ("id-dict", lambda: cancel_ids({"a": 1}), "order_id", EXPECTED_ID),
    ("id-nested", lambda: cancel_ids([[1]]), "order_id[0]", EXPECTED_ID),
    ("id-nested-deep", lambda: cancel_ids([1, [2, [3]]]), "order_id[1]", EXPECTED_ID),
    ("id-empty-list", lambda: cancel_ids([]), "order_id", "no order ids given"),
    ("id-bad-in-rendered-list", lambda: cancel_ids("[1, 'x']"), "order_id[1]", EXPECTED_ID),
    ("id-unclosed-list", lambda: cancel_ids("[1, 2"), "order_id", "not a list of order ids"),
    ("age-negative", lambda: stale(max_age=-1), "max_age", "must not be negative"),
    (
        "age-negative-timedelta",
        lambda: stale(max_age=timedelta(minutes=-5)),
        "max_age",
        "must not be negative",
    ),
    ("age-text", lambda: stale(max_age="abc"), "max_age", "expected a timedelta or a number of seconds"),
    ("age-none", lambda: stale(max_age=None), "max_age", "expected a timedelta or a number of seconds"),
    (
        "age-nan",
        lambda: stale(max_age=float("nan")),
        "max_age",
        "expected a timedelta or a number of seconds",
    ),
    ("side-hold", lambda: stale(side="hold"), "side", "expected 'buy', 'sell' or None"),
    ("side-number", lambda: stale(side=1), "side", "expected 'buy', 'sell' or None"),
    ("scope-everything", lambda: cancel_all("everything"), "scope", "expected 'session' or 'all'"),
    ("scope-none", lambda: cancel_all(None), "scope", "expected 'session' or 'all'"),
    ("symbols-number", lambda: stale(symbols=5), "symbols", "expected a symbol, a list of symbols or None"),
    ("symbols-mixed", lambda: stale(symbols=["btcusd", 5]), "symbols", "not a symbol: 5"),
    ("symbols-nested", lambda: stale(symbols=[["btcusd"]]), "symbols", "not a symbol"),
    ("symbols-empty-list", lambda: stale(symbols=[]), "symbols", "empty"),
    ("cap-zero", lambda: stale(max_cancellations=0), "max_cancellations", "expected an integer >= 1"),
    ("cap-negative", lambda: stale(max_cancellations=-1), "max_cancellations", "expected an integer >= 1"),
    ("cap-text", lambda: stale(max_cancellations="x"), "max_cancellations", "expected an integer >= 1"),
    ("cap-bool", lambda: stale(max_cancellations=True), "max_cancellations", "expected an integer >= 1"),
    ("dry-run-maybe", lambda: stale(dry_run="maybe"), "dry_run", "expected true or false"),
    ("account-blank", lambda: stale(account=" "), "account", "expected an account nickname"),
]


@pytest.mark.parametrize(
    ("make", "field", "problem"), [c[1:] for c in RENDERED], ids=[c[0] for c in RENDERED]
)
def test_bad_rendered_argument_fails_without_retries_before_any_request(
    gemini_exchange: GeminiExchange, gemini_connection: str, make: Callable[[], Any], field: str, problem: str
) -> None:
    op = make()
    with pytest.raises(AirflowFailException) as caught:
        op.execute({"ti": RecordingTI(), "params": {}})
    message = str(caught.value)
    assert message.startswith(f"{field}:") and problem in message, message
    assert gemini_exchange.journal == []


# Literal arguments fail when the DAG file is parsed: (case id, constructor, field, problem)
LITERAL: list[tuple[str, Callable[[], Any], str, str]] = [
    ("op-id-bool", lambda: GeminiCancelOrderOperator(task_id="t", order_id=True), "order_id", EXPECTED_ID),
    (
        "op-id-nested",
        lambda: GeminiCancelOrderOperator(task_id="t", order_id=[1, [2]]),
        "order_id[1]",
        EXPECTED_ID,
    ),
    (
        "op-age-text",
        lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age="soon"),
        "max_age",
        "expected",
    ),
    (
        "op-side-hold",
        lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=60, side="hold"),
        "side",
        "expected",
    ),
    ("op-scope", lambda: GeminiCancelAllOrdersOperator(task_id="t", scope="everything"), "scope", "expected"),
    (
        "sensor-id-text",
        lambda: GeminiOrderCancelledSensor(task_id="t", order_id="12a"),
        "order_id",
        EXPECTED_ID,
    ),
    (
        "sensor-id-zero",
        lambda: GeminiOrderCancelledSensor(task_id="t", order_id=[5, 0]),
        "order_id[1]",
        ID_RANGE,
    ),
]


@pytest.mark.parametrize(("make", "field", "problem"), [c[1:] for c in LITERAL], ids=[c[0] for c in LITERAL])
def test_bad_literal_argument_fails_when_the_dag_is_parsed(
    make: Callable[[], Any], field: str, problem: str
) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    message = str(caught.value)
    assert message.startswith(f"{field}:") and problem in message, message


# Connections: (case id, change to the fixture's connection JSON, the message's field, its problem)
CONNECTIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-key", {"login": None}, "API key (login)", "empty"),
    ("blank-key", {"login": "  "}, "API key (login)", "empty"),
    ("no-secret", {"password": None}, "API secret (password)", "empty"),
    (
        "unknown-environment",
        {"host": None, "extra": {"environment": "staging"}},
        "environment",
        "'production' or 'sandbox'",
    ),
    ("host-ftp", {"host": "ftp://x"}, "host", "expected a base URL"),
    ("host-not-a-url", {"host": "not a url"}, "host", "expected a base URL"),
    ("host-scheme-only", {"host": "http://"}, "host", "expected a base URL"),
    ("host-with-path", {"host": "https://api.gemini.com/v1"}, "host", "expected a base URL"),
    ("nonce-mode-micro", {"extra": {"nonce_mode": "micro"}}, "nonce_mode", "'counter' or 'time'"),
    ("timeout-negative", {"extra": {"timeout": "-1"}}, "timeout", "positive number of seconds"),
    ("timeout-text", {"extra": {"timeout": "soon"}}, "timeout", "positive number of seconds"),
    ("max-attempts-zero", {"extra": {"max_attempts": 0}}, "max_attempts", "integer >= 1"),
    (
        "rate-limit-text",
        {"extra": {"rate_limit_per_minute": "fast"}},
        "rate_limit_per_minute",
        "positive number",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "problem"), [c[1:] for c in CONNECTIONS], ids=[c[0] for c in CONNECTIONS]
)
def test_bad_connection_fails_without_retries_before_any_request(
    gemini_exchange: GeminiExchange,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    conn = json.loads(gemini_exchange.airflow_connection())
    conn.update(change)
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    op = GeminiCancelStaleOrdersOperator(task_id="stale", max_age=3600)
    with pytest.raises(AirflowFailException) as caught:
        op.execute({"ti": RecordingTI(), "params": {}})
    message = str(caught.value)
    assert "'gemini_default'" in message and field in message and problem in message, message
    assert gemini_exchange.api_secret not in message
    assert gemini_exchange.journal == []


@pytest.mark.gemini_exchange(api_key="master-reliability-group", accounts=("primary", "desk-b"))
@pytest.mark.parametrize("operator", ["stale", "ids", "all"])
def test_master_key_without_account_fails_without_retries_before_any_request(
    gemini_exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch, operator: str
) -> None:
    conn = json.loads(gemini_exchange.airflow_connection())
    conn.pop("extra", None)  # the fixture names the first account; a user may forget to
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    op = {
        "stale": lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=3600),
        "ids": lambda: GeminiCancelOrderOperator(task_id="t", order_id=9007199254740993),
        "all": lambda: GeminiCancelAllOrdersOperator(task_id="t", scope="all"),
    }[operator]()
    with pytest.raises(AirflowFailException) as caught:
        op.execute({"ti": RecordingTI(), "params": {}})
    message = str(caught.value)
    assert "account" in message and "master API key" in message, message
    assert gemini_exchange.journal == []


CLIENT: list[tuple[str, dict[str, Any], str, str]] = [
    ("client-no-key", {"api_key": ""}, "api_key", "non-empty"),
    ("client-no-secret", {"api_secret": ""}, "api_secret", "non-empty"),
    ("client-nonce-micro", {"nonce_mode": "micro"}, "nonce_mode", "'counter' or 'time'"),
    ("client-timeout-negative", {"timeout": -1}, "timeout", "positive number"),
    ("client-timeout-text", {"timeout": "-1"}, "timeout", "positive number"),
    ("client-attempts-zero", {"max_attempts": 0}, "max_attempts", "integer >= 1"),
    ("client-url-ftp", {"base_url": "ftp://x"}, "base_url", "http(s)://host"),
    ("client-url-spaces", {"base_url": "http://not a url"}, "base_url", "http(s)://host"),
    ("client-account-blank", {"account": " "}, "account", "non-empty"),
]


@pytest.mark.parametrize(("change", "field", "problem"), [c[1:] for c in CLIENT], ids=[c[0] for c in CLIENT])
def test_bad_client_argument(
    gemini_exchange: GeminiExchange, change: dict[str, Any], field: str, problem: str
) -> None:
    kwargs: dict[str, Any] = {
        "api_key": gemini_exchange.api_key,
        "api_secret": gemini_exchange.api_secret,
        "base_url": gemini_exchange.url,
        **change,
    }
    with pytest.raises(ValueError) as caught:
        GeminiClient(**kwargs)
    message = str(caught.value)
    assert message.startswith(f"{field}:") and problem in message, message
    assert gemini_exchange.journal == []
