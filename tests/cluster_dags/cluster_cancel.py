"""The cluster tier's DAGs: one mapped GeminiCancelOrderOperator task per batch of order ids, every one
on the same connection (one API key), spread by the CeleryExecutor over the workers. No pool: the key's
rate and nonces are the provider's to share. `retries=2` so a task whose worker died runs again on
another. The batches come from the run's conf: `{"batches": [["id", ...], ...]}`.

`cluster_cancel` uses `gemini_cluster` (no setup: each host shares its own budget and nonces);
`cluster_cancel_redis` uses `gemini_cluster_redis`, the same key with the `redis_url` extra (one
budget and nonce sequence for every host, on the Celery broker's Redis)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_gemini.operators.cancel import GeminiCancelOrderOperator

for dag_id, conn_id in (
    ("cluster_cancel", "gemini_cluster"),
    ("cluster_cancel_redis", "gemini_cluster_redis"),
):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        params={"batches": Param([], type="array")},
        max_active_tasks=16,
    ):

        @task
        def batches(params: dict[str, Any] | None = None) -> list[list[str]]:
            return [[str(oid) for oid in batch] for batch in (params or {})["batches"]]

        GeminiCancelOrderOperator.partial(
            task_id="cancel",
            gemini_conn_id=conn_id,
            retries=2,
            retry_delay=timedelta(seconds=2),
        ).expand(order_id=batches())
