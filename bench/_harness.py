"""Shared pieces of the benchmarks: the exchange process, the hand-written floor, statistics, RESULTS.md.

Nothing here imports Airflow or the provider's client, so a benchmark decides itself what its client
process loads (the per-cancel and cold-start figures depend on it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"

# Sections keep this order in RESULTS.md whichever script ran last.
SECTION_ORDER = ("per_cancel", "cold_start", "bulk", "parse", "memory", "triggers", "hosts")

RESULTS_PREAMBLE = """# Benchmark results

Written by `make bench` (the scripts in `bench/`); each section is rewritten by the script named in it,
on the machine it names. Every figure is the median of repeated runs with [min - max] after it, and
every ratio is taken against a baseline measured in the same run, against the same local exchange
(`GeminiExchange` from `airflow_provider_gemini.testing.exchange`, started by `bench/_exchange_server.py`
in its own process on 127.0.0.1 and seeded there). CPU figures are the client process's own CPU time
(user + system), never the server's. Each section names its 1-minute load average: the machine is shared,
so read wide [min - max] ranges as other work, which the interleaved runs spread over every variant.
"""


# ---------------------------------------------------------------- statistics and tables


@dataclass(frozen=True)
class Summary:
    """Median with min and max of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no measurements")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, digits: int = 1, unit: str = "") -> str:
        return f"{self.median:.{digits}f}{unit} [{self.low:.{digits}f} - {self.high:.{digits}f}]"


def ratio(value: Summary, base: Summary) -> str:
    """Median over median, with the extremes of the per-round ratios left to the caller."""
    return f"{value.median / base.median:.2f}x"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------- machine and RESULTS.md


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """Where and with what a section was measured, in one line."""
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, Airflow {_version('apache-airflow')} "
        f"(task SDK {_version('apache-airflow-task-sdk')}), airflow-provider-gemini "
        f"{_version('airflow-provider-gemini')}, requests {_version('requests')}, ccxt {_version('ccxt')}"
    )


def command_line() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(REPO_ROOT) if exe.is_relative_to(REPO_ROOT) else exe
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO_ROOT)
    return shlex.join([str(exe), str(script), *sys.argv[1:]])


_LOAD_AT_START = os.getloadavg()[0]


def section_header(title: str, elapsed_s: float | None = None) -> str:
    """Title, command, date, duration, machine, and the load average (other work on the machine)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    took = f" · took {elapsed_s:.0f} s" if elapsed_s is not None else ""
    load = f"1-min load average {_LOAD_AT_START:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    return f"## {title}\n\n`{command_line()}` · {when}{took}\n\n{machine_line()}; {load}.\n"


Target = tuple[str, str, str]  # (the target, what was measured, "met" / "NOT met" / why not measured)

_TARGETS = re.compile(r"<!-- targets: (.*?) -->\n")


def write_section(path: Path | None, name: str, body: str, targets: Sequence[Target] = ()) -> None:
    """Replace (or add) one section of RESULTS.md, keeping the others in the fixed order, and rebuild
    the table of targets at the top from every section's own targets."""
    if path is None:
        return
    text = path.read_text() if path.exists() else ""
    found = dict(re.findall(r"<!-- section:(\w+) -->\n(.*?)<!-- /section:\1 -->\n", text, flags=re.S))
    found[name] = f"<!-- targets: {json.dumps(list(targets))} -->\n" + body.rstrip("\n") + "\n"
    names = [n for n in SECTION_ORDER if n in found] + sorted(set(found) - set(SECTION_ORDER))
    rows = [row for n in names for m in _TARGETS.findall(found[n]) for row in json.loads(m)]
    parts = [RESULTS_PREAMBLE]
    if rows:
        parts.append("## Targets at a glance\n\n" + md_table(["target", "measured", "verdict"], rows) + "\n")
    parts += [f"<!-- section:{n} -->\n{found[n]}<!-- /section:{n} -->\n" for n in names]
    path.write_text("\n".join(parts))


def have_ccxt() -> bool:
    """ccxt comes with the `bench` extra; without it the ccxt variants are left out and said so."""
    return importlib.util.find_spec("ccxt") is not None


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a tiny run that proves the script works")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where to write the section (default bench/RESULTS.md; nowhere with --quick)",
    )
    return parser


def results_path(args: argparse.Namespace) -> Path | None:
    if args.results is not None:
        return Path(args.results)
    return None if args.quick else RESULTS


# ---------------------------------------------------------------- the hand-written floor


class FloorClient:
    """The least a cancel can cost in Python: requests.Session + hmac + base64 + json, no retries.

    The nonce is milliseconds, strictly increasing in-process. `trust_env=False` (as ccxt sets it)
    spares requests from re-reading the environment (proxies, netrc, CA bundle) on every request; the
    benchmark also measures the floor with requests' default, True.
    """

    def __init__(self, base_url: str, api_key: str, api_secret: str, trust_env: bool = False) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.secret = api_secret.encode()
        self.session = requests.Session()
        self.session.trust_env = trust_env
        self._last_nonce = 0

    def private(self, path: str, **fields: Any) -> Any:
        nonce = max(time.time_ns() // 1_000_000, self._last_nonce + 1)
        self._last_nonce = nonce
        payload = base64.b64encode(json.dumps({"request": path, "nonce": nonce, **fields}).encode())
        headers = {
            "X-GEMINI-APIKEY": self.api_key,
            "X-GEMINI-PAYLOAD": payload.decode(),
            "X-GEMINI-SIGNATURE": hmac.new(self.secret, payload, hashlib.sha384).hexdigest(),
            "Content-Type": "text/plain",
            "Content-Length": "0",
            "Cache-Control": "no-cache",
        }
        response = self.session.post(self.base_url + path, headers=headers, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def cancel(self, order_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.private("/v1/order/cancel", order_id=order_id)
        return answer

    def close(self) -> None:
        self.session.close()


# ---------------------------------------------------------------- the exchange, in its own process


@dataclass(frozen=True)
class Key:
    api_key: str
    api_secret: str


def make_key(name: str) -> Key:
    """A distinct account key per benchmarked client, so nonce sequences never meet."""
    return Key(f"account-bench-{name}", f"bench-secret-{name}-{os.getpid()}")


@dataclass
class Exchange:
    """A running local exchange process: its URL and the ids of the orders it was seeded with."""

    url: str
    orders: list[list[str]]
    proc: subprocess.Popen[bytes]

    def admin(self, what: str) -> Any:
        """GET /_admin/<what> (orders, journal): the exchange's own record, not the client's."""
        response = requests.get(f"{self.url}/_admin/{what}", timeout=60)
        response.raise_for_status()
        return response.json()


@contextlib.contextmanager
def exchange_process(
    keys: Sequence[Key],
    seed: Sequence[dict[str, Any]] = (),
    rate_limit_per_minute: float | None = None,
    burst: int = 5,
    cancel_plan: dict[str, Any] | None = None,
) -> Iterator[Exchange]:
    """Start bench/_exchange_server.py on 127.0.0.1 (a free port), yield it seeded, stop it after
    (`cancel_plan`: see _exchange_server.py)."""
    with tempfile.TemporaryDirectory(prefix="gemini-bench-") as tmp:
        ready = Path(tmp, "ready.json")
        spec = {
            "ready_file": str(ready),
            "rate_limit_per_minute": rate_limit_per_minute,
            "burst": burst,
            "keys": [[k.api_key, k.api_secret] for k in keys],
            "seed": list(seed),
            **({"cancel_plan": cancel_plan} if cancel_plan else {}),
        }
        argv = [sys.executable, str(BENCH_DIR / "_exchange_server.py"), json.dumps(spec)]
        proc = spawn_ready(argv, ready, timeout_s=120)
        try:
            info = json.loads(ready.read_text())
            yield Exchange(info["url"], info["orders"], proc)
        finally:
            stop(proc)


def spawn_ready(argv: list[str], ready_file: Path, timeout_s: float = 30.0) -> subprocess.Popen[bytes]:
    """Start a process and wait until it writes `ready_file` (or dies, or the timeout passes)."""
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while not (ready_file.exists() and ready_file.stat().st_size > 0):
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{shlex.join(argv)} did not get ready in {timeout_s} s")
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
