"""Every Python example in the README runs as written: the operator and sensor examples as one DAG in a
real `airflow dags test` against the local exchange, the client example against it over HTTP, the
pytest example as a pytest run of its own, the fault calls on a running exchange."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from airflow_run import airflow_env, read_xcom, run_dags_test, task_states
from helpers import REPO_ROOT

from airflow_provider_gemini.testing.exchange import GeminiExchange

HOUR_MS = 3_600_000
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def block(marker: str) -> str:
    """The one README example that contains `marker`."""
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"{len(found)} README examples contain {marker!r}"
    return found[0]


KEY_CLIENT = 'with GeminiClient("account-...", secret'


def test_the_readme_examples_are_all_covered_here() -> None:
    markers = ["GeminiCancelStaleOrdersOperator(", "GeminiOrderCancelledSensor(", KEY_CLIENT,
               "def test_my_cleanup(", "ex.inject_fault(", "OAuthSession(", "ex.add_oauth_app(",
               "read_trail("]  # fmt: skip
    assert sorted(BLOCKS) == sorted(block(m) for m in markers), "a README example has no test"


def test_the_operator_and_sensor_examples_run_as_one_dag(
    tmp_path: Path, gemini_exchange: GeminiExchange
) -> None:
    ex = gemini_exchange
    assert ex.api_key is not None
    first = str(ex.place_order(ex.api_key)["order_id"])  # the sensor example's fixed id
    assert first == "9007199254740993"
    ids = [str(ex.place_order(ex.api_key)["order_id"]) for _ in range(2)]
    stale_buy = ex.place_order(
        ex.api_key, timestampms=int(time.time() * 1000) - 3 * HOUR_MS, client_order_id="mm-1"
    )["order_id"]
    dags = tmp_path / "dags"
    dags.mkdir()
    examples = block("GeminiCancelStaleOrdersOperator(") + block("GeminiOrderCancelledSensor(")
    # The examples as written, inside a DAG; the order between their tasks is the only addition.
    (dags / "readme_examples.py").write_text(
        "from airflow.sdk import DAG, Param\n"
        'with DAG("readme_examples", schedule=None, render_template_as_native_obj=True,\n'
        '         params={"order_ids": Param([], type="array"), "dry_run": Param(True, type="boolean")}) as dag:\n'
        + textwrap.indent(examples, "    ")
        + "    tasks = dag.task_dict\n"
        + '    tasks["cancel"] >> [tasks["confirm"], tasks["cancel_deferred"], tasks["sweep"]]\n'
        + '    [tasks["confirm"], tasks["cancel_deferred"], tasks["sweep"], tasks["cancel_and_confirm"]]'
        + ' >> tasks["flatten"]\n'
    )
    env = airflow_env(tmp_path / "home", dags, {"AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection()})
    result = run_dags_test(dags, "readme_examples", conf={"order_ids": ids, "dry_run": True}, env=env)
    output = result.stdout + result.stderr
    assert task_states(env["AIRFLOW_HOME"], "readme_examples") == {
        "cancel": "success",
        "sweep": "success",
        "cancel_and_confirm": "success",
        "confirm": "success",
        "cancel_deferred": "success",
        "flatten": "success",
    }, output[-4000:]
    home = env["AIRFLOW_HOME"]
    assert read_xcom(home, "readme_examples", "cancel")["cancelled"] == ids
    assert read_xcom(home, "readme_examples", "cancel_deferred")["already_cancelled"] == ids
    assert read_xcom(home, "readme_examples", "cancel_and_confirm")["cancelled"] == [first]
    assert read_xcom(home, "readme_examples", "sweep")["dry_run"] == [str(stale_buy)]
    assert read_xcom(home, "readme_examples", "flatten")["cancelled"] == [str(stale_buy)]
    assert ex.live_orders() == []


def test_the_client_example_runs_against_the_exchange(gemini_exchange: GeminiExchange) -> None:
    ex = gemini_exchange
    assert ex.api_key is not None
    assert str(ex.place_order(ex.api_key)["order_id"]) == "9007199254740993"
    code = block(KEY_CLIENT).replace('"account-..."', "api_key")
    code = code.replace('"https://api.sandbox.gemini.com"', "base_url")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {"api_key": ex.api_key, "secret": ex.api_secret, "base_url": ex.url})
    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("9007199254740993 cancelled {")
    assert lines[1] == "order_not_found OrderNotFound 404"


def test_the_pytest_example_passes_as_its_own_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "test_example.py").write_text(block("def test_my_cleanup("))
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


def test_the_fault_calls_work_on_a_running_exchange(gemini_exchange: GeminiExchange) -> None:
    ex = gemini_exchange
    assert ex.api_key is not None
    order_id = ex.place_order(ex.api_key)["order_id"]
    exec(block("ex.inject_fault("), {"ex": ex, "order_id": order_id})
    assert ex.order(order_id)["is_live"] is False and ex.clock_offset == -600
    with pytest.raises(ValueError, match="rows"):
        ex.inject_listing_rows("not a list")  # type: ignore[arg-type]


def test_the_oauth_client_example_cancels_and_persists_each_rotation(gemini_exchange: GeminiExchange) -> None:
    ex = gemini_exchange
    ex.add_oauth_app("readme-app", "readme-secret")
    refresh_token = ex.grant_refresh_token("readme-app")
    assert str(ex.place_order(None)["order_id"]) == "9007199254740993"
    saved: list[str] = []
    code = block("OAuthSession(").replace('TOKEN_URLS["sandbox"]', "token_url")
    code = code.replace('"https://api.sandbox.gemini.com"', "base_url")
    names = {
        "client_id": "readme-app",
        "client_secret": "readme-secret",
        "refresh_token": refresh_token,
        "token_url": ex.url + "/auth/token",
        "base_url": ex.url,
        "save_somewhere": saved.append,
    }
    exec("from airflow_provider_gemini.client import GeminiClient\n" + code, names)
    assert ex.order("9007199254740993")["is_cancelled"]
    assert len(saved) == 1 and ex.current_refresh_tokens("readme-app")[0] in saved[0]


def test_the_oauth_exchange_calls_work(gemini_exchange: GeminiExchange) -> None:
    ex = gemini_exchange
    exec(block("ex.add_oauth_app("), {"ex": ex})
    assert ex.current_refresh_tokens("client-id") == []  # revoked by the example
    assert ex.place_order(None, symbol="btcgusdperp", account="perps")["is_live"]
    with pytest.raises(ValueError, match="perpetuals account"):
        ex.place_order(None, symbol="btcgusdperp", account="primary")


def test_the_trail_reading_example_loads_a_day_and_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_gemini.audit import AuditTrail, TaskKey, local_default_root

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    run_id = "scheduled__2025-06-02T19:45:00+00:00"
    task = TaskKey("gemini_cancel_stale_orders", "cancel_stale_orders", run_id, 1, -1)
    # Written as of 2025-06-02 19:45 UTC: the example's day.
    with AuditTrail(local_default_root(), task, clock=lambda: 1748893500.0) as trail:
        trail.record(
            endpoint="/v1/order/cancel", order_id="11", outcome="cancelled", account=None, requests=1
        )
        trail.record(endpoint="/v1/order/cancel", order_id="12", outcome="filled", account=None, requests=1)
    scope: dict[str, object] = {"run_id": run_id}
    exec(block("read_trail("), scope)
    assert [line["order_id"] for line in scope["today"]] == ["11", "12"]  # type: ignore[attr-defined]
    assert scope["cancelled"] == {"11"}
