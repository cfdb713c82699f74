"""`make demo`: run the gemini_cancel_stale_orders DAG in `airflow dags test` and show the book change.

Default: start the local exchange (a subprocess, seeded with stale and fresh orders over several
symbols, a random secret per run), migrate a fresh SQLite Airflow home in a temporary folder, run the
DAG against the exchange, print the book before and after, and check that exactly the stale orders
were cancelled. Exit status 0 only when the DAG run succeeded and the book is as expected.

With GEMINI_CONN (a connection in Airflow's JSON form, e.g. a sandbox key) no exchange is started:
the same DAG runs against that account and the live orders are listed through the provider's client.
The DAG then runs with dry_run forced on, so a demo never cancels real orders by surprise; set
GEMINI_DEMO_DRY_RUN=0 to let it cancel. GEMINI_DEMO_CONF (JSON) overrides the DAG's params, e.g.
'{"max_age_minutes": 30, "symbols": ["btcusd"]}'.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow_provider_gemini import CONN_TYPE, LEGACY_CONN_TYPE

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"
DAG_ID = "gemini_cancel_stale_orders"
DEFAULT_CONF: dict[str, Any] = {"max_age_minutes": 60, "max_cancellations": 50}
DEMO_API_KEY = "account-demo-key"
BIN = Path(sys.executable).parent
EXCHANGE_START_TIMEOUT = 30.0
AIRFLOW_TIMEOUT = 300.0


class DemoError(Exception):
    """A step failed; the message says which and where its output is."""


def say(text: str = "") -> None:
    print(text, flush=True)


def airflow_env(home: Path, conn: str) -> dict[str, str]:
    """The environment of every Airflow subprocess: this home, these DAGs, this connection, INFO logs.

    The user's own AIRFLOW_* settings are dropped so the demo never touches their Airflow. INFO, not
    DEBUG: at DEBUG `airflow dags test` echoes the masked-secret registrations, secret included.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        AIRFLOW_CONN_GEMINI_DEFAULT=conn,
    )
    return env


def run_airflow(args: Sequence[str], env: Mapping[str, str], log_path: Path, check: bool = True) -> int:
    """Run `airflow <args>` with its output in `log_path`; with `check`, fail with the log's tail."""
    with log_path.open("w") as log:
        proc = subprocess.run(
            [str(BIN / "airflow"), *args],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=AIRFLOW_TIMEOUT,
            check=False,
        )
    if check and proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise DemoError(f"`airflow {' '.join(args[:2])}` exited {proc.returncode}; log: {log_path}\n{tail}")
    return proc.returncode


@contextmanager
def local_exchange(home: Path, api_secret: str) -> Iterator[str]:
    """Run the local exchange seeded with the demo book in its own process; yield its URL; stop it."""
    ready = home / "exchange.url"
    log_path = home / "exchange.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_provider_gemini.testing.exchange",
                "--port",
                "0",
                "--seed",
                "demo",
                "--api-key",
                DEMO_API_KEY,
                "--api-secret",
                api_secret,
                "--ready-file",
                str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + EXCHANGE_START_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None:
                raise DemoError(f"the local exchange exited with {proc.returncode}; log: {log_path}")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the local exchange did not start in {EXCHANGE_START_TIMEOUT:g} s; log: {log_path}"
                )
            time.sleep(0.05)
        yield ready.read_text().strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        say(f"Local exchange stopped (its log: {log_path}).")


def admin_book(url: str) -> list[dict[str, Any]]:
    """Every order of the local exchange, any state, through its unauthenticated test-only view."""
    with urllib.request.urlopen(f"{url}/_admin/orders", timeout=10) as answer:
        rows: list[dict[str, Any]] = json.loads(answer.read())
    return rows


def live_book(conn: str) -> list[dict[str, Any]]:
    """The account's live orders through the provider's client (one /v1/orders request)."""
    os.environ["AIRFLOW_CONN_GEMINI_DEFAULT"] = conn
    from airflow_provider_gemini.hooks.gemini import GeminiHook

    client = GeminiHook().get_client()
    return [
        {
            "order_id": order.order_id,
            "symbol": order.symbol,
            "side": order.side,
            "client_order_id": order.client_order_id,
            "timestampms": order.timestampms,
            "state": order.state,
        }
        for order in client.active_orders()
    ]


def age_text(now_ms: int, timestampms: int) -> str:
    minutes = max(0, now_ms - timestampms) // 60_000
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def book_table(before: list[dict[str, Any]], after: list[dict[str, Any]], now_ms: int) -> str:
    """One row per order seen before or after: id, symbol, side, age, client order id, both states."""
    states_before = {row["order_id"]: row["state"] for row in before}
    states_after = {row["order_id"]: row["state"] for row in after}
    rows = [*before, *(row for row in after if row["order_id"] not in states_before)]
    header = ("order_id", "symbol", "side", "age", "client_order_id", "before", "after")
    lines = [header]
    for row in rows:
        oid = row["order_id"]
        lines.append(
            (
                str(oid),
                row["symbol"],
                row["side"],
                age_text(now_ms, int(row["timestampms"])),
                row.get("client_order_id") or "",
                states_before.get(oid, "-"),
                states_after.get(oid, "not live"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def dag_run_state(home: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The last run's state and the report task's XCom, read from the demo's own airflow.db."""
    with sqlite3.connect(home / "airflow.db") as db:
        run = db.execute(
            "SELECT state, run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
        if run is None:
            return None, None
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
            (DAG_ID, run[1], "report"),
        ).fetchone()
    report = None
    if row is not None:
        value = json.loads(row[0])
        report = json.loads(value) if isinstance(value, str) else value
    return run[0], report


def expected_states(
    before: list[dict[str, Any]], before_ms: int, after_ms: int, conf: Mapping[str, Any]
) -> dict[str, str]:
    """What each order live before the run must be after it, given the conf; ids near the cut are free."""
    max_age_ms = int(conf["max_age_minutes"]) * 60_000
    symbols = [s.lower() for s in conf.get("symbols") or []]
    side = conf.get("side")
    prefix = conf.get("client_order_id_prefix")
    expected: dict[str, str] = {}
    for row in before:
        if row["state"] != "live":
            expected[row["order_id"]] = row["state"]
            continue
        matches = (
            (not symbols or row["symbol"] in symbols)
            and side in (None, row["side"])
            and (prefix is None or (row.get("client_order_id") or "").startswith(prefix))
        )
        if not matches or after_ms - int(row["timestampms"]) < max_age_ms:
            expected[row["order_id"]] = "live"
        elif before_ms - int(row["timestampms"]) > max_age_ms:
            expected[row["order_id"]] = "live" if conf.get("dry_run") else "cancelled"
    return expected


def run_dag(home: Path, env: Mapping[str, str], conf: Mapping[str, Any]) -> Path:
    log_path = home / "dags_test.log"
    say(f"Running `airflow dags test {DAG_ID} -c '{json.dumps(conf)}'` ...")
    say(f"  task logs (everything `airflow dags test` prints): {log_path}")
    run_airflow(["dags", "test", DAG_ID, "-c", json.dumps(conf)], env, log_path, check=False)
    return log_path


def run_between_looks(
    home: Path, conn: str, conf: dict[str, Any], look: Callable[[], list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]:
    """Migrate the metadata database, then look at the book, run the DAG, and look again (times in ms)."""
    env = airflow_env(home, conn)
    say("Migrating the Airflow metadata database (SQLite) ...")
    run_airflow(["db", "migrate"], env, home / "db_migrate.log")
    before_ms = int(time.time() * 1000)
    before = look()
    run_dag(home, env, conf)
    after_ms = int(time.time() * 1000)
    return before, look(), before_ms, after_ms


def demo_local(home: Path, conf: dict[str, Any]) -> int:
    api_secret = secrets.token_hex(16)
    with local_exchange(home, api_secret) as url:
        say(f"Local Gemini exchange (test only) on {url}, seeded with the demo book.")
        conn = json.dumps(
            {"conn_type": CONN_TYPE, "login": DEMO_API_KEY, "password": api_secret, "host": url}
        )
        before, after, before_ms, after_ms = run_between_looks(home, conn, conf, lambda: admin_book(url))
    say()
    say(f"The book before and after (max_age_minutes={conf['max_age_minutes']}; ages at the start):")
    say(book_table(before, after, before_ms))
    return verdict(home, before, after, before_ms, after_ms, conf)


def verdict(
    home: Path,
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    before_ms: int,
    after_ms: int,
    conf: Mapping[str, Any],
) -> int:
    """Compare the run and the book with what the conf asked for; print the result; the exit status."""
    state, report = dag_run_state(home)
    say()
    if report is not None:
        say(f"DAG report (XCom of `report`): {json.dumps(report['counts'])}")
    after_by_id = {row["order_id"]: row["state"] for row in after}
    wrong = []
    for oid, want in expected_states(before, before_ms, after_ms, conf).items():
        found = after_by_id.get(oid, "not live")
        if found != want and not (want != "live" and found == "not live"):
            wrong.append(f"{oid}: expected {want}, found {found}")
    if state != "success":
        say(f"FAILED: the DAG run ended {state!r}; see {home / 'dags_test.log'}")
        return 1
    if wrong:
        say("FAILED: the book is not what the DAG should have left:\n  " + "\n  ".join(wrong))
        return 1
    still = sum(1 for state_after in after_by_id.values() if state_after == "live")
    if conf.get("dry_run"):
        would = len(report["dry_run"]) if report else 0
        say(f"OK: DAG run success (dry run); nothing cancelled, {would} order(s) would be; {still} live.")
        return 0
    cancelled = sum(
        1 for row in before if row["state"] == "live" and after_by_id.get(row["order_id"]) != "live"
    )
    say(
        f"OK: DAG run success; {cancelled} stale order(s) cancelled, {still} live order(s) left as they were."
    )
    return 0


def demo_remote(home: Path, conn: str, conf: dict[str, Any]) -> int:
    try:
        conn_type = json.loads(conn).get("conn_type")
    except ValueError:
        raise DemoError("GEMINI_CONN must be a connection in Airflow's JSON form") from None
    if conn_type not in (CONN_TYPE, LEGACY_CONN_TYPE):
        raise DemoError(f"GEMINI_CONN: conn_type must be {CONN_TYPE!r}, got {conn_type!r}")
    if os.environ.get("GEMINI_DEMO_DRY_RUN", "1") != "0":
        conf["dry_run"] = True
        say("GEMINI_CONN is set: running against that account with dry_run=true (nothing is cancelled).")
        say("Set GEMINI_DEMO_DRY_RUN=0 to let the DAG cancel the matching orders.")
    else:
        say("GEMINI_CONN is set and GEMINI_DEMO_DRY_RUN=0: the DAG WILL CANCEL the matching orders.")
    before, after, before_ms, after_ms = run_between_looks(home, conn, conf, lambda: live_book(conn))
    say()
    say(f"The account's live orders before and after (max_age_minutes={conf['max_age_minutes']}):")
    say(book_table(before, after, before_ms) if before or after else "(no live orders)")
    _, report = dag_run_state(home)
    if report is not None and report.get("dry_run"):
        say()
        say(f"A real run would cancel: {', '.join(report['dry_run'])}")
    return verdict(home, before, after, before_ms, after_ms, conf)


def main() -> int:
    conf = dict(DEFAULT_CONF)
    try:
        conf.update(json.loads(os.environ.get("GEMINI_DEMO_CONF") or "{}"))
    except ValueError:
        say("GEMINI_DEMO_CONF must be a JSON object of the DAG's params")
        return 2
    home = Path(tempfile.mkdtemp(prefix="gemini-demo-airflow-"))
    say(f"AIRFLOW_HOME (temporary, kept for its logs): {home}")
    started = time.monotonic()
    try:
        conn = os.environ.get("GEMINI_CONN", "").strip()
        status = demo_remote(home, conn, conf) if conn else demo_local(home, conf)
    except DemoError as error:
        say(f"FAILED: {error}")
        return 1
    except KeyboardInterrupt:
        say("Interrupted.")
        return 130
    say(f"Done in {time.monotonic() - started:.0f} s.")
    return status


if __name__ == "__main__":
    sys.exit(main())
