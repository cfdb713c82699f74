"""Loopback servers for client tests: real sockets on 127.0.0.1, answers scripted byte for byte.

`HungServer` accepts every connection and never reads or answers; `TrickleServer` holds an answer
open by sending one byte every `pause` seconds, in the status line or in the body; `ScriptedServer`
answers each request from a list, keeping the connection alive.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence

SECRET = "deadline-test-secret-7d1e"
API_KEY = "account-deadline-test"

Reply = Callable[[], bytes]


def _read_request(conn: socket.socket) -> bool:
    """Read one request head (the client sends an empty body); False when the client went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        data += chunk
    return True


class _Server:
    """Accepts connections on 127.0.0.1 and serves each on its own daemon thread until stopped."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="loopback", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._conns)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve_guarded, args=(conn,), daemon=True).start()

    def _serve_guarded(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()


class HungServer(_Server):
    """Accepts every connection, reads nothing and never answers; `accepted` counts the attempts."""

    def serve(self, conn: socket.socket) -> None:
        self.stopping.wait()


class TrickleServer(_Server):
    """Answers every request one byte every `pause` seconds, for ever: `where="head"` trickles the
    status line and an endless header, `where="body"` sends the head at once and trickles the body."""

    def __init__(self, where: str, pause: float = 0.2) -> None:
        self.where = where
        self.pause = pause
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        if not _read_request(conn):
            return
        if self.where == "head":
            data = b"HTTP/1.1 200 OK\r\nX-Slow: "
        else:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            data = b"["
        for byte in data:
            conn.sendall(bytes([byte]))
            if self.stopping.wait(self.pause):
                return
        while not self.stopping.wait(self.pause):
            conn.sendall(b"a" if self.where == "head" else b" ")


def http_answer(status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """One complete HTTP/1.1 answer with a Content-Length."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ScriptedServer(_Server):
    """Answers request n with `replies[n]()` (the last one repeats) on a kept-alive connection."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies)
        self.requests = 0
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        while _read_request(conn):
            with self._lock:
                index = min(self.requests, len(self.replies) - 1)
                self.requests += 1
            conn.sendall(self.replies[index]())
