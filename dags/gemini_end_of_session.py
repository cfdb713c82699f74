"""
### Cancel this key's session orders at the close

Every weekday at **16:00 America/New_York** (the desk's close; Gemini itself trades around the clock)
this DAG calls Gemini's `/v1/order/cancel/session`: it cancels the live orders **placed with the
connection's API key**, and leaves alone the orders placed with other keys or in the web UI (use
`GeminiCancelAllOrdersOperator(scope="all")` for those).

**Tasks**
1. `cancel_session_orders` (`GeminiCancelAllOrdersOperator(scope="session")`): fails when Gemini
   rejects any of the cancels (`fail_on_reject=True`); its XCom is the report with every id.
2. `check_session_cancelled`: lists the account's live orders (`/v1/orders`, one request) and fails if
   any order Gemini reported for this session (cancelled or rejected) is still live. It logs how many
   other live orders remain on the account.

**What the check proves, and what it cannot.** It proves that every order Gemini's session cancel
named is no longer live. It cannot prove that *no* order of this session is left: Gemini's
`/v1/orders` lists the whole account's live orders and does not say which key or session placed them,
so an order this key placed after the cancel (or one the cancel did not name) is indistinguishable from
an order placed by another key or by hand. The remaining live orders are therefore logged, not failed.
If you need "nothing of this key survives", create the key with *Require Heartbeat*: Gemini then
cancels the session's orders by itself when the key stops sending heartbeats.

**Connection** `gemini_default` (type *Gemini Exchange*), a key with the Trader role. Transient errors
are retried (`retries=2`); auth, role and validation errors fail at once. Many workers on one key
need no pool (README, "Many workers on one key").
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, task

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.operators.cancel import GeminiCancelAllOrdersOperator

MARKET_TZ = "America/New_York"
"""The market whose close ends the session; pendulum follows its DST changes."""
CLOSE = "16:00"
"""The session close, local time: the DAG runs exactly then."""

_CLOSE_HOUR, _CLOSE_MINUTE = (int(part) for part in CLOSE.split(":"))
GEMINI_CONN_ID = DEFAULT_CONN_ID
AUDIT_TRAIL = "default"
"""Every cancel on record in $AIRFLOW_HOME/gemini_audit (one JSON line each); a URL such as
s3://bucket/gemini-audit, or the connection's `audit_trail` extra with None here, puts it elsewhere."""

log = logging.getLogger(__name__)

with DAG(
    dag_id="gemini_end_of_session",
    description=f"Cancel this API key's session orders at the {CLOSE} {MARKET_TZ} close",
    schedule=CronTriggerTimetable(
        f"{_CLOSE_MINUTE} {_CLOSE_HOUR} * * 1-5", timezone=pendulum.timezone(MARKET_TZ)
    ),
    start_date=pendulum.datetime(2025, 1, 1, tz=MARKET_TZ),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["gemini", "trading", "cancel"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=3),
        "execution_timeout": timedelta(minutes=10),
    },
) as dag:
    cancel_session = GeminiCancelAllOrdersOperator(
        task_id="cancel_session_orders",
        gemini_conn_id=GEMINI_CONN_ID,
        audit_trail=AUDIT_TRAIL,
        scope="session",
        fail_on_reject=True,
    )

    @task
    def check_session_cancelled(result: dict[str, Any]) -> dict[str, Any]:
        """Fail if an order the session cancel named is still live; log what else is live on the account."""
        from airflow.sdk.exceptions import AirflowException

        from airflow_provider_gemini.hooks.gemini import GeminiHook

        rejected = (str(f["order_id"]) for f in result.get("failed", []) if f.get("order_id") is not None)
        named = {*result.get("cancelled", []), *rejected}
        live = GeminiHook(gemini_conn_id=GEMINI_CONN_ID).get_client().active_orders()
        still_live = sorted(order.order_id for order in live if order.order_id in named)
        others = len(live) - len(still_live)
        log.info(
            "Session cancel named %d order(s); %d of them still live; %d other live order(s) on the account "
            "(other keys, the web UI, or placed after the cancel: /v1/orders cannot tell them apart)",
            len(named),
            len(still_live),
            others,
        )
        if still_live:
            raise AirflowException(f"orders of this session still live after the cancel: {still_live}")
        return {"session_orders": len(named), "still_live": still_live, "other_live_orders": others}

    check_session_cancelled(cancel_session.output)
