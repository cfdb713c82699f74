"""Fixtures shared across the suite. The exchange fixtures come from the provider's pytest plugin."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import scrubbed_env

from airflow_provider_gemini.state import STATE_DIR_ENV
from airflow_provider_gemini.testing.exchange import GeminiExchange

# Each pytest-xdist worker talks to exchanges of its own, like a host of its own: its nonce files and
# its key's shared rate bucket live in a state directory of its own (its Airflow subprocesses inherit
# it), or workers that reuse the fixture key would pace each other.
if STATE_DIR_ENV not in os.environ:
    os.environ[STATE_DIR_ENV] = tempfile.mkdtemp(prefix="gemini-test-state-")
    atexit.register(shutil.rmtree, os.environ[STATE_DIR_ENV], ignore_errors=True)


@pytest.fixture
def airflow_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for Airflow subprocesses with a fresh, empty AIRFLOW_HOME and no example DAGs."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    env = scrubbed_env(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "no_dags"),
    )
    yield env


@pytest.fixture
def as_the_task_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that call execute() directly tell Airflow's safeguard so, as the task runner would."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    monkeypatch.setattr(ExecutorSafeguard, "test_mode", True)


@pytest.fixture
def exchange(gemini_exchange: GeminiExchange, gemini_connection: str) -> GeminiExchange:
    """The fixture exchange with `gemini_default` pointing at it."""
    return gemini_exchange
