"""Every call ends within its deadlines: per attempt for the whole answer, per call across retries.

The servers are real sockets on loopback that trickle a byte every 0.2 s, so requests' per-read
timeout never fires. No assertion is made on elapsed time (the suite forbids it): each call runs in
a thread joined with a generous guard, and the test asserts that it ended and how.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from loopback_servers import API_KEY, SECRET, ScriptedServer, TrickleServer, http_answer

from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.exceptions import GeminiError, RateLimitedError, ServiceError

ORDER_ID = 9007199254740993
STATUS = {"order_id": str(ORDER_ID), "id": str(ORDER_ID), "is_cancelled": True, "reason": "Requested"}


@pytest.fixture(params=["head", "body"])
def trickle(request: pytest.FixtureRequest) -> Iterator[TrickleServer]:
    server = TrickleServer(request.param)
    yield server
    server.stop()


def client_for(url: str, **options: Any) -> GeminiClient:
    return GeminiClient(API_KEY, SECRET, base_url=url, rate_limit_per_minute=None, **options)


def call_in_thread(call: Callable[[], Any], guard: float) -> tuple[BaseException | None, float]:
    """Run `call` on a thread; assert it ended within `guard` seconds; its error and seconds taken."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"the call was still waiting after {guard:g} s"
    return outcome[0], time.monotonic() - started


def test_a_trickled_answer_fails_at_the_attempt_deadline(trickle: TrickleServer) -> None:
    client = client_for(trickle.url, timeout=1, max_attempts=1)
    error, seconds = call_in_thread(lambda: client.cancel_order(ORDER_ID), guard=10)
    print(f"trickle in the {trickle.where}: timed out after {seconds:.2f} s")
    assert isinstance(error, ServiceError)
    assert (error.reason, error.status, error.retryable) == ("Timeout", None, True)
    assert str(error).endswith("/v1/order/cancel: no answer within 1 s")
    assert error.__cause__ is None and error.__context__ is None
    assert SECRET not in repr(error.__dict__) and API_KEY not in str(error)
    assert trickle.accepted == 1 and client.stats.requests == 1


def test_the_call_deadline_ends_retries_before_max_attempts(trickle: TrickleServer) -> None:
    client = client_for(trickle.url, timeout=1, call_timeout=3, max_attempts=5)
    error, seconds = call_in_thread(lambda: client.cancel_order(ORDER_ID), guard=15)
    print(f"trickle in the {trickle.where}: call ended after {seconds:.2f} s, {trickle.accepted} attempts")
    assert isinstance(error, ServiceError)
    assert error.reason in ("Timeout", "Deadline") and error.status is None and error.retryable
    # Each attempt takes its whole second: 5 of them (and the waits between) cannot fit in 3 s.
    assert 2 <= trickle.accepted < 5
    assert client.stats.requests == trickle.accepted
    if error.reason == "Deadline":
        assert str(error).endswith("/v1/order/cancel: no answer within the call deadline of 3 s")


def test_a_call_timeout_shorter_than_timeout_bounds_the_attempt(trickle: TrickleServer) -> None:
    client = client_for(trickle.url, timeout=30, call_timeout=1, max_attempts=5)
    error, _ = call_in_thread(lambda: client.heartbeat(), guard=10)
    assert isinstance(error, ServiceError) and error.reason == "Deadline"
    assert str(error).endswith("/v1/heartbeat: no answer within the call deadline of 1 s")
    assert trickle.accepted == 1


def test_a_retry_wait_never_sleeps_past_the_call_deadline() -> None:
    """Retry-After 5 with 2 s left: the 429 is raised at once rather than slept on (Airflow retries)."""
    body = b'{"result":"error","reason":"RateLimit","message":"slow down"}'
    server = ScriptedServer([lambda: http_answer(429, body, [("Retry-After", "5")])])
    slept: list[float] = []
    try:
        client = client_for(server.url, call_timeout=2, max_attempts=5, sleep=slept.append)
        with pytest.raises(RateLimitedError) as caught:
            client.heartbeat()
    finally:
        server.stop()
    assert caught.value.retry_after == 5 and slept == [] and server.requests == 1


def test_waits_that_fit_are_taken_on_the_injected_clock() -> None:
    """The call deadline runs on the client's clock: Retry-After 1 (plus at most 0.1 s of jitter)
    fits four times in 4.5 virtual seconds, so the fifth attempt is the last."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    body = b'{"result":"error","reason":"Maintenance"}'
    server = ScriptedServer([lambda: http_answer(503, body, [("Retry-After", "1")])])
    try:
        client = client_for(server.url, call_timeout=4.5, max_attempts=50, sleep=sleep, clock=lambda: now[0])
        with pytest.raises(ServiceError) as caught:
            client.heartbeat()
    finally:
        server.stop()
    assert caught.value.status == 503 and server.requests == 5
    assert 1004.0 <= now[0] < 1004.5


def test_answers_within_the_deadline_reuse_one_connection() -> None:
    """Streaming the body returns the connection to the pool, and a finished attempt's deadline
    passing later does not cut the connection the next call uses."""
    server = ScriptedServer([lambda: http_answer(200, json.dumps(STATUS).encode())])
    try:
        with client_for(server.url, timeout=0.3) as client:
            assert client.cancel_order(ORDER_ID).is_cancelled
            time.sleep(0.6)
            assert client.cancel_order(ORDER_ID).is_cancelled
    finally:
        server.stop()
    assert server.requests == 2 and server.accepted == 1


def test_many_threads_each_get_their_own_deadline() -> None:
    """Attempts on other threads finish while one hangs: the watchdog cuts only the late one."""
    fast = ScriptedServer([lambda: http_answer(200, b'{"result":"ok"}')])
    slow = TrickleServer("body")
    try:
        slow_client = client_for(slow.url, timeout=1, max_attempts=1)
        fast_client = client_for(fast.url, timeout=1, max_attempts=1)
        slow_errors: list[BaseException] = []

        def hang() -> None:
            try:
                slow_client.heartbeat()
            except GeminiError as err:
                slow_errors.append(err)

        hung = threading.Thread(target=hang, daemon=True)
        hung.start()
        results = [fast_client.heartbeat() for _ in range(20)]
        hung.join(10)
        assert not hung.is_alive()
        assert len(slow_errors) == 1 and "no answer within 1 s" in str(slow_errors[0])
    finally:
        fast.stop()
        slow.stop()
    assert results == [{"result": "ok"}] * 20 and fast.accepted == 1


def test_call_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="call_timeout"):
        GeminiClient(API_KEY, SECRET, call_timeout=0)
