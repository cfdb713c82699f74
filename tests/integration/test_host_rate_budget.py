"""One key, several processes on one host, no configuration: together they stay under the key's rate
limit (the token bucket is a state file they share), and a 429 holds every one of them back. Across
hosts (a private state directory each), with one host's clock 2 s fast, every cancel still succeeds:
nonces move onto the exchange's clock, past what the other host sent, and 429s slow both hosts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_gemini.testing.exchange import GeminiExchange

CANCEL = "/v1/order/cancel"

WORKER = """
import os, sys, time
from pathlib import Path
from airflow_provider_gemini.client import GeminiClient
url, key, secret, go = sys.argv[1:5]
ids = sys.argv[5:]
with GeminiClient(key, secret, base_url=url) as client:
    while not Path(go).exists():
        time.sleep(0.005)
    for oid in ids:
        assert client.cancel_order(oid).is_cancelled
    print("retries", client.stats.retries_by_kind)
"""


FAKE_CLOCK = Path(__file__).resolve().parent.parent / "fake_clock"  # its sitecustomize.py


def run_workers(
    exchange: GeminiExchange, tmp_path: Path, groups: list[list[str]], hosts: int = 1, fast_s: float = 0.0
) -> list[str]:
    """Start one process per group of ids (group i on host i % hosts; the last host's clock `fast_s`
    ahead), release them at once, and return their outputs."""
    go = tmp_path / "go"
    procs = []
    for index, ids in enumerate(groups):
        host = index % hosts
        env = {
            **os.environ,
            "GEMINI_PROVIDER_STATE_DIR": str(tmp_path / f"state-{host}"),
            "PYTHONPATH": os.pathsep.join([str(FAKE_CLOCK), os.environ.get("PYTHONPATH", "")]),
            "FAKE_CLOCK_OFFSET_S": str(fast_s if host == hosts - 1 and hosts > 1 else 0.0),
        }
        argv = [sys.executable, "-c", WORKER, exchange.url, str(exchange.api_key), str(exchange.api_secret)]
        procs.append(
            subprocess.Popen(
                [*argv, str(go), *ids], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    time.sleep(1.0)  # every process imported and waiting
    go.write_text("go")
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def test_four_processes_on_one_key_stay_under_its_rate_limit(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    """Gemini's 600/min with a burst of 5: four processes pacing alone would ask for four times that."""
    ex = gemini_exchange
    ids = [str(ex.place_order(ex.api_key)["order_id"]) for _ in range(80)]
    run_workers(ex, tmp_path, [ids[i::4] for i in range(4)])
    assert all(ex.order(oid)["is_cancelled"] for oid in ids)
    assert ex.count(status=429) == 0
    # One answer per order (a nonce collision between the processes is re-signed and sent again).
    assert ex.count(CANCEL, status=200) == len(ids)


def test_a_429_holds_back_every_process_of_the_key(gemini_exchange: GeminiExchange, tmp_path: Path) -> None:
    """The first cancel meets a 429 with Retry-After: 2; no process sends anything for those 2 s."""
    ex = gemini_exchange
    ids = [str(ex.place_order(ex.api_key)["order_id"]) for _ in range(24)]
    ex.inject_fault("rate_limit", path=CANCEL, count=1, retry_after=2)
    run_workers(ex, tmp_path, [ids[i::3] for i in range(3)])
    assert all(ex.order(oid)["is_cancelled"] for oid in ids)
    journal = [e for e in ex.journal if e.path == CANCEL]
    limited = next(e for e in journal if e.status == 429)
    held = [e.time - limited.time for e in journal if 0 < e.time - limited.time < 2.0]
    # Only what left before the pause landed can arrive in those 2 s: the two other processes' requests
    # in flight, and one more that took the last of the bucket's 4 tokens in the milliseconds between
    # the 429's answer and its process's penalize. Pacing alone, they would have sent about twenty.
    assert len(held) <= 3, held
    assert ex.count(status=429) == 1


def test_two_hosts_on_one_key_one_of_them_2_s_fast_cancel_every_order(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    """Two hosts x two processes, no shared state between the hosts and no setting: each host alone
    would pace at the key's whole rate and sign nonces 2 s apart from the other."""
    ex = gemini_exchange
    ids = [str(ex.place_order(ex.api_key)["order_id"]) for _ in range(60)]
    others = [str(ex.place_order(ex.api_key)["order_id"]) for _ in range(5)]
    outputs = run_workers(ex, tmp_path, [ids[i::4] for i in range(4)], hosts=2, fast_s=2.0)
    assert all(ex.order(oid)["is_cancelled"] for oid in ids)
    assert all(ex.order(oid)["is_live"] for oid in others)
    cancelled = {str(e.payload.get("order_id")) for e in ex.journal if e.path == CANCEL}
    assert cancelled == set(ids)
    refused = sum(1 for e in ex.journal if e.reason == "InvalidNonce")
    print(f"two hosts, one 2 s fast: {ex.count(status=429)} x 429, {refused} x InvalidNonce, {outputs}")


def test_a_call_whose_turn_comes_after_its_deadline_ends_rate_limited_without_sending(
    gemini_exchange: GeminiExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 with Retry-After: 5 holds the host's key back for 5 s: a call with 1 s left says so at
    once rather than sending into the limit or reporting a missing answer."""
    from airflow_provider_gemini.client import GeminiClient
    from airflow_provider_gemini.exceptions import RateLimitedError

    ex = gemini_exchange
    monkeypatch.setenv("GEMINI_PROVIDER_STATE_DIR", str(tmp_path / "state"))
    first, second = (str(ex.place_order(ex.api_key)["order_id"]) for _ in range(2))
    ex.inject_fault("rate_limit", path=CANCEL, count=1, retry_after=5)
    with GeminiClient(ex.api_key, ex.api_secret, base_url=ex.url, call_timeout=1.0) as client:
        with pytest.raises(RateLimitedError):
            client.cancel_order(first)
        sent = len(ex.journal)
        with pytest.raises(RateLimitedError, match=r"next turn on this host is [\d.]+ s away, past the call"):
            client.cancel_order(second)
    assert len(ex.journal) == sent
    assert ex.order(second)["is_live"]
