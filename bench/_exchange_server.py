"""The local exchange for a benchmark, in its own process: `python bench/_exchange_server.py SPEC_JSON`.

It runs the same `GeminiExchange` as `python -m airflow_provider_gemini.testing.exchange`, but registers
one key per benchmarked client (each client keeps its own nonce sequence: the floor, GeminiClient and
ccxt count milliseconds independently and would refuse each other's nonces on a shared counter key) and
places the orders to cancel through `place_order` in this process before it reports ready. Seeding
2,000+ orders over signed `/v1/order/new` requests would work too, but takes longer and cannot backdate
orders, which the stale-order bulk run needs.

SPEC_JSON: {"ready_file": path, "rate_limit_per_minute": n | null, "burst": n,
            "keys": [[api_key, api_secret], ...],
            "seed": [{"api_key": k, "count": n, "age_s": s, "symbol": "btcusd", "prefix": "bench-"}, ...]}
The ready file gets {"url": ..., "orders": [[ids of seed group 0], ...]} once the server listens.
An optional "cancel_plan": {"go_file": path, "done_file": path, "at": [seconds, ...]} cancels the i-th
order of seed group 0 as the exchange would ("Requested"), at[i] seconds after go_file appears, and
writes {order_id: epoch time of its cancel} to done_file once all are done (for a benchmark of
waiting, not of cancelling).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from airflow_provider_gemini.testing.exchange import GeminiExchange


def seed(exchange: GeminiExchange, group: dict[str, Any], now_ms: int) -> list[str]:
    """Place `count` live orders for a key, `age_s` seconds old, alternating sides; returns their ids."""
    ids = []
    prefix = group.get("prefix", "bench-")
    for i in range(int(group["count"])):
        side = "buy" if i % 2 == 0 else "sell"
        status = exchange.place_order(
            group["api_key"],
            symbol=group.get("symbol", "btcusd"),
            side=side,
            price="60000.00" if side == "buy" else "70000.00",
            amount="0.01",
            client_order_id=f"{prefix}{i}",
            timestampms=now_ms - int(group.get("age_s", 0) * 1000),
        )
        ids.append(status["order_id"])
    return ids


def main() -> int:
    spec = json.loads(sys.argv[1])
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exchange = GeminiExchange(
        port=0, rate_limit_per_minute=spec.get("rate_limit_per_minute"), burst=spec.get("burst", 5)
    )
    for api_key, api_secret in spec["keys"]:
        exchange.add_key(api_key, api_secret)
    with exchange:
        now_ms = int(time.time() * 1000)
        orders = [seed(exchange, group, now_ms) for group in spec.get("seed", [])]
        tmp = spec["ready_file"] + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"url": exchange.url, "orders": orders}, fh)
        os.replace(tmp, spec["ready_file"])
        plan = spec.get("cancel_plan")
        if plan:
            schedule = list(zip(orders[0], plan["at"], strict=True))
            threading.Thread(
                target=run_cancel_plan, args=(exchange, plan, schedule, stop), daemon=True
            ).start()
        while not stop.wait(0.1):
            pass
    return 0


def run_cancel_plan(
    exchange: GeminiExchange, plan: dict[str, Any], schedule: list[tuple[str, float]], stop: threading.Event
) -> None:
    while not os.path.exists(plan["go_file"]):
        if stop.wait(0.01):
            return
    start = time.time()
    done: dict[str, float] = {}
    for order_id, at in sorted(schedule, key=lambda item: item[1]):
        if stop.wait(max(0.0, start + at - time.time())):
            return
        exchange.cancel_by_exchange(order_id, "Requested")
        done[str(order_id)] = time.time()
    tmp = plan["done_file"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(done, fh)
    os.replace(tmp, plan["done_file"])


if __name__ == "__main__":
    sys.exit(main())
