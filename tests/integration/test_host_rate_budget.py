"""One key, several processes on one host, no configuration: together they stay under the key's rate
limit (the token bucket is a state file they share), and a 429 holds every one of them back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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


def run_workers(exchange: GeminiExchange, tmp_path: Path, groups: list[list[str]]) -> list[str]:
    """Start one process per group of ids, release them at once, and return their outputs."""
    go = tmp_path / "go"
    env = {**os.environ, "GEMINI_PROVIDER_STATE_DIR": str(tmp_path / "state")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                exchange.url,
                str(exchange.api_key),
                str(exchange.api_secret),
                str(go),
                *ids,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ids in groups
    ]
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
    # Only what the two other processes had already sent can arrive in those 2 s; pacing alone, they
    # would have sent about twenty.
    assert len(held) <= 2, held
    assert ex.count(status=429) == 1
