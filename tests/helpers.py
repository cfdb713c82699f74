"""What many tests share: paths, the report's keys, a recording task instance, and a clean environment
for Airflow subprocesses. Importable from both tiers (pytest puts `tests/` on sys.path via conftest)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
VENV_BIN = Path(sys.executable).parent
REPORT_KEYS = {
    "cancelled",
    "already_cancelled",
    "filled",
    "not_found",
    "dry_run",
    "failed",
    "orders",
    "stats",
}


class RecordingTI:
    """The part of a task instance the operators and the sensor use: xcom_push (each value checked to
    be plain JSON, as an XCom backend would store it) and try_number."""

    try_number = 1

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = json.loads(json.dumps(value))


def scrubbed_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any AIRFLOW_* variable, plus `overrides`: what an Airflow
    subprocess of a test starts from, so the developer's own Airflow settings never leak in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_")}
    env.update(overrides)
    return env
