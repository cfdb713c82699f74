"""Run `airflow dags test` as a subprocess and read back what it stored, for tests of real DAG runs.

`airflow dags test` runs every task in-process with no scheduler or api-server, and keeps XComs in
`$AIRFLOW_HOME/airflow.db` (SQLite). Airflow's docs advise against `dag.test()` inside pytest on 3.x,
hence a subprocess. Typical use, with the exchange kept in the pytest process:

    env = airflow_env(tmp_path / "home", DAGS, {"AIRFLOW_CONN_GEMINI_DEFAULT": exchange.airflow_connection()})
    result = run_dags_test(DAGS, "my_dag", conf={"order_ids": [1, 2]}, env=env)
    report = read_xcom(env["AIRFLOW_HOME"], "my_dag", "cancel")
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpers import scrubbed_env

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DEFAULT_TIMEOUT = 300.0
_MIGRATED_MARKER = ".migrated-by-tests"


def airflow_env(
    airflow_home: str | os.PathLike[str],
    dags_folder: str | os.PathLike[str],
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This process's environment minus every AIRFLOW_* variable, plus a private home and DAG folder."""
    Path(airflow_home).mkdir(parents=True, exist_ok=True)
    env = scrubbed_env(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    env.update(extra or {})
    return env


def migrate(env: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> None:
    """`airflow db migrate` once per AIRFLOW_HOME (a marker file remembers it); raises on failure."""
    marker = Path(env["AIRFLOW_HOME"]) / _MIGRATED_MARKER
    if marker.exists():
        return
    result = subprocess.run(
        [AIRFLOW, "db", "migrate"], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    marker.touch()


def run_dags_test(
    dags_folder: str | os.PathLike[str],
    dag_id: str,
    conf: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Migrate the home if needed, then `airflow dags test <dag_id> [-c <conf>]`; output captured as text.

    `env` must hold AIRFLOW_HOME (see `airflow_env`); its DAG folder is set to `dags_folder`. The
    return code is not checked: a test of a failing task wants the output as much as one of a success.
    """
    if env is None or "AIRFLOW_HOME" not in env:
        raise ValueError("env: needs AIRFLOW_HOME; build it with airflow_env()")
    run_env = dict(env)
    run_env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    migrate(run_env, timeout)
    command = [AIRFLOW, "dags", "test", dag_id]
    if conf is not None:
        command += ["-c", json.dumps(dict(conf))]
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=timeout)


def read_xcom(
    airflow_home: str | os.PathLike[str],
    dag_id: str,
    task_id: str,
    key: str = "return_value",
    run_id: str | None = None,
    map_index: int = -1,
) -> Any:
    """The decoded XCom value a task pushed (the latest run's, unless `run_id`); KeyError when absent."""
    query = "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = ? AND map_index = ?"
    params: list[Any] = [dag_id, task_id, key, map_index]
    if run_id is not None:
        query += " AND run_id = ?"
        params.append(run_id)
    query += " ORDER BY timestamp DESC LIMIT 1"
    with sqlite3.connect(Path(airflow_home) / "airflow.db") as db:
        row = db.execute(query, params).fetchone()
    if row is None:
        raise KeyError(f"no XCom {key!r} for {dag_id}.{task_id}")
    value = row[0]
    return json.loads(value) if isinstance(value, str | bytes) else value


def task_states(airflow_home: str | os.PathLike[str], dag_id: str) -> dict[str, str | None]:
    """State of each task instance of the latest run of `dag_id`: "task_id", or "task_id[i]" if mapped."""
    query = (
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = "
        "(SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1) ORDER BY task_id, map_index"
    )
    with sqlite3.connect(Path(airflow_home) / "airflow.db") as db:
        rows = db.execute(query, (dag_id, dag_id)).fetchall()
    return {task_id if index < 0 else f"{task_id}[{index}]": state for task_id, index, state in rows}
