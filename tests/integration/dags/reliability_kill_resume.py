"""DAGs for the kill tests: one stale sweep, killed part-way by the test (SIGKILL) or by its own
execution_timeout, and run again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_gemini.operators.cancel import GeminiCancelStaleOrdersOperator

SWEEP: dict[str, Any] = {
    "task_id": "cancel_stale_orders",
    "max_age": 3600,
    "symbols": ["btcusd"],
    "max_cancellations": 1000,
    "retries": 0,
    # $AIRFLOW_HOME/gemini_audit: the tests read the trail of both runs back from the test's home.
    "audit_trail": "default",
}

with DAG(dag_id="reliability_kill_resume", schedule=None, catchup=False):
    GeminiCancelStaleOrdersOperator(**SWEEP)

# The same sweep cut off by Airflow's own execution_timeout, with a deadline well past it, so the
# timeout (an AirflowTaskTimeout, a BaseException) lands mid-sweep rather than the run stopping itself.
with DAG(dag_id="reliability_timeout", schedule=None, catchup=False):
    GeminiCancelStaleOrdersOperator(
        **SWEEP, execution_timeout=timedelta(seconds=8), deadline=timedelta(minutes=5)
    )

# The same sweep as a scheduler runs it with retries: try 1 is cut off by its execution_timeout while
# the exchange answers slowly, and Airflow runs try 2 (the deployment tier; the trail holds both).
# The test's sweep is at least 11.6 s of work (20 cancels answered 0.5 s late, then 20 more paced at
# 600/min), so a 10 s timeout always cuts try 1, and try 2's share (about 2 s, plus what both tries
# spend inside execute before their first cancel on a loaded machine) fits its own 10 s with room.
with DAG(dag_id="reliability_timeout_retried", schedule=None, catchup=False):
    GeminiCancelStaleOrdersOperator(
        **{**SWEEP, "symbols": ["ethusd"], "retries": 1},
        retry_delay=timedelta(seconds=1),
        execution_timeout=timedelta(seconds=10),
        deadline=timedelta(minutes=5),
    )
