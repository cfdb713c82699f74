"""GeminiClient over real HTTP against the local exchange: retries, nonces, exact ids, many processes."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.exceptions import (
    InvalidSignatureError,
    MissingRoleError,
    NotFoundError,
    OrderNotFoundError,
    RateLimitedError,
    ServiceError,
)
from airflow_provider_gemini.testing.exchange import GeminiExchange

CANCEL = "/v1/order/cancel"
WIDE_ID = 9007199254740993  # 2**53 + 1: a float would send ...992

MakeExchange = Callable[..., GeminiExchange]


@pytest.fixture
def fast_backoff() -> Callable[[float], None]:
    """A client `sleep` that shrinks the backoff, for tests that are about what is retried, not how long
    it waits."""

    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, 0.02))

    return sleep


@pytest.fixture
def key() -> tuple[str, str]:
    """A key of its own per test, so its nonce lock file and rate limiter start fresh."""
    return f"account-http-{uuid.uuid4().hex[:12]}", f"secret-{uuid.uuid4().hex}"


@pytest.fixture
def exchange(gemini_exchange_factory: MakeExchange, key: tuple[str, str]) -> GeminiExchange:
    return gemini_exchange_factory(api_key=key[0], api_secret=key[1], rate_limit_per_minute=None)


@pytest.fixture
def make_client(exchange: GeminiExchange, key: tuple[str, str]) -> Iterator[Callable[..., GeminiClient]]:
    made: list[GeminiClient] = []

    def make(**kwargs: Any) -> GeminiClient:
        options: dict[str, Any] = {"base_url": exchange.url, "rate_limit_per_minute": None, **kwargs}
        api_key = options.pop("api_key", key[0])
        api_secret = options.pop("api_secret", key[1])
        client = GeminiClient(api_key, api_secret, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def statuses(exchange: GeminiExchange, path: str = CANCEL) -> list[int]:
    return [entry.status for entry in exchange.journal if entry.path == path]


def test_cancel_sends_the_wide_order_id_exactly(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    placed = exchange.place_order(exchange.api_key)
    assert placed["order_id"] == str(WIDE_ID)
    cancelled = make_client().cancel_order(str(WIDE_ID))
    assert cancelled.order_id == str(WIDE_ID) and cancelled.is_cancelled and cancelled.reason == "Requested"
    (entry,) = exchange.journal
    assert type(entry.payload["order_id"]) is int and entry.payload["order_id"] == WIDE_ID
    assert exchange.order(WIDE_ID)["is_cancelled"] is True


def test_retry_after_429_waits_what_the_server_asked(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.place_order(exchange.api_key)
    exchange.inject_fault("rate_limit", CANCEL, retry_after=1)
    client = make_client()
    assert client.cancel_order(WIDE_ID).is_cancelled
    first, second = (entry for entry in exchange.journal if entry.path == CANCEL)
    assert (first.status, first.fault, second.status) == (429, "rate_limit", 200)
    assert second.time - first.time >= 1.0
    assert client.stats.as_dict() == {"requests": 2, "retries": 1, "retries_by_kind": {"rate_limited": 1}}


def test_429_without_retry_after_backs_off_and_succeeds(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.inject_fault("rate_limit", "/v1/heartbeat", count=2)
    assert make_client(sleep=fast_backoff).heartbeat() == {"result": "ok"}
    assert statuses(exchange, "/v1/heartbeat") == [429, 429, 200]


def test_a_rate_limit_is_retried_past_max_attempts_until_the_call_deadline(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    """Eight 429s in a row with max_attempts=5: a rate limit clears by itself, so the call waits it
    out (within call_timeout) instead of failing the cancel."""
    exchange.place_order(exchange.api_key)
    exchange.inject_fault("rate_limit", CANCEL, count=8, retry_after=0.1)
    client = make_client(max_attempts=5, call_timeout=30)
    assert client.cancel_order(WIDE_ID).is_cancelled
    assert statuses(exchange, CANCEL) == [429] * 8 + [200]
    assert client.stats.retries_by_kind == {"rate_limited": 8}


def test_a_rate_limit_still_ends_at_the_call_deadline(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.place_order(exchange.api_key)
    exchange.inject_fault("rate_limit", CANCEL, count=1000, retry_after=0.5)
    client = make_client(call_timeout=2)
    with pytest.raises(RateLimitedError):
        client.cancel_order(WIDE_ID)
    assert 2 <= exchange.count(CANCEL) <= 5


def test_retry_after_beyond_a_minute_is_not_slept_on(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.inject_fault("rate_limit", "/v1/roles", retry_after=600)
    with pytest.raises(RateLimitedError) as caught:
        make_client().roles()
    assert caught.value.retry_after == 600 and caught.value.retryable
    assert statuses(exchange, "/v1/roles") == [429]


def test_503_twice_then_success_returns_the_result(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.place_order(exchange.api_key)
    exchange.inject_fault("maintenance", CANCEL, count=2)
    client = make_client()
    assert client.cancel_order(WIDE_ID).order_id == str(WIDE_ID)
    assert statuses(exchange) == [503, 503, 200]
    assert client.stats.as_dict() == {"requests": 3, "retries": 2, "retries_by_kind": {"service_error": 2}}


def test_invalid_signature_is_sent_once_and_raised(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.place_order(exchange.api_key)
    client = make_client(api_secret="the-wrong-secret")
    with pytest.raises(InvalidSignatureError) as caught:
        client.cancel_order(WIDE_ID)
    assert (caught.value.kind, caught.value.status, caught.value.reason) == (
        "invalid_signature",
        400,
        "InvalidSignature",
    )
    assert not caught.value.retryable
    assert statuses(exchange) == [400]
    assert client.stats.requests == 1 and client.stats.retries == 0
    assert exchange.order(WIDE_ID)["is_live"] is True


def test_every_attempt_carries_a_new_larger_nonce(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.place_order(exchange.api_key)
    for kind in ("maintenance", "drop", "server_error_text", "rate_limit"):
        exchange.inject_fault(kind, CANCEL)
    assert make_client(sleep=fast_backoff).cancel_order(WIDE_ID).is_cancelled
    entries = [entry for entry in exchange.journal if entry.path == CANCEL]
    assert [entry.fault for entry in entries] == [
        "maintenance",
        "drop",
        "server_error_text",
        "rate_limit",
        None,
    ]
    nonces = [entry.payload["nonce"] for entry in entries]
    assert all(type(nonce) is int for nonce in nonces)
    assert all(later > earlier for earlier, later in itertools.pairwise(nonces))


def test_retries_stop_after_max_attempts_with_the_last_error(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.set_maintenance(True)
    client = make_client(sleep=fast_backoff, max_attempts=3)
    with pytest.raises(ServiceError) as caught:
        client.roles()
    assert (caught.value.status, caught.value.reason) == (503, "Maintenance")
    assert statuses(exchange, "/v1/roles") == [503, 503, 503]
    assert client.stats.as_dict() == {"requests": 3, "retries": 2, "retries_by_kind": {"service_error": 2}}


def test_a_dropped_connection_is_retried_then_raised_as_a_transport_failure(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.inject_fault("drop", "/v1/heartbeat", count=2)
    with pytest.raises(ServiceError) as caught:
        make_client(sleep=fast_backoff, max_attempts=2).heartbeat()
    error = caught.value
    assert (error.status, error.reason, error.retryable) == (None, "ConnectionError", True)
    # The requests exception names its type in the message but is not chained: it holds the signed headers.
    assert "(ConnectionError)" in error.message and error.__cause__ is None and error.__context__ is None
    assert statuses(exchange, "/v1/heartbeat") == [0, 0]


def test_an_answer_lost_after_the_cancel_ran_is_retried_safely(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.place_order(exchange.api_key)
    exchange.inject_fault("drop_after", CANCEL)
    cancelled = make_client(sleep=fast_backoff).cancel_order(WIDE_ID)
    assert cancelled.is_cancelled and cancelled.reason == "Requested"
    assert [entry.fault for entry in exchange.journal if entry.path == CANCEL] == ["drop_after", None]


def test_a_slow_answer_times_out_and_the_retry_gets_through(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.inject_fault("delay", "/v1/heartbeat", delay=1.5)
    client = make_client(timeout=0.3, max_attempts=1)
    with pytest.raises(ServiceError) as caught:
        client.heartbeat()
    assert (caught.value.status, caught.value.reason) == (None, "Timeout")
    exchange.inject_fault("delay", "/v1/heartbeat", delay=1.5)
    retried = make_client(timeout=0.3, max_attempts=2)
    assert retried.heartbeat() == {"result": "ok"}
    assert retried.stats.retries_by_kind == {"service_error": 1}


def test_unstructured_500_and_empty_404(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    exchange.inject_fault("server_error_text", "/v1/roles", count=2)
    with pytest.raises(ServiceError) as caught:
        make_client(sleep=fast_backoff, max_attempts=2).roles()
    assert caught.value.status == 500 and caught.value.reason is None and caught.value.message
    exchange.inject_fault("not_found_empty", "/v1/roles")
    with pytest.raises(NotFoundError) as not_found:
        make_client(sleep=fast_backoff).roles()
    assert not_found.value.status == 404 and not not_found.value.retryable
    assert statuses(exchange, "/v1/roles") == [500, 500, 404]


def test_client_errors_are_not_retried(
    gemini_exchange_factory: MakeExchange, exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    with pytest.raises(OrderNotFoundError) as caught:
        make_client().cancel_order(12345)
    assert (caught.value.status, caught.value.reason) == (404, "OrderNotFound")
    exchange.add_key("account-auditor-only", "auditor-secret", roles=("Auditor",))
    auditor = make_client(api_key="account-auditor-only", api_secret="auditor-secret")
    with pytest.raises(MissingRoleError):
        auditor.cancel_order(WIDE_ID)
    assert statuses(exchange) == [404, 403]
    assert auditor.roles().is_auditor and not auditor.roles().is_trader


def test_placing_an_order_is_not_repeated_after_a_server_error(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient], fast_backoff: Callable[[float], None]
) -> None:
    fields = {"symbol": "btcusd", "amount": "1", "price": "100.00", "side": "buy", "type": "exchange limit"}
    exchange.inject_fault("maintenance", "/v1/order/new")
    client = make_client(sleep=fast_backoff)
    with pytest.raises(ServiceError):
        client.private("/v1/order/new", **fields)
    exchange.inject_fault("rate_limit", "/v1/order/new")
    assert client.private("/v1/order/new", **fields)["is_live"] is True
    assert statuses(exchange, "/v1/order/new") == [503, 429, 200]


def test_order_endpoints_round_trip(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    first = exchange.place_order(exchange.api_key, client_order_id="mm-1")
    second = exchange.place_order(exchange.api_key, side="sell", price="200.00")
    exchange.place_order(None)  # a web UI order: cancel/all takes it, cancel/session does not
    client = make_client()
    assert [order.order_id for order in client.active_orders()] == [
        first["order_id"],
        second["order_id"],
        str(WIDE_ID + 2),
    ]
    assert client.order_status(client_order_id="mm-1").order_id == str(WIDE_ID)
    assert client.order_status(order_id=second["order_id"], include_trades=True).side == "sell"
    assert exchange.journal[-1].payload["include_trades"] is True
    session = client.cancel_session_orders()
    assert (session.cancelled, session.rejected) == ([str(WIDE_ID), str(WIDE_ID + 1)], [])
    assert client.cancel_all_orders().cancelled == [str(WIDE_ID + 2)]
    assert client.active_orders() == []
    assert client.heartbeat() == {"result": "ok"}
    roles = client.roles()
    assert roles.is_trader and roles.names() == ["Trader"]


def test_master_key_account_comes_from_the_client_or_the_call(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.add_key("master-group", "master-secret", roles=("Trader",), accounts=("primary", "desk2"))
    exchange.place_order("master-group", account="desk2")
    client = make_client(api_key="master-group", api_secret="master-secret", account="primary")
    assert client.active_orders() == []
    assert [order.order_id for order in client.active_orders(account="desk2")] == [str(WIDE_ID)]
    assert client.cancel_order(WIDE_ID, account="desk2").is_cancelled
    assert [entry.payload.get("account") for entry in exchange.journal] == ["primary", "desk2", "desk2"]


def test_time_nonce_keys_work_with_time_mode(
    exchange: GeminiExchange, make_client: Callable[..., GeminiClient]
) -> None:
    exchange.add_key("account-time-key", "time-secret", nonce_mode="time")
    client = make_client(api_key="account-time-key", api_secret="time-secret", nonce_mode="time")
    assert client.heartbeat() == {"result": "ok"}
    assert client.roles().is_trader
    nonces = [entry.payload["nonce"] for entry in exchange.journal]
    assert len(str(nonces[0])) == 10 and nonces[1] > nonces[0]


def test_a_time_nonce_host_100_s_behind_the_exchange_signs_on_its_clock_after_one_answer(
    gemini_exchange_factory: MakeExchange,
) -> None:
    """Beyond Gemini's 30 s window the first request is refused; its answer's Date moves the retry
    (and every later request) onto the exchange's clock."""
    ahead = gemini_exchange_factory(clock_offset=100.0)
    ahead.add_key("account-time-far", "time-secret", nonce_mode="time")
    with GeminiClient(
        "account-time-far", "time-secret", base_url=ahead.url, nonce_mode="time", rate_limit_per_minute=None
    ) as client:
        assert client.roles().is_trader
        assert client.heartbeat() == {"result": "ok"}
    first, *rest = ahead.journal
    assert first.reason == "InvalidNonce" and [entry.status for entry in rest] == [200, 200]
    assert all(abs(entry.nonce - (entry.time + 100.0)) <= 3 for entry in rest)


def test_pacing_keeps_a_client_under_the_exchange_limit(
    gemini_exchange_factory: MakeExchange, key: tuple[str, str]
) -> None:
    limited = gemini_exchange_factory(api_key=key[0], api_secret=key[1], rate_limit_per_minute=600, burst=5)
    with GeminiClient(key[0], key[1], base_url=limited.url) as client:
        for _ in range(30):
            client.heartbeat()
    assert limited.count(status=429) == 0 and limited.count(status=200) == 30
    assert client.stats.retries == 0


def test_threads_share_one_client(exchange: GeminiExchange, make_client: Callable[..., GeminiClient]) -> None:
    client = make_client()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                client.heartbeat()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert exchange.count(status=200) == 200
    assert client.stats.requests == 200 + client.stats.retries


def _calls(url: str, api_key: str, api_secret: str, count: int, start: Any, out: Any) -> None:
    client = GeminiClient(api_key, api_secret, base_url=url, rate_limit_per_minute=None)
    start.wait(60)
    done = 0
    for _ in range(count):
        client.heartbeat()
        done += 1
    out.put((done, client.stats.as_dict()))


def test_four_processes_share_one_counter_key(exchange: GeminiExchange, key: tuple[str, str]) -> None:
    """Separate interpreters (spawn), one key, a server that rejects any nonce not above the last."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_calls, args=(exchange.url, key[0], key[1], 50, start, out)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert [done for done, _ in results] == [50] * 4
    assert exchange.count(status=200) == 200
    rejected = [entry for entry in exchange.journal if entry.status != 200]
    assert {entry.reason for entry in rejected} <= {"InvalidNonce"}
    assert sum(stats["retries"] for _, stats in results) == len(rejected)
    nonces = [entry.payload["nonce"] for entry in exchange.journal if entry.status == 200]
    assert all(later > earlier for earlier, later in itertools.pairwise(nonces))
    print(f"4 x 50 on one key: {len(rejected)} InvalidNonce answers, all retried")
