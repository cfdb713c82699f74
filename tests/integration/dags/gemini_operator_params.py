"""A DAG for tests/test_operators_dags_test.py: the cancel operators fed from rendered params."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_gemini.operators.cancel import (
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)

with DAG(
    dag_id="gemini_operator_params",
    schedule=None,
    # Null params must reach the operators as None: the text "None" is refused for safety settings.
    render_template_as_native_obj=True,
    params={
        "order_ids": Param([], type="array"),
        "dry_run": Param(False, type="boolean"),
        "max_age": Param(3600, type="number"),
        "symbols": Param(None, type=["null", "string", "array"]),
        "side": Param(None, type=["null", "string"]),
        "prefix": Param(None, type=["null", "string"]),
        "cap": Param(None, type=["null", "integer"]),
        "preview": Param(True, type="boolean"),
    },
):

    @task
    def ids_from_params(params: dict[str, Any] | None = None) -> list[Any]:
        return list((params or {})["order_ids"])

    # Mapped: Airflow renders a mapped task without calling the operator's render_template_fields.
    preview_each = GeminiCancelOrderOperator.partial(
        task_id="preview_each", dry_run="{{ params.preview }}", fail_on_not_found=False
    ).expand(order_id=ids_from_params())
    cancel_ids = GeminiCancelOrderOperator(
        task_id="cancel_ids",
        order_id="{{ params.order_ids }}",
        dry_run="{{ params.dry_run }}",
    )
    cancel_stale = GeminiCancelStaleOrdersOperator(
        task_id="cancel_stale",
        max_age="{{ params.max_age }}",
        symbols="{{ params.symbols }}",
        side="{{ params.side }}",
        client_order_id_prefix="{{ params.prefix }}",
        dry_run="{{ params.dry_run }}",
        max_cancellations="{{ params.cap }}",
        trigger_rule="all_done",
    )
    preview_each >> cancel_ids >> cancel_stale
