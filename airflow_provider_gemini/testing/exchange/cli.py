"""The command line: `python -m airflow_provider_gemini.testing.exchange` runs one exchange until a
signal, for the demo and for trying a client by hand."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .book import FIRST_ORDER_ID
from .facade import GeminiExchange
from .rules import DEFAULT_API_KEY, DEFAULT_API_SECRET


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_gemini.testing.exchange",
        description="Run the local Gemini-compatible exchange (for tests and demos only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--seed", choices=("none", "demo"), default="none", help="'demo' places a mixed book")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help=f"Trader key (default {DEFAULT_API_KEY})")
    parser.add_argument(
        "--api-secret", default=DEFAULT_API_SECRET, help="its secret (default: the demo secret)"
    )
    parser.add_argument("--nonce-mode", choices=("counter", "time"), default="counter")
    parser.add_argument(
        "--rate-limit-per-minute", type=float, default=600, help="per-key limit; 0 turns it off (default 600)"
    )
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--first-order-id", type=int, default=FIRST_ORDER_ID)
    parser.add_argument(
        "--require-heartbeat", action="store_true", help="cancel the key's orders when silent"
    )
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0)
    parser.add_argument(
        "--clock-offset", type=float, default=0.0, help="seconds the exchange's clock runs ahead (default 0)"
    )
    parser.add_argument("--ready-file", help="write the URL to this file once listening")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM; print the URL and an AIRFLOW_CONN_GEMINI_DEFAULT line first."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rate = args.rate_limit_per_minute or None
    try:
        exchange = GeminiExchange(
            args.host,
            args.port,
            rate,
            args.burst,
            args.first_order_id,
            heartbeat_timeout=args.heartbeat_timeout,
            clock_offset=args.clock_offset,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    exchange.add_key(
        args.api_key, args.api_secret, nonce_mode=args.nonce_mode, require_heartbeat=args.require_heartbeat
    )
    try:
        exchange.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        if args.seed == "demo":
            book = exchange.place_demo_book(args.api_key)
            live = sum(1 for o in book if o["is_live"])
            seeded = f"; seeded {len(book)} demo orders ({live} live)"
        else:
            seeded = ""
        limit = "off" if rate is None else f"{rate:g}/min, burst {args.burst}"
        clock = f"; clock offset {args.clock_offset:+g} s" if args.clock_offset else ""
        print(
            f"Local Gemini exchange (test only) listening on {exchange.url} "
            f"(rate limit {limit}{seeded}{clock})"
        )
        print(f"export AIRFLOW_CONN_GEMINI_DEFAULT='{exchange.airflow_connection()}'")
        print(f"Admin (unauthenticated): GET {exchange.url}/_admin/orders and {exchange.url}/_admin/journal")
        print("Stop with Ctrl-C.", flush=True)
        if args.ready_file:
            tmp = f"{args.ready_file}.tmp"
            with open(tmp, "w") as fh:
                fh.write(exchange.url + "\n")
            os.replace(tmp, args.ready_file)
        while not stop.wait(0.1):
            pass
    finally:
        exchange.stop()
    print("Local Gemini exchange stopped.", flush=True)
    return 0
