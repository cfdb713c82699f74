"""Benchmark 7: one key, many tasks on many hosts: the key's rate, 429s and nonces.

Tasks x hosts (1x1, 4x1, 8x2, and 8x2 with the second host's clock 2 s ahead) cancel 1,000 orders
on one key of a fresh local exchange (its own process; Gemini's 600/min with a burst of 5, strict
counter nonces). A task is a process with its own GeminiClient cancelling its share of the orders
one by one; a host is a private state directory (the provider's host-wide nonce and rate files) and
a temp dir, shared by the tasks on it. A clock ahead is tests/fake_clock's `sitecustomize`, which adds
the offset to `time.time` in that host's processes. Designs, each in the same run:

- shipped: the package in this checkout, no configuration.
- redis: the same with the connection's Redis option (a redis-server started here on 127.0.0.1), when
  the package has it and `redis-server` is installed.
- baseline: the package at the baseline commit below (before the host-wide bucket, exchange-anchored nonces and
  the 429 pace), extracted from git into a temp dir.

Figures, from the exchange's own journal: the share of the key's limit used (answers that were not
429, per second of the run, over 10 a second), 429 answers, InvalidNonce answers, the wall time from
release to the last task's end, orders left live, and tasks that failed (any order not cancelled).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    REPO_ROOT,
    base_parser,
    exchange_process,
    make_key,
    md_table,
    results_path,
    section_header,
    write_section,
)

BASELINE_COMMIT = "e01b6de"
RATE_PER_MINUTE = 600.0
BURST = 5
ORDERS = 1000
LAYOUTS: tuple[tuple[int, int, float], ...] = ((1, 1, 0.0), (4, 1, 0.0), (8, 2, 0.0), (8, 2, 2.0))

FAKE_CLOCK = REPO_ROOT / "tests" / "fake_clock"  # its sitecustomize.py shifts time.time

TASK = """
import json, sys, time
from pathlib import Path
from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.exceptions import GeminiError
spec = json.loads(sys.argv[1])
options = {}
if spec.get("redis_url"):
    from airflow_provider_gemini.coordination import RedisSettings, shared_coordinator
    settings = RedisSettings.from_url(spec["redis_url"])
    options["coordinator"] = shared_coordinator(settings, spec["key"])
failed = []
with GeminiClient(spec["key"], spec["secret"], base_url=spec["url"], **options) as client:
    while not Path(spec["go"]).exists():
        time.sleep(0.005)
    for oid in spec["ids"]:
        try:
            if not client.cancel_order(oid).is_cancelled:
                failed.append(oid)
        except GeminiError as error:
            failed.append(oid)
            print("failed", oid, error.kind, file=sys.stderr)
print(json.dumps({"failed": failed, "stats": client.stats.as_dict()}))
"""


def baseline_tree(tmp: Path) -> Path:
    """The package at BASELINE_COMMIT, unpacked from git into `tmp` (an import root)."""
    root = tmp / "baseline"
    root.mkdir()
    archive = subprocess.run(
        ["git", "archive", BASELINE_COMMIT, "airflow_provider_gemini"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def run_layout(
    tasks: int, hosts: int, skew_s: float, import_root: Path | None, redis_url: str | None, tmp: Path
) -> dict[str, Any]:
    """One run: a fresh exchange, `tasks` processes over `hosts` state dirs; the journal's figures."""
    key = make_key(f"hosts-{tasks}x{hosts}")
    seed = [{"api_key": key.api_key, "count": ORDERS}]
    with exchange_process([key], seed, rate_limit_per_minute=RATE_PER_MINUTE, burst=BURST) as ex:
        ids = ex.orders[0]
        run_dir = Path(tempfile.mkdtemp(dir=tmp))
        go = run_dir / "go"
        procs = []
        for index in range(tasks):
            host = index % hosts
            host_dir = run_dir / f"host{host}"
            (host_dir / "tmp").mkdir(parents=True, exist_ok=True)
            (host_dir / "state").mkdir(mode=0o700, exist_ok=True)
            path = [str(FAKE_CLOCK)] + ([str(import_root)] if import_root else []) + [str(REPO_ROOT)]
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(path),
                "TMPDIR": str(host_dir / "tmp"),
                "GEMINI_PROVIDER_STATE_DIR": str(host_dir / "state"),
                "FAKE_CLOCK_OFFSET_S": str(skew_s if host == 1 else 0.0),
            }
            spec = {
                "url": ex.url,
                "key": key.api_key,
                "secret": key.api_secret,
                "go": str(go),
                "ids": ids[index::tasks],
                "redis_url": redis_url,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", TASK, json.dumps(spec)],
                    env=env,
                    cwd=run_dir,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        time.sleep(2.0)  # every task imported and waiting
        start = time.time()
        go.write_text("go")
        failed_tasks = 0
        for proc in procs:
            out, _err = proc.communicate(timeout=900)
            lines = out.strip().splitlines()
            if proc.returncode != 0 or not lines or json.loads(lines[-1])["failed"]:
                failed_tasks += 1
        wall = time.time() - start
        journal = ex.admin("journal")
        live = sum(1 for order in ex.admin("orders") if order.get("is_live"))
    answered = [e for e in journal if e["time"] >= start]
    limited = sum(1 for e in answered if e["status"] == 429)
    nonces = sum(1 for e in answered if e.get("reason") == "InvalidNonce")
    used = (len(answered) - limited) / (wall * RATE_PER_MINUTE / 60.0)
    return {
        "requests": len(answered),
        "429": limited,
        "invalid_nonce": nonces,
        "wall_s": wall,
        "share": used,
        "live": live,
        "failed_tasks": failed_tasks,
    }


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """A redis-server on 127.0.0.1 for the redis design, if installed and the package has the option."""
    server = shutil.which("redis-server")
    if server is None or not (REPO_ROOT / "airflow_provider_gemini" / "coordination.py").exists():
        print("redis design left out: no redis-server (make system-packages installs it)", flush=True)
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10.0
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server on port {port} did not answer PING")
        time.sleep(0.05)


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--designs", default="baseline,shipped,redis")
    args = parser.parse_args()
    global ORDERS
    layouts = LAYOUTS
    if args.quick:
        ORDERS = 60
        layouts = ((4, 2, 2.0),)
    designs = args.designs.split(",")
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gemini-bench-hosts-") as tmp_name:
        tmp = Path(tmp_name)
        roots: dict[str, tuple[Path | None, str | None]] = {"shipped": (None, None)}
        if "baseline" in designs:
            roots["baseline"] = (baseline_tree(tmp), None)
        redis = start_redis(tmp) if "redis" in designs else None
        if redis is not None:
            roots["redis"] = (None, redis[1])
        try:
            for tasks, hosts, skew in layouts:
                for design in designs:
                    if design not in roots:
                        continue
                    root, redis_url = roots[design]
                    figures = run_layout(tasks, hosts, skew, root, redis_url, tmp)
                    label = f"{tasks}x{hosts}" + (f", host 2 +{skew:g} s" if skew else "")
                    print(label, design, json.dumps(figures), flush=True)
                    rows.append((label, design, figures))
        finally:
            if redis is not None:
                redis[0].terminate()
                redis[0].wait(timeout=10)
    table = md_table(
        [
            "tasks x hosts",
            "design",
            "share of the key's limit",
            "429s",
            "InvalidNonce",
            f"wall s ({ORDERS} cancels)",
            "live left",
            "failed tasks",
        ],
        [
            [
                label,
                design,
                f"{f['share'] * 100:.0f}%",
                str(f["429"]),
                str(f["invalid_nonce"]),
                f"{f['wall_s']:.1f}",
                str(f["live"]),
                str(f["failed_tasks"]),
            ]
            for label, design, f in rows
        ],
    )
    body = (
        section_header("7. One key, many tasks and hosts", time.monotonic() - started)
        + "\n"
        + (__doc__ or "").split("\n", 1)[1].strip()
        + f"\n\nBaseline: the package at {BASELINE_COMMIT}. "
        f"Exchange: {RATE_PER_MINUTE:g}/min, burst {BURST}.\n\n" + table + "\n"
    )
    print(table)
    write_section(results_path(args), "hosts", body, targets(rows))
    return 0


def targets(rows: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """Issue 18's bar for every run on more than one host: with no setting, every order cancelled and
    no task failed; with Redis, under 1 % 429s and at least 90 % of the key's rate."""
    out = []
    for label, design, f in rows:
        if label.split(",")[0].endswith("x1"):
            continue
        if design == "shipped":
            met = f["live"] == 0 and f["failed_tasks"] == 0
            measured = f"{f['live']} orders left live, {f['failed_tasks']} tasks failed"
            out.append((f"{label}, no setting: every order cancelled, no task fails", measured, met))
        elif design == "redis":
            limited = f["429"] / max(1, f["requests"])
            met = limited < 0.01 and f["share"] >= 0.9
            measured = f"{limited * 100:.1f} % 429s, {f['share'] * 100:.0f} % of the key's rate"
            out.append((f"{label}, Redis: < 1 % 429s, >= 90 % of the rate", measured, met))
    return [(target, measured, "met" if met else "NOT met") for target, measured, met in out]


if __name__ == "__main__":
    sys.exit(main())
