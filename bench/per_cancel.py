"""Benchmark 1: the cost of one cancel, warm, over keep-alive, with the exchange's rate limit off.

Four ways to send `/v1/order/cancel`, all in this one client process, each with its own key on the
same local exchange (their nonce sequences would collide on a shared counter key):
  (a) floor   a hand-written requests.Session + hmac + base64 + json, no retries (bench/_harness.py),
              with trust_env off as ccxt sets it; (a') is the same floor with requests' default
              trust_env=True, which re-reads the environment for proxies on every request
  (b) client  GeminiClient(..., rate_limit_per_minute=None).cancel_order
  (c) hook    the operator's path: GeminiHook("gemini_default").get_client(), the connection from
              AIRFLOW_CONN_GEMINI_DEFAULT with the extra rate_limit_per_minute "off"; measured apart: the
              same path with the connection's default pacing (600/min, burst 5: PACED cancels), and what
              an operator pays once per execute (building the hook and its client, and the first cancel
              on a new connection: SETUP repetitions)
  (d) ccxt    ccxt.gemini.cancel_order, markets preset by hand, ccxt's own rate limiter off
The variants run interleaved in many short rounds (a different order each round) so that machine noise
hits all alike; each variant's client is built once, before the rounds, and kept warm.
Wall time is time.perf_counter; CPU time is time.process_time of this process (the exchange's CPU is
not in it).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _harness import (
    FloorClient,
    Key,
    Summary,
    base_parser,
    exchange_process,
    have_ccxt,
    make_key,
    md_table,
    results_path,
    section_header,
    text_table,
    write_section,
)

ALL_VARIANTS = ("floor", "floor_env", "client", "hook", "ccxt")
VARIANTS = ALL_VARIANTS if have_ccxt() else ALL_VARIANTS[:-1]
NO_CCXT = "ccxt is not installed (`pip install -e '.[bench]'`): variant (d) is left out."
LABELS = {
    "floor": "(a) floor: requests.Session (trust_env off) + hmac, no retries",
    "floor_env": "(a') the floor with requests' default trust_env=True",
    "client": "(b) `GeminiClient.cancel_order`",
    "hook": "(c) `GeminiHook(...).get_client()`, connection from env",
    "ccxt": "(d) ccxt `gemini.cancel_order`",
}
TARGETS = {"client": 1.15, "hook": 1.25}
WARMUP = 20
PACED = 50
SETUP = 20

# The one market ccxt needs to parse a btcusd order; load_markets would call public endpoints the local
# exchange does not serve.
CCXT_MARKETS = [
    {
        "id": "btcusd",
        "symbol": "BTC/USD",
        "base": "BTC",
        "quote": "USD",
        "baseId": "btc",
        "quoteId": "usd",
        "type": "spot",
        "spot": True,
        "margin": False,
        "swap": False,
        "future": False,
        "option": False,
        "contract": False,
        "active": True,
        "precision": {"amount": 1e-8, "price": 0.01},
        "limits": {"amount": {"min": 1e-5, "max": None}, "price": {"min": None, "max": None}},
    }
]


def ccxt_exchange(url: str, key: Key) -> Any:
    import ccxt

    exchange = ccxt.gemini(
        {
            "apiKey": key.api_key,
            "secret": key.api_secret,
            "enableRateLimit": False,
            "urls": {"api": {"public": url, "private": url}},
        }
    )
    exchange.set_markets(CCXT_MARKETS)
    return exchange


def hook_connection(url: str, key: Key, **extra: Any) -> str:
    """An AIRFLOW_CONN_... value for the local exchange; `extra` e.g. rate_limit_per_minute="off"."""
    conn = {"conn_type": "geminiexchange", "login": key.api_key, "password": key.api_secret, "host": url}
    return json.dumps({**conn, "extra": extra} if extra else conn)


@dataclass
class Variant:
    """One way to cancel an order by id, with a check of its answer and the per-round figures."""

    name: str
    cancel: Callable[[str], Any]
    check: Callable[[Any], bool]
    wall_us: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def build_variants(url: str, keys: dict[str, Key]) -> dict[str, Variant]:
    from airflow_provider_gemini.client import GeminiClient
    from airflow_provider_gemini.hooks.gemini import GeminiHook

    floor = FloorClient(url, keys["floor"].api_key, keys["floor"].api_secret)
    floor_env = FloorClient(url, keys["floor_env"].api_key, keys["floor_env"].api_secret, trust_env=True)
    client = GeminiClient(
        keys["client"].api_key, keys["client"].api_secret, base_url=url, rate_limit_per_minute=None
    )
    os.environ["AIRFLOW_CONN_GEMINI_DEFAULT"] = hook_connection(
        url, keys["hook"], rate_limit_per_minute="off"
    )
    os.environ["AIRFLOW_CONN_GEMINI_PACED"] = hook_connection(url, keys["hook"])
    hook_client = GeminiHook().get_client()
    variants = {
        "floor": Variant("floor", lambda oid: floor.cancel(int(oid)), lambda r: r["is_cancelled"] is True),
        "floor_env": Variant(
            "floor_env", lambda oid: floor_env.cancel(int(oid)), lambda r: r["is_cancelled"] is True
        ),
        "client": Variant("client", client.cancel_order, lambda r: r.is_cancelled),
        "hook": Variant("hook", hook_client.cancel_order, lambda r: r.is_cancelled),
    }
    if "ccxt" in keys:
        exchange = ccxt_exchange(url, keys["ccxt"])
        variants["ccxt"] = Variant("ccxt", exchange.cancel_order, lambda r: r["status"] == "canceled")
    return {name: variants[name] for name in VARIANTS}


def run_round(variant: Variant, order_ids: list[str]) -> tuple[float, float]:
    """Cancel every id once; returns (wall s, CPU s), with the answers checked after the timing."""
    cancel = variant.cancel
    answers = []
    c0, t0 = time.process_time(), time.perf_counter()
    for oid in order_ids:
        answers.append(cancel(oid))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    bad = [a for a in answers if not variant.check(a)]
    if bad:
        raise RuntimeError(f"{variant.name}: {len(bad)} answers were not cancelled, e.g. {bad[0]!r}")
    return wall, cpu


def run_setup(order_ids: list[str]) -> tuple[list[float], list[float]]:
    """What an operator pays once per execute: (ms to build the hook and its client from the env
    connection, ms of the first cancel on that client's new connection), one pair per order id."""
    from airflow_provider_gemini.hooks.gemini import GeminiHook

    setup_ms, first_ms = [], []
    for oid in order_ids:
        t0 = time.perf_counter()
        client = GeminiHook().get_client()
        t1 = time.perf_counter()
        if not client.cancel_order(oid).is_cancelled:
            raise RuntimeError(f"setup: order {oid} not cancelled")
        t2 = time.perf_counter()
        client.close()
        setup_ms.append((t1 - t0) * 1e3)
        first_ms.append((t2 - t1) * 1e3)
    return setup_ms, first_ms


def run_paced(order_ids: list[str]) -> tuple[float, float]:
    """The hook's client with the connection's default pacing: (wall s, CPU s) for cancelling every id."""
    from airflow_provider_gemini.hooks.gemini import GeminiHook

    c0, t0 = time.process_time(), time.perf_counter()
    client = GeminiHook(gemini_conn_id="gemini_paced").get_client()
    for oid in order_ids:
        if not client.cancel_order(oid).is_cancelled:
            raise RuntimeError(f"paced: order {oid} not cancelled")
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=20, help="cancels per variant per round")
    args = parser.parse_args()
    rounds, per_round = (2, 10) if args.quick else (args.rounds, args.per_round)
    started = time.monotonic()

    keys = {name: make_key(name) for name in VARIANTS}
    per_variant = WARMUP + rounds * per_round
    paced_n = 8 if args.quick else PACED
    setup_n = 3 if args.quick else SETUP
    seed = [
        {
            "api_key": keys[name].api_key,
            "count": per_variant + (paced_n + setup_n if name == "hook" else 0),
            "prefix": name,
        }
        for name in VARIANTS
    ]
    with exchange_process(list(keys.values()), seed, rate_limit_per_minute=None) as exchange:
        orders = dict(zip(VARIANTS, exchange.orders, strict=True))
        variants = build_variants(exchange.url, keys)
        for name, variant in variants.items():
            run_round(variant, orders[name][:WARMUP])
        ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
        cpu_ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            this_round: dict[str, tuple[float, float]] = {}
            for name in order:
                ids = orders[name][WARMUP + r * per_round : WARMUP + (r + 1) * per_round]
                gc.collect()
                wall, cpu = run_round(variants[name], ids)
                this_round[name] = (wall, cpu)
                variants[name].wall_us.append(wall / len(ids) * 1e6)
                variants[name].cpu_us.append(cpu / len(ids) * 1e6)
            for name in VARIANTS:
                ratios[name].append(this_round[name][0] / this_round["floor"][0])
                cpu_ratios[name].append(this_round[name][1] / this_round["floor"][1])
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {v[0] / per_round * 1e6:.0f} us" for n, v in this_round.items())
            )
        paced = run_paced(orders["hook"][per_variant : per_variant + paced_n])
        setup_ms, first_ms = run_setup(orders["hook"][per_variant + paced_n :])
        journal = exchange.admin("journal")

    non_200 = sum(1 for e in journal if e["path"] == "/v1/order/cancel" and e["status"] != 200)
    headers = ["variant", "wall us/cancel", "ratio to (a)", "CPU us/cancel", "CPU ratio to (a)", "target"]
    rows = []
    verdicts = []
    targets: list[tuple[str, str, str]] = []
    for name in VARIANTS:
        v = variants[name]
        wall, cpu = Summary.of(v.wall_us), Summary.of(v.cpu_us)
        wr, cr = Summary.of(ratios[name]), Summary.of(cpu_ratios[name])
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"<= {target:.2f}x: {'met' if wr.median <= target else 'NOT met'}"
            targets.append(
                (
                    f"{LABELS[name]}: within {target:.2f}x of the floor (a), per warm cancel",
                    f"{wr.median:.2f}x wall, {cr.median:.2f}x CPU ({wall.median:.0f} vs "
                    f"{Summary.of(variants['floor'].wall_us).median:.0f} us)",
                    "met" if wr.median <= target else "NOT met",
                )
            )
            verdicts.append(
                f"{LABELS[name]}: {wr.median:.2f}x of (a), target {target:.2f}x: "
                f"**{'met' if wr.median <= target else 'NOT met'}**"
            )
        rows.append([LABELS[name], wall.fmt(0), wr.fmt(2, "x"), cpu.fmt(0), cr.fmt(2, "x"), verdict])
    print()
    print(text_table(headers, [[c.replace("`", "") for c in row] for row in rows]))
    body = [
        section_header("1. Per-cancel cost: warm, keep-alive, rate limit off", time.monotonic() - started),
        f"{rounds} rounds x {per_round} cancels per variant ({rounds * per_round} each), interleaved, "
        f"after {WARMUP} warm-up cancels each; each cancel hits a distinct live order. Figures: median of "
        "the per-round means [min - max]; ratios are per round, against (a) in the same round.",
        "",
        md_table(headers, rows),
        "",
        *[f"- {line}" for line in verdicts],
        *([] if "ccxt" in VARIANTS else [f"- {NO_CCXT}"]),
        f"- The exchange answered {non_200} of the timed and warm-up cancels with anything but 200.",
        "- (c) is the client an operator cancels with: `GeminiHook(...).get_client()`, the connection "
        'from `AIRFLOW_CONN_GEMINI_DEFAULT` with the extra `rate_limit_per_minute: "off"`, since the '
        "exchange's limit is off here.",
        f"- Once per operator execute ({setup_n} repetitions): building the hook and its client from the "
        f"env connection takes {Summary.of(setup_ms).fmt(2)} ms, and the first cancel on the client's new "
        f"connection {Summary.of(first_ms).fmt(2)} ms (TCP connect included), against "
        f"{Summary.of(variants['hook'].wall_us).median / 1e3:.2f} ms for a warm one.",
        f"- The same path with the connection's default pacing (600/min, burst 5): {paced_n} cancels took "
        f"{paced[0]:.2f} s ({paced[0] / paced_n * 1e3:.1f} ms each, the first few of them free from the "
        f"limiter's burst), with {paced[1] / paced_n * 1e6:.0f} us of CPU each: pacing costs wall time, "
        "not CPU.",
        "- (b) and (c) send a JSON integer order id. ccxt (`gemini.sign`) sends its nonce as a JSON string "
        "of milliseconds from a per-instance counter (`incrementing_nonce`), the order id as given (a "
        "string here), and repeats the fields as a JSON body; the local exchange accepts digit strings for "
        "both. ccxt runs with `enableRateLimit` off and its markets set with `set_markets` from a "
        "one-market list: its `load_markets` needs public endpoints the local exchange does not serve.",
        "- Every variant has its own key on the exchange: ccxt counts its millisecond nonce per instance, "
        "the floor per process and GeminiClient per host (a lock file): on one counter key they would "
        "refuse each other's nonces.",
        "",
    ]
    write_section(results_path(args), "per_cancel", "\n".join(body), targets)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
