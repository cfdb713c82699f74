"""DAGs for tests/test_sensor.py: GeminiOrderCancelledSensor deferred (watching, and cancelling) and
rescheduled, each fed its order ids from params."""

from __future__ import annotations

from airflow.sdk import DAG, Param

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
