"""Benchmark 2: cold start, as an Airflow task lives it: a fresh `python -c` that cancels one order.

Each run is a new interpreter that imports what it needs, cancels one live order on the local exchange
and exits: (a) the hand-written floor, (b) GeminiClient, (c) GeminiHook with the connection from
AIRFLOW_CONN_GEMINI_DEFAULT (imports airflow.sdk), (d) ccxt with its markets preset by hand (ccxt's
`load_markets` needs public endpoints the local exchange does not serve). `python -c pass` is the
interpreter's own start, for scale. Variants run interleaved; every figure is the median of N runs.
Wall time is measured by the parent around spawn-to-exit; CPU time comes from os.wait4, peak RSS from
the child's own VmHWM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from _harness import (
    REPO_ROOT,
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
from per_cancel import CCXT_MARKETS, hook_connection

# Each child gets: url api_key api_secret order_id.
FLOOR = """
import base64, hashlib, hmac, json, sys, time
import requests
url, key, secret, oid = sys.argv[1:5]
session = requests.Session()
session.trust_env = False
payload = base64.b64encode(json.dumps(
    {"request": "/v1/order/cancel", "nonce": time.time_ns() // 1_000_000, "order_id": int(oid)}).encode())
headers = {"X-GEMINI-APIKEY": key, "X-GEMINI-PAYLOAD": payload.decode(),
    "X-GEMINI-SIGNATURE": hmac.new(secret.encode(), payload, hashlib.sha384).hexdigest(),
    "Content-Type": "text/plain", "Content-Length": "0", "Cache-Control": "no-cache"}
answer = session.post(url + "/v1/order/cancel", headers=headers, timeout=10)
assert answer.status_code == 200 and answer.json()["is_cancelled"] is True, answer.text
"""

CLIENT = """
import sys
from airflow_provider_gemini.client import GeminiClient
url, key, secret, oid = sys.argv[1:5]
with GeminiClient(key, secret, base_url=url) as client:
    assert client.cancel_order(oid).is_cancelled
"""

HOOK = """
import sys
from airflow_provider_gemini.hooks.gemini import GeminiHook
assert GeminiHook().get_client().cancel_order(sys.argv[4]).is_cancelled
"""

CCXT = f"""
import json, sys
import ccxt
url, key, secret, oid = sys.argv[1:5]
exchange = ccxt.gemini({{"apiKey": key, "secret": secret, "enableRateLimit": False,
    "urls": {{"api": {{"public": url, "private": url}}}}}})
exchange.set_markets(json.loads({json.dumps(json.dumps(CCXT_MARKETS))}))
assert exchange.cancel_order(oid)["status"] == "canceled"
"""

SNIPPETS = {"python": "pass", "floor": FLOOR, "client": CLIENT, "hook": HOOK, "ccxt": CCXT}
if not have_ccxt():
    del SNIPPETS["ccxt"]
LABELS = {
    "python": "`python -c pass` (interpreter start, for scale)",
    "floor": "(a) floor: requests + hmac",
    "client": "(b) `GeminiClient`",
    "hook": "(c) `GeminiHook` (imports airflow.sdk)",
    "ccxt": "(d) ccxt, markets preset",
}
VARIANTS = tuple(name for name in SNIPPETS if name != "python")


# The child's own peak RSS: VmHWM belongs to the process image, so it leaves out the parent's memory that
# the forked child held before exec (which wait4's ru_maxrss reports for a small child).
PEAK_RSS = "\nprint([line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1])"


def run_child(code: str, args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Spawn `python -c code args...`, wait for it; returns (wall s, CPU s, peak RSS MiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        argv = [sys.executable, "-c", code + PEAK_RSS, *args]
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(
                f"child failed ({proc.returncode}): {err.read().decode(errors='replace')[-2000:]}"
            )
        out.seek(0)
        peak_kib = int(out.read().split()[-1])
    return wall, usage.ru_utime + usage.ru_stime, peak_kib / 1024


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per variant")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    started = time.monotonic()
    keys: dict[str, Key] = {name: make_key(f"cold-{name}") for name in VARIANTS}
    seed = [{"api_key": keys[name].api_key, "count": runs, "prefix": f"cold-{name}-"} for name in VARIANTS]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SNIPPETS}
    with (
        tempfile.TemporaryDirectory(prefix="gemini-bench-cold-") as home,
        exchange_process(list(keys.values()), seed, rate_limit_per_minute=None) as exchange,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            AIRFLOW_HOME=home,
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW_CONN_GEMINI_DEFAULT=hook_connection(exchange.url, keys["hook"]),
        )
        orders = dict(zip(VARIANTS, exchange.orders, strict=True))
        names = list(SNIPPETS)
        for r in range(runs):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                if name == "python":
                    argv: list[str] = []
                else:
                    key = keys[name]
                    argv = [exchange.url, key.api_key, key.api_secret, orders[name][r]]
                results[name].append(run_child(SNIPPETS[name], argv, env))
        journal = exchange.admin("journal")
    cancels_ok = sum(1 for e in journal if e["path"] == "/v1/order/cancel" and e["status"] == 200)

    wall = {n: Summary.of([w * 1000 for w, _, _ in v]) for n, v in results.items()}
    cpu = {n: Summary.of([c * 1000 for _, c, _ in v]) for n, v in results.items()}
    rss = {n: Summary.of([m for _, _, m in v]) for n, v in results.items()}
    ccxt = wall.get("ccxt")
    headers = ["fresh process", "wall ms", "vs (a)", "vs (d) ccxt", "CPU ms", "peak RSS MiB"]
    rows = [
        [
            LABELS[n],
            wall[n].fmt(0),
            f"{wall[n].median / wall['floor'].median:.2f}x",
            f"{wall[n].median / ccxt.median:.2f}x" if ccxt else "-",
            cpu[n].fmt(0),
            rss[n].fmt(0),
        ]
        for n in SNIPPETS
    ]
    print(text_table(headers, [[c.replace("`", "") for c in row] for row in rows]))
    if ccxt:
        met = "met" if wall["client"].median < ccxt.median else "NOT met"
        measured = f"{wall['client'].median:.0f} ms vs {ccxt.median:.0f} ms"
        verdict = f"**{met}** ({measured})"
    else:
        verdict = "not measured: ccxt is not installed (`pip install -e '.[bench]'`)"
        met, measured = "not measured", "ccxt not installed"
    body = [
        section_header("2. Cold start: a fresh process that cancels one order", time.monotonic() - started),
        f"{runs} runs per variant, interleaved; {cancels_ok} of {runs * len(VARIANTS)} cancels answered 200. "
        "Wall time from spawn to exit, measured by the parent; CPU (user + system) of the child from "
        "`os.wait4`, its peak RSS from its `VmHWM`. (b) uses `GeminiClient`'s defaults (its limiter's first token is free); ccxt has "
        "its markets set with `set_markets` from a one-market list, since `load_markets` needs public "
        "endpoints the local exchange does not serve.",
        "",
        md_table(headers, rows),
        "",
        f"Target: cold start of (b) below ccxt's: {verdict}.",
        "",
    ]
    target = ("Cold start (fresh process, one cancel) of (b) `GeminiClient` below ccxt's", measured, met)
    write_section(results_path(args), "cold_start", "\n".join(body), [target])


if __name__ == "__main__":
    main()
