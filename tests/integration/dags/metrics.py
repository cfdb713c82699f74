"""A DAG for tests/test_metrics.py: cancels that give every documented metric a reason to be sent."""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_provider_gemini.operators.cancel import GeminiCancelOrderOperator

with DAG(
    dag_id="gemini_metrics",
    schedule=None,
    render_template_as_native_obj=True,
    params={"ids": Param([], type="array"), "flaky_id": Param("1", type="string")},
    default_args={"retries": 0},
):
    # Two attempts per request on this connection: two 503s fail the cancel (a retry, then
    # failed.service_error), and the run's next pass cancels it.
    flaky = GeminiCancelOrderOperator(
        task_id="cancel_flaky", gemini_conn_id="gemini_two_attempts", order_id="{{ params.flaky_id }}"
    )
    mixed = GeminiCancelOrderOperator(
        task_id="cancel_mixed", order_id="{{ params.ids }}", fail_on_not_found=False
    )
    flaky >> mixed
