"""A stale sweep SIGKILLed part-way through (the whole `airflow dags test` process group), then run
again: every targeted order ends cancelled, and the second run's report is right.

The exchange keeps Gemini's rate limit (600 a minute, burst 5), so 300 cancels take about 30 s and
the kill lands in the middle. What the first run cancelled is read from the exchange itself (its
report died with it); the second run lists only what is still live, so those orders must not show
up in its report at all, and certainly not as failures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from airflow_run import AIRFLOW, airflow_env, migrate, read_xcom, run_dags_test, task_states

from airflow_provider_gemini.audit import read_trail
from airflow_provider_gemini.testing.exchange import GeminiExchange

DAGS = Path(__file__).with_name("dags")
DAG_ID = "reliability_kill_resume"
TASK_ID = "cancel_stale_orders"
CANCEL = "/v1/order/cancel"
HOUR_MS = 3_600_000
TARGETED = 300
KILL_AFTER = 50


def cancelled_on_exchange(exchange: GeminiExchange, ids: set[str]) -> set[str]:
    return {oid for oid in ids if exchange.order(oid)["is_cancelled"]}


def wait_gone(pgid: int, timeout: float = 30.0) -> None:
    """Until no process of the group is left (SIGKILL is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still alive after SIGKILL")


@pytest.mark.timeout(240)
def test_sweep_killed_part_way_then_rerun_cancels_everything(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    ex = gemini_exchange
    now = int(time.time() * 1000)
    targeted = {
        str(
            ex.place_order(ex.api_key, "btcusd", price=f"{100 + i}.00", timestampms=now - 2 * HOUR_MS - i)[
                "order_id"
            ]
        )
        for i in range(TARGETED)
    }
    untouched = {
        str(ex.place_order(ex.api_key, "btcusd", timestampms=now - 60_000)["order_id"]) for _ in range(10)
    }
    untouched |= {
        str(ex.place_order(ex.api_key, "ethusd", timestampms=now - 2 * HOUR_MS)["order_id"])
        for _ in range(10)
    }
    env = airflow_env(tmp_path / "home", DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection()})
    migrate(env)

    log = (tmp_path / "first_run.log").open("w")
    began = time.monotonic()
    first = subprocess.Popen(
        [AIRFLOW, "dags", "test", DAG_ID],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the kill reaches every child
    )
    try:
        while ex.count(CANCEL, 200) < KILL_AFTER:
            assert first.poll() is None, (
                f"first run ended before the kill:\n{(tmp_path / 'first_run.log').read_text()[-3000:]}"
            )
            assert time.monotonic() - began < 180, "first run never reached the kill point"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        wait_gone(first.pid)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()
    killed_at = time.monotonic() - began
    assert first.returncode == -signal.SIGKILL
    time.sleep(0.5)  # a request that was in flight at the kill is answered (or not) by now
    done_first = cancelled_on_exchange(ex, targeted)
    assert KILL_AFTER <= len(done_first) < TARGETED, (
        f"the kill did not land mid-sweep: {len(done_first)} cancelled"
    )
    first_requests = len(ex.journal)

    began = time.monotonic()
    second = run_dags_test(DAGS, DAG_ID, env=env, timeout=200)
    second_seconds = time.monotonic() - began
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-5000:]
    assert task_states(env["AIRFLOW_HOME"], DAG_ID) == {TASK_ID: "success"}
    report = read_xcom(env["AIRFLOW_HOME"], DAG_ID, TASK_ID)

    figures = (
        f"first run killed after {killed_at:.1f} s with {len(done_first)} of {TARGETED} cancelled "
        f"({first_requests} requests); second run {second_seconds:.1f} s: cancelled={len(report['cancelled'])} "
        f"already_cancelled={len(report['already_cancelled'])} failed={len(report['failed'])} "
        f"requests={report['stats']['requests']} retries={report['stats']['retries']}"
    )
    (tmp_path / "figures.txt").write_text(figures + "\n")
    # The exchange: every targeted order cancelled at our request, nothing else touched.
    for oid in targeted:
        order = ex.order(oid)
        assert (order["is_cancelled"], order["reason"]) == (True, "Requested"), f"{oid}: {order}; {figures}"
    for oid in untouched:
        assert ex.order(oid)["is_live"], f"untargeted {oid} touched; {figures}"
    # The second report: exactly the rest cancelled; what the first run cancelled is either not listed
    # (it is not live any more) or, at most, already cancelled; never failed.
    assert report["failed"] == [], figures
    assert set(report["cancelled"]) == targeted - done_first, figures
    assert set(report["already_cancelled"]) <= done_first, figures
    assert not done_first & set(report["cancelled"]), figures
    assert report["not_found"] == [] and report["filled"] == [] and report["dry_run"] == [], figures
    assert report["stats"]["matched"] == TARGETED - len(done_first), figures
    second_cancels = {str(e.payload["order_id"]) for e in ex.journal[first_requests:] if e.path == CANCEL}
    assert second_cancels == targeted - done_first, f"the second run re-sent cancels; {figures}"
    # The audit trail outlived the SIGKILL: every cancel the killed run had an answer for is a line, and
    # with the second run's lines the trail names every targeted order once, as cancelled.
    trail = read_trail(Path(env["AIRFLOW_HOME"]) / "gemini_audit", dag_id=DAG_ID)
    runs = sorted(
        {line["run_id"] for line in trail},
        key=lambda run_id: min(line["time"] for line in trail if line["run_id"] == run_id),
    )
    assert len(runs) == 2, runs
    first_lines = [line for line in trail if line["run_id"] == runs[0]]
    second_lines = [line for line in trail if line["run_id"] == runs[1]]
    first_ids = {line["order_id"] for line in first_lines}
    assert {line["outcome"] for line in trail} == {"cancelled"}, figures
    # A cancel in flight at the kill may have been acted on with its answer never read: at most one.
    assert first_ids <= done_first and len(done_first - first_ids) <= 1, (len(first_ids), len(done_first))
    assert [line["order_id"] for line in second_lines] == report["cancelled"]
    assert first_ids | {line["order_id"] for line in second_lines} >= targeted - (done_first - first_ids)
    assert len(trail) == len({line["order_id"] for line in trail}), "an order on record twice"
    print(figures, f"; trail: {len(first_lines)} + {len(second_lines)} lines")


def test_a_sweep_cut_off_by_execution_timeout_leaves_its_report_and_a_line_per_cancel(
    tmp_path: Path, gemini_exchange: GeminiExchange
) -> None:
    """Airflow's own timeout (AirflowTaskTimeout, a BaseException) mid-sweep, in a real `airflow dags
    test`: the task fails, the partial report is in XCom, and the log has a line for every cancel the
    report names; the exchange shows nothing cancelled that the record does not (but for a request
    in flight at the timeout, whose answer never came)."""
    ex = gemini_exchange
    assert ex.api_key is not None
    now = int(time.time() * 1000)
    targeted = {
        str(ex.place_order(ex.api_key, "btcusd", timestampms=now - 2 * HOUR_MS - i)["order_id"])
        for i in range(TARGETED)
    }
    env = airflow_env(tmp_path / "home", DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection()})
    result = run_dags_test(DAGS, "reliability_timeout", env=env, timeout=200)
    output = result.stdout + result.stderr
    assert task_states(env["AIRFLOW_HOME"], "reliability_timeout") == {TASK_ID: "failed"}, output[-3000:]
    assert "AirflowTaskTimeout" in output, output[-3000:]
    report = read_xcom(env["AIRFLOW_HOME"], "reliability_timeout", TASK_ID)
    on_exchange = cancelled_on_exchange(ex, targeted)
    recorded = set(report["cancelled"])
    assert 0 < len(recorded) < TARGETED, f"the timeout did not land mid-sweep: {len(recorded)} cancelled"
    assert recorded <= on_exchange and len(on_exchange - recorded) <= 1, (len(recorded), len(on_exchange))
    logged = set(re.findall(r"Order (\d+): cancelled \(", output))
    assert logged == recorded
    print(f"timed out with {len(recorded)} of {TARGETED} cancelled, {len(on_exchange)} on the exchange")
