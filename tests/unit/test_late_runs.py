"""A scheduled or backfill cancel run far from its slot is skipped before any request; a run asked
for now acts whenever it starts. In-process, against the local exchange over real HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException
from helpers import RecordingTI

from airflow_provider_gemini.operators.cancel import (
    GeminiCancelAllOrdersOperator,
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.testing.exchange import GeminiExchange
from airflow_provider_gemini.timing import late_start

pytestmark = pytest.mark.usefixtures("as_the_task_runner")

HOUR_MS = 3_600_000


def context(run_type: str, late: timedelta) -> dict[str, Any]:
    slot = datetime.now(UTC) - late
    return {"ti": RecordingTI(), "params": {}, "dag_run": SimpleNamespace(run_type=run_type, run_after=slot)}


def stale_orders(exchange: GeminiExchange, count: int) -> list[str]:
    assert exchange.api_key is not None
    old = int(time.time() * 1000) - 2 * HOUR_MS
    return [str(exchange.place_order(exchange.api_key, timestampms=old)["order_id"]) for _ in range(count)]


@pytest.mark.parametrize("run_type", ["scheduled", "backfill"])
def test_a_sweep_unpaused_hours_after_its_slot_is_skipped_and_sends_nothing(
    exchange: GeminiExchange, capfd: pytest.CaptureFixture[str], run_type: str
) -> None:
    orders = stale_orders(exchange, 5)
    ctx = context(run_type, timedelta(hours=11, minutes=38))
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600)
    with pytest.raises(AirflowSkipException, match="11 h 38 min late"):
        op.execute(ctx)  # type: ignore[arg-type]
    assert exchange.journal == []
    assert all(exchange.order(oid)["is_live"] for oid in orders)
    pushed = ctx["ti"].pushed["return_value"]
    assert pushed["cancelled"] == [] and "max_start_delay 30 min" in pushed["stats"]["skipped"]
    assert f"Skipping: this {run_type} run is for the slot" in capfd.readouterr().out


def test_every_cancel_operator_is_guarded(exchange: GeminiExchange) -> None:
    assert exchange.api_key is not None
    order = str(exchange.place_order(exchange.api_key)["order_id"])
    for op in (
        GeminiCancelOrderOperator(task_id="one", order_id=order),
        GeminiCancelAllOrdersOperator(task_id="all", scope="session"),
    ):
        with pytest.raises(AirflowSkipException):
            op.execute(context("scheduled", timedelta(days=1)))  # type: ignore[arg-type]
    assert exchange.journal == [] and exchange.order(order)["is_live"]


@pytest.mark.parametrize("run_type", ["manual", "asset_triggered"])
def test_a_run_asked_for_now_acts_however_old_its_logical_date(
    exchange: GeminiExchange, run_type: str
) -> None:
    orders = stale_orders(exchange, 2)
    report = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600).execute(
        context(run_type, timedelta(days=3))  # type: ignore[arg-type]
    )
    assert sorted(report["cancelled"]) == sorted(orders)


def test_a_scheduled_run_within_the_delay_acts_and_none_turns_the_guard_off(exchange: GeminiExchange) -> None:
    first = stale_orders(exchange, 1)
    on_time = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, max_start_delay=600)
    assert on_time.execute(context("scheduled", timedelta(minutes=4)))["cancelled"] == first  # type: ignore[arg-type]
    second = stale_orders(exchange, 1)
    unguarded = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, max_start_delay=None)
    assert unguarded.execute(context("scheduled", timedelta(days=2)))["cancelled"] == second  # type: ignore[arg-type]


def test_max_start_delay_fails_closed_on_text() -> None:
    for bad in ("None", "", "soon", -5):
        with pytest.raises(ValueError, match=r"^max_start_delay: "):
            GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, max_start_delay=bad)  # type: ignore[arg-type]


def test_late_start_reads_enum_run_types_and_needs_a_slot() -> None:
    from airflow.utils.types import DagRunType

    now = datetime(2026, 12, 3, 8, 23, tzinfo=UTC)
    slot = datetime(2026, 12, 2, 20, 45, tzinfo=UTC)
    assert late_start(DagRunType.SCHEDULED, slot, now, timedelta(minutes=15)) is not None
    assert late_start(DagRunType.MANUAL, slot, now, timedelta(minutes=15)) is None
    assert late_start("scheduled", None, now, timedelta(minutes=15)) is None
    assert late_start("scheduled", now - timedelta(minutes=14), now, timedelta(minutes=15)) is None
