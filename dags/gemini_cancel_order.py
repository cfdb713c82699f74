"""
### Cancel Gemini orders by id, from the trigger form

No schedule: trigger it from the UI (*Trigger DAG* shows the form) or the CLI:

```bash
airflow dags trigger gemini_cancel_order -c '{"order_ids": ["9007199254740993", "106817811"]}'
```

**Params**
- `order_ids` (required, at least one): Gemini order ids, one per line in the form. From the CLI or the
  REST API send them **as strings** (`["9007199254740993"]`): Gemini's ids can exceed 2^53, where a
  JavaScript number is rounded silently, so a number is refused by the Param's schema before any
  request. Duplicates are cancelled once.
- `wait_for_cancel` (default on): after the cancel, confirm each cancelled id with Gemini's own order
  status (`GeminiOrderCancelledSensor`, read-only). Off: the confirm step is skipped.
- `account`: the account nickname, needed with a master key (`master-...`); empty uses the
  connection's `account` extra.

**Tasks**: `cancel_orders` (`GeminiCancelOrderOperator`) -> `ids_to_confirm` (short-circuit: skips the
confirm step when `wait_for_cancel` is off or nothing was cancelled) -> `confirm_cancelled`.
An unknown id fails `cancel_orders` (`fail_on_not_found`): a typo must not look like a success. An order
that had already filled is reported as `filled`, not as cancelled. The cancel task's XCom is the full
report (cancelled, already cancelled, filled, not found, failed, and each order's details).

**Connection** `gemini_default` (type *Gemini Exchange*), a key with the Trader role. Transient errors
are retried by the client and then by Airflow (`retries=2`); auth, role and validation errors fail at
once. Many workers on one key need no pool (README, "Many workers on one key").
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.operators.cancel import GeminiCancelOrderOperator
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor

GEMINI_CONN_ID = DEFAULT_CONN_ID
AUDIT_TRAIL = "default"
"""Every cancel on record in $AIRFLOW_HOME/gemini_audit (one JSON line each); a URL such as
s3://bucket/gemini-audit, or the connection's `audit_trail` extra with None here, puts it elsewhere."""

with DAG(
    dag_id="gemini_cancel_order",
    description="Cancel Gemini orders by id (trigger with a form) and confirm the cancels",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["gemini", "trading", "cancel"],
    render_template_as_native_obj=True,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=3),
        "execution_timeout": timedelta(minutes=10),
    },
    params={
        "order_ids": Param(
            type="array",
            minItems=1,
            # Text items: the trigger form then shows a one-per-line text box whose lines reach the DAG
            # as strings, so no id is ever a JavaScript number that a browser could round.
            items={"type": "string", "pattern": r"^\s*[0-9]{1,19}\s*$"},
            title="Order ids",
            description="Gemini order ids, one per line, e.g. 9007199254740993.",
        ),
        "wait_for_cancel": Param(
            True,
            type="boolean",
            title="Wait for cancel",
            description="Confirm each cancel with order status.",
        ),
        "account": Param(
            None,
            type=["null", "string"],
            title="Account",
            description="Account nickname for a master key (empty: the connection's).",
        ),
    },
) as dag:
    cancel_orders = GeminiCancelOrderOperator(
        task_id="cancel_orders",
        gemini_conn_id=GEMINI_CONN_ID,
        audit_trail=AUDIT_TRAIL,
        order_id="{{ params.order_ids }}",
        account="{{ params.account }}",
        fail_on_not_found=True,
    )

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def ids_to_confirm(result: dict[str, Any], params: dict[str, Any] | None = None) -> list[str]:
        """The cancelled ids to confirm, or nothing (which skips the confirm step) when not waiting."""
        if not (params or {}).get("wait_for_cancel", True):
            return []
        return [*result["cancelled"], *result["already_cancelled"]]

    # Deferrable: while orders drain, the triggerer polls and the worker slot is free.
    confirm_cancelled = GeminiOrderCancelledSensor(
        task_id="confirm_cancelled",
        gemini_conn_id=GEMINI_CONN_ID,
        audit_trail=AUDIT_TRAIL,
        order_id=ids_to_confirm(cancel_orders.output),
        account="{{ params.account }}",
        request_cancel=False,
        deferrable=True,
        poke_interval=5,
        timeout=300,
    )
