"""OAuth connections through real Airflow: `airflow connections test`, two real processes racing one
refresh token, `airflow dags test` runs whose rotated tokens land in the Airflow Variable through the
task SDK, a token without orders:create, a revoked refresh token; and a perpetuals stale sweep."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from airflow_run import AIRFLOW, airflow_env, migrate, read_xcom, run_dags_test, task_states
from helpers import REPO_ROOT

from airflow_provider_gemini.oauth import fingerprint
from airflow_provider_gemini.testing.exchange import GeminiExchange

CLIENT_ID, CLIENT_SECRET = "desk-oauth-app", "desk-oauth-client-secret"
DAGS = REPO_ROOT / "dags"
TOKEN = "/auth/token"
HOUR_MS = 3_600_000


def oauth_env(
    tmp_path: Path, ex: GeminiExchange, refresh_token: str, host: str = "a", **extra: Any
) -> dict[str, str]:
    """An Airflow environment (own home, migrated once) with an OAuth `gemini_default`; `host` picks
    the provider's state directory, so two values act as two hosts (no shared lock file)."""
    state = tmp_path / f"state-{host}"
    state.mkdir(mode=0o700, exist_ok=True)
    env = airflow_env(
        tmp_path / "home",
        DAGS,
        {
            "AIRFLOW_CONN_GEMINI_DEFAULT": ex.oauth_connection(CLIENT_ID, refresh_token, **extra),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "GEMINI_PROVIDER_STATE_DIR": str(state),
        },
    )
    migrate(env)
    return env


def store_key(refresh_token: str) -> str:
    return "gemini_oauth_token_" + fingerprint(f"{CLIENT_ID} {refresh_token}")


def stored_tokens(env: dict[str, str], key: str) -> dict[str, Any]:
    """The token store Variable as Airflow reads it (the CLI decrypts it with the home's Fernet key)."""
    result = subprocess.run(
        [AIRFLOW, "variables", "get", key], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    return dict(json.loads(line))


@pytest.fixture
def ex(gemini_exchange_factory: Any) -> GeminiExchange:
    exchange = gemini_exchange_factory(
        rate_limit_per_minute=None, api_key="master-desk-key", accounts=("primary", "perps")
    )
    exchange.add_perpetuals_account("perps")
    exchange.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
    return exchange


def test_airflow_connections_test_reports_scopes_and_stores_the_rotated_token(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    seed = ex.grant_refresh_token(CLIENT_ID)
    env = oauth_env(tmp_path, ex, seed)
    first = subprocess.run(
        [AIRFLOW, "connections", "test", "gemini_default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Connection success!" in first.stdout
    stored = stored_tokens(env, store_key(seed))
    assert ex.current_refresh_tokens(CLIENT_ID) == [stored["refresh_token"]] != [seed]
    # The CLI prints the hook's message only on failure: ask the hook itself. It reads the stored
    # access token (no second refresh; the spent seed is not used).
    second = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airflow_provider_gemini.hooks.gemini import GeminiHook\n"
            "print(GeminiHook().test_connection())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert "(True, " in second.stdout
    assert "scopes: orders:create,orders:read" in second.stdout
    assert "Cancel orders (orders:create): yes" in second.stdout
    assert store_key(seed) in second.stdout
    assert ex.count(TOKEN) == 1
    for text in (first.stdout, first.stderr, second.stdout, second.stderr):
        for secret in [CLIENT_SECRET, seed, *ex.oauth_tokens_issued()]:
            assert secret not in text


def test_connections_test_fails_for_a_token_that_cannot_cancel(ex: GeminiExchange, tmp_path: Path) -> None:
    env = oauth_env(tmp_path, ex, ex.grant_refresh_token(CLIENT_ID, "orders:read"))
    result = subprocess.run(
        [AIRFLOW, "connections", "test", "gemini_default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Connection success!" not in result.stdout
    assert "Cancel orders (orders:create): no" in result.stdout
    assert "read orders and status (orders:read): yes" in result.stdout


RACER = """
import sys
from airflow_provider_gemini.hooks.gemini import GeminiHook
with GeminiHook("gemini_default").get_client() as client:
    order = client.cancel_order(sys.argv[1], account="primary")
    print("RESULT", order.state, client.oauth.refreshes)
"""


@pytest.mark.parametrize("hosts", ["ab", "aa"], ids=["two-hosts", "one-host"])
def test_two_processes_refreshing_at_once_both_end_with_a_working_token(
    ex: GeminiExchange, tmp_path: Path, hosts: str
) -> None:
    """Two real processes, one Variable store (the metadata database). On two hosts (no shared lock)
    both send the refresh and Gemini takes one; the loser reads the winner's token from the Variable.
    On one host the lock file lets only one refresh go out."""
    seed = ex.grant_refresh_token(CLIENT_ID)
    orders = [ex.place_order("master-desk-key", account="primary")["order_id"] for _ in range(2)]
    envs = [oauth_env(tmp_path, ex, seed, host=h) for h in hosts]
    if hosts == "ab":
        ex.hold_token_requests(2, timeout=30)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, order_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order_id, env in zip(orders, envs, strict=True)
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    for racer, (out, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, out + err
        assert "RESULT cancelled" in out
    statuses = sorted(e.status for e in ex.journal if e.path == TOKEN)
    assert statuses == ([200, 400] if hosts == "ab" else [200])
    refreshes = sorted(int(out.split()[-1]) for out, _ in outputs)
    assert refreshes == [0, 1]
    stored = stored_tokens(envs[0], store_key(seed))
    assert ex.current_refresh_tokens(CLIENT_ID) == [stored["refresh_token"]]
    assert all(not ex.order(order_id)["is_live"] for order_id in orders)


def test_dags_test_cancels_with_oauth_and_the_next_run_uses_the_stored_token(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    seed = ex.grant_refresh_token(CLIENT_ID)
    env = oauth_env(tmp_path, ex, seed, account="primary")
    first = ex.place_order("master-desk-key", account="primary")["order_id"]
    result = run_dags_test(DAGS, "gemini_cancel_order", conf={"order_ids": [first]}, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert read_xcom(env["AIRFLOW_HOME"], "gemini_cancel_order", "cancel_orders")["cancelled"] == [first]
    stored = stored_tokens(env, store_key(seed))
    assert ex.current_refresh_tokens(CLIENT_ID) == [stored["refresh_token"]]
    # The access token expires at Gemini before its time: the next run refreshes once, from the
    # Variable's refresh token (the connection's own was spent by the first run), and cancels.
    ex.expire_access_tokens()
    second = ex.place_order("master-desk-key", account="primary")["order_id"]
    again = run_dags_test(DAGS, "gemini_cancel_order", conf={"order_ids": [second]}, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert not ex.order(second)["is_live"]
    assert [e.status for e in ex.journal if e.path == TOKEN] == [200, 200]
    assert [e.path for e in ex.journal if e.status == 401] == ["/v1/orders"]  # its first request
    assert ex.current_refresh_tokens(CLIENT_ID) == [stored_tokens(env, store_key(seed))["refresh_token"]]


def test_a_revoked_refresh_token_fails_the_task_without_retries_naming_the_connection(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    env = oauth_env(tmp_path, ex, ex.grant_refresh_token(CLIENT_ID), account="primary")
    ex.revoke_oauth(CLIENT_ID)
    order_id = ex.place_order("master-desk-key", account="primary")["order_id"]
    started = time.monotonic()
    result = run_dags_test(DAGS, "gemini_cancel_order", conf={"order_ids": [order_id]}, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert task_states(env["AIRFLOW_HOME"], "gemini_cancel_order")["cancel_orders"] == "failed"
    assert "OAuth connection 'gemini_default'" in output and "invalid_grant" in output
    assert ex.count(TOKEN) == 1  # no client retry, no Airflow retry
    assert ex.order(order_id)["is_live"]
    assert time.monotonic() - started < 120


def test_a_token_without_orders_create_fails_the_cancel_clearly(ex: GeminiExchange, tmp_path: Path) -> None:
    env = oauth_env(tmp_path, ex, ex.grant_refresh_token(CLIENT_ID, "orders:read"), account="primary")
    order_id = ex.place_order("master-desk-key", account="primary")["order_id"]
    result = run_dags_test(DAGS, "gemini_cancel_order", conf={"order_ids": [order_id]}, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "missing_scope" in output and "orders:create" in output
    assert ex.count("/v1/order/cancel") == 0 and ex.order(order_id)["is_live"]


def test_a_stale_sweep_with_a_btcgusdperp_filter_sweeps_the_perpetuals_account(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    """A master key's connection, the perpetuals account named in the run's conf: the stale perpetuals
    orders are cancelled and confirmed; a fresh one, another perpetual and the spot book stay."""
    now = int(time.time() * 1000)
    key = "master-desk-key"

    def place(symbol: str, account: str, age_hours: float) -> str:
        price = "60000.00" if symbol.startswith("btc") else "3000.00"
        order = ex.place_order(
            key, symbol=symbol, price=price, account=account, timestampms=now - int(age_hours * HOUR_MS)
        )
        return str(order["order_id"])

    stale_perps = [place("btcgusdperp", "perps", 3), place("btcgusdperp", "perps", 2)]
    kept = [
        place("btcgusdperp", "perps", 0.1),
        place("ethgusdperp", "perps", 3),
        place("btcusd", "primary", 3),
    ]
    env = airflow_env(tmp_path / "home", DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection(key)})
    conf = {"max_age_minutes": 60, "symbols": ["btcgusdperp"], "account": "perps"}
    result = run_dags_test(DAGS, "gemini_cancel_stale_orders", conf=conf, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = task_states(env["AIRFLOW_HOME"], "gemini_cancel_stale_orders")
    assert states["confirm_cancelled"] == "success" and states["report"] == "success"
    report = read_xcom(env["AIRFLOW_HOME"], "gemini_cancel_stale_orders", "cancel_stale_orders")
    assert sorted(report["cancelled"]) == sorted(stale_perps)
    assert {o["symbol"] for o in report["orders"].values()} == {"btcgusdperp"}
    assert all(ex.order(o)["is_cancelled"] for o in stale_perps)
    assert all(ex.order(o)["is_live"] for o in kept)
    assert {e.payload.get("account") for e in ex.journal if e.path.startswith("/v1/")} == {"perps"}


def test_the_first_refresh_token_from_a_read_only_backend_variable(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    """The seed in a read-only secrets backend (here the environment-variable backend, AIRFLOW_VAR_...):
    the rotated tokens go to the token Variable in the metadata database, and the seed is never written."""
    seed = ex.grant_refresh_token(CLIENT_ID)
    env = oauth_env(tmp_path, ex, seed)
    conn = json.loads(env["AIRFLOW_CONN_GEMINI_DEFAULT"])
    del conn["extra"]["refresh_token"]
    conn["extra"]["refresh_token_variable"] = "desk_oauth_seed"
    env["AIRFLOW_CONN_GEMINI_DEFAULT"] = json.dumps(conn)
    env["AIRFLOW_VAR_DESK_OAUTH_SEED"] = seed
    result = subprocess.run(
        [AIRFLOW, "connections", "test", "gemini_default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "Connection success!" in result.stdout, result.stdout + result.stderr
    stored = stored_tokens(env, store_key(seed))
    assert ex.current_refresh_tokens(CLIENT_ID) == [stored["refresh_token"]]
    missing = dict(env)
    del missing["AIRFLOW_VAR_DESK_OAUTH_SEED"]
    failed = subprocess.run(
        [AIRFLOW, "connections", "test", "gemini_default"],
        env=missing,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode != 0
    assert (
        "refresh_token_variable (extra): no Airflow Variable 'desk_oauth_seed' can be read" in failed.stdout
    )
