"""`python -m airflow_provider_gemini.testing.exchange`: starts, answers signed requests, stops on signals."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

MODULE = "airflow_provider_gemini.testing.exchange"
NONCES = itertools.count(int(time.time() * 1000))
Start = Callable[..., tuple["subprocess.Popen[str]", str]]


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[Start]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], str]:
        ready = tmp_path / f"ready-{len(procs)}"
        cmd = [sys.executable, "-m", MODULE, "--port", "0", "--ready-file", str(ready), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the exchange did not write its ready file"
            time.sleep(0.02)
        return proc, ready.read_text().strip()

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def signed(url: str, path: str, key: str, secret: str) -> requests.Response:
    payload = base64.b64encode(json.dumps({"request": path, "nonce": next(NONCES)}).encode())
    headers = {
        "X-GEMINI-APIKEY": key,
        "X-GEMINI-PAYLOAD": payload.decode(),
        "X-GEMINI-SIGNATURE": hmac.new(secret.encode(), payload, hashlib.sha384).hexdigest(),
    }
    return requests.post(url + path, headers=headers, timeout=10)


def test_demo_server_answers_and_stops_on_sigint(start_cli: Start) -> None:
    proc, url = start_cli("--seed", "demo")
    assert url.startswith("http://127.0.0.1:")
    assert signed(url, "/v1/heartbeat", "account-demo-key", "demo-secret").json() == {"result": "ok"}
    orders = signed(url, "/v1/orders", "account-demo-key", "demo-secret").json()
    assert len(orders) == 10
    assert len(requests.get(url + "/_admin/orders", timeout=10).json()) == 12
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=2) == 0
    out = proc.stdout.read() if proc.stdout else ""
    assert url in out.splitlines()[0]
    line = next(x for x in out.splitlines() if "AIRFLOW_CONN_GEMINI_DEFAULT=" in x)
    conn = json.loads(line.split("=", 1)[1].strip("'"))
    assert conn == {
        "conn_type": "geminiexchange",
        "login": "account-demo-key",
        "password": "demo-secret",
        "host": url,
    }


def test_custom_key_no_rate_limit_and_sigterm(start_cli: Start) -> None:
    proc, url = start_cli("--api-key", "account-mine", "--api-secret", "s3", "--rate-limit-per-minute", "0")
    replies = {signed(url, "/v1/heartbeat", "account-mine", "s3").status_code for _ in range(12)}
    assert replies == {200}
    assert signed(url, "/v1/heartbeat", "account-demo-key", "demo-secret").json()["reason"] == "InvalidApiKey"
    assert requests.get(url + "/_admin/orders", timeout=10).json() == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=2) == 0


def date_of(response: requests.Response) -> float:
    return email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()


def test_cli_clock_offset_flag(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    cmd = [sys.executable, "-m", "airflow_provider_gemini.testing.exchange", "--port", "0"]
    cmd += ["--ready-file", str(ready), "--clock-offset", "600"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the exchange did not write its ready file"
            time.sleep(0.02)
        url = ready.read_text().strip()
        response = requests.get(url + "/_admin/health", timeout=10)
        assert abs(date_of(response) - (time.time() + 600)) < 5
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
