"""The HTTP side: a threading server that can close every connection it holds, and a request
handler with a lean HTTP/1.x parser that writes each answer as the exchange built it, dated by the
exchange's clock."""

from __future__ import annotations

import contextlib
import http
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

from .clock import Clock
from .records import Answer, Request, Trickle


class Backend(Protocol):
    """What answers the requests: the exchange's dispatcher."""

    def post(self, request: Request) -> Answer: ...

    def get(self, path: str, query: str) -> Answer: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], backend: Backend, clock: Clock) -> None:
        self.backend = backend
        self.clock = clock
        self.closing = threading.Event()  # set by close_connections: a trickling answer stops
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet for connections the client (or stop()) closed; a traceback for anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Wake keep-alive handler threads blocked on reads so stop() leaves nothing behind."""
        self.closing.set()
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GeminiLocalExchange"
    sys_version = ""
    fields: dict[str, str] = {}  # noqa: RUF012 - replaced per request by parse_request
    raw_requestline: bytes

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._srv.track(self.connection, True)

    def finish(self) -> None:
        self._srv.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    @property
    def _srv(self) -> Server:
        return cast(Server, self.server)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` of the answers send_error writes (a bad request line, too many headers)."""
        return self._srv.clock.http_date() if timestamp is None else super().date_time_string(timestamp)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a log line per request would slow the benchmarks and could leak headers."""

    def parse_request(self) -> bool:
        """A lean HTTP/1.x parser: headers into a plain dict (the email parser is most of the cost)."""
        self.command, self.request_version = "", "HTTP/1.1"
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.close_connection = True
            self.send_error(400, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        fields: dict[str, str] = {}
        for _ in range(100):
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("iso-8859-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        else:
            self.close_connection = True
            self.send_error(431, "Too many headers")
            return False
        self.fields = fields
        connection = fields.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive"
        )
        return True

    MAX_BODY_BYTES = 64 * 1024

    def _body(self) -> bytes:
        length = self.fields.get("content-length", "")
        if length.isdigit() and int(length) > 0:
            # Read what was sent (so keep-alive stays in step), keep at most MAX_BODY_BYTES of it.
            data = self.rfile.read(int(length))
            return data[: self.MAX_BODY_BYTES]
        return b""

    def do_POST(self) -> None:
        body = self._body()
        fields = self.fields
        request = Request(
            path=self.path.split("?", 1)[0],
            api_key=fields.get("x-gemini-apikey"),
            payload=fields.get("x-gemini-payload"),
            signature=fields.get("x-gemini-signature"),
            authorization=fields.get("authorization"),
            body=body,
            content_type=fields.get("content-type"),
        )
        self._send(self._srv.backend.post(request))

    def do_GET(self) -> None:
        self._body()
        path, _, query = self.path.partition("?")
        self._send(self._srv.backend.get(path, query))

    def _send(self, answer: Answer) -> None:
        if answer.drop:
            self.close_connection = True
            return
        lines = [
            f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}",
            f"Date: {self._srv.clock.http_date()}",
        ]
        if answer.content_type:
            lines.append(f"Content-Type: {answer.content_type}")
        lines.append(f"Content-Length: {len(answer.body)}")
        lines.extend(f"{name}: {value}" for name, value in answer.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if answer.trickle is None:
            self.wfile.write(head + answer.body)
        else:
            self._trickle(head + answer.body, answer.trickle)

    def _trickle(self, data: bytes, trickle: Trickle) -> None:
        step = trickle.chunk_bytes
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        pause = trickle.seconds / max(1, len(chunks) - 1)
        for i, chunk in enumerate(chunks):
            if i and self._srv.closing.wait(pause):
                self.close_connection = True
                return
            self.wfile.write(chunk)
