"""GeminiOrderStatusTrigger: serialisation, and run() against the local exchange in an asyncio loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk.serde import deserialize, serialize

from airflow_provider_gemini.testing.exchange import GeminiExchange
from airflow_provider_gemini.triggers.order import GeminiOrderStatusTrigger
from airflow_provider_gemini.watch import OrderWatch

STATUS, ORDERS, CANCEL = "/v1/order/status", "/v1/orders", "/v1/order/cancel"
BIG_ID = "9223372036854775807"


def place(exchange: GeminiExchange, count: int = 1) -> list[str]:
    return [str(exchange.place_order(exchange.api_key)["order_id"]) for _ in range(count)]


async def first_event(trigger: GeminiOrderStatusTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        payload = dict(event.payload)
        assert json.loads(json.dumps(payload)) == payload, "the event payload must be plain JSON"
        return payload
    raise AssertionError("the trigger ended without an event")


def run(trigger: GeminiOrderStatusTrigger) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(first_event(trigger), timeout=120))


def when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Run `action` in a thread as soon as `condition` holds (gives up after a minute)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# -- serialisation --------------------------------------------------------------------------------------


def full_trigger() -> GeminiOrderStatusTrigger:
    watch = OrderWatch([9007199254740993, int(BIG_ID)])
    watch.cancel_sent.add(BIG_ID)
    return GeminiOrderStatusTrigger(
        order_ids=[9007199254740993, BIG_ID],
        gemini_conn_id="gemini_prod",
        account="desk-1",
        poll_interval=15,
        end_time=1_900_000_000.5,
        accept_filled=True,
        return_on_live=True,
        report=watch.report.to_dict(),
        cancel_sent=sorted(watch.cancel_sent),
        started_at=1_899_999_000.25,
    )


def test_serialize_round_trips_to_the_same_trigger() -> None:
    trigger = full_trigger()
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_gemini.triggers.order.GeminiOrderStatusTrigger"
    again = GeminiOrderStatusTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert kwargs["order_ids"] == ["9007199254740993", BIG_ID]
    assert json.loads(json.dumps(kwargs)) == kwargs
    # What Airflow stores and `airflow dags test` feeds back: the serde round trip.
    assert GeminiOrderStatusTrigger(**deserialize(serialize(kwargs))).serialize() == (classpath, kwargs)


def test_defaults_round_trip_too() -> None:
    trigger = GeminiOrderStatusTrigger(order_ids=["1"])
    assert GeminiOrderStatusTrigger(**trigger.serialize()[1]).serialize() == trigger.serialize()


def test_a_single_id_is_one_order_not_its_digits() -> None:
    assert GeminiOrderStatusTrigger(order_ids="123").order_ids == ["123"]
    assert GeminiOrderStatusTrigger(order_ids=123).order_ids == ["123"]


def test_kwargs_hold_the_connection_id_not_its_secret(exchange: GeminiExchange) -> None:
    text = json.dumps(GeminiOrderStatusTrigger(order_ids=place(exchange)).serialize()[1])
    assert '"gemini_conn_id": "gemini_default"' in text
    assert exchange.api_secret is not None and exchange.api_secret not in text
    assert exchange.api_key is not None and exchange.api_key not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order_ids": []}, "order_ids: no order ids"),
        ({"order_ids": ["x"]}, r"order_ids\[0\]"),
        ({"order_ids": ["1"], "poll_interval": -1}, "poll_interval"),
        ({"order_ids": ["1"], "gemini_conn_id": ""}, "gemini_conn_id"),
    ],
)
def test_bad_kwargs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeminiOrderStatusTrigger(**kwargs)


# -- run() against the exchange -------------------------------------------------------------------------


def test_run_fires_once_every_order_is_cancelled(exchange: GeminiExchange) -> None:
    ids = place(exchange, 3)
    trigger = GeminiOrderStatusTrigger(order_ids=ids, poll_interval=0.1)

    def cancel_all() -> None:
        for oid in ids:
            exchange.cancel_by_exchange(oid, "MarketClosed")

    helper = when(lambda: exchange.count(ORDERS) >= 2, cancel_all)
    event = run(trigger)
    helper.join()

    assert event["status"] == "success"
    assert event["message"] is None
    assert event["report"]["already_cancelled"] == ids
    assert event["report"]["orders"][ids[0]]["reason"] == "MarketClosed"
    assert event["report"]["stats"]["requests"] == exchange.count()
    assert exchange.count(CANCEL) == 0, "the trigger must never send a cancel"
    assert exchange.count(STATUS) == 3


def test_run_never_cancels_and_can_run_twice(exchange: GeminiExchange) -> None:
    """A triggerer restart may run the same trigger again: read-only, so the answer is the same."""
    ids = place(exchange, 2)
    for oid in ids:
        exchange.cancel_by_exchange(oid, "Requested")
    kwargs = GeminiOrderStatusTrigger(order_ids=ids, poll_interval=0).serialize()[1]
    first = run(GeminiOrderStatusTrigger(**kwargs))
    second = run(GeminiOrderStatusTrigger(**kwargs))
    assert first["status"] == second["status"] == "success"
    assert first["report"]["already_cancelled"] == second["report"]["already_cancelled"] == ids
    assert exchange.count(CANCEL) == 0


def test_run_keeps_polling_through_maintenance(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    exchange.set_maintenance(True)

    def reopen_cancelled() -> None:
        exchange.cancel_by_exchange(oid, "Requested")
        exchange.set_maintenance(False)

    helper = when(lambda: exchange.count(status=503) >= 1, reopen_cancelled)
    event = run(GeminiOrderStatusTrigger(order_ids=[oid], poll_interval=0.1))
    helper.join()
    assert event["status"] == "success"
    assert event["report"]["already_cancelled"] == [oid]
    assert event["report"]["stats"]["retries"] >= 1


def test_run_does_not_block_the_event_loop(exchange: GeminiExchange) -> None:
    """A slow answer (2 s) is awaited in a worker thread: another coroutine keeps ticking meanwhile."""
    (oid,) = place(exchange)
    exchange.cancel_by_exchange(oid, "Requested")
    exchange.inject_fault("delay", path=STATUS, delay=2.0)
    trigger = GeminiOrderStatusTrigger(order_ids=[oid], poll_interval=0)

    async def main() -> tuple[dict[str, Any], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        event = await first_event(trigger)
        done.set()
        await ticking
        return event, ticks

    event, ticks = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert event["status"] == "success"
    # A blocked loop would let the ticker run about twice (before and after the request), not dozens.
    assert ticks >= 20, ticks


def test_run_reports_an_unknown_id_as_an_error(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    event = run(GeminiOrderStatusTrigger(order_ids=[oid, "4242"], poll_interval=0))
    assert event["status"] == "error"
    assert "order_id 4242: not found" in event["message"]
    assert event["report"]["not_found"] == ["4242"]


def test_run_reports_a_fill(exchange: GeminiExchange) -> None:
    oid, other = place(exchange, 2)
    exchange.fill_order(oid)
    exchange.cancel_by_exchange(other, "Requested")

    refused = run(GeminiOrderStatusTrigger(order_ids=[oid, other], poll_interval=0))
    assert refused["status"] == "error"
    assert (
        f"order {oid} (btcusd buy 1 @ 100.00, remaining 0) filled instead of being cancelled"
        in (refused["message"])
    )

    accepted = run(GeminiOrderStatusTrigger(order_ids=[oid, other], poll_interval=0, accept_filled=True))
    assert accepted["status"] == "success"
    assert accepted["report"]["filled"] == [oid]
    assert accepted["report"]["already_cancelled"] == [other]


def test_run_times_out_at_end_time(exchange: GeminiExchange) -> None:
    ids = place(exchange, 2)
    exchange.cancel_by_exchange(ids[0], "Requested")
    event = run(GeminiOrderStatusTrigger(order_ids=ids, poll_interval=0.1, end_time=time.time() + 0.5))
    assert event["status"] == "timeout"
    assert "1 of 2 order(s) still not cancelled at" in event["message"]
    assert event["message"].endswith(ids[1])
    assert event["report"]["already_cancelled"] == [ids[0]]


def test_run_hands_live_orders_back_when_asked(exchange: GeminiExchange) -> None:
    (oid,) = place(exchange)
    event = run(GeminiOrderStatusTrigger(order_ids=[oid], poll_interval=0, return_on_live=True))
    assert event["status"] == "cancel_needed"
    assert exchange.count(CANCEL) == 0
    assert exchange.order(oid)["is_live"]


def test_run_carries_on_from_the_given_state(exchange: GeminiExchange) -> None:
    """Orders settled before the deferral are not asked about again."""
    settled, pending = place(exchange, 2)
    exchange.cancel_by_exchange(settled, "Requested")
    exchange.cancel_by_exchange(pending, "Requested")
    watch = OrderWatch([int(settled), int(pending)])
    watch.report.record(settled, "cancelled")
    trigger = GeminiOrderStatusTrigger(
        order_ids=[settled, pending], poll_interval=0, report=watch.report.to_dict(), cancel_sent=[settled]
    )
    event = run(trigger)
    assert event["status"] == "success"
    assert event["report"]["cancelled"] == [settled]
    assert event["report"]["already_cancelled"] == [pending]
    assert [entry.payload["order_id"] for entry in exchange.journal] == [int(pending)]
    assert event["state"]["cancel_sent"] == [settled]


def test_run_reports_a_missing_connection(exchange: GeminiExchange) -> None:
    event = run(GeminiOrderStatusTrigger(order_ids=place(exchange), gemini_conn_id="no_such_conn"))
    assert event["status"] == "error"
    assert "gemini_conn_id 'no_such_conn'" in event["message"]
    assert exchange.journal == []


def test_transient_and_fatal_errors() -> None:
    """A closed market, maintenance, rate limits and lost connections pass; a wrong id or key does not."""
    from airflow_provider_gemini.exceptions import (
        InvalidSignatureError,
        MarketClosedError,
        OrderNotFoundError,
        RateLimitedError,
        ServiceError,
    )

    assert MarketClosedError("closed", reason="MarketClosed", status=400).transient
    assert ServiceError("down", reason="Maintenance", status=503).transient
    assert ServiceError("no answer", reason="ConnectionError", status=None).transient
    assert RateLimitedError("slow down", reason="RateLimit", status=429).transient
    assert not OrderNotFoundError("unknown", reason="OrderNotFound", status=404).transient
    assert not InvalidSignatureError("bad", reason="InvalidSignature", status=400).transient
