"""Per-user private state files: small host-wide records (the counter nonce of a key) that every
process of one user shares through flock, kept where other users cannot read, plant or redirect them.

The directory is `<temp dir>/airflow-provider-gemini-<euid>` unless GEMINI_PROVIDER_STATE_DIR names
another. It must be a real directory (not a symlink) owned by the effective user with no group or
other permissions; each file in it must be a regular file with one link, owned by the user, mode 0600
or stricter. Anything else raises StateFileError naming the path, the problem and the fix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

STATE_DIR_ENV = "GEMINI_PROVIDER_STATE_DIR"
STATE_LIMIT_BYTES = 256
"""The most of a state file an update reads: a few numbers on one line."""

T = TypeVar("T")

_FIX_DIR = f"or set {STATE_DIR_ENV} to a private directory of your own"


class StateFileError(OSError):
    """A state directory or file that cannot be trusted or used. An OSError, not a ValueError: the
    setup of this host is at fault, so the same task may well succeed on another host or retry."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"airflow-provider-gemini state {self.path}: {problem}")


def default_state_dir() -> Path:
    """The state directory for this user, from GEMINI_PROVIDER_STATE_DIR or the temp dir (no I/O)."""
    configured = os.environ.get(STATE_DIR_ENV, "")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"airflow-provider-gemini-{os.geteuid()}"


def _open_dir(path: Path) -> int:
    """Create `path` 0700 if missing, open it without following a symlink and check who owns it."""
    if not path.is_absolute():
        # A relative directory would differ between processes started in different places, and
        # processes that should share one nonce sequence would silently each get their own.
        raise StateFileError(path, f"is not an absolute path; set {STATE_DIR_ENV} to an absolute path")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise StateFileError(path, f"its parent directory does not exist; create it, {_FIX_DIR}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise _refusal(path, error, "directory") from None
    try:
        _check_owner_and_mode(fd, path, "directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(path: Path, error: OSError, kind: str) -> StateFileError:
    """The StateFileError for an open that failed: say what is at `path` and what to do about it."""
    if path.is_symlink():
        # ELOOP (EMLINK on the BSDs): writing through a link would change a file someone else chose.
        return StateFileError(path, f"is a symlink, not a {kind}; remove it (rm {path}), {_FIX_DIR}")
    if error.errno == errno.ENOTDIR or (kind == "file" and error.errno == errno.EISDIR):
        return StateFileError(path, f"is not a {kind}; remove it, {_FIX_DIR}")
    if isinstance(error, PermissionError):
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            owner = os.geteuid()
        if owner != os.geteuid():
            return _not_yours(path, owner)
        return StateFileError(
            path, f"cannot be opened by this user (uid {os.geteuid()}): {error.strerror}; {_FIX_DIR}"
        )
    return StateFileError(path, f"cannot be opened: {error.strerror}; {_FIX_DIR}")


def _not_yours(path: Path, owner: int) -> StateFileError:
    return StateFileError(
        path,
        f"is owned by uid {owner}, not by this user (uid {os.geteuid()}); another user may have "
        f"created it. Remove it, {_FIX_DIR}",
    )


def _check_owner_and_mode(fd: int, path: Path, kind: str) -> None:
    """Refuse an open directory or file that another user owns or that group or others may use."""
    info = os.fstat(fd)
    if kind == "directory" and not stat.S_ISDIR(info.st_mode):
        raise StateFileError(path, f"is not a directory; remove it, {_FIX_DIR}")
    if kind == "file" and not stat.S_ISREG(info.st_mode):
        raise StateFileError(path, f"is not a regular file; remove it, {_FIX_DIR}")
    if info.st_uid != os.geteuid():
        raise _not_yours(path, info.st_uid)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        wanted = "700" if kind == "directory" else "600"
        raise StateFileError(
            path, f"has mode {mode:04o}, open to group or others; run chmod {wanted} {path}, or remove it"
        )
    if kind == "file" and info.st_nlink != 1:
        # A hard link would make every write land in another file as well.
        raise StateFileError(path, f"has {info.st_nlink} hard links; remove it and let it be created anew")


def state_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The checked state directory (`directory` or default_state_dir()), created 0700 if missing."""
    path = Path(directory) if directory is not None else default_state_dir()
    os.close(_open_dir(path))
    return path


def open_state_file(name: str, directory: str | os.PathLike[str] | None = None) -> int:
    """Open (create 0600) the state file `name` in the checked state directory, and return the fd of
    a regular file owned by this user. The directory is held open meanwhile, so it cannot be swapped."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"name: expected a plain file name, got {name!r}")
    base = Path(directory) if directory is not None else default_state_dir()
    path = base / name
    dir_fd = _open_dir(base)
    try:
        # O_NONBLOCK and O_NOCTTY: a FIFO or a terminal planted here must not hang or take over
        # this process before fstat refuses it; they change nothing for a regular file.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as error:
            raise _refusal(path, error, "file") from None
    finally:
        os.close(dir_fd)
    try:
        _check_owner_and_mode(fd, path, "file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def locked_update(fd: int, update: Callable[[bytes], tuple[bytes, T]], limit: int = STATE_LIMIT_BYTES) -> T:
    """Read the file's first `limit` bytes under an exclusive flock, write back the bytes `update`
    returns, and return its result: one read/modify/write that no other process can interleave."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        current = os.pread(fd, limit, 0)
        new, result = update(current)
        os.pwrite(fd, new, 0)
        # A full read means the file may hold more than was read: cut it to what was written.
        if len(new) < len(current) or len(current) == limit:
            os.ftruncate(fd, len(new))
        return result
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


_open_files: weakref.WeakSet[StateFile] = weakref.WeakSet()


class StateFile:
    """One state file, opened on first use and kept open so an update costs a few syscalls.

    Safe across threads (a lock) and across fork: flock belongs to the open file description, which
    a forked child shares with its parent, so a child opens its own or both would hold the lock.
    """

    def __init__(self, name: str, directory: str | os.PathLike[str] | None = None) -> None:
        # The directory is fixed here, so a later change of the environment cannot split one
        # source's sequence over two files.
        self.directory = Path(directory) if directory is not None else default_state_dir()
        self.path = self.directory / name
        self.name = name
        self._lock = threading.Lock()
        self._fd = -1
        _open_files.add(self)

    def update(self, update: Callable[[bytes], tuple[bytes, T]], limit: int = STATE_LIMIT_BYTES) -> T:
        """locked_update() on this file, opening (and checking) it first if needed."""
        with self._lock:
            if self._fd < 0:
                self._fd = open_state_file(self.name, self.directory)
            return locked_update(self._fd, update, limit)

    def close(self) -> None:
        """Close the file; the next update opens and checks it again."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _after_fork(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


def _reset_after_fork() -> None:
    for state_file in list(_open_files):
        state_file._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
