"""The benchmarks still run: each bench/ script in its tiny `--quick` mode, writing a throwaway RESULTS.md.

Benchmarks are not tests: nothing here looks at a figure, only that every script starts its exchange,
drives the parts it measures, stops cleanly and writes its section.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import pytest
from helpers import REPO_ROOT

BENCH = REPO_ROOT / "bench"

SCRIPTS = {
    "per_cancel.py": ["per_cancel"],
    "cold_start.py": ["cold_start"],
    "bulk.py": ["bulk", "memory"],
    "parse_cost.py": ["parse"],
    "triggers.py": ["triggers"],
    "hosts.py": ["hosts"],
}


@dataclass
class QuickRun:
    returncode: int
    stdout: str
    stderr: str
    results: str


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, QuickRun]:
    """Every script once with --quick, all at the same time (they share nothing but the machine)."""
    tmp = tmp_path_factory.mktemp("bench")
    procs = {}
    for script in SCRIPTS:
        out = tmp / f"{script}.md"
        argv = [sys.executable, str(BENCH / script), "--quick", "--results", str(out)]
        procs[script] = (subprocess.Popen(argv, cwd=REPO_ROOT, stdout=PIPE, stderr=PIPE, text=True), out)
    runs = {}
    try:
        for script, (proc, out) in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            runs[script] = QuickRun(proc.returncode, stdout, stderr, out.read_text() if out.exists() else "")
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return runs


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bench_script_runs_quick(script: str, quick_runs: dict[str, QuickRun]) -> None:
    run = quick_runs[script]
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip(), "the script printed no table"
    for section in SCRIPTS[script]:
        assert f"<!-- section:{section} -->" in run.results
        assert f"<!-- /section:{section} -->" in run.results
    assert "## Targets at a glance" in run.results
    assert "NaN" not in run.results


def test_sections_are_rewritten_in_place(tmp_path: Path) -> None:
    """Re-running a script replaces its section and keeps the others, in the fixed order."""
    sys.path.insert(0, str(BENCH))
    try:
        from _harness import write_section
    finally:
        sys.path.remove(str(BENCH))
    results = tmp_path / "RESULTS.md"
    write_section(results, "parse", "## parse v1\n")
    write_section(results, "per_cancel", "## per cancel\n")
    write_section(results, "parse", "## parse v2\n")
    text = results.read_text()
    assert "parse v1" not in text
    assert text.index("## per cancel") < text.index("## parse v2")
    assert text.count("<!-- section:parse -->") == 1
