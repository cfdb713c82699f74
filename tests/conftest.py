"""Fixtures shared across the suite. The exchange fixtures come from the provider's pytest plugin."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def airflow_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for Airflow subprocesses with a fresh, empty AIRFLOW_HOME and no example DAGs."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "no_dags"),
    )
    yield env
