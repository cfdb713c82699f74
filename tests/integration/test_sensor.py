"""GeminiOrderCancelledSensor against the local exchange over real HTTP.

In-process tests call `poke` / `execute` / `execute_complete` as the task runner would and check the
exchange's own state and request journal. The end-to-end tests run real `airflow dags test`
subprocesses (DAGs in tests/dags/sensor_deferrable.py) while this process hosts the exchange and acts
on it (cancels, maintenance) once the journal shows the trigger is polling.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from airflow_run import airflow_env, read_xcom, run_dags_test, task_states
from helpers import REPORT_KEYS, RecordingTI

from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor
from airflow_provider_gemini.testing.exchange import GeminiExchange
from airflow_provider_gemini.triggers.order import GeminiOrderStatusTrigger

STATUS, ORDERS, CANCEL = "/v1/order/status", "/v1/orders", "/v1/order/cancel"
DAGS = Path(__file__).with_name("dags")
UNKNOWN_ID = 4242


def context() -> dict[str, Any]:
    return {"ti": RecordingTI(), "params": {}}


def sensor(**kwargs: Any) -> GeminiOrderCancelledSensor:
    kwargs.setdefault("task_id", "wait_cancelled")
    kwargs.setdefault("poke_interval", 0.1)
    kwargs.setdefault("timeout", 60)
    return GeminiOrderCancelledSensor(**kwargs)


def place(exchange: GeminiExchange, count: int = 1, **fields: Any) -> list[str]:
    return [str(exchange.place_order(exchange.api_key, **fields)["order_id"]) for _ in range(count)]


def requests_by_path(exchange: GeminiExchange) -> Counter[str]:
    return Counter(entry.path for entry in exchange.journal)


def is_live(exchange: GeminiExchange, order_id: str) -> bool:
    return bool(exchange.order(order_id)["is_live"])


# -- poke: one order, many orders, the request cost -------------------------------------------------


def test_order_cancelled_on_first_poke(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    result = sensor(order_id=oid).poke(context())

    assert result.is_done
    report = result.xcom_value
    assert set(report) == REPORT_KEYS
    assert report["cancelled"] == [oid]
    assert report["orders"][oid]["reason"] == "Requested"
    assert report["stats"]["requests"] == 2
    assert not is_live(exchange, oid)
    assert exchange.order(oid)["is_cancelled"]
    assert requests_by_path(exchange) == {STATUS: 1, CANCEL: 1}
    json.dumps(report)


def test_execute_returns_the_report_through_poke_return_value(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    report = sensor(order_id=int(oid)).execute(context())
    assert report["cancelled"] == [oid]


@pytest.mark.parametrize("count", [200, 1000])
def test_request_cost_stays_flat_as_the_list_grows(exchange: GeminiExchange, count: int) -> None:
    """One listing per poke, plus one status per order that left the book since the last poke."""
    ids = place(exchange, count)
    watcher = sensor(order_id=ids, request_cancel=False, accept_filled=True)
    ctx = context()
    per_poke: list[dict[str, int]] = []

    def poke() -> bool:
        exchange.clear_journal()
        done = watcher.poke(ctx).is_done
        per_poke.append(dict(requests_by_path(exchange)))
        return done

    assert not poke()
    for oid in ids[:5]:
        exchange.cancel_by_exchange(oid, "MarketClosed")
    for oid in ids[5:7]:
        exchange.fill_order(oid)
    assert not poke()
    assert not poke()
    for oid in ids[7:17]:
        exchange.cancel_by_exchange(oid, "Requested")
    assert not poke()

    assert per_poke == [{ORDERS: 1}, {ORDERS: 1, STATUS: 7}, {ORDERS: 1}, {ORDERS: 1, STATUS: 10}], per_poke
    asked = [entry.payload["order_id"] for entry in exchange.journal if entry.path == STATUS]
    assert sorted(asked) == sorted(int(oid) for oid in ids[7:17])


def test_list_of_20_orders(exchange: GeminiExchange) -> None:
    ids = place(exchange, 20)
    for oid in ids[:2]:
        exchange.cancel_by_exchange(oid, "MarketClosed")
    given: list[int | str] = [int(oid) if n % 2 else oid for n, oid in enumerate(ids)] + [ids[3]]

    report = sensor(order_id=given).execute(context())

    assert report["already_cancelled"] == ids[:2]
    assert report["cancelled"] == ids[2:]
    assert report["orders"][ids[0]]["reason"] == "MarketClosed"
    assert exchange.live_orders() == []
    assert requests_by_path(exchange) == {ORDERS: 1, STATUS: 2, CANCEL: 18}
    assert report["stats"]["requests"] == 21


def test_list_given_as_rendered_text(exchange: GeminiExchange) -> None:
    ids = place(exchange, 2)
    rendered = str([ids[0], int(ids[1])])
    report = sensor(order_id=rendered).execute(context())
    assert report["cancelled"] == ids


# -- transient and fatal answers ----------------------------------------------------------------------


def test_order_cancels_once_maintenance_ends(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    waiter = sensor(order_id=oid)
    ctx = context()

    exchange.set_maintenance(True)
    assert not waiter.poke(ctx).is_done
    assert exchange.count(STATUS, status=503) >= 1
    assert exchange.count(status=200) == 0
    assert is_live(exchange, oid)

    exchange.set_maintenance(False)
    result = waiter.poke(ctx)
    assert result.is_done
    assert result.xcom_value["cancelled"] == [oid]
    assert result.xcom_value["stats"]["retries"] >= 1
    assert not is_live(exchange, oid)


def test_transient_listing_failure_is_retried_at_the_next_poke(exchange: GeminiExchange) -> None:
    ids = place(exchange, 3)
    waiter = sensor(order_id=ids)
    ctx = context()
    exchange.set_maintenance(True)
    assert not waiter.poke(ctx).is_done
    exchange.set_maintenance(False)
    assert waiter.poke(ctx).xcom_value["cancelled"] == ids


def test_filled_order_fails_the_task_and_pushes_the_report(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    exchange.fill_order(oid)
    ctx = context()
    with pytest.raises(
        AirflowFailException, match=rf"order {oid} \(btcusd buy 1 @ 100.00.*filled.*accept_filled"
    ):
        sensor(order_id=oid).execute(ctx)
    assert ctx["ti"].pushed["return_value"]["filled"] == [oid]
    assert exchange.count(CANCEL) == 0


def test_filled_order_counts_as_done_with_accept_filled(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    exchange.fill_order(oid)
    report = sensor(order_id=oid, accept_filled=True).execute(context())
    assert report["filled"] == [oid]
    assert report["cancelled"] == []
    assert report["orders"][oid]["remaining_amount"] == "0"


def test_order_that_fills_while_watched_fails(exchange: GeminiExchange) -> None:
    oid, other = place(exchange, 2)
    watcher = sensor(order_id=[oid, other], request_cancel=False)
    ctx = context()
    assert not watcher.poke(ctx).is_done
    exchange.fill_order(oid)
    with pytest.raises(AirflowFailException, match=f"order {oid} .*filled instead of being cancelled"):
        watcher.poke(ctx)


def test_unknown_id_fails_at_once(exchange: GeminiExchange) -> None:
    with pytest.raises(AirflowFailException, match=f"order_id {UNKNOWN_ID}: not found"):
        sensor(order_id=UNKNOWN_ID, timeout=3600, poke_interval=3600).execute(context())
    assert requests_by_path(exchange) == {STATUS: 1}


def test_unknown_id_in_a_list_fails_after_the_other_cancels_went_out(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    ctx = context()
    with pytest.raises(AirflowFailException, match=f"order_id {UNKNOWN_ID}: not found"):
        sensor(order_id=[UNKNOWN_ID, oid]).execute(ctx)
    pushed = ctx["ti"].pushed["return_value"]
    assert pushed["not_found"] == [str(UNKNOWN_ID)]
    assert pushed["cancelled"] == [oid]
    assert not is_live(exchange, oid)


def test_soft_fail_skips_instead_of_failing(exchange: GeminiExchange) -> None:
    with pytest.raises(AirflowSkipException):
        sensor(order_id=UNKNOWN_ID, soft_fail=True).execute(context())


def test_refused_key_fails_without_waiting(exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch) -> None:
    (oid,) = place(exchange)
    conn = json.loads(exchange.airflow_connection())
    conn["password"] = "not-the-secret"
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    with pytest.raises(AirflowFailException, match="invalid_signature") as caught:
        sensor(order_id=oid, timeout=3600).execute(context())
    assert "not-the-secret" not in str(caught.value)
    assert is_live(exchange, oid)


def test_unusable_connection_fails_without_retries(
    exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(exchange.airflow_connection())
    conn["host"] = "ftp://127.0.0.1:1"
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    with pytest.raises(AirflowFailException, match="host: expected a base URL") as caught:
        sensor(order_id=1).execute(context())
    assert conn["password"] not in str(caught.value)
    assert exchange.journal == []


def test_timeout_and_soft_fail_timeout(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    with pytest.raises(AirflowSensorTimeout):
        sensor(order_id=oid, request_cancel=False, timeout=0.3).execute(context())
    with pytest.raises(AirflowSkipException):
        sensor(order_id=oid, request_cancel=False, timeout=0.3, soft_fail=True).execute(context())
    assert is_live(exchange, oid)


class StateStore:
    """The get/set part of Airflow's task_state_store accessor, values kept as JSON as Airflow does."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        self.values[key] = json.dumps(value)


def test_rescheduled_pokes_keep_settled_orders_but_ask_again_after_a_failed_try(
    exchange: GeminiExchange,
) -> None:
    oid, other = place(exchange, 2)
    store = StateStore()
    ctx = context() | {"task_state_store": store}

    first = sensor(order_id=[oid, other], mode="reschedule")
    assert first.poke(ctx).is_done is True
    assert requests_by_path(exchange) == {ORDERS: 1, CANCEL: 2}

    exchange.clear_journal()
    again = sensor(order_id=[oid, other], mode="reschedule")
    report = again.poke(ctx).xcom_value
    assert report["cancelled"] == [oid, other]
    assert exchange.journal == []

    exchange.clear_journal()
    with pytest.raises(AirflowFailException, match="not found"):
        sensor(order_id=[oid, UNKNOWN_ID], mode="reschedule").poke(ctx)
    retry = context() | {"task_state_store": store}
    retry["ti"].try_number = 2
    with pytest.raises(AirflowFailException, match="not found"):
        sensor(order_id=[oid, UNKNOWN_ID], mode="reschedule").poke(retry)
    # The first try asked about both (a new list); the retry only about the id that failed it.
    asked = [entry.payload["order_id"] for entry in exchange.journal if entry.path == STATUS]
    assert asked == [int(oid), UNKNOWN_ID, UNKNOWN_ID]


# -- arguments ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order_id": "abc"}, "order_id: expected an order id"),
        ({"order_id": []}, "order_id: no order ids"),
        ({"order_id": [1, -2]}, r"order_id\[1\]"),
        ({"order_id": True}, "order_id"),
        ({"order_id": 1, "request_cancel": "yes"}, "request_cancel: expected True or False"),
        ({"order_id": 1, "accept_filled": None}, "accept_filled"),
        ({"order_id": 1, "account": ""}, "account: expected an account nickname"),
        ({"order_id": 1, "gemini_conn_id": ""}, "gemini_conn_id"),
    ],
)
def test_bad_arguments_are_refused_when_the_dag_is_parsed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sensor(**kwargs)


def test_templated_arguments_are_checked_after_rendering(exchange: GeminiExchange) -> None:
    waiter = sensor(order_id="{{ params.order_ids }}", account="{{ params.account }}")
    waiter.order_id = "[9007199254740993, 'x']"
    waiter.account = "None"
    with pytest.raises(AirflowFailException, match=r"order_id\[1\].*'x'.*after rendering"):
        waiter.poke(context())
    assert exchange.journal == []


# -- deferrable, in process -----------------------------------------------------------------------------


def test_deferrable_sends_the_cancel_and_finishes_without_deferring(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    report = sensor(order_id=oid, deferrable=True).execute(context())
    assert report["cancelled"] == [oid]


def test_deferrable_defers_to_a_json_only_trigger(exchange: GeminiExchange) -> None:
    ids = place(exchange, 2)
    waiter = sensor(order_id=ids, request_cancel=False, deferrable=True, timeout=600, poke_interval=7)
    with pytest.raises(TaskDeferred) as caught:
        waiter.execute(context())
    deferred = caught.value
    assert deferred.method_name == "execute_complete"
    assert isinstance(deferred.timeout, timedelta)
    assert timedelta(seconds=590) < deferred.timeout <= timedelta(seconds=600)
    trigger = deferred.trigger
    assert isinstance(trigger, GeminiOrderStatusTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_gemini.triggers.order.GeminiOrderStatusTrigger"
    assert kwargs["order_ids"] == ids
    assert kwargs["poll_interval"] == 7
    assert kwargs["return_on_live"] is False
    assert kwargs["end_time"] == pytest.approx(kwargs["started_at"] + 600)
    text = json.dumps(kwargs)
    assert exchange.api_secret is not None and exchange.api_secret not in text
    assert exchange.api_key is not None and exchange.api_key not in text


def resume(waiter: GeminiOrderCancelledSensor, ctx: dict[str, Any], event: dict[str, Any]) -> Any:
    """What the task runner does when the trigger fired: resume_execution(next_method, {"event": ...})."""
    return waiter.resume_execution("execute_complete", {"event": json.loads(json.dumps(event))}, ctx)


def test_execute_complete_turns_events_into_results(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    exchange.cancel_by_exchange(oid, "MarketClosed")
    trigger = GeminiOrderStatusTrigger(order_ids=[oid], poll_interval=0)
    success = first_event(trigger)
    assert resume(sensor(order_id=oid), context(), success)["already_cancelled"] == [oid]

    ctx = context()
    error = {"status": "error", "message": "order 1: boom", "report": success["report"], "state": {}}
    with pytest.raises(AirflowFailException, match="order 1: boom"):
        resume(sensor(order_id=oid), ctx, error)
    assert ctx["ti"].pushed["return_value"]["already_cancelled"] == [oid]

    timeout = {
        "status": "timeout",
        "message": "1 of 1 order(s) still not cancelled",
        "report": {},
        "state": {},
    }
    with pytest.raises(AirflowSensorTimeout, match="still not cancelled"):
        resume(sensor(order_id=oid), context(), timeout)
    with pytest.raises(AirflowSkipException):
        resume(sensor(order_id=oid, soft_fail=True), context(), timeout)


def test_cancel_needed_event_sends_the_cancel_on_the_worker(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    trigger = GeminiOrderStatusTrigger(order_ids=[oid], poll_interval=0, return_on_live=True)
    event = first_event(trigger)
    assert event["status"] == "cancel_needed"
    assert exchange.count(CANCEL) == 0

    report = resume(sensor(order_id=oid, deferrable=True), context(), event)
    assert report["cancelled"] == [oid]
    assert exchange.count(CANCEL) == 1


def first_event(trigger: GeminiOrderStatusTrigger) -> dict[str, Any]:
    import asyncio

    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


# -- real `airflow dags test` runs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated AIRFLOW_HOME for the module: `airflow db migrate` costs seconds."""
    return tmp_path_factory.mktemp("airflow_home")


@pytest.fixture
def env(home: Path, gemini_exchange: GeminiExchange) -> dict[str, str]:
    return airflow_env(home, DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": gemini_exchange.airflow_connection()})


def run_in_background(
    env: dict[str, str], dag_id: str, order_ids: list[str]
) -> tuple[ThreadPoolExecutor, Future[Any]]:
    pool = ThreadPoolExecutor(max_workers=1)
    return pool, pool.submit(run_dags_test, DAGS, dag_id, {"order_ids": order_ids}, env)


def wait_until(condition: Callable[[], bool], future: Future[Any], what: str, limit: float = 120) -> None:
    """Wait for `condition` while the DAG run is still going (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if future.done():
            result = future.result()
            raise AssertionError(f"the DAG run ended before {what}:\n{result.stdout}\n{result.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_deferrable_run_in_airflow_dags_test(gemini_exchange: GeminiExchange, env: dict[str, str]) -> None:
    """The worker polls once and defers; the inline trigger polls until the orders are cancelled."""
    ex = gemini_exchange
    ids = place(ex, 2)
    pool, future = run_in_background(env, "gemini_sensor_deferrable_watch", ids)
    with pool:
        # The worker's single poke lists once; a second listing can only come from the trigger.
        wait_until(lambda: ex.count(ORDERS) >= 2, future, "the trigger's first poll")
        for oid in ids:
            ex.cancel_by_exchange(oid, "Requested")
        result = future.result(timeout=300)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    assert "Deferring to GeminiOrderStatusTrigger: 2 order(s) pending" in output
    assert "[DAG TEST] running trigger in line" in output
    assert "Resumed from GeminiOrderStatusTrigger: status=success" in output
    assert task_states(env["AIRFLOW_HOME"], "gemini_sensor_deferrable_watch") == {"wait_cancelled": "success"}
    report = read_xcom(env["AIRFLOW_HOME"], "gemini_sensor_deferrable_watch", "wait_cancelled")
    assert report["already_cancelled"] == ids
    assert report["stats"]["requests"] >= 2
    assert ex.count(CANCEL) == 0
    assert ex.api_secret is not None and ex.api_secret not in output


def test_several_deferred_sensors_in_one_dags_test_run(
    gemini_exchange: GeminiExchange, env: dict[str, str]
) -> None:
    """Four mapped sensors, an order each: every one defers, and its trigger fires with its own order."""
    ex = gemini_exchange
    ids = place(ex, 4)
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(
        run_dags_test, DAGS, "gemini_sensor_deferrable_many", {"order_ids": ids, "sensors": 4}, env
    )

    def asked(oid: str) -> int:
        return sum(1 for e in ex.journal if e.path == STATUS and str(e.payload.get("order_id")) == oid)

    def next_polled() -> str | None:
        return next((oid for oid in ids if oid in waiting and asked(oid) >= 2), None)

    waiting = set(ids)
    with pool:
        # dags test runs the mapped sensors one after another, in an order of its own (not always by
        # map index). An order goes once its sensor's poke and then its trigger have asked about it,
        # so each sensor defers before its order leaves.
        while waiting:
            wait_until(lambda: next_polled() is not None, future, f"a trigger's poll of one of {waiting}")
            oid = next_polled()
            assert oid is not None
            waiting.discard(oid)
            ex.cancel_by_exchange(oid, "Requested")
        result = future.result(timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("Resumed from GeminiOrderStatusTrigger: status=success") == 4, output
    states = task_states(env["AIRFLOW_HOME"], "gemini_sensor_deferrable_many")
    assert states == {"split": "success", **{f"wait_cancelled[{i}]": "success" for i in range(4)}}
    for index, oid in enumerate(ids):
        report = read_xcom(
            env["AIRFLOW_HOME"], "gemini_sensor_deferrable_many", "wait_cancelled", map_index=index
        )
        assert report["already_cancelled"] == [oid]
    assert ex.count(CANCEL) == 0
    assert ex.api_secret is not None and ex.api_secret not in output


def test_deferred_cancel_resumes_on_the_worker_after_maintenance(
    gemini_exchange: GeminiExchange, env: dict[str, str]
) -> None:
    """The first poke cannot cancel (maintenance); the trigger waits for the exchange, then hands the
    cancel back to the worker, which sends it and succeeds."""
    from airflow_provider_gemini.hooks.gemini import GeminiHook

    ex = gemini_exchange
    (oid,) = place(ex)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", env["AIRFLOW_CONN_GEMINI_DEFAULT"])
        attempts = GeminiHook().get_client().max_attempts
    ex.set_maintenance(True)
    pool, future = run_in_background(env, "gemini_sensor_deferrable_cancel", [oid])
    with pool:
        # The worker's poke makes at most `attempts` attempts; more 503s mean the trigger is polling.
        wait_until(lambda: ex.count(status=503) > attempts, future, "the trigger polling in maintenance")
        assert ex.count(CANCEL) == 0
        ex.set_maintenance(False)
        result = future.result(timeout=300)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    assert "Deferring to GeminiOrderStatusTrigger: 1 order(s) pending" in output
    assert "Resumed from GeminiOrderStatusTrigger: status=cancel_needed" in output
    report = read_xcom(env["AIRFLOW_HOME"], "gemini_sensor_deferrable_cancel", "cancel_and_wait")
    assert report["cancelled"] == [oid]
    assert report["stats"]["retries"] >= attempts - 1
    assert not is_live(ex, oid)
    assert task_states(env["AIRFLOW_HOME"], "gemini_sensor_deferrable_cancel") == {
        "cancel_and_wait": "success"
    }


def test_reschedule_mode_keeps_settled_orders_across_pokes(
    gemini_exchange: GeminiExchange, env: dict[str, str]
) -> None:
    """Each rescheduled poke is a new process; the task_state_store keeps what earlier pokes settled,
    so every order that left the book is asked about exactly once."""
    ex = gemini_exchange
    ids = place(ex, 3)
    pool, future = run_in_background(env, "gemini_sensor_reschedule", ids)
    with pool:
        wait_until(lambda: ex.count(ORDERS) >= 1, future, "the first poke")
        ex.cancel_by_exchange(ids[0], "Requested")
        wait_until(lambda: ex.count(STATUS) >= 1, future, "a poke seeing the first cancel")
        seen = ex.count(ORDERS)
        wait_until(lambda: ex.count(ORDERS) >= seen + 2, future, "two more pokes")
        for oid in ids[1:]:
            ex.cancel_by_exchange(oid, "Requested")
        result = future.result(timeout=300)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    assert "Carrying on from earlier pokes: 1 of 3 order(s) settled" in output
    assert task_states(env["AIRFLOW_HOME"], "gemini_sensor_reschedule") == {"wait_cancelled": "success"}
    report = read_xcom(env["AIRFLOW_HOME"], "gemini_sensor_reschedule", "wait_cancelled")
    assert report["already_cancelled"] == ids
    asked = [entry.payload["order_id"] for entry in ex.journal if entry.path == STATUS]
    assert sorted(asked) == sorted(int(oid) for oid in ids)
