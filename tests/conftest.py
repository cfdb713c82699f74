"""Fixtures shared across the suite. The exchange fixtures come from the provider's pytest plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import scrubbed_env

from airflow_provider_gemini.testing.exchange import GeminiExchange


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
