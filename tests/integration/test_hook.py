"""GeminiHook: connection fields to a client, field-named errors, test_connection, and the Airflow CLI."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import jsonschema
import pytest
from airflow.sdk import Connection
from helpers import REPO_ROOT

import airflow_provider_gemini.hooks.gemini as hook_module
from airflow_provider_gemini import LEGACY_CONN_TYPE, get_provider_info
from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.hooks.gemini import GeminiConnectionError, GeminiHook, client_kwargs
from airflow_provider_gemini.testing.exchange import GeminiExchange

KEY = "account-hookkey-1234"
SECRET = "hook-secret-abcdef"


def conn(**fields: Any) -> Connection:
    extra = fields.pop("extra", None)
    values: dict[str, Any] = {
        "conn_id": "gemini_test",
        "conn_type": "geminiexchange",
        "login": KEY,
        "password": SECRET,
    }
    values.update(fields)
    if extra is not None:
        values["extra"] = json.dumps(extra)
    return Connection(**values)


def test_hook_identity() -> None:
    assert (GeminiHook.conn_name_attr, GeminiHook.default_conn_name) == ("gemini_conn_id", "gemini_default")
    assert (GeminiHook.conn_type, GeminiHook.hook_name) == ("geminiexchange", "Gemini Exchange")
    assert GeminiHook().gemini_conn_id == "gemini_default"


def test_defaults_point_at_production_with_counter_nonces() -> None:
    assert client_kwargs(conn()) == {
        "api_key": KEY,
        "api_secret": SECRET,
        "base_url": "https://api.gemini.com",
        "account": None,
        "nonce_mode": "counter",
        "timeout": 10.0,
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"extra": {"environment": "sandbox"}}, {"base_url": "https://api.sandbox.gemini.com"}),
        ({"extra": {"environment": " Sandbox "}}, {"base_url": "https://api.sandbox.gemini.com"}),
        ({"host": "http://127.0.0.1:8765"}, {"base_url": "http://127.0.0.1:8765"}),
        (
            {"host": "http://127.0.0.1:8765/", "extra": {"environment": "sandbox"}},
            {"base_url": "http://127.0.0.1:8765"},
        ),
        ({"host": "127.0.0.1", "port": 8765, "schema": "http"}, {"base_url": "http://127.0.0.1:8765"}),
        ({"host": "api.gemini.com"}, {"base_url": "https://api.gemini.com"}),
        ({"extra": {"nonce_mode": "time", "timeout": "2.5"}}, {"nonce_mode": "time", "timeout": 2.5}),
        ({"extra": {"account": " desk2 ", "environment": None, "nonce_mode": ""}}, {"account": "desk2"}),
        ({"login": f" {KEY}\n", "password": f"{SECRET} "}, {"api_key": KEY, "api_secret": SECRET}),
        (
            {"extra": {"rate_limit_per_minute": 6000, "burst": "10", "max_attempts": 3}},
            {"rate_limit_per_minute": 6000.0, "burst": 10, "max_attempts": 3},
        ),
        ({"extra": {"rate_limit_per_minute": "off"}}, {"rate_limit_per_minute": None}),
    ],
)
def test_connection_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    kwargs = client_kwargs(conn(**fields))
    assert {name: kwargs[name] for name in expected} == expected
    GeminiClient(**kwargs)


def test_a_connection_saved_from_the_form_follows_the_provider_defaults() -> None:
    """Airflow 3.3's form saves every field, a null for each one left empty: that means the default."""
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert all("default" not in field["schema"] for field in fields.values())
    assert client_kwargs(conn(extra=dict.fromkeys(fields))) == client_kwargs(conn())


@pytest.mark.parametrize("rate", ["600", " 6000 ", "off", "12.5"], ids=["text", "spaces", "off", "fraction"])
def test_the_rate_limit_text_field_takes_what_its_pattern_admits(rate: str) -> None:
    schema = get_provider_info()["connection-types"][0]["conn-fields"]["rate_limit_per_minute"]["schema"]
    jsonschema.validate(rate, schema)
    client_kwargs(conn(extra={"rate_limit_per_minute": rate}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"login": None}, "API key (login) is empty"),
        ({"login": "  "}, "API key (login) is empty"),
        ({"password": ""}, "API secret (password) is empty"),
        (
            {"extra": {"environment": "prod"}},
            "environment (extra): expected 'production' or 'sandbox', got 'prod'",
        ),
        ({"host": "ftp://example.com"}, "host: expected a base URL"),
        ({"host": "http://"}, "host: expected a base URL"),
        ({"host": "http://127.0.0.1:99999"}, "host: expected a base URL"),
        ({"host": "https://api.gemini.com/v1"}, "host: expected a base URL"),
        ({"extra": {"nonce_mode": "micro"}}, "nonce_mode (extra): expected 'counter' or 'time', got 'micro'"),
        ({"extra": {"nonce_mode": 1}}, "nonce_mode (extra): expected 'counter' or 'time', got 1"),
        ({"extra": {"timeout": 0}}, "timeout (extra): expected a positive number of seconds, got 0"),
        (
            {"extra": {"timeout": "soon"}},
            "timeout (extra): expected a positive number of seconds, got 'soon'",
        ),
        ({"extra": {"timeout": True}}, "timeout (extra): expected a positive number of seconds, got True"),
        ({"extra": {"account": 7}}, "account (extra): expected an account nickname, got 7"),
        (
            {"extra": {"rate_limit_per_minute": -1}},
            "rate_limit_per_minute (extra): expected a positive number",
        ),
        ({"extra": {"burst": 2.5}}, "burst (extra): expected an integer >= 1, got 2.5"),
        ({"extra": {"max_attempts": "many"}}, "max_attempts (extra): expected an integer >= 1, got 'many'"),
    ],
)
def test_bad_connections_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(GeminiConnectionError) as caught:
        client_kwargs(conn(**fields))
    assert str(caught.value).startswith(f"Gemini connection 'gemini_test': {message}")
    assert isinstance(caught.value, ValueError)
    assert SECRET not in str(caught.value)


def test_key_and_secret_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    masked: list[object] = []
    monkeypatch.setattr(hook_module, "mask_secret", masked.append)
    client_kwargs(conn())
    assert masked == [KEY, SECRET]


def test_get_client_is_built_once_from_the_env_connection(
    gemini_exchange: GeminiExchange, gemini_connection: str
) -> None:
    hook = GeminiHook(gemini_conn_id=gemini_connection)
    client = hook.get_client()
    assert hook.get_client() is client and hook.get_conn() is client
    assert client.base_url == gemini_exchange.url
    assert client.roles().is_trader
    assert GeminiHook().get_client() is not client


def test_trigger_path_builds_a_client_from_a_connection_and_its_extra() -> None:
    client = GeminiHook.client_from_connection(conn(), {"nonce_mode": "time"}, max_attempts=2)
    assert (client.nonce_mode, client.max_attempts) == ("time", 2)


def test_test_connection_reports_the_trader_role(
    gemini_exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    gemini_exchange.add_key("account-auditor-hook", "auditor-secret", roles=("Auditor",))
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", gemini_exchange.airflow_connection())
    assert GeminiHook().test_connection() == (
        True,
        f"Connected to {gemini_exchange.url}; the key has the Trader role (roles: Trader).",
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_DEFAULT", gemini_exchange.airflow_connection("account-auditor-hook")
    )
    assert GeminiHook().test_connection() == (
        False,
        f"Connected to {gemini_exchange.url}, but the key lacks the Trader role that cancelling orders needs "
        "(roles: Auditor).",
    )


def test_test_connection_reports_failures_without_raising(
    gemini_exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = json.loads(gemini_exchange.airflow_connection())
    wrong["password"] = "not-the-secret"
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(wrong))
    ok, message = GeminiHook().test_connection()
    assert not ok and message.startswith("Could not read the key's roles: invalid_signature (HTTP 400")
    assert "not-the-secret" not in message
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps({**wrong, "login": ""}))
    # The api-server tests a copy under a random id, so the message names the field alone.
    assert GeminiHook().test_connection() == (False, "API key (login) is empty")
    monkeypatch.delenv("AIRFLOW_CONN_GEMINI_DEFAULT")
    ok, message = GeminiHook().test_connection()
    assert not ok and "gemini_default" in message


def airflow_connections_test(env: dict[str, str], connection: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "AIRFLOW__CORE__TEST_CONNECTION": "Enabled", "AIRFLOW_CONN_GEMINI_DEFAULT": connection}
    return subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "airflow"), "connections", "test", "gemini_default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_airflow_connections_test_cli(gemini_exchange: GeminiExchange, airflow_home: dict[str, str]) -> None:
    """`airflow connections test` through the provider's registration, no database needed."""
    gemini_exchange.add_key("account-auditor-cli", "auditor-cli-secret", roles=("Auditor",))
    trader = airflow_connections_test(airflow_home, gemini_exchange.airflow_connection())
    assert trader.returncode == 0, trader.stdout + trader.stderr
    assert "Connection success!" in trader.stdout
    auditor = airflow_connections_test(
        airflow_home, gemini_exchange.airflow_connection("account-auditor-cli")
    )
    assert auditor.returncode == 1
    assert "Connection failed!" in auditor.stdout
    assert "lacks the Trader role that cancelling orders needs (roles: Auditor)" in auditor.stdout
    # Connections of the earlier type still resolve to the hook and test alike.
    legacy = airflow_connections_test(
        airflow_home,
        json.dumps({**json.loads(gemini_exchange.airflow_connection()), "conn_type": LEGACY_CONN_TYPE}),
    )
    assert legacy.returncode == 0 and "Connection success!" in legacy.stdout, legacy.stdout + legacy.stderr
    assert [entry.path for entry in gemini_exchange.journal] == ["/v1/roles"] * 3
    assert "shall not contain '_'" not in trader.stdout + trader.stderr
    for run in (trader, auditor, legacy):
        assert "auditor-cli-secret" not in run.stdout + run.stderr
