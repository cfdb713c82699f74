"""
### Reconcile after each stale-order sweep

The downstream side of `gemini_cancel_stale_orders`: scheduled on the asset `gemini_stale_sweep`, so a
run starts whenever a sweep succeeds, with no polling. Its one task reads the triggering event's
`extra` (the sweep's counts and up to 100 ids per outcome, `omitted` counting the rest) and the
sweep's lines in the audit trail (every cancel of every try, retries included), checks that the two
agree, and returns what a position or P&L job would start from: the ids cancelled and filled.

Replace the task body with your reconciliation; keep the check, since a sweep retried by Airflow
reports only its last try in XCom and the extra, while the trail holds every try.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, task

STALE_SWEEP = Asset("gemini_stale_sweep")
"""The asset `gemini_cancel_stale_orders` updates; the same name in both files."""

log = logging.getLogger(__name__)

with DAG(
    dag_id="gemini_reconcile_after_sweep",
    description="After each stale-order sweep: its counts and ids, checked against the audit trail",
    schedule=[STALE_SWEEP],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["gemini", "trading", "reconciliation"],
    # An object store holding the trail can answer slowly or not at all for a moment.
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
):

    @task
    def reconcile(triggering_asset_events: Any = None) -> dict[str, Any]:
        """The sweeps that triggered this run: their counts, ids, and the trail's lines for them."""
        from airflow_provider_gemini.audit import read_trail

        sweeps: list[dict[str, Any]] = []
        for event in (triggering_asset_events or {}).get(STALE_SWEEP, []):
            extra = dict(event.extra or {})
            lines = []
            if extra.get("audit_trail"):
                lines = read_trail(extra["audit_trail"], dag_id=extra["dag_id"], run_id=extra["run_id"])
            on_record = {line["order_id"] for line in lines if line["outcome"] == "cancelled"}
            # The trail has every try; the extra the last one's (up to its bound): it must be a subset.
            missing = [oid for oid in extra.get("cancelled", []) if lines and oid not in on_record]
            log.info(
                "Sweep %s: counts %s, %d trail line(s), %d cancelled on record, %d not on record",
                extra.get("run_id"),
                extra.get("counts"),
                len(lines),
                len(on_record),
                len(missing),
            )
            sweeps.append(
                {
                    "run_id": extra.get("run_id"),
                    "counts": extra.get("counts"),
                    "cancelled": extra.get("cancelled", []),
                    "filled": extra.get("filled", []),
                    "omitted": extra.get("omitted", {}),
                    "trail_lines": len(lines),
                    "cancelled_on_record": sorted(on_record),
                    "not_on_record": missing,
                }
            )
        if any(sweep["not_on_record"] for sweep in sweeps):
            raise ValueError(f"cancels reported but not in the audit trail: {sweeps}")
        return {"sweeps": sweeps}

    reconcile()
