"""Perpetuals orders (btcgusdperp) on a perpetuals account, through every operator and the sensor, with
a master key that names the account: symbol filters, the report, the listing."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from helpers import REPORT_KEYS, RecordingTI

from airflow_provider_gemini.operators.cancel import (
    GeminiCancelAllOrdersOperator,
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor
from airflow_provider_gemini.testing.exchange import GeminiExchange

pytestmark = [
    pytest.mark.usefixtures("as_the_task_runner"),
    pytest.mark.gemini_exchange(
        rate_limit_per_minute=None,
        api_key="master-perp-desk",
        accounts=("primary", "perps"),
        perpetuals_accounts=("perps",),
    ),
]
KEY = "master-perp-desk"
HOUR_MS = 3_600_000


def run(op: Any) -> dict[str, Any]:
    report: dict[str, Any] = op.execute({"ti": RecordingTI(), "params": {}})
    assert set(report) == REPORT_KEYS
    return report


def place(ex: GeminiExchange, symbol: str = "btcgusdperp", account: str = "perps", age_h: float = 0) -> str:
    stamp = int(time.time() * 1000 - age_h * HOUR_MS)
    price = "60000.00" if symbol.startswith("btc") else "3000.00"
    return str(
        ex.place_order(KEY, symbol=symbol, price=price, account=account, timestampms=stamp)["order_id"]
    )


def test_cancel_by_id_and_the_sensor_on_a_perpetuals_account(exchange: GeminiExchange) -> None:
    ids = [place(exchange), place(exchange, "ethgusdperp")]
    report = run(GeminiCancelOrderOperator(task_id="cancel", order_id=ids, account="perps"))
    assert report["cancelled"] == ids
    assert {report["orders"][i]["symbol"] for i in ids} == {"btcgusdperp", "ethgusdperp"}
    confirmed = GeminiOrderCancelledSensor(
        task_id="confirm", order_id=ids, account="perps", request_cancel=False, poke_interval=0.1, timeout=30
    ).execute({"ti": RecordingTI(), "params": {}})
    assert sorted(confirmed["already_cancelled"] + confirmed["cancelled"]) == sorted(ids)
    assert {e.payload.get("account") for e in exchange.journal} == {"perps"}


def test_the_sensor_cancels_a_live_perpetual(exchange: GeminiExchange) -> None:
    oid = place(exchange)
    report = GeminiOrderCancelledSensor(
        task_id="cancel_and_confirm", order_id=oid, account="perps", poke_interval=0.1, timeout=30
    ).execute({"ti": RecordingTI(), "params": {}})
    assert report["cancelled"] == [oid] and report["orders"][oid]["symbol"] == "btcgusdperp"
    assert exchange.order(oid)["is_cancelled"]


def test_stale_sweep_with_a_perpetuals_symbol_filter(exchange: GeminiExchange) -> None:
    stale = [place(exchange, age_h=3), place(exchange, age_h=2)]
    kept = [place(exchange, age_h=0.1), place(exchange, "ethgusdperp", age_h=3)]
    spot = place(exchange, "btcusd", "primary", age_h=3)
    report = run(
        GeminiCancelStaleOrdersOperator(
            task_id="sweep", max_age=timedelta(hours=1), symbols=["btcgusdperp"], account="perps"
        )
    )
    assert sorted(report["cancelled"]) == sorted(stale)
    assert all(exchange.order(o)["is_live"] for o in [*kept, spot])


def test_cancel_all_of_the_perpetuals_account_leaves_the_spot_account(exchange: GeminiExchange) -> None:
    perps = [place(exchange), place(exchange, "ethgusdperp")]
    web = str(exchange.place_order(None, symbol="btcgusdperp", price="61000.00", account="perps")["order_id"])
    spot = place(exchange, "btcusd", "primary")
    session = run(GeminiCancelAllOrdersOperator(task_id="session", scope="session", account="perps"))
    assert sorted(session["cancelled"]) == sorted(perps) and exchange.order(web)["is_live"]
    everything = run(GeminiCancelAllOrdersOperator(task_id="all", scope="all", account="perps"))
    assert everything["cancelled"] == [web]
    assert exchange.order(spot)["is_live"]
