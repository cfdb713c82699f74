"""The example DAGs in real Airflow: DagBag loads them, and `airflow dags test` runs each one as a
subprocess against the local exchange (kept in this process), after which the exchange's book and the
DAG run's stored state must be exactly what the DAG promises. Also runs `scripts/demo.py` end to end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from airflow_run import airflow_env, migrate, read_xcom, run_dags_test, task_states
from helpers import REPO_ROOT

from airflow_provider_gemini.testing.exchange import GeminiExchange

DAGS = REPO_ROOT / "dags"
DEMO = REPO_ROOT / "scripts" / "demo.py"
DAG_IDS = (
    "gemini_cancel_order",
    "gemini_cancel_stale_orders",
    "gemini_end_of_session",
    "gemini_reconcile_after_sweep",
)
SECRET = "dags-test-" + secrets.token_hex(12)
OTHER_KEY = "account-other-desk-key"
MINUTE_MS = 60_000

pytestmark = pytest.mark.gemini_exchange(api_secret=SECRET)


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `airflow db migrate` for the module; each test copies the database (~4 s saved per test)."""
    home = tmp_path_factory.mktemp("migrated_airflow_home")
    migrate(airflow_env(home, DAGS))
    return home


@pytest.fixture
def dag_env(migrated_home: Path, tmp_path: Path, gemini_exchange: GeminiExchange) -> dict[str, str]:
    """A private AIRFLOW_HOME (a copy of the migrated database) with gemini_default -> the exchange."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    for name in ("airflow.db", ".migrated-by-tests"):
        shutil.copy2(migrated_home / name, home / name)
    return airflow_env(
        home,
        DAGS,
        {
            "AIRFLOW_CONN_GEMINI_DEFAULT": gemini_exchange.airflow_connection(),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        },
    )


def dag_run_state(env: Mapping[str, str], dag_id: str) -> str | None:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        row = db.execute(
            "SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
    return None if row is None else str(row[0])


def dags_test(env: Mapping[str, str], dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
    """Run the DAG; return its output after checking that the connection's secret is nowhere in it."""
    result = run_dags_test(DAGS, dag_id, conf=conf, env=env)
    output = result.stdout + result.stderr
    assert SECRET not in output
    return output


def place(
    exchange: GeminiExchange,
    age_minutes: float,
    symbol: str = "btcusd",
    side: str = "buy",
    client_order_id: str | None = None,
    api_key: str | None = "",
) -> str:
    """Place a live order `age_minutes` old (as the fixture key unless `api_key` says otherwise)."""
    order = exchange.place_order(
        exchange.api_key if api_key == "" else api_key,
        symbol=symbol,
        side=side,
        client_order_id=client_order_id,
        timestampms=int(time.time() * 1000 - age_minutes * MINUTE_MS),
    )
    return str(order["order_id"])


def states(exchange: GeminiExchange, *order_ids: str) -> dict[str, str]:
    """id -> live / cancelled / filled, from the exchange's own book."""
    result = {}
    for oid in order_ids:
        order = exchange.order(oid)
        result[oid] = "live" if order["is_live"] else "cancelled" if order["is_cancelled"] else "filled"
    return result


# --- DagBag ---------------------------------------------------------------------------------------------


def test_dagbag_loads_the_example_dags_without_import_errors(tmp_path: Path) -> None:
    code = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("requests", "pandas")
                    or m.startswith(("airflow_provider_gemini.client", "airflow_provider_gemini.hooks"))),
    "dags": {
        d.dag_id: {
            "doc": bool(d.doc_md and len(d.doc_md) > 200),
            "tags": sorted(d.tags),
            "catchup": d.catchup,
            "native": d.render_template_as_native_obj,
            "params": sorted(d.params),
            "schemas": {name: d.params.get_param(name).schema for name in d.params},
            "defaults": {n: d.params.get_param(n).value if d.params.get_param(n).has_value else "<none>"
                         for n in d.params},
            "schedule": getattr(d.timetable, "expression", None),
            "tz": str(getattr(d.timetable, "timezone", "")),
            "tasks": sorted(t.task_id for t in d.tasks),
            "conns": sorted({getattr(t, "gemini_conn_id", "gemini_default") for t in d.tasks}),
            "retries": sorted({t.retries for t in d.tasks}),
        }
        for d in bag.dags.values()
    },
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS)],
        env=airflow_env(tmp_path / "home", DAGS),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert found["heavy"] == []  # the hook, the client and requests load when a task runs, not at parse
    assert sorted(found["dags"]) == list(DAG_IDS)
    dags = found["dags"]
    for dag in dags.values():
        assert dag["doc"] and "gemini" in dag["tags"] and dag["catchup"] is False
        assert dag["conns"] == ["gemini_default"]
        assert dag["retries"] == [2]
    assert dags["gemini_cancel_stale_orders"]["schedule"] == "45 15 * * 1-5"
    assert dags["gemini_end_of_session"]["schedule"] == "0 16 * * 1-5"
    assert (
        dags["gemini_cancel_stale_orders"]["tz"] == dags["gemini_end_of_session"]["tz"] == "America/New_York"
    )
    assert dags["gemini_cancel_order"]["schedule"] is None
    assert dags["gemini_cancel_stale_orders"]["params"] == sorted(
        [
            "max_age_minutes",
            "symbols",
            "side",
            "client_order_id_prefix",
            "dry_run",
            "max_cancellations",
            "account",
        ]
    )
    assert dags["gemini_cancel_order"]["params"] == ["account", "order_ids", "wait_for_cancel"]
    assert dags["gemini_cancel_stale_orders"]["native"] and dags["gemini_cancel_order"]["native"]
    # Airflow 3.3's trigger form (ui/dist, FieldSelector) shows an array Param as a one-per-line text
    # box only when its items are plain strings; any other array is a JSON editor, where a browser
    # parses 9007199254741003 as a number and sends 9007199254741004.
    # The same form marks a Param required, and refuses it left empty, unless its type admits null;
    # it picks the widget from the first type that is not null.
    for dag in dags.values():
        for name, schema in dag["schemas"].items():
            types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
            if [t for t in types if t != "null"][:1] == ["array"]:
                assert schema.get("items", {}).get("type", "string") == "string", (name, schema)
            # A None among a select's choices reads "null" in the form.
            assert None not in schema.get("enum", ()), (name, schema)
            default = dag["defaults"][name]
            if default is None or default in ([], ""):
                assert "null" in types, f"{name} may be left empty but the form would mark it required"


# --- gemini_cancel_stale_orders ----------------------------------------------------------------------------


def test_stale_orders_dag_cancels_exactly_the_stale_matching_orders(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    stale_btc = place(ex, 120, "btcusd", "buy", "mm-1")
    stale_eth = place(ex, 90, "ethusd", "buy", "mm-2")
    keep = {
        "other symbol": place(ex, 120, "solusd", "buy", "mm-3"),
        "other side": place(ex, 120, "btcusd", "sell", "mm-4"),
        "other prefix": place(ex, 120, "btcusd", "buy", "manual-1"),
        "no client id": place(ex, 120, "btcusd", "buy", None),
        "fresh": place(ex, 10, "btcusd", "buy", "mm-5"),
    }
    filled = place(ex, 120, "btcusd", "buy", "mm-6")
    ex.fill_order(filled)

    conf = {
        "max_age_minutes": 60,
        "symbols": ["btcusd", "ethusd"],
        "side": "buy",
        "client_order_id_prefix": "mm-",
    }
    output = dags_test(dag_env, "gemini_cancel_stale_orders", conf)

    assert dag_run_state(dag_env, "gemini_cancel_stale_orders") == "success", output[-3000:]
    assert states(ex, stale_btc, stale_eth) == {stale_btc: "cancelled", stale_eth: "cancelled"}
    assert ex.order(stale_btc)["reason"] == "Requested"
    assert states(ex, *keep.values()) == dict.fromkeys(keep.values(), "live")
    assert states(ex, filled) == {filled: "filled"}
    assert task_states(dag_env["AIRFLOW_HOME"], "gemini_cancel_stale_orders") == dict.fromkeys(
        ["cancel_stale_orders", "ids_to_confirm", "confirm_cancelled", "report"], "success"
    )
    home = dag_env["AIRFLOW_HOME"]
    assert read_xcom(home, "gemini_cancel_stale_orders", "cancel_stale_orders")["cancelled"] == [
        stale_btc,
        stale_eth,
    ]
    confirmed = read_xcom(home, "gemini_cancel_stale_orders", "confirm_cancelled")
    assert sorted(confirmed["cancelled"] + confirmed["already_cancelled"]) == sorted([stale_btc, stale_eth])
    summary = read_xcom(home, "gemini_cancel_stale_orders", "report")
    assert summary["counts"]["cancelled"] == summary["confirmed"] == 2
    assert summary["cancelled"] == [stale_btc, stale_eth]
    assert "mm-1" in output and stale_btc in output  # the report's table names the orders


def test_stale_orders_dry_run_cancels_nothing_and_skips_the_confirm_step(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    stale = [place(ex, 180, "btcusd"), place(ex, 75, "solusd", "sell", "x-1")]
    fresh = place(ex, 5, "ethusd")

    output = dags_test(dag_env, "gemini_cancel_stale_orders", {"dry_run": True})

    assert dag_run_state(dag_env, "gemini_cancel_stale_orders") == "success", output[-3000:]
    assert states(ex, *stale, fresh) == dict.fromkeys([*stale, fresh], "live")
    assert ex.count("/v1/order/cancel") == 0
    assert task_states(dag_env["AIRFLOW_HOME"], "gemini_cancel_stale_orders") == {
        "cancel_stale_orders": "success",
        "ids_to_confirm": "success",
        "confirm_cancelled": "skipped",
        "report": "success",
    }
    summary = read_xcom(dag_env["AIRFLOW_HOME"], "gemini_cancel_stale_orders", "report")
    assert summary["dry_run"] == stale and summary["counts"]["cancelled"] == 0


def test_stale_orders_over_the_cap_cancels_nothing_and_fails_the_run(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    stale = [place(ex, 120), place(ex, 121), place(ex, 122)]

    output = dags_test(dag_env, "gemini_cancel_stale_orders", {"max_cancellations": 2})

    assert dag_run_state(dag_env, "gemini_cancel_stale_orders") == "failed", output[-3000:]
    assert states(ex, *stale) == dict.fromkeys(stale, "live")
    found = task_states(dag_env["AIRFLOW_HOME"], "gemini_cancel_stale_orders")
    assert found["cancel_stale_orders"] == "failed"
    assert found["report"] == "upstream_failed"  # the report never hides a failure as a success
    assert "max_cancellations" in output


# --- gemini_cancel_order --------------------------------------------------------------------------------


def test_cancel_order_dag_cancels_the_ids_from_conf_and_confirms_them(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    first, second, other = place(ex, 1), place(ex, 2), place(ex, 3)
    assert int(first) > 2**53  # exactness past a JavaScript number, end to end

    conf = {"order_ids": [first, f" {second} ", second]}
    output = dags_test(dag_env, "gemini_cancel_order", conf)

    assert dag_run_state(dag_env, "gemini_cancel_order") == "success", output[-3000:]
    assert states(ex, first, second, other) == {first: "cancelled", second: "cancelled", other: "live"}
    assert ex.count("/v1/order/cancel") == 2  # the duplicate was cancelled once
    assert task_states(dag_env["AIRFLOW_HOME"], "gemini_cancel_order") == dict.fromkeys(
        ["cancel_orders", "ids_to_confirm", "confirm_cancelled"], "success"
    )
    report = read_xcom(dag_env["AIRFLOW_HOME"], "gemini_cancel_order", "cancel_orders")
    assert report["cancelled"] == [first, second]


def test_cancel_order_dag_without_waiting_skips_the_confirm_step(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    order = place(ex, 1)

    output = dags_test(dag_env, "gemini_cancel_order", {"order_ids": [order], "wait_for_cancel": False})

    assert dag_run_state(dag_env, "gemini_cancel_order") == "success", output[-3000:]
    assert states(ex, order) == {order: "cancelled"}
    assert task_states(dag_env["AIRFLOW_HOME"], "gemini_cancel_order") == {
        "cancel_orders": "success",
        "ids_to_confirm": "success",
        "confirm_cancelled": "skipped",
    }
    assert ex.count("/v1/order/status") == 0


def test_cancel_order_dag_fails_on_an_unknown_id_after_cancelling_the_known_one(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    order = place(ex, 1)

    output = dags_test(dag_env, "gemini_cancel_order", {"order_ids": [order, "123"]})

    assert dag_run_state(dag_env, "gemini_cancel_order") == "failed", output[-3000:]
    assert states(ex, order) == {order: "cancelled"}
    found = task_states(dag_env["AIRFLOW_HOME"], "gemini_cancel_order")
    assert found["cancel_orders"] == "failed"
    report = read_xcom(dag_env["AIRFLOW_HOME"], "gemini_cancel_order", "cancel_orders")
    assert report["cancelled"] == [order] and report["not_found"] == ["123"]


@pytest.mark.parametrize("ids", [["12x"], [9007199254741003]], ids=["not digits", "a number"])
def test_cancel_order_dag_rejects_a_bad_form_before_any_request(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str], ids: list[Any]
) -> None:
    """A number is refused too: from a browser it may already be another order's id."""
    output = dags_test(dag_env, "gemini_cancel_order", {"order_ids": ids})

    assert "order_ids" in output and "ParamValidationError" in output
    assert dag_run_state(dag_env, "gemini_cancel_order") in (None, "failed")
    assert gemini_exchange.count() == 0


# --- gemini_end_of_session ----------------------------------------------------------------------------


def test_end_of_session_cancels_this_keys_orders_and_not_another_keys(
    gemini_exchange: GeminiExchange, dag_env: dict[str, str]
) -> None:
    ex = gemini_exchange
    ex.add_key(OTHER_KEY, "other-" + secrets.token_hex(8))
    mine = [place(ex, 30, "btcusd"), place(ex, 400, "ethusd", "sell", "mm-1")]
    theirs = place(ex, 30, "btcusd", api_key=OTHER_KEY)
    web = place(ex, 30, "solusd", api_key=None)

    output = dags_test(dag_env, "gemini_end_of_session")

    assert dag_run_state(dag_env, "gemini_end_of_session") == "success", output[-3000:]
    assert states(ex, *mine, theirs, web) == {
        mine[0]: "cancelled",
        mine[1]: "cancelled",
        theirs: "live",
        web: "live",
    }
    assert ex.count("/v1/order/cancel/all") == 0
    assert task_states(dag_env["AIRFLOW_HOME"], "gemini_end_of_session") == dict.fromkeys(
        ["cancel_session_orders", "check_session_cancelled"], "success"
    )
    check = read_xcom(dag_env["AIRFLOW_HOME"], "gemini_end_of_session", "check_session_cancelled")
    assert check == {"session_orders": 2, "still_live": [], "other_live_orders": 2}


# --- scripts/demo.py (what `make demo` runs) --------------------------------------------------------------


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GEMINI_"))}
    env.update(extra)
    return env


def book_rows(output: str) -> list[dict[str, str]]:
    """The demo's before/after table as dicts, cut at the columns its dashed rule marks."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("order_id"))
    spans = [match.span() for match in re.finditer(r"-+", lines[start + 1])]
    header = [lines[start][a:b].strip() for a, b in spans]
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append({name: line[a:b].strip() for name, (a, b) in zip(header, spans, strict=True)})
    return rows


def test_demo_script_runs_the_stale_dag_against_its_own_exchange_and_stops_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        env=demo_env(TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    rows = book_rows(result.stdout)
    live_before = [row for row in rows if row["before"] == "live"]
    stale = [row for row in live_before if "h" in row["age"]]
    fresh = [row for row in live_before if "h" not in row["age"]]
    assert len(stale) == 5 and len(fresh) == 5, result.stdout
    assert all(row["after"] == "cancelled" for row in stale)
    assert all(row["after"] == "live" for row in fresh)
    assert {row["before"] for row in rows} == {"live", "filled", "cancelled"}
    assert all(row["after"] == row["before"] for row in rows if row["before"] != "live")
    assert "OK: DAG run success; 5 stale order(s) cancelled" in result.stdout

    home = Path(re.search(r"AIRFLOW_HOME \(temporary, kept for its logs\): (\S+)", result.stdout)[1])
    task_log = Path(re.search(r"task logs .*: (\S+)", result.stdout)[1])
    assert home.parent == tmp_path and task_log.parent == home
    assert "DagRun Finished" in task_log.read_text() and "Stale-order sweep" in task_log.read_text()
    url = re.search(r"Local Gemini exchange \(test only\) on (http://\S+),", result.stdout)[1]
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_demo_script_with_gemini_conn_forces_a_dry_run(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    """GEMINI_CONN points the demo at an account it did not start (here: an exchange standing in for
    Gemini's sandbox); without GEMINI_DEMO_DRY_RUN=0 nothing may be cancelled."""
    book = gemini_exchange.place_demo_book(gemini_exchange.api_key or "")
    live = [str(order["order_id"]) for order in book if order["is_live"]]

    result = subprocess.run(
        [sys.executable, str(DEMO)],
        env=demo_env(GEMINI_CONN=gemini_exchange.airflow_connection(), TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert SECRET not in output
    assert "dry_run=true" in result.stdout
    assert "OK: DAG run success (dry run); nothing cancelled, 5 order(s) would be" in result.stdout
    assert states(gemini_exchange, *live) == dict.fromkeys(live, "live")
    assert gemini_exchange.count("/v1/order/cancel") == 0
    would = re.search(r"A real run would cancel: (.+)", result.stdout)
    assert would is not None and len(would[1].split(", ")) == 5
    rows = book_rows(result.stdout)
    assert {row["order_id"] for row in rows} == set(live)
    assert all(row["before"] == row["after"] == "live" for row in rows)


def test_demo_script_exits_non_zero_and_stops_its_exchange_when_the_dag_fails(tmp_path: Path) -> None:
    conf = json.dumps({"max_age_minutes": 60, "max_cancellations": 1})  # 5 stale orders: over the cap
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        env=demo_env(TMPDIR=str(tmp_path), GEMINI_DEMO_CONF=conf),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: the DAG run ended 'failed'" in result.stdout
    assert all(row["after"] == row["before"] for row in book_rows(result.stdout))
    url = re.search(r"Local Gemini exchange \(test only\) on (http://\S+),", result.stdout)[1]
    with (
        pytest.raises(OSError),
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=2),
    ):
        pass
