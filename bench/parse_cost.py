"""Benchmark 4: what the provider adds to DAG parsing: its import on top of airflow.sdk, and dags/.

Every measurement is a fresh interpreter, as the DAG processor's parsing process is. Figures:
- wall time and RSS growth of `import airflow.sdk`, then of the operators and sensor modules on top;
- tracemalloc's count of the bytes the provider's modules allocate (tracing starts after airflow.sdk);
- `-X importtime`'s cumulative time of the provider's top-level imports, as a cross-check;
- DagBag parse time of `dags/`, against a folder with one trivial DAG parsed the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    REPO_ROOT,
    Summary,
    base_parser,
    md_table,
    results_path,
    section_header,
    text_table,
    write_section,
)

PROVIDER_MODULES = ("airflow_provider_gemini.operators.cancel", "airflow_provider_gemini.sensors.order")
TARGET_MS = 50.0

_RSS = "int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')"

IMPORT_CHILD = f"""
import json, os, sys, time
def rss(): return {_RSS}
r0, t0 = rss(), time.perf_counter()
import airflow.sdk
t1, r1, m1 = time.perf_counter(), rss(), set(sys.modules)
import {PROVIDER_MODULES[0]}
t2, r2 = time.perf_counter(), rss()
import {PROVIDER_MODULES[1]}
t3, r3 = time.perf_counter(), rss()
new = sorted(set(sys.modules) - m1)
print(json.dumps({{"sdk_s": t1 - t0, "cancel_s": t2 - t1, "sensor_s": t3 - t2, "sdk_rss": r1 - r0,
    "cancel_rss": r2 - r1, "sensor_rss": r3 - r2, "new_modules": new}}))
"""

TRACEMALLOC_CHILD = f"""
import json, tracemalloc
import airflow.sdk
tracemalloc.start()
import {PROVIDER_MODULES[0]}, {PROVIDER_MODULES[1]}
kept, peak = tracemalloc.get_traced_memory()
print(json.dumps({{"provider_bytes": kept, "provider_peak": peak}}))
"""

IMPORTTIME_CHILD = f"import airflow.sdk; import {PROVIDER_MODULES[0]}; import {PROVIDER_MODULES[1]}"

DAGBAG_CHILD = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
took = time.perf_counter() - t0
errors = {k: v[:300] for k, v in bag.import_errors.items()}
files = [[str(s.file), s.duration.total_seconds()] for s in bag.dagbag_stats]
print(json.dumps({"s": took, "dags": len(bag.dags), "errors": errors, "files": files}))
"""


TRIVIAL_DAG = """
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

with DAG(dag_id="trivial", schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC")):

    @task
    def noop() -> None:
        return None

    noop()
"""


def child_env(airflow_home: str, dags_folder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=airflow_home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=dags_folder,
        PYTHONDONTWRITEBYTECODE="",
    )
    return env


def run_json(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def importtime_provider_s(env: dict[str, str]) -> float:
    """Sum of the cumulative import times of the provider's top-level modules, from -X importtime."""
    argv = [sys.executable, "-X", "importtime", "-c", IMPORTTIME_CHILD]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"-X importtime run failed: {done.stderr[-2000:]}")
    total_us = 0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+\s+\|\s+(\d+)\s+\| (\S.*)$", line)
        if match and match.group(2).startswith("airflow_provider_gemini"):
            total_us += int(match.group(1))
    return total_us / 1e6


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per figure")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="gemini-bench-parse-") as tmp:
        home, trivial = Path(tmp, "home"), Path(tmp, "trivial_dags")
        home.mkdir()
        trivial.mkdir()
        (trivial / "trivial.py").write_text(TRIVIAL_DAG)
        dags = REPO_ROOT / "dags"
        env = child_env(str(home), str(dags))

        imports: list[dict[str, Any]] = []
        traced: list[dict[str, Any]] = []
        importtime: list[float] = []
        bag_dags: list[dict[str, Any]] = []
        bag_trivial: list[dict[str, Any]] = []
        have_dags = any(dags.glob("*.py"))
        for _ in range(runs):  # interleaved, so a noisy spell hits every figure alike
            imports.append(run_json([sys.executable, "-c", IMPORT_CHILD], env))
            importtime.append(importtime_provider_s(env))
            traced.append(run_json([sys.executable, "-c", TRACEMALLOC_CHILD], env))
            if have_dags:
                bag_trivial.append(run_json([sys.executable, "-c", DAGBAG_CHILD, str(trivial)], env))
                bag_dags.append(run_json([sys.executable, "-c", DAGBAG_CHILD, str(dags)], env))

    ms = 1000.0
    mib = 1024.0 * 1024.0
    sdk = Summary.of([r["sdk_s"] * ms for r in imports])
    cancel = Summary.of([r["cancel_s"] * ms for r in imports])
    sensor = Summary.of([r["sensor_s"] * ms for r in imports])
    both = Summary.of([(r["cancel_s"] + r["sensor_s"]) * ms for r in imports])
    sdk_rss = Summary.of([r["sdk_rss"] / mib for r in imports])
    prov_rss = Summary.of([(r["cancel_rss"] + r["sensor_rss"]) / mib for r in imports])
    itime = Summary.of([s * ms for s in importtime])
    traced_kib = Summary.of([r["provider_bytes"] / 1024 for r in traced])
    traced_peak = Summary.of([r["provider_peak"] / 1024 for r in traced])
    new_modules: list[str] = imports[-1]["new_modules"]
    heavy = [m for m in new_modules if not m.startswith("airflow_provider_gemini")]
    own = [m for m in new_modules if m.startswith("airflow_provider_gemini")]

    rows = [
        ["`import airflow.sdk` (baseline)", sdk.fmt(1), sdk_rss.fmt(1), "-"],
        [f"+ `{PROVIDER_MODULES[0]}`", cancel.fmt(1), "", f"{cancel.median / sdk.median:.1%}"],
        [f"+ `{PROVIDER_MODULES[1]}`", sensor.fmt(1), "", f"{sensor.median / sdk.median:.1%}"],
        ["+ both provider modules", both.fmt(1), prov_rss.fmt(2), f"{both.median / sdk.median:.1%}"],
        ["  cross-check: `-X importtime`, provider top-level cumulative", itime.fmt(1), "", ""],
    ]
    headers = ["import (fresh process each run)", "wall ms", "RSS growth MiB", "share of baseline"]
    verdict = "met" if both.median < TARGET_MS else "NOT met"
    lines = [
        section_header(
            "4. Parse cost: the provider's import, and DagBag of dags/", time.monotonic() - started
        ),
        f"{runs} fresh processes per figure, interleaved.",
        "",
        md_table(headers, rows),
        "",
        f"Target: the provider's modules add < {TARGET_MS:.0f} ms to `import airflow.sdk`: **{verdict}** "
        f"({both.median:.1f} ms median, {both.median / sdk.median:.1%} of the baseline).",
        "",
        f"tracemalloc: the provider's modules keep {traced_kib.fmt(0)} KiB allocated "
        f"(peak while importing {traced_peak.fmt(0)} KiB) on top of airflow.sdk.",
        "",
        f"Modules loaded by the provider import beyond airflow.sdk: {len(new_modules)} "
        f"({len(own)} of the provider: {', '.join(f'`{m}`' for m in own) or 'none'}; others: "
        f"{', '.join(f'`{m}`' for m in heavy) or 'none'}).",
        "",
    ]
    text_rows = [[r[0].replace("`", ""), r[1], r[2], r[3]] for r in rows]
    print(text_table(headers, text_rows))

    if have_dags:
        t_dags = Summary.of([r["s"] * ms for r in bag_dags])
        t_triv = Summary.of([r["s"] * ms for r in bag_trivial])
        per_file: dict[str, list[float]] = {}
        for r in bag_dags:
            for path, secs in r["files"]:
                per_file.setdefault(Path(path).name, []).append(secs * ms)
        errors = bag_dags[-1]["errors"]
        bag_rows = [
            ["one trivial DAG (`@task`, baseline)", str(bag_trivial[-1]["dags"]), t_triv.fmt(1), "1.00x"],
            [
                "`dags/` (all files)",
                str(bag_dags[-1]["dags"]),
                t_dags.fmt(1),
                f"{t_dags.median / t_triv.median:.2f}x",
            ],
        ]
        bag_rows += [
            [f"  `dags/{name}` (DagBag's own per-file duration)", "", Summary.of(v).fmt(1), ""]
            for name, v in sorted(per_file.items())
        ]
        bag_headers = ["DagBag(dag_folder=...) in a fresh process", "DAGs", "ms", "vs trivial"]
        lines += [
            "### DagBag parse of dags/",
            "",
            "Timed around `DagBag(dag_folder=...)` only, after `from airflow.dag_processing.dagbag import "
            "DagBag` (so airflow.sdk is already loaded, as in the DAG processor); "
            "`AIRFLOW__CORE__LOAD_EXAMPLES=False`.",
            "",
            md_table(bag_headers, bag_rows),
            "",
            f"Import errors: {len(errors)}" + (f" ({json.dumps(errors)})" if errors else "") + ". "
            "The per-file durations are not comparable with each other: the first file DagBag parses "
            "pays the one-time imports (Airflow's lazily loaded `@task` machinery, the provider's modules) "
            "for all of them.",
            "",
        ]
        print()
        print(text_table(bag_headers, [[c.replace("`", "") for c in r] for r in bag_rows]))
        if errors:
            print("import errors:", errors)
    else:
        lines += ["DagBag: `dags/` holds no DAG files yet; nothing to parse.", ""]
        print("dags/ holds no DAG files yet")
    target = (
        f"The provider's operator and sensor modules add < {TARGET_MS:.0f} ms to `import airflow.sdk`",
        f"{both.median:.1f} ms on {sdk.median:.0f} ms; {prov_rss.median:.2f} MiB RSS",
        verdict,
    )
    write_section(results_path(args), "parse", "\n".join(lines), [target])


if __name__ == "__main__":
    main()
