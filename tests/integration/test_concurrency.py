"""Eight processes cancelling with one counter-mode key, against an exchange that rejects any nonce
that is not larger than the last one it saw.

The nonce is taken from a lock file shared by every process on the host, so nonces are unique and
increasing when handed out; but a request can still reach the exchange after a later one (the
sender was descheduled between taking the nonce and sending). The exchange then answers InvalidNonce
and the client signs again with a fresh nonce. The test proves every cancel ends successful and
records how many such retries it took (the README's advice on many workers per key rests on it).

Run as a script, this module is one worker: it waits for a start gate, cancels its ids with one
GeminiClient and prints what happened as JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_gemini.auth import CounterNonce
from airflow_provider_gemini.state import STATE_DIR_ENV
from airflow_provider_gemini.testing.exchange import GeminiExchange

PROCESSES = 8
ORDERS_PER_PROCESS = 50
API_KEY = "account-reliability-concurrency"
API_SECRET = "concurrency-secret-5d2e"
CANCEL = "/v1/order/cancel"


def _worker(order_ids: list[int], gate: Path) -> dict[str, Any]:
    """Cancel `order_ids` one by one, started when `gate` exists; what happened, as JSON data."""
    from airflow_provider_gemini.client import GeminiClient
    from airflow_provider_gemini.exceptions import GeminiError

    client = GeminiClient(
        os.environ["GEMINI_TEST_KEY"],
        os.environ["GEMINI_TEST_SECRET"],
        base_url=os.environ["GEMINI_TEST_URL"],
    )
    deadline = time.monotonic() + 60
    while not gate.exists():
        if time.monotonic() > deadline:
            return {"cancelled": [], "errors": ["start gate never opened"], "stats": client.stats.as_dict()}
        time.sleep(0.002)
    cancelled: list[str] = []
    errors: list[str] = []
    with client:
        for order_id in order_ids:
            try:
                order = client.cancel_order(order_id)
            except GeminiError as error:
                errors.append(f"{order_id}: {error}")
                continue
            if order.is_cancelled:
                cancelled.append(order.order_id)
            else:
                errors.append(f"{order_id}: answered but not cancelled ({order.state})")
    return {"cancelled": cancelled, "errors": errors, "stats": client.stats.as_dict()}


@pytest.mark.timeout(180)
@pytest.mark.gemini_exchange(rate_limit_per_minute=None, api_key=API_KEY, api_secret=API_SECRET)
def test_eight_processes_one_counter_key_every_cancel_succeeds(
    gemini_exchange: GeminiExchange, tmp_path: Path
) -> None:
    batches = [
        [int(gemini_exchange.place_order(API_KEY)["order_id"]) for _ in range(ORDERS_PER_PROCESS)]
        for _ in range(PROCESSES)
    ]
    gate = tmp_path / "start"
    env = dict(
        os.environ,
        GEMINI_TEST_KEY=API_KEY,
        GEMINI_TEST_SECRET=API_SECRET,
        GEMINI_TEST_URL=gemini_exchange.url,
    )
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, json.dumps(batch), str(gate)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for batch in batches
    ]
    time.sleep(2)  # let every worker import and reach the gate, so they start together and collide
    started = time.monotonic()
    gate.touch()
    results: list[dict[str, Any]] = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=150)
            assert worker.returncode == 0, f"worker failed ({worker.returncode}):\n{err[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    elapsed = time.monotonic() - started

    journal = [entry for entry in gemini_exchange.journal if entry.path == CANCEL]
    nonce_retries = sum(r["stats"]["retries_by_kind"].get("invalid_nonce", 0) for r in results)
    other_retries = sum(r["stats"]["retries"] for r in results) - nonce_retries
    journal_invalid_nonce = sum(1 for entry in journal if entry.reason == "InvalidNonce")
    figures = (
        f"{PROCESSES} processes x {ORDERS_PER_PROCESS} cancels, one counter key: "
        f"{nonce_retries} InvalidNonce retries by the clients, {journal_invalid_nonce} InvalidNonce "
        f"answers in the journal, {other_retries} other retries, {len(journal)} cancel requests, "
        f"{elapsed:.1f} s; per process: {[r['stats']['retries'] for r in results]}"
    )
    (tmp_path / "invalid_nonce_retries.txt").write_text(figures + "\n")
    print(figures)

    errors = [error for r in results for error in r["errors"]]
    assert not errors, f"{figures}\nfailed cancels: {errors[:10]}"
    expected = {str(order_id) for batch in batches for order_id in batch}
    assert {oid for r in results for oid in r["cancelled"]} == expected, figures
    assert gemini_exchange.live_orders() == [], figures
    for order_id in expected:
        assert gemini_exchange.order(order_id)["reason"] == "Requested", figures
    # Every InvalidNonce answer was met by a signed-again retry, and nothing else failed.
    assert journal_invalid_nonce == nonce_retries, figures
    assert other_retries == 0, figures
    assert len(journal) == len(expected) + nonce_retries, figures


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]), Path(sys.argv[2]))), flush=True)


# ---- counter nonces across forked processes (moved here from the unit tier: they fork) -------------


def new_key() -> str:
    return f"account-fork-{uuid.uuid4().hex}"


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The nonce state of a test in a private dir of its own."""
    state = tmp_path / "state"
    monkeypatch.setenv(STATE_DIR_ENV, str(state))
    umask = os.umask(0o077)
    yield state
    os.umask(umask)


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A state directory of the test's own, not yet created (the provider creates it 0700)."""
    return tmp_path / "state"


def _draw(
    key: str,
    directory: str | None,
    inherited: CounterNonce | None,
    count: int,
    out: multiprocessing.Queue[list[int]],
) -> None:
    source = inherited if inherited is not None else CounterNonce(key, directory=directory)
    out.put([source() for _ in range(count)])


def draw_in_forked_children(
    key: str, directory: str | None, sources: list[CounterNonce | None], count: int
) -> list[list[int]]:
    """`count` nonces from each forked child: from the inherited source, or (None) from its own."""
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_draw, args=(key, directory, s, count, queue)) for s in sources]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return results


def test_counter_nonce_is_unique_across_forked_processes(lock_dir: Path) -> None:
    """A source made before fork must not share its flock with the children (that would not exclude)."""
    key = new_key()
    source = CounterNonce(key)
    source()
    results = draw_in_forked_children(key, None, [source] * 4, 500)
    flat = [value for out in results for value in out]
    assert len(set(flat)) == len(flat) == 2000
    assert all(out == sorted(out) for out in results)


def test_forked_processes_on_one_key_never_draw_the_same_nonce(private: Path) -> None:
    """Children that inherit an open source, and children that open their own, share one sequence."""
    key = new_key()
    parent = CounterNonce(key, directory=private)
    first = parent()
    results = draw_in_forked_children(key, str(private), [parent, parent, parent, None, None, None], 400)
    flat = [first, *(value for out in results for value in out), parent()]
    assert len(set(flat)) == len(flat) == 2 + 6 * 400
    assert all(out == sorted(out) for out in results)
    assert flat[-1] == max(flat)
