"""Metrics through Airflow's own Stats: a real `airflow dags test` with `[metrics] statsd_on` set by the
environment sends the documented names, with Airflow's prefix, to a StatsD listener this test runs on
127.0.0.1 (UDP, an ephemeral port)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_run import airflow_env, run_dags_test, task_states

from airflow_provider_gemini.testing.exchange import GeminiExchange

DAGS = Path(__file__).with_name("dags")
CANCEL = "/v1/order/cancel"


class StatsdListener:
    """Collects StatsD datagrams ("name:value|type", several per packet split by newlines)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(data.decode(errors="replace").splitlines())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def values(self, name: str) -> list[tuple[float, str]]:
        """(value, type) of every datagram for `name`."""
        found = []
        for line in self.lines:
            stat, _, rest = line.partition(":")
            if stat == name:
                value, _, kind = rest.partition("|")
                found.append((float(value), kind.split("|")[0]))
        return found

    def count(self, name: str) -> int:
        return int(sum(value for value, kind in self.values(name) if kind == "c"))


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.stop()


def test_a_dags_test_run_sends_the_documented_metrics_to_statsd(
    gemini_exchange: GeminiExchange, statsd: StatsdListener, tmp_path: Path
) -> None:
    ex = gemini_exchange
    key = ex.api_key
    flaky = str(ex.place_order(key)["order_id"])
    live = [str(ex.place_order(key)["order_id"]) for _ in range(2)]
    gone = str(ex.place_order(key)["order_id"])
    ex.cancel_by_exchange(gone, reason="Requested")
    filled = str(ex.place_order(key)["order_id"])
    ex.fill_order(filled)
    two_attempts = json.loads(ex.airflow_connection())
    two_attempts["extra"] = {"max_attempts": 2}
    # Queued faults meet the next cancels in order: both of the flaky task's first attempts (a 503,
    # retried; a 503 again, the last attempt), its next pass is answered; then the mixed task's first
    # cancel meets a 429, which is retried (a rate limit is waited out, not counted as an attempt).
    ex.inject_fault("maintenance", CANCEL, count=2)
    ex.inject_fault("rate_limit", CANCEL, retry_after=0.1)
    env = airflow_env(
        tmp_path / "home",
        DAGS,
        {
            "AIRFLOW_CONN_GEMINI_DEFAULT": ex.airflow_connection(),
            "AIRFLOW_CONN_GEMINI_TWO_ATTEMPTS": json.dumps(two_attempts),
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        },
    )
    conf = {"ids": [*live, gone, filled, "999999"], "flaky_id": flaky}
    result = run_dags_test(DAGS, "gemini_metrics", conf=conf, env=env, timeout=200)
    output = result.stdout + result.stderr
    assert task_states(env["AIRFLOW_HOME"], "gemini_metrics") == {
        "cancel_flaky": "success",
        "cancel_mixed": "success",
    }, output[-4000:]
    # UDP on loopback: the datagrams are in the socket buffer once the run has ended; give the
    # listener thread its turn to read them.
    statsd.stop()
    p = "airflow.gemini."
    seen = sorted({line.partition(":")[0] for line in statsd.lines if line.startswith(p)})
    figures = f"names seen: {seen}"
    assert statsd.count(p + "cancel.sent") == 2 + len(conf["ids"]), figures
    assert statsd.count(p + "cancel.cancelled") == 1 + len(live), figures
    assert statsd.count(p + "cancel.already_cancelled") == 1, figures
    assert statsd.count(p + "cancel.filled") == 1, figures
    assert statsd.count(p + "cancel.not_found") == 1, figures
    assert statsd.count(p + "cancel.failed.service_error") == 1, figures
    assert statsd.count(p + "retry.service_error") == 1, figures
    assert statsd.count(p + "retry.rate_limited") == 1, figures
    assert statsd.count(p + "http_429") == 1, figures
    latency = statsd.values(p + "request.latency")
    # Every HTTP attempt: two listings, the flaky task's three cancels, the mixed task's five and
    # the retry of its 429.
    assert len(latency) == len(ex.journal) == 2 + 3 + len(conf["ids"]) + 1, figures
    assert {kind for _, kind in latency} == {"ms"} and all(value >= 0 for value, _ in latency)
    print(figures)
