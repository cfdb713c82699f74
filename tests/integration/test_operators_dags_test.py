"""The cancel operators inside a real `airflow dags test` run, fed by rendered params.

The exchange runs in this pytest process; Airflow runs in a subprocess with a private AIRFLOW_HOME and
reaches the exchange through AIRFLOW_CONN_GEMINI_DEFAULT. Reports are read back from the XCom table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_run import airflow_env, read_xcom, run_dags_test, task_states

from airflow_provider_gemini.testing.exchange import GeminiExchange

DAGS = Path(__file__).with_name("dags")
DAG_ID = "gemini_operator_params"
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated AIRFLOW_HOME for the module: `airflow db migrate` costs seconds."""
    return tmp_path_factory.mktemp("airflow_home")


@pytest.fixture
def env(home: Path, gemini_exchange: GeminiExchange) -> Iterator[dict[str, str]]:
    yield airflow_env(home, DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": gemini_exchange.airflow_connection()})


def run(env: dict[str, str], conf: dict[str, Any]) -> tuple[str, dict[str, str | None]]:
    result = run_dags_test(DAGS, DAG_ID, conf=conf, env=env)
    output = result.stdout + result.stderr
    return output, task_states(env["AIRFLOW_HOME"], DAG_ID)


def test_params_render_into_both_operators(gemini_exchange: GeminiExchange, env: dict[str, str]) -> None:
    ex = gemini_exchange
    now = int(time.time() * 1000)
    ids = [str(ex.place_order(ex.api_key)["order_id"]) for _ in range(2)]
    kept = str(ex.place_order(ex.api_key)["order_id"])
    stale_sell = str(
        ex.place_order(
            ex.api_key, symbol="ethusd", side="sell", client_order_id="mm-1", timestampms=now - 2 * HOUR_MS
        )["order_id"]
    )
    stale_buy = str(
        ex.place_order(
            ex.api_key, symbol="ethusd", side="buy", client_order_id="mm-2", timestampms=now - 2 * HOUR_MS
        )["order_id"]
    )
    conf = {
        "order_ids": [int(ids[0]), ids[1], int(ids[0])],
        "symbols": "ETHUSD",
        "side": "sell",
        "prefix": "mm-",
        "max_age": 3600,
    }
    output, states = run(env, conf)
    assert states == {
        "ids_from_params": "success",
        "preview_each[0]": "success",
        "preview_each[1]": "success",
        "preview_each[2]": "success",
        "cancel_ids": "success",
        "cancel_stale": "success",
    }, output
    previews = [read_xcom(env["AIRFLOW_HOME"], DAG_ID, "preview_each", map_index=i) for i in range(3)]
    assert [p["dry_run"] for p in previews] == [[ids[0]], [ids[1]], [ids[0]]]

    by_id = read_xcom(env["AIRFLOW_HOME"], DAG_ID, "cancel_ids")
    assert by_id["cancelled"] == ids  # exact past 2**53, the duplicate cancelled once
    sweep = read_xcom(env["AIRFLOW_HOME"], DAG_ID, "cancel_stale")
    assert sweep["cancelled"] == [stale_sell]
    assert {o["order_id"] for o in ex.live_orders()} == {kept, stale_buy}
    assert ex.count("/v1/order/cancel", status=200) == 3
    assert "GeminiCancelOrderOperator summary: cancelled=2" in output
    assert ex.api_secret is not None and ex.api_secret not in output


def test_failing_tasks_push_their_report_before_failing(
    gemini_exchange: GeminiExchange, env: dict[str, str]
) -> None:
    ex = gemini_exchange
    now = int(time.time() * 1000)
    live = str(ex.place_order(ex.api_key)["order_id"])
    unknown = str(int(live) + 500)
    stale = [str(ex.place_order(ex.api_key, timestampms=now - 2 * HOUR_MS)["order_id"]) for _ in range(2)]
    output, states = run(env, {"order_ids": [live, unknown], "max_age": 60, "cap": 1})
    assert states == {
        "ids_from_params": "success",
        "preview_each[0]": "success",
        "preview_each[1]": "success",
        "cancel_ids": "failed",
        "cancel_stale": "failed",
    }, output
    preview_unknown = read_xcom(env["AIRFLOW_HOME"], DAG_ID, "preview_each", map_index=1)
    assert preview_unknown["not_found"] == [unknown]

    by_id = read_xcom(env["AIRFLOW_HOME"], DAG_ID, "cancel_ids")
    assert by_id["cancelled"] == [live]
    assert by_id["not_found"] == [unknown]
    sweep = read_xcom(env["AIRFLOW_HOME"], DAG_ID, "cancel_stale")
    assert sweep["dry_run"] == stale and sweep["cancelled"] == []
    assert "max_cancellations: 2 orders matched, more than the cap of 1" in output
    assert all(ex.order(oid)["is_live"] for oid in stale)
