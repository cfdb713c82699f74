"""A successful stale sweep updates its asset with the counts and ids as the event's extra (ids past the
bound counted), and the scheduler creates a run of the DAG scheduled on that asset, with that event.

The sweep runs in a real `airflow dags test` (which records the event and queues the consumer as the
execution API does for any task); then a real `airflow scheduler` on the same metadata DB turns the
queue into the consumer's asset-triggered run. No api-server runs, so the consumer's task itself is not
executed here: the test checks the run the scheduler created and the event it consumed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from airflow_run import AIRFLOW, airflow_env, migrate, run_dags_test, task_states
from deployment import free_port
from helpers import REPO_ROOT

from airflow_provider_gemini.audit import read_trail
from airflow_provider_gemini.report import MAX_EVENT_IDS
from airflow_provider_gemini.testing.exchange import GeminiExchange

DAGS = REPO_ROOT / "dags"
SWEEP, CONSUMER, ASSET = "gemini_cancel_stale_orders", "gemini_reconcile_after_sweep", "gemini_stale_sweep"
HOUR_MS = 3_600_000
STALE = MAX_EVENT_IDS + 5


def query(home: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(Path(home) / "airflow.db", timeout=30) as db:
        return db.execute(sql, params).fetchall()


def airflow(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.timeout(400)
def test_a_sweep_event_with_its_extra_creates_the_reconciliation_run(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    ex = gemini_exchange
    now = int(time.time() * 1000)
    stale = [
        str(ex.place_order(ex.api_key, "btcusd", timestampms=now - 2 * HOUR_MS - i)["order_id"])
        for i in range(STALE)
    ]
    env = airflow_env(
        tmp_path / "home",
        DAGS,
        {
            "AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection(),
            # Nothing listens there: the scheduler's executor cannot run the consumer's task, which
            # this test does not need (it checks the run and its event).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{free_port()}/execution/",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        },
    )
    home = env["AIRFLOW_HOME"]
    migrate(env)
    airflow(env, "dags", "reserialize")
    airflow(env, "dags", "unpause", CONSUMER)

    result = run_dags_test(DAGS, SWEEP, conf={"max_age_minutes": 60}, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert task_states(home, SWEEP)["cancel_stale_orders"] == "success", output[-4000:]

    events = query(
        home,
        "SELECT e.id, e.extra, e.source_dag_id, e.source_task_id, e.source_run_id FROM asset_event e "
        "JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
        ASSET,
    )
    assert len(events) == 1, events
    event_id, raw, source_dag, source_task, source_run = events[0]
    extra = json.loads(raw)
    assert (source_dag, source_task) == (SWEEP, "cancel_stale_orders")
    assert (extra["dag_id"], extra["task_id"], extra["run_id"], extra["try_number"]) == (
        SWEEP,
        "cancel_stale_orders",
        source_run,
        1,
    )
    assert extra["counts"] == {
        "cancelled": STALE,
        "already_cancelled": 0,
        "filled": 0,
        "not_found": 0,
        "dry_run": 0,
        "failed": 0,
    }
    oldest_first = stale[::-1]
    assert extra["cancelled"] == oldest_first[:MAX_EVENT_IDS]
    assert extra["omitted"] == {"cancelled": STALE - MAX_EVENT_IDS}
    assert extra["conn_id"] == "gemini_default"
    assert extra["audit_trail"] == str(Path(home) / "gemini_audit")
    trail = read_trail(extra["audit_trail"], dag_id=SWEEP, run_id=source_run)
    assert [line["order_id"] for line in trail] == oldest_first  # the ids the extra leaves out are there
    assert ex.api_secret is not None and ex.api_secret not in raw
    assert query(home, "SELECT target_dag_id FROM asset_dag_run_queue") == [(CONSUMER,)]

    log = (tmp_path / "scheduler.log").open("wb")
    scheduler = subprocess.Popen(
        [AIRFLOW, "scheduler", "--skip-serve-logs"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 180
        runs: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline and not runs:
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()[-3000:]
            runs = query(
                home,
                "SELECT id, run_id, run_type FROM dag_run WHERE dag_id = ? AND run_type = ?",
                CONSUMER,
                "asset_triggered",
            )
            time.sleep(0.5)
    finally:
        os.killpg(scheduler.pid, signal.SIGTERM)
        try:
            scheduler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(scheduler.pid, signal.SIGKILL)
            scheduler.wait(timeout=10)
    assert runs, f"no asset-triggered run of {CONSUMER}:\n{(tmp_path / 'scheduler.log').read_text()[-3000:]}"
    consumed = query(
        home,
        "SELECT e.id, e.extra FROM dagrun_asset_event d JOIN asset_event e ON e.id = d.event_id "
        "WHERE d.dag_run_id = ?",
        runs[0][0],
    )
    assert [(row[0], json.loads(row[1])) for row in consumed] == [(event_id, extra)]
    print(f"{CONSUMER} run {runs[0][1]} created from event {event_id}: counts {extra['counts']}")
