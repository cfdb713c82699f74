"""A small Airflow cluster on 127.0.0.1 for the cluster tier: PostgreSQL and Redis started by hand in
temp dirs, Airflow's api-server, scheduler and dag-processor on them with the CeleryExecutor, and
Celery workers that each stand for a host of their own.

- PostgreSQL (Debian's, any major version under /usr/lib/postgresql) refuses to run as root, so initdb
  and postgres run as the `postgres` user the package creates (`runuser -u postgres --`), in a temp
  dir that user owns (pytest's temp dirs are private to root), on 127.0.0.1 and a free port, with its
  unix socket in that dir. Trust authentication: nothing but loopback reaches it.
- Redis: no persistence, `--bind 127.0.0.1`, in the foreground, stopped by PID.
- A worker's "host" is what the provider shares host-wide: its own TMPDIR and its own
  GEMINI_PROVIDER_STATE_DIR (the per-key nonce and rate-bucket files), its own task log folder, and
  its own name (`--celery-hostname`, and `[core] hostname_callable` so task instances record it).
  Its log server stays off (`--skip-serve-logs`): Airflow's binds every interface.
- Every process runs in a session of its own. Airflow's task supervisor puts each task process in a
  process group of its own, so a worker is ended by its whole session (every process whose session id
  is the worker's PID), as a host that dies takes its task processes with it.

Nothing here uses a system service; `stop()` ends every process it started and removes the
PostgreSQL dir.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_run import AIRFLOW
from deployment import Deployment, free_port
from redis_server import RedisServer

TESTS = Path(__file__).resolve().parent
CLOCK_DIR = TESTS / "fake_clock"
PG_USER = "airflow"
PG_DB = "airflow"
FAKETIME_LIBS = "/usr/lib/*/faketime/libfaketime.so.1"
# Mapped task instances that stopped heartbeating (their worker died) are failed, and retried, after
# this many seconds; Airflow's default is 300.
HEARTBEAT_TIMEOUT = 20


def clock_offset_env(seconds: float) -> tuple[dict[str, str], str]:
    """Environment that runs a worker's processes with a wall clock `seconds` off (monotonic clocks
    stay real: only a host's time of day is wrong), and which way: libfaketime when it works for
    Python here, else tests/fake_clock/sitecustomize.py (Debian 12's libfaketime 0.9.10 breaks
    Python 3.11's sleeps and timed waits; see that file)."""
    for lib in sorted(glob.glob(FAKETIME_LIBS)):
        env = {"LD_PRELOAD": lib, "FAKETIME": f"{seconds:+g}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        if abs(measure_clock_offset(env) - seconds) < 0.5:
            return env, "libfaketime"
    return {"FAKE_CLOCK_OFFSET_S": str(seconds)}, "sitecustomize"


CLOCK_PROBE = "import threading, time; time.sleep(0.01); threading.Event().wait(0.01); print(time.time())"


def measure_clock_offset(env: Mapping[str, str], timeout: float = 5.0) -> float:
    """How far ahead a Python started with `env` (on top of this environment) sees the wall clock;
    NaN when it cannot even sleep and wait with that environment."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", CLOCK_PROBE],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return float(probe.stdout.strip()) - time.time() if probe.returncode == 0 else math.nan
    except (subprocess.TimeoutExpired, ValueError):
        return math.nan


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = text[text.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def kill_session(sid: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> list[int]:
    """Send `sig` to every process of session `sid` (a process we started with start_new_session)
    until none is left; returns the PIDs signalled first."""
    first = session_pids(sid)
    deadline = time.monotonic() + timeout
    while True:
        left = session_pids(sid)
        if not left:
            return first
        if time.monotonic() > deadline:
            raise AssertionError(f"session {sid} still has processes {left} after signal {sig}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.1)


def _reap(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


class Postgres:
    """PostgreSQL in a temp dir owned by the `postgres` user, on 127.0.0.1:`port`; database `airflow`."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
        if not binaries:
            raise RuntimeError("PostgreSQL is missing: run `sh scripts/install-system-packages.sh` as root")
        bindir = Path(binaries[-1]).parent
        owner = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="gemini-cluster-pg-"))
        os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{PG_DB}"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        as_postgres = ["runuser", "-u", "postgres", "--"]
        initdb = subprocess.run(
            [
                *as_postgres,
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if initdb.returncode != 0:
            self.stop()
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *as_postgres,
                str(bindir / "postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                # A test database: speed over durability, and room for every component's pool.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self._create_database()
        except BaseException:
            self.stop()
            raise

    def _create_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 60
        while True:
            assert self.proc is not None and self.proc.poll() is None, f"postgres exited:\n{self.logs()}"
            try:
                db = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"postgres did not come up:\n{self.logs()}") from None
                time.sleep(0.2)
        try:
            db.autocommit = True
            with db.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {PG_DB}")
        finally:
            db.close()

    def logs(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # postmaster.pid's first line is the postmaster's PID: SIGINT is its fast shutdown.
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
            _reap(self.proc, 30)
        if self.proc is not None:
            kill_session(self.proc.pid)
            _reap(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parts[-3]
    return tuple(int(p) for p in part.split(".") if p.isdigit())


class Worker:
    """One `airflow celery worker`, standing for host `name`: its own temp, state and log dirs."""

    def __init__(self, name: str, root: Path, env: Mapping[str, str], concurrency: int) -> None:
        self.name = name
        self.root = root
        self.tmp = root / "tmp"
        self.state = root / "state"
        self.task_logs = root / "logs"
        for path in (self.tmp, self.state, self.task_logs):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.env = {
            **env,
            "TMPDIR": str(self.tmp),
            "GEMINI_PROVIDER_STATE_DIR": str(self.state),
            "GEMINI_CLUSTER_HOST": name,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.task_logs),
        }
        self.clock = "host"  # or how its clock is skewed: "libfaketime", "sitecustomize"
        self.log_path = root / "worker.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                AIRFLOW,
                "celery",
                "worker",
                "--celery-hostname",
                name,
                "--concurrency",
                str(concurrency),
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def logs(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker {self.name} exited:\n{self.logs()}"
            if f"{self.name} ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise AssertionError(f"worker {self.name} never got ready:\n{self.logs()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL every process of the worker's session at once, as a host that dies."""
        pids = kill_session(self.proc.pid, signal.SIGKILL)
        _reap(self.proc)
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Celery's warm shutdown waits for running tasks; the test is done with them.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGQUIT)
            _reap(self.proc, 15)
        kill_session(self.proc.pid)
        _reap(self.proc)


class Cluster:
    """PostgreSQL, Redis, and Airflow (api-server, scheduler, dag-processor) with the CeleryExecutor;
    workers are started with `start_worker`. `extra` is environment for every Airflow process (the
    connection, for instance)."""

    def __init__(self, root: Path, dags: Path, extra: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.workers: dict[str, Worker] = {}
        # Environment for the workers alone, set before start_worker (what needs the Redis URL, say).
        self.worker_extra: dict[str, str] = {}
        self.postgres: Postgres | None = None
        self.redis: RedisServer | None = None
        self.airflow: Deployment | None = None
        try:
            self.postgres = Postgres()
            self.redis = RedisServer(root / "redis").start()
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3: name the driver.
            result_backend = f"db+postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.postgres.port}/{PG_DB}"
            env = {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__PARALLELISM": "16",
                "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
                # One task at a time per free pool process: the 8 tasks spread over both workers.
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "2",
                # Every process signs and checks the execution API's tokens with one secret.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                # Never bound (--skip-serve-logs), but never the shared default port either.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cluster_host.hostname",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
                **(extra or {}),
            }
            home = root / "airflow_home"
            home.mkdir(parents=True, exist_ok=True)
            self.airflow = Deployment(home, dags, ["api-server", "scheduler", "dag-processor"], env)
        except BaseException:
            self.stop()
            raise

    @property
    def api(self) -> Deployment:
        assert self.airflow is not None
        return self.airflow

    def start_worker(
        self, name: str, clock_offset: float = 0.0, concurrency: int = 4, wait: bool = True
    ) -> Worker:
        """Start (or restart) host `name`'s worker, its wall clock `clock_offset` seconds ahead."""
        old = self.workers.pop(name, None)
        if old is not None:
            old.stop()
        env = {**self.api.env, **self.worker_extra}
        clock = "host"
        if clock_offset:
            skew, clock = clock_offset_env(clock_offset)
            env.update(skew)
            if clock == "sitecustomize":
                env["PYTHONPATH"] = os.pathsep.join([str(CLOCK_DIR), env["PYTHONPATH"]])
        worker = Worker(name, self.root / "hosts" / name, env, concurrency)
        worker.clock = clock
        self.workers[name] = worker
        if wait:
            worker.wait_ready()
        return worker

    def logs(self) -> str:
        """Every component's log tail, for a failure message."""
        parts = []
        if self.airflow is not None:
            parts += [f"--- {name} ---\n{self.airflow.logs(name)}" for name in self.airflow.procs]
        parts += [f"--- worker {w.name} ---\n{w.logs()}" for w in self.workers.values()]
        if self.postgres is not None:
            parts.append(f"--- postgres ---\n{self.postgres.logs()}")
        return "\n".join(parts)

    # ---- DAG runs through the REST API ----------------------------------------------------------------

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        answer = self.api.request(
            "POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)}
        )
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        answer = self.api.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.run(dag_id, run_id)
            if found["state"] in ("success", "failed"):
                return found
            time.sleep(1)
        raise AssertionError(f"run {run_id} of {dag_id} did not finish:\n{self.logs()}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.api.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["task_instances"])

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
        """Every try of one task instance (the current one included), oldest first."""
        answer = self.api.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        )
        assert answer.status_code == 200, answer.text
        return sorted(answer.json()["task_instances"], key=lambda ti: ti["try_number"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
        answer = self.api.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
            f"?map_index={map_index}",
        )
        return answer.json().get("value") if answer.status_code == 200 else None

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if self.airflow is not None:
            self.airflow.stop()
            for proc in self.airflow.procs.values():
                kill_session(proc.pid)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
