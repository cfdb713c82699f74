"""A hung exchange (accepts the connection, never answers) makes a cancel fail, not hang.

The proof is the attempt count: the raw server counts the connections it accepted, and a client that
gives up on each attempt after `timeout` and retries `max_attempts` times opens exactly that many.
pytest-timeout catches a hang; no assertion is made on elapsed time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from helpers import RecordingTI
from loopback_servers import HungServer

from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.exceptions import ServiceError
from airflow_provider_gemini.operators.cancel import GeminiCancelOrderOperator

API_KEY = "account-reliability-timeouts"
API_SECRET = "timeouts-secret-91c4"


@pytest.fixture
def hung_server() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_cancel_against_a_hung_exchange_times_out_after_every_attempt(
    hung_server: HungServer, max_attempts: int
) -> None:
    client = GeminiClient(
        API_KEY,
        API_SECRET,
        base_url=hung_server.url,
        timeout=0.3,
        max_attempts=max_attempts,
        rate_limit_per_minute=None,
    )
    with client, pytest.raises(ServiceError) as caught:
        client.cancel_order(9007199254740993)
    error = caught.value
    assert (error.kind, error.reason, error.status) == ("service_error", "Timeout", None)
    assert error.retryable
    assert "/v1/order/cancel" in str(error) and "0.3 s" in str(error)
    assert hung_server.accepted == max_attempts
    assert client.stats.requests == max_attempts
    assert client.stats.retries_by_kind == ({"service_error": max_attempts - 1} if max_attempts > 1 else {})


@pytest.mark.timeout(60)
def test_cancel_task_against_a_hung_exchange_fails_retryably_after_the_configured_attempts(
    hung_server: HungServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the connection (timeout and max_attempts extras), as a task: the listing and then each
    pass's cancel give up after max_attempts, later passes stop at the run's deadline, the report says
    why, and Airflow may retry the task."""
    conn = {
        "conn_type": "geminiexchange",
        "login": API_KEY,
        "password": API_SECRET,
        "host": hung_server.url,
        "extra": {"timeout": 0.3, "max_attempts": 2, "rate_limit_per_minute": "off"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    ti = RecordingTI()
    op = GeminiCancelOrderOperator(task_id="cancel", order_id=9007199254740993, deadline=timedelta(seconds=4))
    with pytest.raises(AirflowException) as caught:
        op.execute({"ti": ti, "params": {}})  # type: ignore[arg-type]
    assert not isinstance(caught.value, AirflowFailException), "a timeout is transient: Airflow should retry"
    report = ti.pushed["return_value"]
    assert [(f["order_id"], f["kind"], f["reason"]) for f in report["failed"]] == [
        ("9007199254740993", "service_error", "Timeout")
    ]
    assert "no answer within 0.3 s" in report["failed"][0]["message"]
    # Two attempts for the listing (which the operator can go on without), two per pass for the cancel.
    passes = report["stats"]["passes"]
    assert passes >= 1
    assert hung_server.accepted == 2 + 2 * passes
    assert report["stats"]["requests"] == hung_server.accepted
    assert report["stats"]["retries"] == hung_server.accepted // 2
    assert report["stats"]["retries_by_kind"] == {"service_error": hung_server.accepted // 2}
