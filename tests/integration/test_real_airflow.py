"""The example DAGs in a running Airflow: the scheduler creates runs, LocalExecutor runs the tasks,
the triggerer runs the deferred sensor,
the REST API triggers and reads them, as a data-platform pipeline would.

One deployment serves the module (it takes seconds to start); the exchange runs in this process on
127.0.0.1 and the connection is created through the REST API. Figures are printed for the notes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from deployment import Deployment
from helpers import REPO_ROOT

from airflow_provider_gemini.testing.exchange import DEFAULT_API_KEY, DEFAULT_API_SECRET, GeminiExchange

pytestmark = pytest.mark.timeout(300)

HOUR_MS = 3_600_000
DAG_IDS = ("gemini_cancel_order", "gemini_cancel_stale_orders", "gemini_end_of_session")
SENSOR_DAG, SENSOR_TASK = "gemini_sensor_deferrable_watch", "wait_cancelled"


@pytest.fixture(scope="module")
def exchange() -> Iterator[GeminiExchange]:
    ex = GeminiExchange()
    ex.add_key(DEFAULT_API_KEY, DEFAULT_API_SECRET, ("Trader",), "counter", ("primary",), False)
    ex.start()
    yield ex
    ex.stop()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, exchange: GeminiExchange) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("airflow_home")
    # The shipped example DAGs, plus the deferrable sensor DAG the triggerer test runs.
    dags = tmp_path_factory.mktemp("dags")
    for dag_file in (REPO_ROOT / "dags").glob("*.py"):
        shutil.copy(dag_file, dags)
    shutil.copy(REPO_ROOT / "tests" / "integration" / "dags" / "sensor_deferrable.py", dags)
    deployment = Deployment(home, dags, ["api-server", "scheduler", "dag-processor", "triggerer"])
    try:
        created = deployment.request(
            "POST",
            "/connections",
            {
                "connection_id": "gemini_default",
                "conn_type": "geminiexchange",
                "login": exchange.api_key,
                "password": exchange.api_secret,
                "host": exchange.url,
            },
        )
        assert created.status_code == 201, created.text
        for dag_id in (*DAG_IDS, SENSOR_DAG):
            deployment.wait_for_dag(dag_id)
        yield deployment
    finally:
        deployment.stop()


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


@pytest.mark.parametrize("dag_id", ["gemini_cancel_stale_orders", "gemini_end_of_session"])
def test_unpausing_a_scheduled_dag_long_after_its_slot_cancels_nothing(
    airflow: Deployment, exchange: GeminiExchange, dag_id: str
) -> None:
    assert exchange.api_key is not None
    old = int(time.time() * 1000) - 3 * HOUR_MS
    live = [str(exchange.place_order(exchange.api_key, timestampms=old)["order_id"]) for _ in range(3)]
    sent = len(exchange.journal)
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": False}).status_code == 200
    finished = airflow.wait_for_run(dag_id)
    states = airflow.task_states(dag_id, finished["dag_run_id"])
    assert finished["run_type"] == "scheduled", finished
    first = "cancel_stale_orders" if dag_id == "gemini_cancel_stale_orders" else "cancel_session_orders"
    assert states[first] == "skipped", (states, finished)
    assert all(exchange.order(oid)["is_live"] for oid in live)
    assert exchange.journal[sent:] == [], "the late scheduled run sent requests"
    assert airflow.request("PATCH", f"/dags/{dag_id}", {"is_paused": True}).status_code == 200
    print(f"{dag_id}: scheduled run for {finished['run_after']} skipped; states {states}")


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
