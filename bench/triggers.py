"""Benchmark 6: many deferred-sensor triggers on one key in one event loop, as in a triggerer.

For N in 1, 10, 100, 500, a fresh local exchange (its own process, rate limit on) holds N groups of
1-5 live orders; a fresh client process (`triggers.py --client`) runs N triggers, one per group, in one
asyncio loop, polling every INTERVAL_S. Once all are subscribed, the exchange cancels every order at a
random moment within CANCEL_WINDOW_S (as the exchange would: no request). Two designs, each in its
own process with its own exchange:

- shared: `GeminiOrderStatusTrigger` as shipped (one SharedPoller per connection and account, on
  AsyncGeminiClient, watch_share 0.25 of the key's limit).
- baseline: the design before it, reproduced here: each trigger builds its own GeminiClient and runs
  `OrderWatch.poll` in `asyncio.to_thread` every interval (the triggers/order.py loop at 745acbd).

Figures: the exchange's own journal per INTERVAL_S bucket (listings, status requests, 429s), the
delay from a group's last cancel to its trigger's event (median, p99), the event loop's lag (a
10 ms ticker's worst lateness), peak RSS of the client process, and threads it started.

Diagnosis: `--only N` runs one size of the shared design and prints it; with BENCH_SLOW_LOG=<file>
the client runs its loop in asyncio debug mode and logs every step longer than 20 ms to that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _harness import (
    REPO_ROOT,
    Key,
    base_parser,
    exchange_process,
    make_key,
    md_table,
    results_path,
    section_header,
    write_section,
)
from per_cancel import hook_connection

INTERVAL_S = 5.0
CANCEL_WINDOW_S = 60.0
# Gemini's 600/min would make 1,500 departures take 10 min to confirm at a quarter share; ten times
# that keeps a run short. Listings per interval do not depend on it; the delays scale with it.
RATE_PER_MINUTE = 6000.0
BURST = 50
SIZES = (1, 10, 100, 500)
TICK_S = 0.01


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------- the client process


async def lag_monitor(stop: asyncio.Event, worst: list[float]) -> None:
    """How late a 10 ms sleep wakes: the longest any callback waited for the loop (and when)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(TICK_S)
        late = loop.time() - before - TICK_S
        if late > worst[0]:
            worst[0], worst[1] = late, time.time()


_on_start: list[Any] = []


def started() -> None:
    """Every trigger is running: the figures count from here (imports and set-up are once a process)."""
    for callback in _on_start:
        callback()


async def shared_design(groups: list[list[str]], go: Path, fired: dict[int, float], interval: float) -> None:
    from airflow_provider_gemini.triggers.order import GeminiOrderStatusTrigger

    async def one(index: int, ids: list[str]) -> None:
        trigger = GeminiOrderStatusTrigger(order_ids=ids, poll_interval=interval)
        async for event in trigger.run():
            assert event.payload["status"] == "success", event.payload
            fired[index] = time.time()
            return

    tasks = [asyncio.create_task(one(i, ids)) for i, ids in enumerate(groups)]
    await asyncio.sleep(0.5)  # every trigger reads its connection and subscribes
    started()
    go.write_text("go")
    await asyncio.gather(*tasks)


async def baseline_design(
    groups: list[list[str]], go: Path, fired: dict[int, float], interval: float
) -> None:
    from airflow.sdk import BaseHook

    from airflow_provider_gemini.hooks.gemini import GeminiHook
    from airflow_provider_gemini.watch import OrderWatch

    class Quiet:
        def info(self, *args: Any) -> None: ...

        def warning(self, *args: Any) -> None: ...

    async def one(index: int, ids: list[str]) -> None:
        conn = await BaseHook.aget_connection("gemini_default")
        extra = await conn.aextra_dejson()
        client = await asyncio.to_thread(GeminiHook.client_from_connection, conn, extra)
        watch = OrderWatch([int(oid) for oid in ids])
        try:
            while True:
                await asyncio.sleep(interval)
                result = await asyncio.to_thread(watch.poll, client, request_cancel=False, log=Quiet())
                if result.done:
                    fired[index] = time.time()
                    return
                assert result.fatal is None, result.fatal
        finally:
            client.close()

    tasks = [asyncio.create_task(one(i, ids)) for i, ids in enumerate(groups)]
    await asyncio.sleep(0.5)
    started()
    go.write_text("go")
    await asyncio.gather(*tasks)


def client(design: str, groups_file: Path, go: Path, interval: float) -> None:
    # What a triggerer has imported before its triggers run.
    import airflow.sdk  # noqa: F401

    import airflow_provider_gemini.async_client
    import airflow_provider_gemini.hooks.gemini
    import airflow_provider_gemini.polling
    import airflow_provider_gemini.triggers.order  # noqa: F401

    if os.environ.get("BENCH_SLOW_LOG"):
        import logging

        handler = logging.FileHandler(os.environ["BENCH_SLOW_LOG"])
        logging.getLogger("asyncio").addHandler(handler)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    groups: list[list[str]] = json.loads(groups_file.read_text())
    fired: dict[int, float] = {}
    worst = [0.0, 0.0]
    threads_before = {t.name for t in threading.enumerate()}
    new_threads: set[str] = set()

    def reset() -> None:
        worst[0], worst[1] = 0.0, 0.0
        began[0] = time.time()

    began = [0.0]

    _on_start.append(reset)

    async def main() -> None:
        if os.environ.get("BENCH_SLOW_LOG"):
            asyncio.get_running_loop().set_debug(True)
            asyncio.get_running_loop().slow_callback_duration = 0.02
        stop = asyncio.Event()
        monitor = asyncio.create_task(lag_monitor(stop, worst))

        async def count_threads() -> None:
            while not stop.is_set():
                new_threads.update(t.name for t in threading.enumerate() if t.name not in threads_before)
                await asyncio.sleep(0.5)

        counter = asyncio.create_task(count_threads())
        run = shared_design if design == "shared" else baseline_design
        limit = CANCEL_WINDOW_S + 240
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run(groups, go, fired, interval), limit)
        stop.set()
        await monitor
        await counter

    asyncio.run(main())
    with open("/proc/self/status") as fh:
        peak_rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    print(
        json.dumps(
            {
                "fired": {str(k): v for k, v in fired.items()},
                "lag_ms": worst[0] * 1000,
                "lag_at_s": worst[1] - began[0],
                "peak_rss_mib": peak_rss,
                "extra_threads": sorted(new_threads),
            }
        )
    )


# ---------------------------------------------------------------- the parent


def one_run(
    design: str, n: int, key: Key, seed: int, interval: float = INTERVAL_S, window: float = CANCEL_WINDOW_S
) -> dict[str, Any]:
    rng = random.Random(seed)
    sizes = [rng.randint(1, 5) for _ in range(n)]
    total = sum(sizes)
    at = [rng.uniform(0, window) for _ in range(total)]
    with tempfile.TemporaryDirectory(prefix="gemini-bench-triggers-") as tmp:
        go, done = Path(tmp, "go"), Path(tmp, "done.json")
        plan = {"go_file": str(go), "done_file": str(done), "at": at}
        with exchange_process(
            [key],
            seed=[{"api_key": key.api_key, "count": total}],
            rate_limit_per_minute=RATE_PER_MINUTE,
            burst=BURST,
            cancel_plan=plan,
        ) as ex:
            ids = [str(oid) for oid in ex.orders[0]]
            groups, start = [], 0
            for size in sizes:
                groups.append(ids[start : start + size])
                start += size
            groups_file = Path(tmp, "groups.json")
            groups_file.write_text(json.dumps(groups))
            env = {
                **os.environ,
                "AIRFLOW_CONN_GEMINI_DEFAULT": hook_connection(
                    ex.url, key, rate_limit_per_minute=RATE_PER_MINUTE, burst=BURST
                ),
                "GEMINI_PROVIDER_STATE_DIR": tmp,
            }
            out = subprocess.run(
                [sys.executable, __file__, "--client", design, str(groups_file), str(go), str(interval)],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            if os.environ.get("PYTHONASYNCIODEBUG"):
                print("\n".join(line for line in out.stderr.splitlines() if "took" in line)[-3000:])
            result = json.loads(out.stdout.strip().splitlines()[-1])
            deadline = time.monotonic() + 30
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            cancelled_at: dict[str, float] = json.loads(done.read_text()) if done.exists() else {}
            journal = ex.admin("journal")
    go_time = min(cancelled_at.values()) - min(at) if cancelled_at else 0.0
    delays = []
    for index, group in enumerate(groups):
        fired = result["fired"].get(str(index))
        if fired is not None and all(oid in cancelled_at for oid in group):
            delays.append(fired - max(cancelled_at[oid] for oid in group))
    entries = [e for e in journal if e["api_key"] == key.api_key and e["time"] >= go_time]
    end = max((e["time"] for e in entries), default=go_time)
    buckets = max(1, int((end - go_time) // interval) + 1)
    per_bucket = [0] * buckets
    listings = [0] * buckets
    for e in entries:
        bucket = min(buckets - 1, int((e["time"] - go_time) // interval))
        per_bucket[bucket] += 1
        listings[bucket] += e["path"] == "/v1/orders"
    return {
        "design": design,
        "n": n,
        "orders": total,
        "fired": len(result["fired"]),
        "delay_median_s": statistics.median(delays) if delays else float("nan"),
        "delay_p99_s": percentile(delays, 0.99) if delays else float("nan"),
        "listings_per_interval": statistics.median(listings),
        "requests_per_interval_max": max(per_bucket),
        "statuses": sum(1 for e in entries if e["path"] == "/v1/order/status"),
        "http_429": sum(1 for e in entries if e["status"] == 429),
        "requests": len(entries),
        "lag_ms": result["lag_ms"],
        "lag_at_s": result["lag_at_s"],
        "peak_rss_mib": result["peak_rss_mib"],
        "extra_threads": result["extra_threads"],
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--client", nargs=4, metavar=("DESIGN", "GROUPS", "GO", "INTERVAL"), help="internal")
    parser.add_argument("--only", type=int, help="one size, shared design only, printed, not written")
    args = parser.parse_args()
    if args.client:
        design, groups_file, go, interval = args.client
        client(design, Path(groups_file), Path(go), float(interval))
        return
    if args.only:
        print(
            json.dumps(one_run("shared", args.only, make_key(f"triggers-only-{args.only}"), seed=args.only))
        )
        return
    started = time.monotonic()
    # --quick proves the script works: ten triggers, a 1 s interval, cancels within 5 s.
    sizes = (10,) if args.quick else SIZES
    timing = {"interval": 1.0, "window": 5.0} if args.quick else {}
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for design in ("shared", "baseline"):
            r = one_run(design, n, make_key(f"triggers-{design}-{n}"), seed=n, **timing)
            rows.append(r)
            print(json.dumps(r))
    headers = [
        "triggers",
        "design",
        "orders",
        "fired",
        "listings / 5 s (median)",
        "requests / 5 s (max)",
        "status requests",
        "429s",
        "cancel-to-event median s",
        "p99 s",
        "loop lag max ms",
        "peak RSS MiB",
        "threads started",
    ]
    table = [
        [
            str(r["n"]),
            r["design"],
            str(r["orders"]),
            f"{r['fired']}/{r['n']}",
            f"{r['listings_per_interval']:g}",
            str(r["requests_per_interval_max"]),
            str(r["statuses"]),
            str(r["http_429"]),
            f"{r['delay_median_s']:.2f}",
            f"{r['delay_p99_s']:.2f}",
            f"{r['lag_ms']:.1f}",
            f"{r['peak_rss_mib']:.1f}",
            ", ".join(r["extra_threads"]) or "none",
        ]
        for r in rows
    ]
    big = {r["design"]: r for r in rows if r["n"] == max(sizes)}
    shared, base = big["shared"], big["baseline"]
    targets = [
        (
            f"{max(sizes)} triggers on one key every 5 s: about one listing per interval, plus one status per "
            "departed order",
            f"{shared['listings_per_interval']:g} listing(s) per interval, {shared['statuses']} statuses for "
            f"{shared['orders']} orders (baseline {base['listings_per_interval']:g} listings per interval)",
            "met"
            if shared["listings_per_interval"] <= 1.5 and shared["statuses"] <= shared["orders"] * 1.05
            else "NOT met",
        ),
        (
            "Median cancel-to-event delay within one interval (5 s)",
            f"{shared['delay_median_s']:.2f} s (baseline {base['delay_median_s']:.2f} s)",
            "met" if shared["delay_median_s"] <= INTERVAL_S else "NOT met",
        ),
        (
            "Event-loop lag under 50 ms; no thread pool",
            f"{shared['lag_ms']:.1f} ms, threads started: {', '.join(shared['extra_threads']) or 'none'} "
            f"(baseline {base['lag_ms']:.1f} ms, {len(base['extra_threads'])} threads)",
            "met"
            if shared["lag_ms"] < 50 and not any(t.startswith("asyncio_") for t in shared["extra_threads"])
            else "NOT met",
        ),
    ]
    body = [
        section_header(
            "6. Deferred sensors at scale: triggers on one key in one event loop", time.monotonic() - started
        ),
        f"Each trigger watches 1-5 orders (seeded per N); every order is cancelled by the exchange at a random "
        f"moment within {CANCEL_WINDOW_S:g} s; triggers poll every {INTERVAL_S:g} s. Exchange and client limits "
        f"{RATE_PER_MINUTE:g}/min, burst {BURST} (see the note). One run per row, each with its own exchange "
        "process and client process; request figures are the exchange's own journal from the first cancel on.",
        "",
        md_table(headers, table),
        "",
        "- shared: the shipped trigger (one poller per connection and account on an httpx client, watch share "
        "0.25). baseline: the design before it, each trigger with its own GeminiClient polling in "
        "`asyncio.to_thread` (the event loop's default pool: min(32, cores + 4) threads).",
        "- Threads started: `asyncio_N` are the loop's default pool (asyncio.to_thread), `gemini-deadlines` the "
        "sync client's deadline watchdog; `ThreadPoolExecutor-0_0` is asgiref's thread behind Airflow's "
        "`BaseHook.aget_connection`, used once as each trigger starts, never by a poll.",
        "- Delay: from the last cancel of a trigger's orders to its event. A trigger that had not fired when the "
        f"run stopped ({CANCEL_WINDOW_S + 240:g} s) counts in 'fired' and has no delay.",
        "- Note: at Gemini's 600/min a quarter share confirms 2.5 departures a second, so 1,500 departures in a "
        "minute would wait their turn for about 10 minutes; listings per interval stay the same. The limits "
        "are raised ten-fold here to keep the run short.",
    ]
    write_section(results_path(args), "triggers", "\n".join(body), targets)


if __name__ == "__main__":
    main()
