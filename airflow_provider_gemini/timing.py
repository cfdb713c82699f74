"""When a cancel run may act: a scheduled or backfill run that starts far from its slot is skipped.

Unpausing a DAG (or a backfill) makes the scheduler create runs for slots long past; a sweep meant
for 15:45 must not cancel at 03:23 with default Params, nor cancel today's orders in the name of a
past date. Runs asked for now (manual, REST, asset-triggered) act whenever they start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

GUARDED_RUN_TYPES = frozenset({"scheduled", "backfill"})


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"]
    return " ".join(parts)


def late_start(
    run_type: object, slot: datetime | None, now: datetime, max_start_delay: timedelta | None
) -> str | None:
    """Why a run of `run_type` for `slot` must not act at `now`, or None when it may. No slot (an
    unscheduled DAG) or `max_start_delay=None` never skips."""
    kind = str(getattr(run_type, "value", run_type))
    if max_start_delay is None or slot is None or kind not in GUARDED_RUN_TYPES:
        return None
    late = now - slot
    if late <= max_start_delay:
        return None
    return (
        f"this {kind} run is for the slot {slot.isoformat()} and started at "
        f"{now.isoformat(timespec='seconds')}, {_duration(late)} late (more than max_start_delay "
        f"{_duration(max_start_delay)}); nothing was sent. Trigger the DAG by hand to cancel now"
    )
