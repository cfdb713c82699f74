"""No secret, signature, payload header or full API key in anything a user or a log collector sees.

Two halves:
- every error the client can raise (each produced through the local exchange or a dead port), its
  str, repr, args and the str of its whole __cause__/__context__ chain, and the reprs of the client
  and the hook;
- the example DAGs run in `airflow dags test` at DEBUG with a recognisable key and secret: their
  output, every file under AIRFLOW_HOME/logs, the XComs and the rendered template fields.

What is searched for is rebuilt from the exchange's journal: for every request it received, the
base64 payload header the client sent and its HMAC-SHA384 signature; plus the secret, the full key,
and the base64 text every payload header starts with (`{"request` encodes to `eyJyZXF1ZXN0`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow_run import airflow_env, run_dags_test, task_states
from helpers import REPO_ROOT

from airflow_provider_gemini.auth import build_private_headers
from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.testing.exchange import GeminiExchange, JournalEntry

CANARY_KEY = "account-KEYcanary-3b8e1d"
CANARY_SECRET = "SECRET-canary-7f3a9c"
PAYLOAD_PREFIX = base64.b64encode(b'{"request').decode()[:12]  # "eyJyZXF1ZXN0": every payload header
CANCEL = "/v1/order/cancel"
EXAMPLE_DAGS = REPO_ROOT / "dags"
TEST_DAGS = Path(__file__).with_name("dags")
HOUR_MS = 3_600_000
# Airflow's own supervisor line under `airflow dags test` at DEBUG, the one place the connection's
# values appear (it asks the log masker to hide them). Matched whole, so nothing else on it escapes.
MASK_SECRET_LINE = re.compile(
    r"\S+ \[debug\s*\] Sending request\s+loc=supervisor\.py:\d+ "
    r"msg=MaskSecret\(value='[^'\\]*', name=(?:None|'[^'\\]*'), type='MaskSecret'\)"
)


def payload_header(payload: Mapping[str, Any]) -> str:
    """The X-GEMINI-PAYLOAD value of a journalled payload: compact JSON in the order it was sent."""
    return base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def forbidden(
    journal: Iterable[JournalEntry], secrets: Iterable[str], api_keys: Iterable[str]
) -> dict[str, str]:
    """label -> text that must appear nowhere: secrets, full keys, and every payload and signature sent."""
    secrets = list(secrets)
    needles = {f"secret {i}": secret for i, secret in enumerate(secrets)}
    needles.update({f"api key {key}": key for key in api_keys})
    needles["payload header prefix"] = PAYLOAD_PREFIX
    for n, entry in enumerate(journal):
        if not entry.payload:
            continue
        header = payload_header(entry.payload)
        needles[f"payload #{n} {entry.path}"] = header
        for i, secret in enumerate(secrets):
            signature = hmac.new(secret.encode(), header.encode(), hashlib.sha384).hexdigest()
            needles[f"signature #{n} {entry.path} (secret {i})"] = signature
    return needles


def leaks(text: str, needles: Mapping[str, str]) -> list[str]:
    return [label for label, needle in needles.items() if needle in text]


def test_rebuilt_payload_header_is_the_one_the_client_sends(gemini_exchange: GeminiExchange) -> None:
    """The search below is only as good as the rebuilt header: check it against the signer."""
    client = GeminiClient(
        gemini_exchange.api_key or "", gemini_exchange.api_secret or "", base_url=gemini_exchange.url
    )
    order_id = int(gemini_exchange.place_order(gemini_exchange.api_key)["order_id"])
    with client:
        client.cancel_order(order_id)
    (entry,) = gemini_exchange.journal
    fields = {k: v for k, v in entry.payload.items() if k not in ("request", "nonce")}
    sent = build_private_headers(
        gemini_exchange.api_key or "", gemini_exchange.api_secret or "", CANCEL, entry.nonce, fields
    )
    assert payload_header(entry.payload) == sent["X-GEMINI-PAYLOAD"]
    assert sent["X-GEMINI-PAYLOAD"].startswith(PAYLOAD_PREFIX)
    needles = forbidden([entry], [gemini_exchange.api_secret or ""], [])
    assert sent["X-GEMINI-SIGNATURE"] in needles.values()


# --- every error the client raises ---------------------------------------------------------------------


def error_texts(error: BaseException) -> str:
    """Everything an error shows: str, repr, args and traceback's one-line form, along its whole chain.

    (Not the traceback's source lines: those are this file's code, literals included.)"""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        parts += [str(getattr(current, name, "")) for name in ("message", "reason")]
        parts += traceback.format_exception_only(current)
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Scenario = Callable[[GeminiExchange], Any]


def _client(exchange: GeminiExchange, **options: Any) -> GeminiClient:
    options.setdefault("base_url", exchange.url)
    options.setdefault("rate_limit_per_minute", None)
    return GeminiClient(
        options.pop("api_key", CANARY_KEY), options.pop("api_secret", CANARY_SECRET), **options
    )


def _live_order(exchange: GeminiExchange) -> int:
    return int(exchange.place_order(CANARY_KEY)["order_id"])


def _bad_signature(exchange: GeminiExchange) -> Any:
    return _client(exchange, api_secret=CANARY_SECRET + "-wrong").cancel_order(_live_order(exchange))


def _unknown_key(exchange: GeminiExchange) -> Any:
    return _client(exchange, api_key=CANARY_KEY + "-unknown").cancel_order(_live_order(exchange))


def _missing_role(exchange: GeminiExchange) -> Any:
    exchange.add_key("account-KEYcanary-auditor", CANARY_SECRET, roles=("Auditor",))
    return _client(exchange, api_key="account-KEYcanary-auditor").cancel_order(_live_order(exchange))


def _invalid_nonce_after_retries(exchange: GeminiExchange) -> Any:
    """Another tool used the key with a far larger nonce: every nonce of ours is too small."""
    headers = build_private_headers(CANARY_KEY, CANARY_SECRET, "/v1/heartbeat", 10**18)
    assert requests.post(exchange.url + "/v1/heartbeat", headers=headers, timeout=5).status_code == 200
    return _client(exchange, max_attempts=3).cancel_order(_live_order(exchange))


def _order_not_found(exchange: GeminiExchange) -> Any:
    return _client(exchange).cancel_order(2**62)


def _empty_404(exchange: GeminiExchange) -> Any:
    exchange.inject_fault("not_found_empty", path=CANCEL)
    return _client(exchange).cancel_order(_live_order(exchange))


def _rate_limited_exhausted(exchange: GeminiExchange) -> Any:
    # A 429 is retried until the call's deadline, not for a number of attempts.
    exchange.inject_fault("rate_limit", path=CANCEL, count=1000, retry_after=0.01)
    return _client(exchange, call_timeout=0.5).cancel_order(_live_order(exchange))


def _maintenance_exhausted(exchange: GeminiExchange) -> Any:
    exchange.inject_fault("maintenance", path=CANCEL, count=3, retry_after=0.01)
    return _client(exchange, max_attempts=3).cancel_order(_live_order(exchange))


def _text_500_exhausted(exchange: GeminiExchange) -> Any:
    exchange.inject_fault("server_error_text", path=CANCEL, count=2)
    return _client(exchange, max_attempts=2).cancel_order(_live_order(exchange))


def _timeout(exchange: GeminiExchange) -> Any:
    exchange.inject_fault("delay", path=CANCEL, count=2, delay=0.6)
    return _client(exchange, max_attempts=2, timeout=0.2).cancel_order(_live_order(exchange))


def _dropped(exchange: GeminiExchange) -> Any:
    exchange.inject_fault("drop_after", path=CANCEL, count=2)
    return _client(exchange, max_attempts=2).cancel_order(_live_order(exchange))


def _connection_refused(exchange: GeminiExchange) -> Any:
    return _client(exchange, base_url=f"http://127.0.0.1:{closed_port()}", max_attempts=2).cancel_order(1)


def _invalid_account(exchange: GeminiExchange) -> Any:
    exchange.add_key("master-KEYcanary-group", CANARY_SECRET, accounts=("primary", "desk-b"))
    client = _client(exchange, api_key="master-KEYcanary-group", account="not-in-group")
    return client.cancel_order(_live_order(exchange))


def _bad_order_id(exchange: GeminiExchange) -> Any:
    return _client(exchange).cancel_order("12a")


def _bool_order_id(exchange: GeminiExchange) -> Any:
    return _client(exchange).cancel_order(True)  # type: ignore[arg-type]


def _master_without_account(exchange: GeminiExchange) -> Any:
    exchange.add_key("master-KEYcanary-noacct", CANARY_SECRET, accounts=("primary",))
    return _client(exchange, api_key="master-KEYcanary-noacct").cancel_order(1)


def _bad_base_url(exchange: GeminiExchange) -> Any:
    return _client(exchange, base_url="ftp://127.0.0.1/")


def _bad_timeout(exchange: GeminiExchange) -> Any:
    return _client(exchange, timeout=-1)


# (scenario, expected exception type name, kind or None, reason or None)
SCENARIOS: list[tuple[Scenario, str, str | None, str | None]] = [
    (_bad_signature, "InvalidSignatureError", "invalid_signature", "InvalidSignature"),
    (_unknown_key, "InvalidSignatureError", "invalid_signature", "InvalidApiKey"),
    (_missing_role, "MissingRoleError", "missing_role", "MissingRole"),
    (_invalid_nonce_after_retries, "InvalidNonceError", "invalid_nonce", "InvalidNonce"),
    (_order_not_found, "OrderNotFoundError", "order_not_found", "OrderNotFound"),
    (_empty_404, "NotFoundError", "not_found", None),
    (_rate_limited_exhausted, "RateLimitedError", "rate_limited", "RateLimit"),
    (_maintenance_exhausted, "ServiceError", "service_error", "Maintenance"),
    (_text_500_exhausted, "ServiceError", "service_error", None),
    (_timeout, "ServiceError", "service_error", "Timeout"),
    (_dropped, "ServiceError", "service_error", "ConnectionError"),
    (_connection_refused, "ServiceError", "service_error", "ConnectionError"),
    (_invalid_account, "InvalidRequestError", "invalid_request", "InvalidAccount"),
    (_bad_order_id, "ValueError", None, None),
    (_bool_order_id, "ValueError", None, None),
    (_master_without_account, "ValueError", None, None),
    (_bad_base_url, "ValueError", None, None),
    (_bad_timeout, "ValueError", None, None),
]


@pytest.mark.timeout(60)
@pytest.mark.gemini_exchange(rate_limit_per_minute=None, api_key=CANARY_KEY, api_secret=CANARY_SECRET)
@pytest.mark.parametrize(
    ("scenario", "type_name", "kind", "reason"), SCENARIOS, ids=[s[0].__name__.strip("_") for s in SCENARIOS]
)
def test_client_errors_carry_no_secret(
    gemini_exchange: GeminiExchange, scenario: Scenario, type_name: str, kind: str | None, reason: str | None
) -> None:
    with pytest.raises(Exception) as caught:
        scenario(gemini_exchange)
    error = caught.value
    assert type(error).__name__ == type_name, repr(error)
    if kind is not None:
        assert isinstance(error, GeminiError)
        assert (error.kind, error.reason) == (kind, reason), repr(error)
    secrets = [CANARY_SECRET, CANARY_SECRET + "-wrong"]
    keys = [CANARY_KEY, CANARY_KEY + "-unknown", "account-KEYcanary-auditor", "master-KEYcanary-group"]
    keys.append("master-KEYcanary-noacct")
    needles = forbidden(gemini_exchange.journal, secrets, keys)
    # Not a vacuous search: every scenario that reached the exchange left payloads to look for.
    reached = kind is not None and scenario is not _connection_refused
    assert bool(gemini_exchange.journal) == reached
    assert any(label.startswith("signature #") for label in needles) == reached
    texts = error_texts(error)
    assert not leaks(texts, needles), f"{leaks(texts, needles)} in:\n{texts}"


@pytest.mark.gemini_exchange(rate_limit_per_minute=None, api_key=CANARY_KEY, api_secret=CANARY_SECRET)
def test_client_repr_and_stats_hide_the_key_and_secret(gemini_exchange: GeminiExchange) -> None:
    client = _client(gemini_exchange)
    with client:
        client.cancel_order(_live_order(gemini_exchange))
    needles = forbidden(gemini_exchange.journal, [CANARY_SECRET], [CANARY_KEY])
    for text in (repr(client), str(client), repr(client.stats), repr(vars(client).keys())):
        assert not leaks(text, needles), text
    assert re.search(r"api_key='account-\*\*\*'", repr(client)), repr(client)


def test_client_and_hook_repr_hide_the_key_and_secret(
    gemini_exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_gemini.hooks.gemini import GeminiHook

    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", gemini_exchange.airflow_connection())
    hook = GeminiHook()
    client = hook.get_client()
    secret, key = gemini_exchange.api_secret or "", gemini_exchange.api_key or ""
    for text in (repr(hook), str(hook), repr(vars(hook)), repr(client), str(client)):
        assert secret not in text and key not in text, text


# --- the example DAGs at DEBUG ---------------------------------------------------------------------------


def without_mask_secret_lines(text: str) -> tuple[str, int]:
    """The text minus Airflow's MaskSecret lines, and how many there were."""
    kept, dropped = [], 0
    for line in text.splitlines():
        if MASK_SECRET_LINE.fullmatch(line):
            dropped += 1
        else:
            kept.append(line)
    return "\n".join(kept), dropped


def stored_values(db: Path) -> dict[str, list[str]]:
    """The XComs, rendered template fields and trigger kwargs Airflow stored, as text."""
    queries = {
        "xcom": "SELECT dag_id, task_id, key, value FROM xcom",
        "rendered_task_instance_fields": "SELECT dag_id, task_id, rendered_fields FROM rendered_task_instance_fields",
        "trigger": "SELECT classpath, kwargs FROM trigger",
    }
    with sqlite3.connect(db) as conn:
        return {table: [repr(row) for row in conn.execute(query)] for table, query in queries.items()}


def cancel_once_watched(exchange: GeminiExchange, order_id: str, stop: threading.Event) -> None:
    """Cancel `order_id` on the exchange after its status was read twice (the poke, then the trigger)."""
    while not stop.wait(0.05):
        polls = [
            e
            for e in exchange.journal
            if e.path == "/v1/order/status" and str(e.payload.get("order_id")) == order_id
        ]
        if len(polls) >= 2:
            exchange.cancel_by_exchange(order_id, "Requested")
            return


@pytest.mark.timeout(280)
@pytest.mark.gemini_exchange(rate_limit_per_minute=None, api_key=CANARY_KEY, api_secret=CANARY_SECRET)
def test_dag_runs_at_debug_leak_no_secret(gemini_exchange: GeminiExchange, tmp_path: Path) -> None:
    ex = gemini_exchange
    now = int(time.time() * 1000)
    stale = [str(ex.place_order(CANARY_KEY, timestampms=now - 2 * HOUR_MS - i)["order_id"]) for i in range(4)]
    by_id = [str(ex.place_order(CANARY_KEY)["order_id"]) for _ in range(2)]
    watched = str(ex.place_order(CANARY_KEY)["order_id"])
    session = [str(ex.place_order(CANARY_KEY)["order_id"]) for _ in range(2)]
    flaky = json.loads(ex.airflow_connection())
    flaky["extra"] = {"timeout": 0.3, "max_attempts": 2}
    home = tmp_path / "home"
    env = airflow_env(
        home,
        EXAMPLE_DAGS,
        {
            "AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection(),
            "AIRFLOW_CONN_GEMINI_FLAKY": json.dumps(flaky),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
        },
    )
    outputs: dict[str, str] = {}
    states: dict[str, dict[str, str | None]] = {}

    def run(folder: Path, dag_id: str, conf: dict[str, Any]) -> None:
        result = run_dags_test(folder, dag_id, conf=conf, env=env, timeout=150)
        outputs[dag_id] = result.stdout + "\n" + result.stderr
        (tmp_path / f"{dag_id}.out").write_text(outputs[dag_id])
        states[dag_id] = task_states(home, dag_id)

    run(EXAMPLE_DAGS, "gemini_cancel_stale_orders", {"max_age_minutes": 60})
    run(EXAMPLE_DAGS, "gemini_cancel_order", {"order_ids": by_id})
    ex.inject_fault("drop", path="/v1/heartbeat", count=2)
    ex.inject_fault("delay", path="/v1/roles", count=2, delay=0.8)
    stop = threading.Event()
    canceller = threading.Thread(target=cancel_once_watched, args=(ex, watched, stop), daemon=True)
    canceller.start()
    try:
        run(TEST_DAGS, "reliability_secrets", {"watch_ids": [watched], "unknown_id": str(2**62)})
    finally:
        stop.set()
        canceller.join(timeout=5)
    run(EXAMPLE_DAGS, "gemini_end_of_session", {})

    # The runs did what they were meant to, so the search below covers real output.
    assert set(states["gemini_cancel_stale_orders"].values()) == {"success"}, states
    assert set(states["gemini_cancel_order"].values()) == {"success"}, states
    assert set(states["gemini_end_of_session"].values()) == {"success"}, states
    assert states["reliability_secrets"] == {
        "wait_cancelled": "success",
        "heartbeat_dropped": "failed",
        "roles_timeout": "failed",
        "unknown_order": "failed",
    }, outputs["reliability_secrets"][-5000:]
    failing = outputs["reliability_secrets"]
    assert "ConnectionError" in failing and "Timeout" in failing and "not found" in failing
    for oid in [*stale, *by_id, watched, *session]:
        assert ex.order(oid)["is_cancelled"], oid
    assert any(e.path == "/v1/order/status" for e in ex.journal)

    needles = forbidden(ex.journal, [CANARY_SECRET], [CANARY_KEY])
    assert sum(label.startswith("signature #") for label in needles) >= 20
    found: dict[str, list[str]] = {}
    mask_lines = 0
    for dag_id, output in outputs.items():
        text, dropped = without_mask_secret_lines(output)
        mask_lines += dropped
        found[f"output of {dag_id}"] = leaks(text, needles)
    files = [path for path in home.rglob("*") if path.is_file()]
    for path in files:
        found[str(path.relative_to(home))] = leaks(path.read_bytes().decode("latin-1"), needles)
    stored = stored_values(home / "airflow.db")
    assert stored["xcom"] and stored["rendered_task_instance_fields"], stored
    for table, rows in stored.items():
        found[f"table {table}"] = leaks("\n".join(rows), needles)
    leaked = {where: labels for where, labels in found.items() if labels}
    assert not leaked, f"leaked: {leaked} (files searched: {[str(p.relative_to(home)) for p in files]})"
    (tmp_path / "figures.txt").write_text(
        f"{len(outputs)} DAG runs, {len(ex.journal)} requests, {len(needles)} strings searched for, "
        f"{len(files)} files, {sum(map(len, stored.values()))} stored rows, "
        f"{mask_lines} MaskSecret lines left out\n"
    )


# --- the OAuth path ---------------------------------------------------------------------------------------

CANARY_CLIENT_ID = "client-canary-5d2e"
CANARY_CLIENT_SECRET = "CLIENTSECRET-canary-91c4"


# Airflow's own supervisor lines that carry an OAuth connection's values at DEBUG, matched whole: the
# MaskSecret of the connection's extra (a dict, the refresh token in it), and the PutVariable message
# that writes the token store Variable (the provider's tokens, sent to the API server as any Variable).
AIRFLOW_OAUTH_LINES = (
    re.compile(
        r"\S+ \[debug\s*\] Sending request\s+loc=supervisor\.py:\d+ "
        r"msg=MaskSecret\(value=\{'auth_type': 'oauth', 'refresh_token': '[^'\\]*'(?:, '\w+': '[^'\\]*')*\}, "
        r"name=None, type='MaskSecret'\)"
    ),
    re.compile(
        r"\S+ \[debug\s*\] (?:Sending request|Received message from task runner \[supervisor\])\s+"
        r"loc=supervisor\.py:\d+ msg=PutVariable\(key='gemini_oauth_token_\w+', value='\{[^'\\]*\}', "
        r"description='airflow-provider-gemini: [^'\\]*', type='PutVariable'\)"
    ),
)


def without_airflow_oauth_lines(text: str) -> tuple[str, int]:
    """The text minus Airflow's MaskSecret lines and the two OAuth line shapes above, and how many."""
    text, dropped = without_mask_secret_lines(text)
    kept = [line for line in text.splitlines() if not any(p.fullmatch(line) for p in AIRFLOW_OAUTH_LINES)]
    return "\n".join(kept), dropped + len(text.splitlines()) - len(kept)


@pytest.mark.timeout(280)
@pytest.mark.gemini_exchange(rate_limit_per_minute=None, api_key=CANARY_KEY, api_secret=CANARY_SECRET)
def test_oauth_dag_runs_at_debug_leak_no_secret(gemini_exchange: GeminiExchange, tmp_path: Path) -> None:
    """An OAuth connection through three DAG runs at DEBUG: the first refresh, a 401 and its refresh,
    and a token without orders:create failing its cancel. No client secret, access or refresh token
    (any ever issued), Bearer header or payload header in the output, the files of AIRFLOW_HOME (the
    token Variable in airflow.db is Fernet-encrypted), the XComs, rendered fields or trigger kwargs."""
    ex = gemini_exchange
    ex.add_oauth_app(CANARY_CLIENT_ID, CANARY_CLIENT_SECRET)
    seed = ex.grant_refresh_token(CANARY_CLIENT_ID)
    now = int(time.time() * 1000)
    stale = [str(ex.place_order(CANARY_KEY, timestampms=now - 2 * HOUR_MS - i)["order_id"]) for i in range(3)]
    by_id = [str(ex.place_order(CANARY_KEY)["order_id"]) for _ in range(2)]
    kept = str(ex.place_order(CANARY_KEY)["order_id"])
    ex.add_oauth_app(CANARY_CLIENT_ID + "-reader", CANARY_CLIENT_SECRET + "-reader")
    reader_seed = ex.grant_refresh_token(CANARY_CLIENT_ID + "-reader", "orders:read")
    home = tmp_path / "home"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = airflow_env(
        home,
        EXAMPLE_DAGS,
        {
            "AIRFLOW_CONN_GEMINI_DEFAULT": ex.oauth_connection(CANARY_CLIENT_ID, seed),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
            "GEMINI_PROVIDER_STATE_DIR": str(state),
        },
    )
    outputs: dict[str, str] = {}

    def run(dag_id: str, conf: dict[str, Any], label: str) -> dict[str, str | None]:
        result = run_dags_test(EXAMPLE_DAGS, dag_id, conf=conf, env=env, timeout=150)
        outputs[label] = result.stdout + "\n" + result.stderr
        (tmp_path / f"{label}.out").write_text(outputs[label])
        return task_states(home, dag_id)

    assert set(run("gemini_cancel_stale_orders", {"max_age_minutes": 60}, "stale").values()) == {"success"}
    ex.expire_access_tokens()  # the next run meets a 401 and refreshes from the stored token
    assert set(run("gemini_cancel_order", {"order_ids": by_id}, "by_id").values()) == {"success"}
    env["AIRFLOW_CONN_GEMINI_DEFAULT"] = ex.oauth_connection(
        CANARY_CLIENT_ID + "-reader", reader_seed, token_variable="gemini_oauth_token_reader"
    )
    assert run("gemini_cancel_order", {"order_ids": [kept]}, "reader")["cancel_orders"] == "failed"
    assert "missing_scope" in outputs["reader"]
    assert all(ex.order(o)["is_cancelled"] for o in [*stale, *by_id]) and ex.order(kept)["is_live"]
    assert ex.count("/auth/token", 200) == 3 and ex.count("/v1/orders", 401) == 1

    tokens = ex.oauth_tokens_issued()
    assert len(tokens) == 10  # two from each of the two codes, two from each of the three refreshes
    needles = forbidden(ex.journal, [CANARY_CLIENT_SECRET, CANARY_CLIENT_SECRET + "-reader"], [])
    needles.update({f"token {i}": token for i, token in enumerate(tokens)})
    needles.update({f"bearer {i}": f"Bearer {token}" for i, token in enumerate(tokens)})
    assert sum(label.startswith("payload #") for label in needles) >= 8
    found: dict[str, list[str]] = {}
    airflow_lines = 0
    for label, output in outputs.items():
        text, dropped = without_airflow_oauth_lines(output)
        airflow_lines += dropped
        found[f"output of {label}"] = leaks(text, needles)
    files = [path for path in home.rglob("*") if path.is_file()] + list(state.rglob("*"))
    for path in files:
        if path.is_file():
            found[str(path)] = leaks(path.read_bytes().decode("latin-1"), needles)
    stored = stored_values(home / "airflow.db")
    assert stored["xcom"] and stored["rendered_task_instance_fields"], stored
    for table, rows in stored.items():
        found[f"table {table}"] = leaks("\n".join(rows), needles)
    leaked = {where: labels for where, labels in found.items() if labels}
    assert not leaked, f"leaked: {leaked}"
    assert airflow_lines > 0  # the shapes left out do occur: the exclusion is not stale
