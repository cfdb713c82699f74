"""The audit trail: one JSON line per cancel request the provider sends and its outcome, written the
moment the answer arrives, so the record outlives Airflow's retries (which clear XCom) and a killed task.

No Airflow here: the trail is written below a root path object, a `pathlib.Path` or anything shaped like
one (`airflow.sdk.ObjectStoragePath`, a `upath.UPath`: `/`, `open`, `mkdir`, `iterdir`, `protocol`).

Layout, one day directory per UTC day a task try started in::

    <root>/<YYYY-MM-DD>/<dag_id>/<run_id>/<task_id>[.<map_index>].try<N>.jsonl            local files
    <root>/<YYYY-MM-DD>/<dag_id>/<run_id>/<task_id>[.<map_index>].try<N>/<ms>-<pid>-<seq>.json  objects

On a local file system each try appends to its own file, flushed after every line (a SIGKILL loses
nothing written before it). Object stores (s3://, gs://, ...) cannot append, so each line is an object of
its own there. A line never holds a secret: the connection id and the account nickname, not the key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

__all__ = [
    "APPENDABLE_PROTOCOLS",
    "LOCAL_DEFAULT",
    "OFF",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "AuditTrail",
    "TaskKey",
    "TrailPath",
    "local_default_root",
    "read_trail",
    "trail_root",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""The `v` of every line; a change that renames or drops a field bumps it."""

OFF = "off"
"""The audit_trail value that turns the trail off (it is off when nothing is set, too)."""
LOCAL_DEFAULT = "default"
"""The audit_trail value for the documented local default: `$AIRFLOW_HOME/gemini_audit`."""
LOCAL_DEFAULT_DIR = "gemini_audit"

OUTCOMES = ("cancelled", "already_cancelled", "filled", "not_found", "still_live", "failed")
"""A line's `outcome`: the report's outcomes for an answered cancel, `still_live` (answered, but the
order still rests) and `failed` (with `kind` and `reason`)."""

APPENDABLE_PROTOCOLS = frozenset({"file", "local"})
"""Where a try appends to one file; anywhere else each line is an object of its own."""

_MAX_MESSAGE = 300
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@-]")


@runtime_checkable
class TrailPath(Protocol):
    """The part of a path object the trail uses (pathlib.Path and ObjectStoragePath both have it)."""

    def __truediv__(self, other: str) -> Any: ...

    def open(self, mode: str = ..., *args: Any, **kwargs: Any) -> IO[Any]: ...

    def mkdir(self, *args: Any, **kwargs: Any) -> None: ...

    def iterdir(self) -> Any: ...


def local_default_root() -> Path:
    """`$AIRFLOW_HOME/gemini_audit` (Airflow's own default home, ~/airflow, when the variable is unset)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return Path(home) / LOCAL_DEFAULT_DIR


def trail_root(location: str | os.PathLike[str]) -> Any:
    """A root path object for `location`: "default", a local path or file:// URL (a pathlib.Path), or any
    other URL (a upath.UPath; inside Airflow use ObjectStoragePath instead, which knows connections)."""
    if not isinstance(location, str):
        return location
    if location == LOCAL_DEFAULT:
        return local_default_root()
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if "://" not in location:
        return Path(location)
    from upath import UPath  # universal_pathlib: installed with Airflow; only object stores need it

    return UPath(location)


def _safe(part: object) -> str:
    """A path segment from an id: characters a file system or an object key might mangle become '_'."""
    text = _UNSAFE.sub("_", str(part)) or "_"
    return "_" + text if text.startswith(".") else text


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class TaskKey:
    """Which task try writes: Airflow's ids, or None for each outside Airflow (a script)."""

    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None
    map_index: int | None = None

    def file_stem(self) -> str:
        index = "" if self.map_index is None or self.map_index < 0 else f".{self.map_index}"
        return f"{_safe(self.task_id or 'script')}{index}.try{self.try_number or 0}"


class AuditTrail:
    """Appends one JSON line per answered cancel request below `root`, for one task try.

    The directory is made when the trail is opened (before any request, so a root that cannot be written
    fails the task before it cancels anything). `append` None picks by the root's protocol: a file per try
    on a local file system, an object per line elsewhere. A write that fails is logged and kept in
    `errors`: the cancels go on, and the caller decides what an incomplete record means.
    """

    def __init__(
        self,
        root: Any,
        task: TaskKey,
        *,
        conn_id: str | None = None,
        append: bool | None = None,
        clock: Any = time.time,
    ) -> None:
        self.root = root
        self.task = task
        self.conn_id = conn_id
        self._clock = clock
        self.started = float(clock())
        protocol = str(getattr(root, "protocol", "file") or "file")
        self.append = protocol in APPENDABLE_PROTOCOLS if append is None else append
        day = datetime.fromtimestamp(self.started, UTC).date().isoformat()
        self.directory = root / day / _safe(task.dag_id or "_") / _safe(task.run_id or "_")
        self.errors: list[str] = []
        self.lines = 0
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.append:
            self.path = self.directory / f"{task.file_stem()}.jsonl"
            self._file = self.path.open("a", encoding="utf-8")
        else:
            self.path = self.directory / task.file_stem()

    def __repr__(self) -> str:
        return f"AuditTrail({str(self.path)!r})"

    def record(
        self,
        *,
        endpoint: str,
        order_id: str | int | None,
        outcome: str,
        account: str | None,
        requests: int,
        client_order_id: str | None = None,
        symbol: str | None = None,
        side: str | None = None,
        kind: str | None = None,
        reason: str | None = None,
        message: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Write one line for one answered cancel (or one failed request, `order_id` None); returns it."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
        if message is not None and len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        with self._lock:
            self.lines += 1
            line: dict[str, Any] = {
                "v": SCHEMA_VERSION,
                "time": _iso(float(self._clock())),
                "seq": self.lines,
                "dag_id": self.task.dag_id,
                "task_id": self.task.task_id,
                "run_id": self.task.run_id,
                "map_index": self.task.map_index,
                "try_number": self.task.try_number,
                "conn_id": self.conn_id,
                "account": account,
                "endpoint": endpoint,
                "order_id": None if order_id is None else str(order_id),
                "client_order_id": client_order_id,
                "symbol": symbol,
                "side": side,
                "outcome": outcome,
                "kind": kind,
                "reason": reason,
                "message": message,
                "requests": int(requests),
                **extra,
            }
            self._write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
        return line

    def _write(self, text: str) -> None:
        try:
            if self._file is not None:
                self._file.write(text)
                # To the OS at once: a task SIGKILLed right after this line still leaves it on record.
                self._file.flush()
            else:
                name = f"{int(self._clock() * 1000):013d}-{os.getpid()}-{self.lines:06d}.json"
                with (self.path / name).open("w", encoding="utf-8") as obj:
                    obj.write(text)
        except OSError as error:
            problem = f"could not write to {self.path}: {error}"
            if not self.errors:
                log.error("Gemini audit trail: %s (the cancels go on; the record is incomplete)", problem)
            self.errors.append(problem)

    def close(self) -> None:
        """Close the try's file (object mode holds nothing open)."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading -----------------------------------------------------------------------------------------


def _children(path: Any) -> list[Any]:
    try:
        return list(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_dir(path: Any) -> bool:
    try:
        return bool(path.is_dir())
    except OSError:
        return False


def _lines_of(path: Any) -> Iterator[dict[str, Any]]:
    """The lines of one trail file or one object; a line that does not parse (a torn write) is skipped
    with a warning rather than hiding the rest."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            log.warning("Gemini audit trail: %s line %d is not JSON; skipped", path, number)
            continue
        if isinstance(line, dict):
            yield line


def _files(directory: Any) -> Iterator[Any]:
    """Every trail file (.jsonl) and line object (.json) below `directory`."""
    for child in _children(directory):
        name = str(getattr(child, "name", child))
        if name.endswith((".jsonl", ".json")) and not _is_dir(child):
            yield child
        elif _is_dir(child):
            yield from _files(child)


def read_trail(
    root: Any,
    *,
    day: date | str | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
) -> list[dict[str, Any]]:
    """The trail's lines as plain dicts, oldest first: those of one UTC `day` (by each line's time), of
    one DAG run (`dag_id` and/or `run_id`), or both. `root` as `trail_root` takes it, or a path object."""
    if day is None and dag_id is None and run_id is None:
        raise ValueError("read_trail: give a day, a dag_id or a run_id")
    base = trail_root(root) if isinstance(root, str) else root
    if isinstance(day, str):
        try:
            day = date.fromisoformat(day)
        except ValueError:
            raise ValueError(f"day: expected YYYY-MM-DD, got {day!r}") from None
    if day is not None:
        # A try that started before midnight writes its lines under the day before.
        days = [base / (day - timedelta(days=1)).isoformat(), base / day.isoformat()]
    else:
        days = [child for child in _children(base) if _is_dir(child)]
    found: list[dict[str, Any]] = []
    for day_dir in days:
        dags = [day_dir / _safe(dag_id)] if dag_id is not None else _children(day_dir)
        for dag_dir in dags:
            runs = [dag_dir / _safe(run_id)] if run_id is not None else _children(dag_dir)
            for run_dir in runs:
                for path in _files(run_dir):
                    found.extend(_lines_of(path))
    wanted = day.isoformat() if day is not None else None
    selected = [
        line
        for line in found
        if (wanted is None or str(line.get("time", "")).startswith(wanted))
        and (dag_id is None or line.get("dag_id") == dag_id)
        and (run_id is None or line.get("run_id") == run_id)
        and (task_id is None or line.get("task_id") == task_id)
    ]
    selected.sort(key=lambda line: (str(line.get("time")), line.get("try_number") or 0, line.get("seq") or 0))
    return selected
