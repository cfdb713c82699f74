"""Many GeminiOrderStatusTriggers in one event loop, as in a triggerer: one poll loop per connection
and account, one listing a round whatever the number of triggers, one status per departed order, each
trigger its own event; no thread pool. Against the local exchange over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from airflow_provider_gemini.testing.exchange import GeminiExchange
from airflow_provider_gemini.triggers.order import GeminiOrderStatusTrigger

STATUS, ORDERS, CANCEL = "/v1/order/status", "/v1/orders", "/v1/order/cancel"
INTERVAL = 0.3
MASTER_KEY, MASTER_SECRET = "master-SharedPollerKey1", "shared-poller-master-secret"


def place(
    exchange: GeminiExchange, count: int, api_key: str | None = None, account: str | None = None
) -> list[str]:
    key = api_key or exchange.api_key
    return [str(exchange.place_order(key, account=account)["order_id"]) for _ in range(count)]


async def first_event(trigger: GeminiOrderStatusTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def run_all(
    triggers: Sequence[GeminiOrderStatusTrigger], meanwhile: Callable[[], Awaitable[None]] | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Run the triggers at once in a fresh loop, as a triggerer would; their events, and whether the
    loop ever created its default thread pool (asyncio.to_thread would)."""

    async def main() -> tuple[list[dict[str, Any]], bool]:
        loop = asyncio.get_running_loop()
        side = asyncio.create_task(meanwhile()) if meanwhile else None
        events = await asyncio.gather(*(first_event(t) for t in triggers))
        if side is not None:
            await side
        return list(events), getattr(loop, "_default_executor", None) is not None

    return asyncio.run(asyncio.wait_for(main(), timeout=120))


async def cancel_later(exchange: GeminiExchange, ids: Sequence[str], seconds: float, seed: int = 7) -> None:
    """Cancel each order at a random moment within `seconds`, as the exchange would (no request)."""
    rng = random.Random(seed)
    plan = sorted((rng.uniform(0, seconds), oid) for oid in ids)
    start = asyncio.get_running_loop().time()
    for at, oid in plan:
        await asyncio.sleep(max(0.0, start + at - asyncio.get_running_loop().time()))
        exchange.cancel_by_exchange(oid, "Requested")


def one_loop(gaps: list[float]) -> bool:
    """Listings an interval apart, give or take how late each request left: one poll loop's pattern
    (several loops interleave theirs milliseconds apart)."""
    return bool(gaps) and sum(gaps) / len(gaps) >= INTERVAL * 0.8 and min(gaps) >= INTERVAL * 0.5


def listing_gaps(exchange: GeminiExchange, api_key: str, account: str | None = None) -> list[float]:
    times = [
        e.time
        for e in exchange.journal
        # Answered listings: one a round (an InvalidNonce answer and its retry are one round's listing).
        if e.path == ORDERS
        and e.status == 200
        and e.api_key == api_key
        and e.payload.get("account") == account
    ]
    return [b - a for a, b in itertools.pairwise(times)]


def test_thirty_triggers_share_one_listing_a_round(
    exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole key's budget for watching: 45 departures are then asked about in a few seconds.
    conn = json.loads(exchange.airflow_connection())
    conn["extra"] = {"watch_share": 1}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    groups = [place(exchange, 1 + i % 2) for i in range(30)]
    every = [oid for group in groups for oid in group]
    triggers = [GeminiOrderStatusTrigger(order_ids=g, poll_interval=INTERVAL) for g in groups]

    events, pooled = run_all(triggers, lambda: cancel_later(exchange, every, 3.0))

    assert [e["status"] for e in events] == ["success"] * 30
    for group, event in zip(groups, events, strict=True):
        assert sorted(event["report"]["already_cancelled"]) == sorted(group)
    assert exchange.count(CANCEL) == 0
    # Each order left the book once and was asked about once, by one poller, not once per trigger.
    statuses = [e.payload["order_id"] for e in exchange.journal if e.path == STATUS]
    assert sorted(statuses) == sorted(int(oid) for oid in every)
    # One poll loop: listings come an interval apart at the closest (30 loops would interleave theirs).
    gaps = listing_gaps(exchange, str(exchange.api_key))
    assert one_loop(gaps), gaps
    assert not pooled, "a request borrowed a thread from the loop's default executor"


def test_keys_and_accounts_get_a_poller_each(
    exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange.add_key(MASTER_KEY, MASTER_SECRET, ("Trader",), "counter", ("desk-a", "desk-b"), False)
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_MASTER", exchange.airflow_connection(MASTER_KEY))
    mine = place(exchange, 2)
    desk_a = place(exchange, 2, MASTER_KEY, "desk-a")
    desk_b = place(exchange, 2, MASTER_KEY, "desk-b")
    triggers = [
        GeminiOrderStatusTrigger(order_ids=mine, poll_interval=INTERVAL),
        GeminiOrderStatusTrigger(order_ids=list(mine), poll_interval=INTERVAL),
        GeminiOrderStatusTrigger(
            order_ids=desk_a, gemini_conn_id="gemini_master", account="desk-a", poll_interval=INTERVAL
        ),
        GeminiOrderStatusTrigger(
            order_ids=desk_b, gemini_conn_id="gemini_master", account="desk-b", poll_interval=INTERVAL
        ),
    ]

    async def later() -> None:
        await asyncio.sleep(INTERVAL * 5)
        for oid in mine + desk_a + desk_b:
            exchange.cancel_by_exchange(oid, "Requested")

    events, _ = run_all(triggers, later)

    assert [e["status"] for e in events] == ["success"] * 4
    assert sorted(events[2]["report"]["already_cancelled"]) == sorted(desk_a)
    assert sorted(events[3]["report"]["already_cancelled"]) == sorted(desk_b)
    # Three loops: the trader key, and the master key once per account, each listing its own account.
    for key, account in ((exchange.api_key, None), (MASTER_KEY, "desk-a"), (MASTER_KEY, "desk-b")):
        gaps = listing_gaps(exchange, str(key), account)
        assert one_loop(gaps), (key, account, gaps)
    accounts = {e.payload.get("account") for e in exchange.journal if e.api_key == MASTER_KEY}
    assert accounts == {"desk-a", "desk-b"}


def test_a_trigger_that_ends_leaves_the_others_polling(exchange: GeminiExchange) -> None:
    """One times out early, one meets an unknown id; the one whose orders go late still fires."""
    loop_time: list[float] = []
    short = place(exchange, 2)
    late = place(exchange, 2)
    triggers = [
        GeminiOrderStatusTrigger(order_ids=short, poll_interval=INTERVAL, end_time=time.time() + 1.0),
        GeminiOrderStatusTrigger(order_ids=[late[0], "4242"], poll_interval=INTERVAL),
        GeminiOrderStatusTrigger(order_ids=late, poll_interval=INTERVAL),
    ]

    async def later() -> None:
        await asyncio.sleep(2.5)
        loop_time.append(time.time())
        for oid in late:
            exchange.cancel_by_exchange(oid, "Requested")

    events, _ = run_all(triggers, later)

    assert events[0]["status"] == "timeout" and events[0]["message"].startswith("2 of 2 order(s)")
    assert events[1]["status"] == "error" and "4242" in events[1]["message"]
    assert events[2]["status"] == "success" and sorted(events[2]["report"]["already_cancelled"]) == late
    # The poll loop went on after two of its three triggers had ended.
    assert any(e.path == ORDERS and e.time > loop_time[0] for e in exchange.journal)


def test_an_error_answer_fails_only_the_triggers_it_concerns(exchange: GeminiExchange) -> None:
    """A transient listing error is retried for everyone; each trigger keeps its own report."""
    first, second = place(exchange, 2), place(exchange, 3)
    exchange.inject_fault("maintenance", path=ORDERS, count=2)
    triggers = [GeminiOrderStatusTrigger(order_ids=ids, poll_interval=INTERVAL) for ids in (first, second)]
    events, _ = run_all(triggers, lambda: cancel_later(exchange, first + second, 1.5))
    assert [e["status"] for e in events] == ["success", "success"]
    assert sorted(events[0]["report"]["already_cancelled"]) == sorted(first)
    assert sorted(events[1]["report"]["already_cancelled"]) == sorted(second)
    assert exchange.count(ORDERS, status=503) == 2
    assert all(e["report"]["stats"]["retries"] >= 1 for e in events)
    assert json.loads(json.dumps(events)) == events


def test_the_watch_share_caps_the_polling_rate(
    exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 60 requests a minute and a share of 0.1, a round of one listing may come every 10 s at most:
    a trigger asking every 0.05 s gets one round in its 3 s, not sixty."""
    conn = json.loads(exchange.airflow_connection())
    conn["extra"] = {"rate_limit_per_minute": 60, "watch_share": 0.1}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_CAPPED", json.dumps(conn))
    ids = place(exchange, 2)
    trigger = GeminiOrderStatusTrigger(
        order_ids=ids, gemini_conn_id="gemini_capped", poll_interval=0.05, end_time=time.time() + 3
    )
    (event,), _ = run_all([trigger])
    assert event["status"] == "timeout"
    assert exchange.count(ORDERS) == 1


def test_a_bad_watch_share_is_refused_naming_the_field(
    exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(exchange.airflow_connection())
    conn["extra"] = {"watch_share": 1.5}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_BAD", json.dumps(conn))
    (event,), _ = run_all(
        [GeminiOrderStatusTrigger(order_ids=place(exchange, 1), gemini_conn_id="gemini_bad")]
    )
    assert event["status"] == "error"
    assert "watch_share (extra): expected a fraction in (0, 1], got 1.5" in event["message"]
    assert exchange.count() == 0
