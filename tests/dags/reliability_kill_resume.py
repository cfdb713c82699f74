"""A DAG for tests/test_kill_resume.py: one stale sweep, killed part-way by the test and run again."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_provider_gemini.operators.cancel import GeminiCancelStaleOrdersOperator

with DAG(dag_id="reliability_kill_resume", schedule=None, catchup=False):
    GeminiCancelStaleOrdersOperator(
        task_id="cancel_stale_orders",
        max_age=3600,
        symbols=["btcusd"],
        max_cancellations=1000,
        retries=0,
    )
