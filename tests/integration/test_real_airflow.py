"""The example DAGs in a running Airflow: the scheduler creates runs, LocalExecutor runs the tasks,
the triggerer runs the deferred sensor, the REST API triggers and reads them, as a data-platform
pipeline would.

The deployment and its exchange are the session's (conftest.py). Figures are printed for the notes.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime, timedelta

import pytest
from deployment import Deployment

from airflow_provider_gemini.testing.exchange import GeminiExchange

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("deployment")]

HOUR_MS = 3_600_000
SENSOR_DAG, SENSOR_TASK = "gemini_sensor_deferrable_watch", "wait_cancelled"


@pytest.fixture
def exchange(deployed_exchange: GeminiExchange) -> GeminiExchange:
    return deployed_exchange


@pytest.fixture
def airflow(deployed_airflow: Deployment) -> Deployment:
    return deployed_airflow


def test_a_rest_triggered_cancel_runs_through_the_scheduler(
    airflow: Deployment, exchange: GeminiExchange
) -> None:
    assert exchange.api_key is not None
    ids = [str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(2)]
    kept = str(exchange.place_order(exchange.api_key)["order_id"])
    assert airflow.request("PATCH", "/dags/gemini_cancel_order", {"is_paused": False}).status_code == 200
    began = time.monotonic()
    run = airflow.request(
        "POST", "/dags/gemini_cancel_order/dagRuns", {"logical_date": None, "conf": {"order_ids": ids}}
    )
    assert run.status_code == 200, run.text
    run_id = run.json()["dag_run_id"]
    finished = airflow.wait_for_run("gemini_cancel_order")
    seconds = time.monotonic() - began
    assert (finished["dag_run_id"], finished["state"]) == (run_id, "success"), airflow.logs("scheduler")
    assert airflow.task_states("gemini_cancel_order", run_id) == dict.fromkeys(
        ["cancel_orders", "ids_to_confirm", "confirm_cancelled"], "success"
    )
    report = airflow.xcom("gemini_cancel_order", run_id, "cancel_orders")
    assert report["cancelled"] == ids
    assert all(exchange.order(oid)["is_cancelled"] for oid in ids) and exchange.order(kept)["is_live"]
    print(f"gemini_cancel_order: trigger to success in {seconds:.1f} s")


# How late after its slot each scheduled DAG still acts: the sweep until the 16:00 close, the
# end-of-session cancel the operators' default max_start_delay.
ON_TIME = {
    "gemini_cancel_stale_orders": timedelta(minutes=15),
    "gemini_end_of_session": timedelta(minutes=30),
}


@pytest.mark.parametrize("dag_id", ["gemini_cancel_stale_orders", "gemini_end_of_session"])
def test_unpausing_a_scheduled_dag_long_after_its_slot_cancels_nothing(
    airflow: Deployment, exchange: GeminiExchange, dag_id: str
) -> None:
    assert exchange.api_key is not None
    old = int(time.time() * 1000) - 3 * HOUR_MS
    live = [str(exchange.place_order(exchange.api_key, timestampms=old)["order_id"]) for _ in range(3)]
    sent = len(exchange.journal)
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": False}).status_code == 200
    finished = airflow.wait_for_run(dag_id, run_type="scheduled")
    states = airflow.task_states(dag_id, finished["dag_run_id"])
    assert finished["run_type"] == "scheduled", finished
    first = "cancel_stale_orders" if dag_id == "gemini_cancel_stale_orders" else "cancel_session_orders"
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": True}).status_code == 200
    ti = airflow.request(
        "GET", f"/dags/{dag_id}/dagRuns/{finished['dag_run_id']}/taskInstances/{first}"
    ).json()
    slot = datetime.fromisoformat(str(finished["run_after"]))
    late = datetime.fromisoformat(str(ti["start_date"] or ti["end_date"])) - slot
    if late <= ON_TIME[dag_id]:
        # The suite happens to run within the slot's own window (say 15:50 New York on a weekday):
        # that run is on time, and acts as it must. The backfill test below covers lateness anyway.
        assert states[first] == "success", (states, finished)
        assert all(exchange.order(oid)["is_cancelled"] for oid in live)
        print(f"{dag_id}: scheduled run for {finished['run_after']} was on time ({late}) and acted")
        return
    assert states[first] == "skipped", (states, finished)
    assert all(exchange.order(oid)["is_live"] for oid in live)
    assert exchange.journal[sent:] == [], "the late scheduled run sent requests"
    print(f"{dag_id}: scheduled run for {finished['run_after']} skipped, {late} late; states {states}")


def test_a_backfill_of_the_sweep_cancels_nothing_today(airflow: Deployment, exchange: GeminiExchange) -> None:
    """The trigger form's "Backfill" beside "Single Run": past dates must not act on today's book."""
    assert exchange.api_key is not None
    dag_id = "gemini_cancel_stale_orders"
    old = int(time.time() * 1000) - 3 * HOUR_MS
    live = [str(exchange.place_order(exchange.api_key, timestampms=old)["order_id"]) for _ in range(2)]
    sent = len(exchange.journal)
    now = time.time()
    # Any three days hold a weekday slot (15:45 New York, Monday to Friday).
    window = {
        "dag_id": dag_id,
        "from_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 4 * 86400)),
        "to_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 86400)),
    }
    # The scheduler starts no run of a paused DAG, backfills included; unpausing alone skips (above).
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": False}).status_code == 200
    created = airflow.request("POST", "/backfills", window)
    # On SQLite the api-server answers 503 while the scheduler holds the database lock; Airflow
    # documents the answer as transient, so a client retries it as a pipeline would.
    retry_until = time.monotonic() + 90
    while created.status_code == 503 and time.monotonic() < retry_until:
        time.sleep(2)
        created = airflow.request("POST", "/backfills", window)
    assert created.status_code == 200, created.text
    deadline = time.monotonic() + 240
    while True:
        runs = airflow.request("GET", f"/dags/{dag_id}/dagRuns?run_type=backfill").json()["dag_runs"]
        if runs and all(run["state"] in ("success", "failed") for run in runs):
            break
        assert time.monotonic() < deadline, ([run["state"] for run in runs], airflow.logs("scheduler"))
        time.sleep(1)
    for run in runs:
        states = airflow.task_states(dag_id, run["dag_run_id"])
        assert states["cancel_stale_orders"] == "skipped", (run, states)
    assert all(exchange.order(oid)["is_live"] for oid in live)
    assert exchange.journal[sent:] == [], "a backfill run sent requests"
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": True}).status_code == 200
    print(f"backfill of {dag_id}: {len(runs)} run(s), every one skipped, nothing sent")


def trigger(airflow: Deployment, dag_id: str, conf: dict[str, object]) -> tuple[dict[str, object], float]:
    """Trigger `dag_id` through the REST API as a pipeline would; its finished run and the seconds taken."""
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": False}).status_code == 200
    began = time.monotonic()
    run = airflow.request("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    assert run.status_code == 200, run.text
    finished = airflow.wait_for_run(dag_id)
    seconds = time.monotonic() - began
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": True}).status_code == 200
    assert (finished["dag_run_id"], finished["state"]) == (run.json()["dag_run_id"], "success"), airflow.logs(
        "scheduler"
    )
    return finished, seconds


def test_a_manual_run_of_the_stale_sweep_acts_now(airflow: Deployment, exchange: GeminiExchange) -> None:
    """Manual and REST-triggered runs act when asked, whatever the time of day: only late scheduled
    runs skip. (After the unpause tests: unpausing here would start the late slot first.)"""
    assert exchange.api_key is not None
    old = int(time.time() * 1000) - 3 * HOUR_MS
    stale = [str(exchange.place_order(exchange.api_key, timestampms=old)["order_id"]) for _ in range(2)]
    fresh = str(exchange.place_order(exchange.api_key)["order_id"])
    finished, seconds = trigger(airflow, "gemini_cancel_stale_orders", {"max_age_minutes": 60})
    assert finished["run_type"] == "manual"
    report = airflow.xcom("gemini_cancel_stale_orders", str(finished["dag_run_id"]), "cancel_stale_orders")
    assert set(stale) <= set(report["cancelled"]) and fresh not in report["cancelled"]
    assert all(exchange.order(oid)["is_cancelled"] for oid in stale) and exchange.order(fresh)["is_live"]
    exchange.cancel_by_exchange(fresh, reason="Requested")
    print(f"gemini_cancel_stale_orders: trigger to success in {seconds:.1f} s")


def test_a_manual_run_of_end_of_session_cancels_the_session(
    airflow: Deployment, exchange: GeminiExchange
) -> None:
    assert exchange.api_key is not None
    ids = [str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(3)]
    finished, seconds = trigger(airflow, "gemini_end_of_session", {})
    report = airflow.xcom("gemini_end_of_session", str(finished["dag_run_id"]), "cancel_session_orders")
    assert set(ids) <= set(report["cancelled"])
    assert all(exchange.order(oid)["is_cancelled"] for oid in ids)
    checked = airflow.xcom("gemini_end_of_session", str(finished["dag_run_id"]), "check_session_cancelled")
    assert checked["still_live"] == []
    print(f"gemini_end_of_session: trigger to success in {seconds:.1f} s")


def wait_for_state(airflow: Deployment, run_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = airflow.task_states(SENSOR_DAG, run_id).get(SENSOR_TASK)
        if seen == state:
            return
        assert seen not in ("success", "failed", "upstream_failed"), f"{SENSOR_TASK} ended {seen}"
        time.sleep(0.5)
    raise AssertionError(f"{SENSOR_TASK} never reached {state} (last {seen}):\n{airflow.logs('scheduler')}")


def test_a_deferred_sensor_waits_in_the_triggerer_and_resumes_when_the_orders_go(
    airflow: Deployment, exchange: GeminiExchange
) -> None:
    assert exchange.api_key is not None
    ids = [str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(2)]
    cancels = exchange.count("/v1/order/cancel")
    assert airflow.request("PATCH", f"/dags/{SENSOR_DAG}", {"is_paused": False}).status_code == 200
    run = airflow.request(
        "POST", f"/dags/{SENSOR_DAG}/dagRuns", {"logical_date": None, "conf": {"order_ids": ids}}
    )
    assert run.status_code == 200, run.text
    run_id = run.json()["dag_run_id"]

    wait_for_state(airflow, run_id, "deferred")
    # The triggerer polls while the task holds no worker: the orders are still live, and the
    # exchange keeps answering status requests for them.
    polled = exchange.count("/v1/orders") + exchange.count("/v1/order/status")
    deadline = time.monotonic() + 60
    while exchange.count("/v1/orders") + exchange.count("/v1/order/status") == polled:
        assert time.monotonic() < deadline, f"the triggerer never polled:\n{airflow.logs('triggerer')}"
        time.sleep(0.5)
    assert airflow.task_states(SENSOR_DAG, run_id)[SENSOR_TASK] == "deferred"
    assert all(exchange.order(oid)["is_live"] for oid in ids)
    # The API names the trigger the task waits on and the triggerer job running it.
    ti = airflow.request("GET", f"/dags/{SENSOR_DAG}/dagRuns/{run_id}/taskInstances/{SENSOR_TASK}").json()
    assert ti["trigger"]["classpath"].endswith("GeminiOrderStatusTrigger"), ti["trigger"]
    assert ti["triggerer_job"]["job_type"] == "TriggererJob", ti["triggerer_job"]

    for oid in ids:
        exchange.cancel_by_exchange(oid, reason="Requested")
    finished = airflow.wait_for_run(SENSOR_DAG)
    assert (finished["dag_run_id"], finished["state"]) == (run_id, "success"), airflow.logs("triggerer")
    report = airflow.xcom(SENSOR_DAG, run_id, SENSOR_TASK)
    # The sensor only watched: the cancels came from elsewhere, so they are already_cancelled.
    assert (report["already_cancelled"], report["cancelled"], report["failed"]) == (ids, [], [])
    assert exchange.count("/v1/order/cancel") == cancels
    # The triggerer writes the trigger's own log beside the task's, with the secret in neither.
    task_dir = airflow.home / "logs" / f"dag_id={SENSOR_DAG}" / f"run_id={run_id}" / f"task_id={SENSOR_TASK}"
    trigger_log = "".join(f.read_text() for f in task_dir.glob("attempt=1.log.trigger.*.log"))
    assert "Watching 2 order(s)" in trigger_log and "Trigger fired event" in trigger_log, trigger_log
    for log in (trigger_log, (task_dir / "attempt=1.log").read_text()):
        assert str(exchange.api_secret) not in log


def test_mapped_deferred_sensors_share_one_poller_in_the_triggerer(
    airflow: Deployment, exchange: GeminiExchange
) -> None:
    """Four mapped sensors deferred at once: the triggerer runs their triggers in one loop, and one
    listing a round serves all four (four pollers would list four times a second)."""
    assert exchange.api_key is not None
    dag_id = "gemini_sensor_deferrable_many"
    ids = [str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(8)]
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": False}).status_code == 200
    run = airflow.request(
        "POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {"order_ids": ids, "sensors": 4}}
    )
    assert run.status_code == 200, run.text
    run_id = run.json()["dag_run_id"]

    def sensor_states() -> list[str]:
        found = airflow.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return [ti["state"] for ti in found["task_instances"] if ti["task_id"] == SENSOR_TASK]

    deadline = time.monotonic() + 180
    while sensor_states() != ["deferred"] * 4:
        assert time.monotonic() < deadline, (sensor_states(), airflow.logs("scheduler"))
        time.sleep(0.5)

    def deferral_handled(index: int) -> bool:
        # The scheduler has taken the executor's event for the deferring try. A trigger that fires
        # before that makes Airflow 3.3.2 fail the re-queued task ("state changed externally"): a
        # race of its own, met on a loaded machine when a deferring worker took 5 s to exit.
        prefix = f"TaskInstance Finished: dag_id={dag_id}, task_id={SENSOR_TASK}, run_id={run_id}, "
        return any(
            f"{prefix}map_index={index}," in line and "state=deferred" in line
            for line in airflow.logs("scheduler", tail=10**9).splitlines()
        )

    while not all(deferral_handled(index) for index in range(4)):
        assert time.monotonic() < deadline, airflow.logs("scheduler")
        time.sleep(0.5)
    since = time.time()
    # Watch a few rounds of the triggerer alone (the worker pokes are over), then let the orders go.
    while sum(1 for e in exchange.journal if e.path == "/v1/orders" and e.time > since) < 4:
        assert time.monotonic() < deadline, airflow.logs("triggerer")
        time.sleep(0.5)
    listings = [
        e.time for e in exchange.journal if e.path == "/v1/orders" and e.status == 200 and e.time > since
    ]
    for oid in ids:
        exchange.cancel_by_exchange(oid, reason="Requested")
    finished = airflow.wait_for_run(dag_id)
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": True}).status_code == 200
    assert (finished["dag_run_id"], finished["state"]) == (run_id, "success"), airflow.logs("triggerer")

    gaps = [b - a for a, b in itertools.pairwise(listings)]
    # One loop lists once a poke_interval (1 s), give or take how late each request left; four
    # loops would list four times a second.
    assert sum(gaps) / len(gaps) >= 0.8 and min(gaps) >= 0.5, f"more than one poll loop: {gaps}"
    logs = "".join(
        path.read_text()
        for path in (airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").rglob(
            "*.log.trigger.*.log"
        )
    )
    assert "3 other trigger(s) share this key's poller" in logs, logs
    assert str(exchange.api_secret) not in logs
    seen: list[str] = []
    for index in range(4):
        answer = airflow.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{SENSOR_TASK}/xcomEntries/return_value"
            f"?map_index={index}",
        )
        assert answer.status_code == 200, answer.text
        seen += answer.json()["value"]["already_cancelled"]
    assert sorted(seen, key=int) == ids
    print(f"4 deferred sensors: {len(listings)} listings in {listings[-1] - listings[0]:.1f} s, gaps {gaps}")


def test_a_sweep_killed_at_its_timeout_and_retried_keeps_both_tries_on_record(
    airflow: Deployment, exchange: GeminiExchange
) -> None:
    """The scheduler's own retry: try 1 is cut off by execution_timeout mid-sweep (the exchange
    answers its first cancels slowly), try 2 runs and finishes. The audit trail holds every cancel of
    both tries, each under its try number; the XCom of try 1 is gone by then, the trail is not."""
    from airflow_provider_gemini.audit import read_trail

    assert exchange.api_key is not None
    dag_id, task_id = "reliability_timeout_retried", "cancel_stale_orders"
    old = int(time.time() * 1000) - 3 * HOUR_MS
    stale = [
        str(exchange.place_order(exchange.api_key, symbol="ethusd", timestampms=old)["order_id"])
        for _ in range(40)
    ]
    exchange.inject_fault("delay", path="/v1/order/cancel", count=20, delay=0.5)
    journal_from = len(exchange.journal)
    finished, _ = trigger(airflow, dag_id, {})
    run_id = str(finished["dag_run_id"])
    ti = airflow.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}").json()
    assert (ti["state"], ti["try_number"]) == ("success", 2), ti
    assert all(exchange.order(oid)["is_cancelled"] for oid in stale)

    lines = read_trail(airflow.home / "gemini_audit", dag_id=dag_id, run_id=run_id)
    by_try = {n: {line["order_id"] for line in lines if line["try_number"] == n} for n in (1, 2)}
    assert by_try[1] and by_try[2], {n: len(ids) for n, ids in by_try.items()}
    assert not by_try[1] & by_try[2], "an order on record twice"
    sent = {
        str(e.payload["order_id"]) for e in exchange.journal[journal_from:] if e.path == "/v1/order/cancel"
    }
    # Every answered cancel is on record; only the one in flight when try 1 was cut off can be missing.
    assert by_try[1] | by_try[2] <= sent and len(sent - (by_try[1] | by_try[2])) <= 1
    assert sent == set(stale)
    assert all(str(exchange.api_secret) not in json.dumps(line) for line in lines)
    print(
        f"timeout and retry: try 1 recorded {len(by_try[1])} cancels, try 2 {len(by_try[2])}, of {len(stale)}"
    )
