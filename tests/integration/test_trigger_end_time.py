"""GeminiOrderStatusTrigger fires its timeout at end_time even while a poll hangs on the exchange.

The exchange is a loopback socket that trickles a byte every 0.2 s and never finishes; the client's
own deadlines are set far past end_time, so only the trigger can end the wait on time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from loopback_servers import API_KEY, SECRET, TrickleServer

from airflow_provider_gemini.triggers.order import GeminiOrderStatusTrigger

ORDER_ID = "9007199254740993"


@pytest.fixture
def hanging_exchange(monkeypatch: pytest.MonkeyPatch) -> Iterator[TrickleServer]:
    server = TrickleServer("head")
    conn = {
        "conn_type": "geminiexchange",
        "login": API_KEY,
        "password": SECRET,
        "host": server.url,
        "extra": {"timeout": 30, "call_timeout": 30, "max_attempts": 1, "rate_limit_per_minute": "off"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DEFAULT", json.dumps(conn))
    yield server
    server.stop()


async def first_event(trigger: GeminiOrderStatusTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def test_the_timeout_fires_at_end_time_while_a_poll_hangs(hanging_exchange: TrickleServer) -> None:
    trigger = GeminiOrderStatusTrigger(order_ids=[ORDER_ID], poll_interval=0.1, end_time=time.time() + 2)
    loop = asyncio.new_event_loop()
    try:
        started = time.monotonic()
        event = loop.run_until_complete(asyncio.wait_for(first_event(trigger), 15))
        print(f"timeout event after {time.monotonic() - started:.2f} s")
        assert hanging_exchange.accepted == 1, "the poll was still out on the exchange"
        # The poll thread is left to its client's deadline; once the exchange goes away it ends.
        hanging_exchange.stop()
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), 15))
    finally:
        loop.close()
    assert event["status"] == "timeout"
    assert event["message"].startswith("1 of 1 order(s) still not cancelled at ")
    assert event["message"].endswith(ORDER_ID)
    assert json.loads(json.dumps(event)) == event
