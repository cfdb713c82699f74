"""Safety of a cancel run under real failure modes, against the local exchange over real HTTP:
fail-closed settings, digit client order ids, cancel reports as sensor input, lost cancel/all answers,
passes until a deadline, and a termination part-way that still leaves the record."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from helpers import RecordingTI

from airflow_provider_gemini.arguments import parse_order_ids
from airflow_provider_gemini.operators.cancel import (
    GeminiCancelAllOrdersOperator,
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor
from airflow_provider_gemini.testing.exchange import GeminiExchange

pytestmark = pytest.mark.usefixtures("as_the_task_runner")

HOUR_MS = 3_600_000
CANCEL = "/v1/order/cancel"


def stale_orders(exchange: GeminiExchange, count: int, **fields: Any) -> list[str]:
    now = int(time.time() * 1000)
    assert exchange.api_key is not None
    return [
        str(exchange.place_order(exchange.api_key, timestampms=now - 2 * HOUR_MS - i, **fields)["order_id"])
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("max_cancellations", "None"),
        ("max_cancellations", ""),
        ("symbols", "None"),
        ("symbols", "null"),
        ("side", "None"),
        ("client_order_id_prefix", "None"),
        ("client_order_id_prefix", ""),
    ],
)
def test_safety_settings_fail_closed_on_text_that_reads_as_none(
    exchange: GeminiExchange, field: str, text: str
) -> None:
    stale_orders(exchange, 3)
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60, **{field: "{{ params.x }}"})
    with pytest.raises(AirflowFailException, match=f"^{field}: "):
        op.render_template_fields({"params": {"x": text}})  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException, match=f"^{field}: "):
        op.execute({"params": {"x": text}, "ti": RecordingTI()})  # type: ignore[arg-type]
    assert exchange.journal == []
    assert len(exchange.live_orders()) == 3


def test_a_digit_client_order_id_prefix_rendered_as_an_int_matches(exchange: GeminiExchange) -> None:
    targeted = stale_orders(exchange, 2, client_order_id="2024-a")
    others = stale_orders(exchange, 2, client_order_id="2025-a")
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60, client_order_id_prefix=2024)  # type: ignore[arg-type]
    report = op.execute({"params": {}, "ti": RecordingTI()})  # type: ignore[arg-type]
    assert sorted(report["cancelled"]) == sorted(targeted)
    assert all(exchange.order(oid)["is_live"] for oid in others)


def test_a_cancel_report_is_a_valid_order_id_for_the_sensor(exchange: GeminiExchange) -> None:
    ids = stale_orders(exchange, 3)
    report = GeminiCancelOrderOperator(task_id="cancel", order_id=ids[:2]).execute(
        {"params": {}, "ti": RecordingTI()}  # type: ignore[arg-type]
    )
    assert parse_order_ids(report) == [int(oid) for oid in ids[:2]]
    sensor = GeminiOrderCancelledSensor(task_id="confirm", order_id=report, request_cancel=False)
    done = sensor.poke({"params": {}, "ti": RecordingTI()})  # type: ignore[arg-type]
    assert done.is_done and done.xcom_value["already_cancelled"] == ids[:2]
    assert parse_order_ids({"cancelled": [], "already_cancelled": [], "dry_run": ["1"]}) == []


def test_a_lost_cancel_all_answer_is_reconciled_from_the_book(exchange: GeminiExchange) -> None:
    ids = stale_orders(exchange, 4)
    exchange.inject_fault("drop_after", "/v1/order/cancel/all")
    report = GeminiCancelAllOrdersOperator(task_id="flatten", scope="all").execute(
        {"params": {}, "ti": RecordingTI()}  # type: ignore[arg-type]
    )
    assert sorted(report["cancelled"]) == sorted(ids)
    assert sorted(report["stats"]["reconciled"]) == sorted(ids)
    assert report["failed"] == []
    assert exchange.live_orders() == []


def test_one_try_rides_out_transient_failures_in_later_passes(exchange: GeminiExchange) -> None:
    ids = stale_orders(exchange, 6)
    for _oid in ids[:2]:
        # More failures than the client's attempts: only a later pass of the run can cancel these.
        exchange.inject_fault("maintenance", CANCEL, count=5)
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60, deadline=60)
    report = op.execute({"params": {}, "ti": RecordingTI()})  # type: ignore[arg-type]
    assert sorted(report["cancelled"]) == sorted(ids)
    assert report["failed"] == [] and report["stats"]["passes"] >= 2
    assert exchange.live_orders() == []


def test_a_passed_deadline_reports_the_rest_as_not_attempted(exchange: GeminiExchange) -> None:
    stale_orders(exchange, 3)
    exchange.set_maintenance(True)
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60, deadline=0.5)
    ti = RecordingTI()
    with pytest.raises(AirflowException) as caught:
        op.execute({"params": {}, "ti": ti})  # type: ignore[arg-type]
    assert not isinstance(caught.value, AirflowFailException)
    exchange.set_maintenance(False)
    assert ti.pushed["return_value"]["failed"]


def test_terminated_part_way_the_cancels_so_far_are_logged_and_pushed(
    exchange: GeminiExchange, capfd: pytest.CaptureFixture[str]
) -> None:
    ids = stale_orders(exchange, 40)
    exchange.inject_fault("delay", CANCEL, count=40, delay=0.1)
    op = GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60)
    ti = RecordingTI()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute({"params": {}, "ti": ti})  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    while sum(1 for e in exchange.journal if e.path == CANCEL) < 5:
        time.sleep(0.05)
    op.on_kill()
    worker.join(30)
    assert not worker.is_alive()
    assert errors and isinstance(errors[0], AirflowException)
    report = ti.pushed["return_value"]
    cancelled = {oid for oid in ids if exchange.order(oid)["is_cancelled"]}
    assert 5 <= len(cancelled) < 40
    assert set(report["cancelled"]) == cancelled
    not_attempted = {f["order_id"] for f in report["failed"] if f["message"].startswith("not attempted")}
    assert not_attempted == set(ids) - cancelled
    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert all(f"Order {oid}: cancelled" in logged for oid in cancelled)
