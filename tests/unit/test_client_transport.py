"""What the client does with answers the local exchange does not give: a scripted server on loopback.

Each case here is an answer a real network or a real Gemini can produce (a run of nonce collisions, a
body that does not decode), served over real HTTP rather than by patching requests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_gemini.client import NONCE_EXTRA_ATTEMPTS, GeminiClient
from airflow_provider_gemini.exceptions import InvalidNonceError, ServiceError

SECRET = "transport-test-secret-1b9c"
STATUS = {
    "order_id": "9007199254740993",
    "id": "9007199254740993",
    "symbol": "btcusd",
    "side": "buy",
    "type": "exchange limit",
    "price": "100.00",
    "original_amount": "1",
    "executed_amount": "0",
    "remaining_amount": "1",
    "is_live": False,
    "is_cancelled": True,
    "reason": "Requested",
    "timestampms": 1700000000000,
}
INVALID_NONCE = (
    400,
    {"Content-Type": "application/json"},
    b'{"result":"error","reason":"InvalidNonce","message":"Nonce has not increased"}',
)
OK = (200, {"Content-Type": "application/json"}, json.dumps(STATUS).encode())
BAD_GZIP = (200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip at all")

Answer = tuple[int, dict[str, str], bytes]


class ScriptedServer(ThreadingHTTPServer):
    """Answers POSTs from a script, one entry per request; the last entry repeats."""

    daemon_threads = True

    def __init__(self, script: list[Answer]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def do_POST(self) -> None:
        index = min(self.server.requests, len(self.server.script) - 1)
        self.server.requests += 1
        status, headers, body = self.server.script[index]
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[list[Answer]], ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(script: list[Answer]) -> ScriptedServer:
        server = ScriptedServer(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def client_for(server: ScriptedServer, max_attempts: int, slept: list[float] | None = None) -> GeminiClient:
    """A client whose retry waits are not slept (InvalidNonce backs off to 2 s), but kept in `slept`."""
    return GeminiClient(
        "account-transport-test",
        SECRET,
        base_url=server.url,
        rate_limit_per_minute=None,
        max_attempts=max_attempts,
        sleep=(slept if slept is not None else []).append,
    )


def test_a_run_of_nonce_collisions_longer_than_max_attempts_still_gets_through(
    serve: Callable[[list[Answer]], ScriptedServer],
) -> None:
    server = serve([INVALID_NONCE] * 7 + [OK])
    slept: list[float] = []
    with client_for(server, max_attempts=3, slept=slept) as client:
        order = client.cancel_order(9007199254740993)
    assert order.is_cancelled and server.requests == 8
    assert client.stats.retries_by_kind == {"invalid_nonce": 7}
    # Each wait is random within a ceiling that doubles from 0.1 s to 2 s: a burst of nonces another
    # host signed seconds ahead is waited out within the extra attempts.
    assert len(slept) == 7
    assert all(0.01 <= wait <= min(2.0, 0.1 * 2**n) for n, wait in enumerate(slept))


def test_nonce_collisions_stop_after_the_extra_attempts(
    serve: Callable[[list[Answer]], ScriptedServer],
) -> None:
    server = serve([INVALID_NONCE])
    with client_for(server, max_attempts=2) as client, pytest.raises(InvalidNonceError):
        client.cancel_order(9007199254740993)
    assert server.requests == 2 + NONCE_EXTRA_ATTEMPTS


def test_an_undecodable_body_is_a_service_error_without_the_request_attached(
    serve: Callable[[list[Answer]], ScriptedServer],
) -> None:
    server = serve([BAD_GZIP])
    with client_for(server, max_attempts=2) as client, pytest.raises(ServiceError) as caught:
        client.cancel_order(9007199254740993)
    error = caught.value
    assert error.status is None and error.reason == "ConnectionError" and server.requests == 2
    # The requests exception carries the signed headers: it must not travel with the error.
    assert error.__cause__ is None and error.__context__ is None
    assert SECRET not in repr(error.__dict__)


def test_a_refused_connection_error_carries_no_request(unused_port: int) -> None:
    client = GeminiClient(
        "account-transport-test",
        SECRET,
        base_url=f"http://127.0.0.1:{unused_port}",
        rate_limit_per_minute=None,
        max_attempts=1,
    )
    with client, pytest.raises(ServiceError) as caught:
        client.cancel_order(1)
    assert caught.value.reason == "ConnectionError"
    assert caught.value.__cause__ is None and caught.value.__context__ is None


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
