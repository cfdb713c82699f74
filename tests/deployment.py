"""A real Airflow on 127.0.0.1 for the tests that need one: the pinned version's components as
processes (api-server, scheduler, dag-processor, triggerer; LocalExecutor on SQLite), each in its own
process group, stopped by PID. Log servers are off (`--skip-serve-logs`), since they bind every
interface. SimpleAuthManager holds one admin, `USER` with `PASSWORD`: the browser logs in as a user
would, and the REST API takes the token that login gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from airflow_run import AIRFLOW, airflow_env, migrate

COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


USER, PASSWORD = "desk", "desk-password-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """Start `components` on a private AIRFLOW_HOME; `stop()` ends every process group it started."""

    def __init__(
        self, home: Path, dags: Path, components: Sequence[str], extra: dict[str, str] | None = None
    ):
        self.home = home
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({USER: PASSWORD}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = airflow_env(
            home,
            dags,
            {
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                **(extra or {}),
            },
        )
        migrate(self.env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in components:
                command = [AIRFLOW, *(part.format(port=self.port) for part in COMPONENTS[name])]
                log = (home / f"{name}.log").open("wb")
                self.procs[name] = subprocess.Popen(
                    command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                log.close()
            self.token = self._wait_for_token()
        except BaseException:
            self.stop()
            raise

    def logs(self, name: str, tail: int = 3000) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")[-tail:]

    def _wait_for_token(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.logs(name)}"
            try:
                login = {"username": USER, "password": PASSWORD}
                answer = requests.post(f"{self.url}/auth/token", json=login, timeout=5)
                if answer.status_code in (200, 201):
                    return str(answer.json()["access_token"])
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the api-server did not come up:\n{self.logs('api-server')}")

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/api/v2{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
        )

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the dag-processor has parsed `dag_id` and the API serves it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", f"/dags/{dag_id}").status_code == 200:
                return
            time.sleep(1)
        raise AssertionError(f"{dag_id} never appeared:\n{self.logs('dag-processor')}")

    def wait_for_run(self, dag_id: str, run_type: str | None = None, timeout: float = 180) -> dict[str, Any]:
        """The latest run of `dag_id` (of `run_type`, if given) once it has finished (success or failed)."""
        query = "order_by=-run_after&limit=1" + (f"&run_type={run_type}" if run_type else "")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.request("GET", f"/dags/{dag_id}/dagRuns?{query}").json()
            if runs.get("dag_runs") and runs["dag_runs"][0]["state"] in ("success", "failed"):
                return dict(runs["dag_runs"][0])
            time.sleep(0.5)
        raise AssertionError(f"no finished run of {dag_id}:\n{self.logs('scheduler')}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        found = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        answer = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["value"]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            # Children left in the group (the executor's workers) go with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
