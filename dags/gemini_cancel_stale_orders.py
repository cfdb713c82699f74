"""
### Cancel stale Gemini orders before the close

Every weekday at **15:45 America/New_York**, fifteen minutes before the desk's **16:00** close, this DAG
cancels the resting orders that are older than `max_age_minutes`, confirms each cancel with Gemini's own
order status, and logs a table of what happened. Gemini trades around the clock: the "close" is your
session's, not the exchange's; change `MARKET_TZ`, `CLOSE` and `RUN_AT` at the top of the file.
The time zone is DST-aware, so the run stays at 15:45 New York time in summer and in winter.

**Tasks**

1. `cancel_stale_orders` (`GeminiCancelStaleOrdersOperator`): lists the live orders once, keeps those
   older than `max_age_minutes` that match `symbols`, `side` and `client_order_id_prefix`, and cancels
   them (at most `max_cancellations`; more than that fails the task rather than cancel an unexpected
   number of orders). With `dry_run` it only reports what it would cancel.
2. `ids_to_confirm` (short-circuit): the ids Gemini answered as cancelled. When there are none (nothing
   was stale, or a dry run), the confirm step is **skipped**, not failed.
3. `confirm_cancelled` (`GeminiOrderCancelledSensor`, read-only: `request_cancel=False`): polls
   `/v1/order/status` until every id reads cancelled.
4. `report`: logs a table (id, outcome, symbol, side, price, remaining, client order id) and returns the
   counts. It runs when the confirm step was skipped (`trigger_rule="none_failed"`), and not when
   anything before it failed, so a failed cancel or confirm fails the DAG run.

**Params** (the trigger form): `max_age_minutes`, `symbols` (empty: every symbol), `side` (both, buy or sell),
`client_order_id_prefix` (empty: any order, including those placed in the web UI), `dry_run`,
`max_cancellations`, `account` (empty: the connection's).

**Perpetuals** (`btcgusdperp`, `ethgusdperp`) live on a perpetuals account of their own: sweep them with a
connection for that account, or a master key's connection and `account` set to the perpetuals account's
nickname, and `symbols` such as `btcgusdperp` to leave any other order alone.

A scheduled run that starts after the close (the DAG unpaused hours after its slot, a backfill of past
dates) is skipped with the reason in the log and cancels nothing (`max_start_delay`); a manual or
REST-triggered run acts whenever it is triggered.

After an Airflow retry of `cancel_stale_orders`, its XCom (and so the confirm and the report) covers
the last try: orders an earlier try cancelled are no longer live; that try's log and the audit trail
(`$AIRFLOW_HOME/gemini_audit`, a JSON line per cancel of every try) list them.

Each successful sweep updates the asset `gemini_stale_sweep`, its event's extra carrying the counts and
ids: `gemini_reconcile_after_sweep` runs on it.

**Connection** `gemini_default` (type *Gemini Exchange*): the API key needs the Trader role.
Transient errors (timeouts, 429, 5xx) are retried inside the client and then by Airflow
(`retries=2`); auth, role and validation errors fail at once, without retries.
Many workers on one key need no pool: the processes of a host share the key's rate budget and
nonces, and hosts adapt to each other; the connection's `redis_url` shares them across hosts (README,
"Many workers on one key").
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, CronTriggerTimetable, Param, TriggerRule, task

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.operators.cancel import GeminiCancelStaleOrdersOperator
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor

MARKET_TZ = "America/New_York"
"""The market whose close the sweep runs ahead of; pendulum follows its DST changes."""
CLOSE = "16:00"
"""The session close, local time."""
RUN_AT = "15:45"
"""When the sweep runs: 15 minutes before CLOSE leaves room for retries and the confirm step."""

_RUN_HOUR, _RUN_MINUTE = (int(part) for part in RUN_AT.split(":"))
_CLOSE_HOUR, _CLOSE_MINUTE = (int(part) for part in CLOSE.split(":"))
# A scheduled sweep that starts after the close (the DAG unpaused hours later, a backfill) is skipped.
_UNTIL_CLOSE = timedelta(minutes=(_CLOSE_HOUR - _RUN_HOUR) * 60 + _CLOSE_MINUTE - _RUN_MINUTE)
GEMINI_CONN_ID = DEFAULT_CONN_ID
STALE_SWEEP = Asset("gemini_stale_sweep")
"""Updated by each successful sweep, with its counts and ids as the event's extra; the
gemini_reconcile_after_sweep DAG is scheduled on it."""
AUDIT_TRAIL = "default"
"""Every cancel on record in $AIRFLOW_HOME/gemini_audit (one JSON line each); a URL such as
s3://bucket/gemini-audit, or the connection's `audit_trail` extra with None here, puts it elsewhere."""

log = logging.getLogger(__name__)

with DAG(
    dag_id="gemini_cancel_stale_orders",
    description=f"Cancel orders older than max_age_minutes at {RUN_AT} {MARKET_TZ}, before the {CLOSE} close",
    schedule=CronTriggerTimetable(
        f"{_RUN_MINUTE} {_RUN_HOUR} * * 1-5", timezone=pendulum.timezone(MARKET_TZ)
    ),
    start_date=pendulum.datetime(2025, 1, 1, tz=MARKET_TZ),
    catchup=False,
    max_active_runs=1,
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
        "max_age_minutes": Param(
            60,
            type="integer",
            minimum=1,
            title="Max age (minutes)",
            description="Cancel orders older than this.",
        ),
        "symbols": Param(
            [],
            # null too: the form marks a Param without it required, and clearing the box sends null.
            type=["null", "array"],
            items={"type": "string"},
            title="Symbols",
            description="Only these symbols, e.g. btcusd or btcgusdperp (empty: every symbol).",
        ),
        # A None in an enum shows as the text "null" in the trigger form: "both" says what it means.
        "side": Param(
            "both",
            type="string",
            enum=["both", "buy", "sell"],
            title="Side",
            description="Only buy orders, only sell orders, or both.",
        ),
        "client_order_id_prefix": Param(
            None,
            type=["null", "string"],
            title="Client order id prefix",
            description="Only orders whose client_order_id starts with this (empty: any order).",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Report, cancel nothing."),
        "max_cancellations": Param(
            500,
            type="integer",
            minimum=1,
            title="Max cancellations",
            description="Fail instead of cancelling more orders than this.",
        ),
        "account": Param(
            None,
            type=["null", "string"],
            title="Account",
            description="Account nickname, e.g. a perpetuals account, for a master key "
            "(empty: the connection's account).",
        ),
    },
) as dag:
    cancel_stale = GeminiCancelStaleOrdersOperator(
        task_id="cancel_stale_orders",
        gemini_conn_id=GEMINI_CONN_ID,
        audit_trail=AUDIT_TRAIL,
        max_age="{{ params.max_age_minutes * 60 }}",
        symbols="{{ params.symbols or None }}",
        side="{{ None if params.side == 'both' else params.side }}",
        client_order_id_prefix="{{ params.client_order_id_prefix }}",
        dry_run="{{ params.dry_run }}",
        max_cancellations="{{ params.max_cancellations }}",
        account="{{ params.account }}",
        max_start_delay=_UNTIL_CLOSE,
        outlets=[STALE_SWEEP],
    )

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def ids_to_confirm(result: dict[str, Any]) -> list[str]:
        """The ids Gemini answered as cancelled; an empty list skips the confirm step (and only it)."""
        return list(result["cancelled"])

    confirm_ids = ids_to_confirm(cancel_stale.output)

    confirm_cancelled = GeminiOrderCancelledSensor(
        task_id="confirm_cancelled",
        gemini_conn_id=GEMINI_CONN_ID,
        audit_trail=AUDIT_TRAIL,
        order_id=confirm_ids,
        account="{{ params.account }}",
        request_cancel=False,
        poke_interval=5,
        timeout=300,
    )

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def report(result: dict[str, Any]) -> dict[str, Any]:
        """Log what happened to each order as a table; return the counts and ids (no secrets in either).

        Every id in `cancelled` was confirmed: had the sensor failed, this task would not run. It takes
        no input from `ids_to_confirm`, since a short-circuit skips its direct downstream tasks.
        """
        from airflow_provider_gemini.report import CancelReport

        sweep = CancelReport.from_dict(result)
        counts = sweep.counts()
        log.info("Stale-order sweep: %s\n%s", sweep.summary_line(), sweep.format_table())
        return {
            "counts": counts,
            "confirmed": counts["cancelled"],
            "cancelled": sweep.cancelled,
            "dry_run": sweep.dry_run,
            "stats": sweep.stats,
        }

    report_task = report(cancel_stale.output)
    confirm_cancelled >> report_task
