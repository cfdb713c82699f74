"""The audit trail: a line per answered cancel of the operators and the sensor, written as it arrives,
read back by run and by day; object stores get an object per line; bad or unwritable locations fail
before any request. Against the local exchange over real HTTP, in-process."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from helpers import RecordingTI

from airflow_provider_gemini.audit import AuditTrail, TaskKey, read_trail
from airflow_provider_gemini.operators.cancel import (
    GeminiCancelAllOrdersOperator,
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.sensors.order import GeminiOrderCancelledSensor
from airflow_provider_gemini.testing.exchange import GeminiExchange

pytestmark = pytest.mark.usefixtures("as_the_task_runner")

HOUR_MS = 3_600_000
TRAIL_KEYS = {
    "v",
    "time",
    "seq",
    "dag_id",
    "task_id",
    "run_id",
    "map_index",
    "try_number",
    "conn_id",
    "account",
    "endpoint",
    "order_id",
    "client_order_id",
    "symbol",
    "side",
    "outcome",
    "kind",
    "reason",
    "message",
    "requests",
}


class TaskTI(RecordingTI):
    """A recording task instance with the ids the trail files its lines under."""

    dag_id = "desk"
    run_id = "manual__2025-06-02T15:45:00+00:00"
    map_index = -1

    def __init__(self, task_id: str, try_number: int = 1) -> None:
        super().__init__()
        self.task_id = task_id
        self.try_number = try_number


def run(op: Any, ti: TaskTI) -> tuple[dict[str, Any] | None, BaseException | None]:
    try:
        return op.execute({"ti": ti, "params": {}}), None
    except AirflowException as error:
        return None, error


def every_file_text(root: Path) -> str:
    return "".join(path.read_text() for path in root.rglob("*") if path.is_file())


def test_each_answered_cancel_is_a_line_with_its_outcome_and_no_secret(
    exchange: GeminiExchange, tmp_path: Path
) -> None:
    key = exchange.api_key
    live = exchange.place_order(key, "ethusd", side="sell", client_order_id="desk-1")["order_id"]
    gone = exchange.place_order(key)["order_id"]
    exchange.cancel_by_exchange(gone, reason="Requested")
    filled = exchange.place_order(key)["order_id"]
    exchange.fill_order(filled)
    ids = [live, gone, filled, 999_999]
    op = GeminiCancelOrderOperator(task_id="cancel", order_id=ids, audit_trail=str(tmp_path))
    _, error = run(op, TaskTI("cancel"))
    assert isinstance(error, AirflowFailException)  # 999999 is unknown: fail_on_not_found

    lines = read_trail(tmp_path, run_id=TaskTI.run_id)
    assert [(line["order_id"], line["outcome"]) for line in lines] == [
        (str(live), "cancelled"),
        (str(gone), "already_cancelled"),
        (str(filled), "filled"),
        ("999999", "not_found"),
    ]
    assert all(set(line) == TRAIL_KEYS for line in lines)
    first = lines[0]
    assert (first["dag_id"], first["task_id"], first["try_number"], first["map_index"]) == (
        "desk",
        "cancel",
        1,
        -1,
    )
    assert (first["symbol"], first["side"], first["client_order_id"]) == ("ethusd", "sell", "desk-1")
    assert (first["reason"], first["requests"], first["conn_id"], first["endpoint"]) == (
        "Requested",
        1,
        "gemini_default",
        "/v1/order/cancel",
    )
    assert lines[3]["reason"] == "OrderNotFound" and lines[3]["kind"] is None
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    # One file for the try, under the UTC day it started.
    day = datetime.now(UTC).date().isoformat()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl"))
    assert files == [f"{day}/desk/manual__2025-06-02T15_45_00+00_00/cancel.try1.jsonl"]
    assert read_trail(tmp_path, day=day) == lines
    assert read_trail(tmp_path, day="2001-01-01") == []
    text = every_file_text(tmp_path)
    assert exchange.api_secret is not None and key is not None
    assert exchange.api_secret not in text and key not in text


def test_a_retried_task_keeps_each_try_and_the_reader_returns_both(
    exchange: GeminiExchange, tmp_path: Path
) -> None:
    key = exchange.api_key
    now = exchange.place_order(key)["timestampms"]
    first = [exchange.place_order(key, timestampms=now - 2 * HOUR_MS)["order_id"] for _ in range(2)]
    run(
        GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, audit_trail=str(tmp_path)),
        TaskTI("sweep"),
    )
    second = exchange.place_order(key, timestampms=now - 2 * HOUR_MS)["order_id"]
    run(
        GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, audit_trail=str(tmp_path)),
        TaskTI("sweep", 2),
    )
    lines = read_trail(tmp_path, dag_id="desk", task_id="sweep")
    assert [(line["try_number"], line["order_id"]) for line in lines] == [
        (1, str(first[0])),
        (1, str(first[1])),
        (2, str(second)),
    ]


def test_cancel_all_files_every_id_of_the_answer(exchange: GeminiExchange, tmp_path: Path) -> None:
    ids = [str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(3)]
    op = GeminiCancelAllOrdersOperator(task_id="all", scope="all", audit_trail=str(tmp_path))
    report, error = run(op, TaskTI("all"))
    assert error is None and report is not None
    lines = read_trail(tmp_path, run_id=TaskTI.run_id)
    assert sorted(line["order_id"] for line in lines) == sorted(ids)
    assert {(line["endpoint"], line["outcome"], line["requests"]) for line in lines} == {
        ("/v1/order/cancel/all", "cancelled", 1)
    }


def test_the_sensor_files_the_cancels_it_sends(exchange: GeminiExchange, tmp_path: Path) -> None:
    ids = [exchange.place_order(exchange.api_key)["order_id"] for _ in range(2)]
    sensor = GeminiOrderCancelledSensor(
        task_id="wait", order_id=ids, poke_interval=0.1, timeout=30, audit_trail=str(tmp_path)
    )
    assert sensor.poke({"ti": TaskTI("wait"), "params": {}}).is_done  # type: ignore[arg-type]
    lines = read_trail(tmp_path, run_id=TaskTI.run_id)
    assert [(line["task_id"], line["order_id"], line["outcome"]) for line in lines] == [
        ("wait", str(oid), "cancelled") for oid in ids
    ]


def test_a_connection_extra_turns_the_trail_on_and_an_operator_off_wins(
    exchange: GeminiExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(exchange.airflow_connection())
    conn["extra"] = {"audit_trail": f"file://{tmp_path}/from-conn"}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    oid = exchange.place_order(exchange.api_key)["order_id"]
    run(GeminiCancelOrderOperator(task_id="on", order_id=oid), TaskTI("on"))
    assert [line["order_id"] for line in read_trail(f"file://{tmp_path}/from-conn", dag_id="desk")] == [
        str(oid)
    ]
    other = exchange.place_order(exchange.api_key)["order_id"]
    run(GeminiCancelOrderOperator(task_id="off", order_id=other, audit_trail="off"), TaskTI("off"))
    assert [line["task_id"] for line in read_trail(tmp_path / "from-conn", dag_id="desk")] == ["on"]


def test_the_default_location_is_under_airflow_home(
    exchange: GeminiExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    oid = exchange.place_order(exchange.api_key)["order_id"]
    run(GeminiCancelOrderOperator(task_id="c", order_id=oid, audit_trail="default"), TaskTI("c"))
    assert [line["order_id"] for line in read_trail(tmp_path / "gemini_audit", dag_id="desk")] == [str(oid)]
    assert [line["order_id"] for line in read_trail("default", dag_id="desk")] == [str(oid)]


def test_a_bad_audit_trail_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^audit_trail: expected 'off', 'default'.*got 'relative/dir'"):
        GeminiCancelOrderOperator(task_id="c", order_id=1, audit_trail="relative/dir")
    with pytest.raises(ValueError, match=r"^audit_trail: .*got 5"):
        GeminiOrderCancelledSensor(task_id="s", order_id=1, audit_trail=5)  # type: ignore[arg-type]


def test_a_bad_extra_or_an_unwritable_trail_fails_before_any_request(
    exchange: GeminiExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oid = exchange.place_order(exchange.api_key)["order_id"]
    conn = json.loads(exchange.airflow_connection())
    conn["extra"] = {"audit_trail": "somewhere"}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    _, error = run(GeminiCancelOrderOperator(task_id="c", order_id=oid), TaskTI("c"))
    assert isinstance(error, AirflowFailException)
    assert "'gemini_default': audit_trail (extra): expected" in str(error)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _, error = run(
        GeminiCancelOrderOperator(task_id="c", order_id=oid, audit_trail=str(blocker)), TaskTI("c")
    )
    assert isinstance(error, AirflowFailException)
    assert str(error).startswith(f"audit_trail: cannot write below {blocker}")
    assert exchange.journal == [] and exchange.order(oid)["is_live"]


def test_an_object_store_gets_one_object_per_line() -> None:
    """memory:// through universal_pathlib (what ObjectStoragePath is built on; Airflow registers no
    memory:// of its own): an fsspec store written like s3:// or gs://, without append."""
    from upath import UPath

    root = UPath("memory://audit-bucket/trail")
    task = TaskKey("desk", "sweep", "scheduled__2025-06-02", 3, -1)
    with AuditTrail(root, task, conn_id="gemini_default") as trail:
        assert not trail.append
        for oid in ("11", "12"):
            trail.record(
                endpoint="/v1/order/cancel", order_id=oid, outcome="cancelled", account=None, requests=1
            )
    objects = sorted(p.name for p in trail.path.iterdir())
    assert len(objects) == 2 and all(name.endswith(".json") for name in objects)
    lines = read_trail(root, run_id="scheduled__2025-06-02")
    assert [(line["order_id"], line["try_number"], line["seq"]) for line in lines] == [
        ("11", 3, 1),
        ("12", 3, 2),
    ]


def test_a_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, TaskKey("d", "t", "r", 1))
    trail.record(endpoint="/v1/order/cancel", order_id="1", outcome="cancelled", account=None, requests=1)
    trail.close()
    with trail.path.open("a") as file:
        file.write('{"v": 1, "order_id": "2", "outc')
    assert [line["order_id"] for line in read_trail(tmp_path, run_id="r")] == ["1"]


# -- outlets: the asset event's extra ---------------------------------------------------------------


def outlet_events() -> Any:
    from collections import defaultdict
    from types import SimpleNamespace

    return defaultdict(lambda: SimpleNamespace(extra={}))


def test_the_operator_and_the_sensor_put_counts_and_bounded_ids_on_their_assets(
    exchange: GeminiExchange, tmp_path: Path
) -> None:
    from airflow.sdk import Asset

    from airflow_provider_gemini.report import event_extra

    asset = Asset("desk_cancels")
    ids = [exchange.place_order(exchange.api_key)["order_id"] for _ in range(3)]
    op = GeminiCancelOrderOperator(
        task_id="cancel", order_id=ids[:2], outlets=[asset], audit_trail=str(tmp_path)
    )
    events = outlet_events()
    report = op.execute({"ti": TaskTI("cancel"), "params": {}, "outlet_events": events})  # type: ignore[arg-type]
    extra = events[asset].extra
    assert extra["counts"]["cancelled"] == 2 and extra["cancelled"] == report["cancelled"]
    assert (extra["dag_id"], extra["task_id"], extra["run_id"], extra["try_number"]) == (
        "desk",
        "cancel",
        TaskTI.run_id,
        1,
    )
    assert extra["audit_trail"] == str(tmp_path) and extra["omitted"] == {}
    json.dumps(extra)  # plain JSON, as Airflow stores it

    sensor = GeminiOrderCancelledSensor(task_id="wait", order_id=ids[2], outlets=[asset], timeout=30)
    events = outlet_events()
    sensor.execute({"ti": TaskTI("wait"), "params": {}, "outlet_events": events})  # type: ignore[arg-type]
    assert events[asset].extra["cancelled"] == [str(ids[2])] and events[asset].extra["audit_trail"] is None

    big = {"cancelled": [str(i) for i in range(7)], "failed": [{"order_id": None, "kind": "x"}]}
    bounded = event_extra(big, max_ids=5, run_id="r")
    assert bounded["cancelled"] == ["0", "1", "2", "3", "4"] and bounded["omitted"] == {"cancelled": 2}
    assert bounded["failed"] == [None] and bounded["counts"]["cancelled"] == 7 and bounded["run_id"] == "r"
