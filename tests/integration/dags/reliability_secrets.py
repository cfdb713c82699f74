"""A DAG for tests/test_secrets.py: the paths the example DAGs do not take, at DEBUG.

- a deferrable sensor, so the trigger polls (and its kwargs are stored);
- client errors with a transport cause (a dropped connection, a timeout) raised out of a task, so
  their tracebacks reach the log;
- an operator that fails (an unknown order id), so its report is pushed and its message logged.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_provider_gemini.operators.cancel import GeminiCancelOrderOperator
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor

FLAKY_CONN_ID = "gemini_flaky"

with DAG(
    dag_id="reliability_secrets",
    schedule=None,
    params={"watch_ids": Param([], type="array"), "unknown_id": Param("1", type="string")},
    default_args={"retries": 0},
):
    GeminiOrderCancelledSensor(
        task_id="wait_cancelled",
        order_id="{{ params.watch_ids }}",
        request_cancel=False,
        deferrable=True,
        poke_interval=1,
        timeout=90,
    )

    @task
    def heartbeat_dropped() -> None:
        """The exchange drops every heartbeat connection: a ServiceError caused by requests' error."""
        from airflow_provider_gemini.hooks.gemini import GeminiHook

        GeminiHook(gemini_conn_id=FLAKY_CONN_ID).get_client().heartbeat()

    @task
    def roles_timeout() -> None:
        """The exchange answers /v1/roles too slowly: a ServiceError caused by requests' timeout."""
        from airflow_provider_gemini.hooks.gemini import GeminiHook

        GeminiHook(gemini_conn_id=FLAKY_CONN_ID).get_client().roles()

    heartbeat_dropped()
    roles_timeout()
    GeminiCancelOrderOperator(task_id="unknown_order", order_id="{{ params.unknown_id }}")
