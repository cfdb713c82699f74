"""The stale sweep judges ages by the exchange's clock and refuses a skewed worker; one odd listing row
never blocks a cancel by id. Against the local exchange over real HTTP, its clock set apart from ours."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from helpers import RecordingTI

from airflow_provider_gemini.operators.cancel import (
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.testing.exchange import GeminiExchange

pytestmark = pytest.mark.usefixtures("as_the_task_runner")

MINUTE_MS = 60_000
ODD_ROW = {"order_id": "424242", "timestampms": "1.7e12", "symbol": "btcusd"}


def place_aged(exchange: GeminiExchange, minutes_old: float) -> str:
    """An order `minutes_old` old by the exchange's clock (which stamps every order)."""
    assert exchange.api_key is not None
    exchange_now = time.time() * 1000 + exchange.clock_offset * 1000
    stamp = int(exchange_now - minutes_old * MINUTE_MS)
    return str(exchange.place_order(exchange.api_key, timestampms=stamp)["order_id"])


def sweep(**arguments: Any) -> tuple[dict[str, Any] | None, BaseException | None, RecordingTI]:
    ti = RecordingTI()
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, **arguments)
    try:
        return op.execute({"ti": ti, "params": {}}), None, ti  # type: ignore[arg-type]
    except AirflowException as error:
        return None, error, ti


def test_a_worker_ten_minutes_fast_cancels_only_what_is_old_on_the_exchange_clock(
    exchange: GeminiExchange,
) -> None:
    exchange.set_clock_offset(-600.0)  # the exchange is ten minutes behind: the worker is fast
    young = place_aged(exchange, 55)  # 65 minutes old by the worker's clock
    old = place_aged(exchange, 61)
    report, error, _ = sweep(max_clock_skew=900)
    assert error is None and report is not None
    assert report["cancelled"] == [old]
    assert exchange.order(young)["is_live"] and exchange.order(old)["is_cancelled"]
    assert report["stats"]["clock"] == "exchange"
    assert report["stats"]["clock_offset_s"] == pytest.approx(-600.0, abs=2.0)


@pytest.mark.parametrize("offset", [-600.0, 30.0])
def test_a_skew_beyond_the_bound_refuses_the_sweep_and_names_both_clocks(
    exchange: GeminiExchange, offset: float
) -> None:
    exchange.set_clock_offset(offset)
    orders = [place_aged(exchange, 120) for _ in range(3)]
    _report, error, ti = sweep()
    assert error is not None and not isinstance(error, AirflowFailException), "a clock can be fixed"
    message = str(error)
    assert "this worker's clock reads 20" in message and "the exchange's (its Date header) 20" in message
    apart = re.search(r"([\d.]+) s apart, more than max_clock_skew 5 s", message)
    assert apart is not None and float(apart.group(1)) == pytest.approx(abs(offset), abs=2.0), message
    pushed = ti.pushed["return_value"]
    assert pushed["cancelled"] == [] and [f["reason"] for f in pushed["failed"]] == ["ClockSkew"]
    assert all(exchange.order(oid)["is_live"] for oid in orders)
    assert exchange.count("/v1/order/cancel") == 0


def test_a_small_skew_within_the_bound_runs(exchange: GeminiExchange) -> None:
    exchange.set_clock_offset(2.0)
    old = place_aged(exchange, 61)
    report, error, _ = sweep()
    assert error is None and report is not None and report["cancelled"] == [old]


def test_max_clock_skew_is_checked_before_anything_is_sent(exchange: GeminiExchange) -> None:
    with pytest.raises(ValueError, match=r"^max_clock_skew: "):
        GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, max_clock_skew="soon")
    assert exchange.journal == []


def test_an_odd_row_in_the_listing_does_not_block_a_cancel_by_id(
    exchange: GeminiExchange, capfd: pytest.CaptureFixture[str]
) -> None:
    assert exchange.api_key is not None
    target, other = (str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(2))
    exchange.inject_listing_rows([ODD_ROW])
    ti = RecordingTI()
    op = GeminiCancelOrderOperator(task_id="cancel", order_id=target)
    report = op.execute({"ti": ti, "params": {}})  # type: ignore[arg-type]
    assert report["cancelled"] == [target] and report["failed"] == []
    assert report["stats"]["unreadable"] == ["424242"]
    assert exchange.order(target)["is_cancelled"] and exchange.order(other)["is_live"]
    assert "Skipping a /v1/orders row that does not read as an order (424242)" in capfd.readouterr().out


def test_an_id_whose_row_is_odd_is_cancelled_and_not_called_already_cancelled(
    exchange: GeminiExchange,
) -> None:
    assert exchange.api_key is not None
    target = str(exchange.place_order(exchange.api_key)["order_id"])
    exchange.inject_listing_rows([{**ODD_ROW, "order_id": target}])
    report = GeminiCancelOrderOperator(task_id="cancel", order_id=target).execute(
        {"ti": RecordingTI(), "params": {}}  # type: ignore[arg-type]
    )
    assert report["cancelled"] == [target] and report["already_cancelled"] == []


def test_a_stale_sweep_cancels_around_an_odd_row_then_fails_naming_it(exchange: GeminiExchange) -> None:
    old = [place_aged(exchange, 90) for _ in range(2)]
    exchange.inject_listing_rows([ODD_ROW])
    _report, error, ti = sweep()
    assert isinstance(error, AirflowFailException), "a retry would read the same row"
    assert "424242" in str(error) and "neither judged nor cancelled" in str(error)
    pushed = ti.pushed["return_value"]
    assert sorted(pushed["cancelled"]) == sorted(old)
    assert all(exchange.order(oid)["is_cancelled"] for oid in old)
