"""One real Airflow for the whole test run (it takes seconds to start), shared by the REST, triggerer
and browser tests: the shipped example DAGs plus the deferrable sensor DAG, the Gemini connection
created through the REST API, and its own exchange on 127.0.0.1. The tests that use it carry the
`deployment` xdist group, so under `pytest -n` they all run in the one worker that started it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from deployment import Deployment
from helpers import REPO_ROOT

from airflow_provider_gemini.testing.exchange import DEFAULT_API_KEY, DEFAULT_API_SECRET, GeminiExchange

DEPLOYED_DAGS = (
    "gemini_cancel_order",
    "gemini_cancel_stale_orders",
    "gemini_end_of_session",
    "gemini_sensor_deferrable_watch",
    "gemini_sensor_deferrable_many",
    "reliability_timeout_retried",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run the deployment's tests spread over workers: each worker would start its own
    Airflow and the tests would see each other's runs. xdist marks a grouped test's id with `@group`;
    a pytest/xdist pair that drops the mark silently (pytest 9.2 with xdist 3.8 did) stops here."""
    if not getattr(config.option, "loadgroup", False):
        return
    ungrouped = [
        item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if ungrouped:
        raise pytest.UsageError(f"--dist loadgroup ignored the xdist_group marks of {ungrouped[:3]}...")


@pytest.fixture(scope="session")
def deployed_exchange() -> Iterator[GeminiExchange]:
    ex = GeminiExchange()
    ex.add_key(DEFAULT_API_KEY, DEFAULT_API_SECRET, ("Trader",), "counter", ("primary",), False)
    ex.start()
    yield ex
    ex.stop()


@pytest.fixture(scope="session")
def deployed_airflow(
    tmp_path_factory: pytest.TempPathFactory, deployed_exchange: GeminiExchange
) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("airflow_home")
    dags = tmp_path_factory.mktemp("dags")
    for dag_file in (REPO_ROOT / "dags").glob("*.py"):
        shutil.copy(dag_file, dags)
    for test_dag in ("sensor_deferrable.py", "reliability_kill_resume.py"):
        shutil.copy(REPO_ROOT / "tests" / "integration" / "dags" / test_dag, dags)
    deployment = Deployment(home, dags, ["api-server", "scheduler", "dag-processor", "triggerer"])
    try:
        created = deployment.request(
            "POST",
            "/connections",
            {
                "connection_id": "gemini_default",
                "conn_type": "geminiexchange",
                "login": deployed_exchange.api_key,
                "password": deployed_exchange.api_secret,
                "host": deployed_exchange.url,
            },
        )
        assert created.status_code == 201, created.text
        for dag_id in DEPLOYED_DAGS:
            deployment.wait_for_dag(dag_id)
        yield deployment
    finally:
        deployment.stop()
