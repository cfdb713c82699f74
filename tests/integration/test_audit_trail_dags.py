"""The audit trail of a real `airflow dags test` run matches the exchange's journal one for one: every
cancel the exchange saw is on a line, retried attempts counted in that line's `requests`, each line
written after its last attempt was answered; and neither the key nor the secret is in any file."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from airflow_run import airflow_env, read_xcom, run_dags_test, task_states

from airflow_provider_gemini.audit import read_trail
from airflow_provider_gemini.testing.exchange import GeminiExchange

DAGS = Path(__file__).with_name("dags")
DAG_ID = "reliability_kill_resume"
TASK_ID = "cancel_stale_orders"
CANCEL = "/v1/order/cancel"
HOUR_MS = 3_600_000


def test_the_trail_of_a_dags_test_run_matches_the_exchange_journal(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    ex = gemini_exchange
    assert ex.api_key is not None and ex.api_secret is not None
    now = int(time.time() * 1000)
    targeted = [
        str(ex.place_order(ex.api_key, "btcusd", timestampms=now - 2 * HOUR_MS - i)["order_id"])
        for i in range(12)
    ]
    ex.place_order(ex.api_key, "btcusd", timestampms=now - 60_000)  # too young: never sent a cancel
    # A 429 and a 503 before an answer: that cancel's line must count all three attempts.
    ex.inject_fault("rate_limit", CANCEL, retry_after=0.2)
    ex.inject_fault("maintenance", CANCEL)
    env = airflow_env(tmp_path / "home", DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection()})
    result = run_dags_test(DAGS, DAG_ID, env=env, timeout=200)
    output = result.stdout + result.stderr
    assert task_states(env["AIRFLOW_HOME"], DAG_ID) == {TASK_ID: "success"}, output[-4000:]
    report = read_xcom(env["AIRFLOW_HOME"], DAG_ID, TASK_ID)

    root = Path(env["AIRFLOW_HOME"]) / "gemini_audit"
    trail = read_trail(root, day=datetime.now(UTC).date())
    journal = [entry for entry in ex.journal if entry.path == CANCEL]
    by_order: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, list[int]] = defaultdict(list)
    for entry in journal:
        by_order[str(entry.payload["order_id"])].append(entry.time)
        statuses[str(entry.payload["order_id"])].append(entry.status)

    # Oldest first, as the sweep sent them: the order the report lists them in.
    assert [line["order_id"] for line in trail] == report["cancelled"] == targeted[::-1]
    assert sum(line["requests"] for line in trail) == len(journal) == len(targeted) + 2
    for line in trail:
        oid = line["order_id"]
        assert line["requests"] == len(by_order[oid]), (line, statuses[oid])
        assert statuses[oid][-1] == 200 and line["outcome"] == "cancelled"
        written = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
        assert written >= max(by_order[oid]) - 0.001, "a line written before its answer"
        assert (line["dag_id"], line["task_id"], line["try_number"], line["account"]) == (
            DAG_ID,
            TASK_ID,
            1,
            None,
        )
        assert line["run_id"] == report_run_id(env["AIRFLOW_HOME"])
    # Queued faults meet the next cancel: the first one took three attempts (429, 503, answered).
    assert [line["requests"] for line in trail] == [3] + [1] * (len(targeted) - 1)
    files = [path for path in root.rglob("*") if path.is_file()]
    assert len(files) == 1 and files[0].name == f"{TASK_ID}.try1.jsonl"
    text = files[0].read_text()
    assert ex.api_secret not in text and ex.api_key not in text
    assert f"Gemini audit trail: {files[0]}" in output


def report_run_id(airflow_home: str) -> str:
    import sqlite3

    with sqlite3.connect(Path(airflow_home) / "airflow.db") as db:
        row = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
    return str(row[0])
