"""DAGs for tests/test_sensor.py and the deployment tier: GeminiOrderCancelledSensor deferred
(watching, and cancelling), rescheduled, and mapped into several deferred sensors at once, each fed
its order ids from params."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor

PARAMS = {"order_ids": Param([], type="array")}

with DAG(dag_id="gemini_sensor_deferrable_watch", schedule=None, params=PARAMS):
    GeminiOrderCancelledSensor(
        task_id="wait_cancelled",
        order_id="{{ params.order_ids }}",
        request_cancel=False,
        deferrable=True,
        poke_interval=1,
        timeout=120,
    )

with DAG(dag_id="gemini_sensor_deferrable_cancel", schedule=None, params=PARAMS):
    GeminiOrderCancelledSensor(
        task_id="cancel_and_wait",
        order_id="{{ params.order_ids }}",
        request_cancel=True,
        deferrable=True,
        poke_interval=1,
        timeout=120,
    )

with DAG(dag_id="gemini_sensor_reschedule", schedule=None, params=PARAMS):
    GeminiOrderCancelledSensor(
        task_id="wait_cancelled",
        order_id="{{ params.order_ids }}",
        request_cancel=False,
        mode="reschedule",
        poke_interval=1,
        timeout=120,
    )


with DAG(
    dag_id="gemini_sensor_deferrable_many",
    schedule=None,
    params={**PARAMS, "sensors": Param(4, type="integer", minimum=1)},
):
    # One sensor per mapped task, as a desk confirming a batch split by symbol would run them: in a
    # real triggerer their triggers run at once and share one poller for the connection.

    @task
    def split(params: dict[str, Any] | None = None) -> list[list[str]]:
        assert params is not None
        ids = [str(oid) for oid in params["order_ids"]]
        count = int(params["sensors"])
        return [ids[i::count] for i in range(count)]

    GeminiOrderCancelledSensor.partial(
        task_id="wait_cancelled",
        request_cancel=False,
        deferrable=True,
        poke_interval=1,
        timeout=180,
    ).expand(order_id=split())
