"""Signing and nonce sources: exact headers, and nonces that only grow across threads and processes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_gemini.auth import (
    CounterNonce,
    TimeNonce,
    build_private_headers,
    nonce_file_for,
    nonce_source,
)
from airflow_provider_gemini.state import STATE_DIR_ENV


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Keep the nonce state of a test in a private dir of its own; the umask makes the files a test
    plants there 0600, as the provider's state checks require."""
    state = tmp_path / "state"
    monkeypatch.setenv(STATE_DIR_ENV, str(state))
    umask = os.umask(0o077)
    yield state
    os.umask(umask)


def new_key() -> str:
    return f"account-test-{uuid.uuid4().hex}"


def test_headers_are_exactly_what_gemini_expects() -> None:
    headers = build_private_headers(
        "account-k", "s3cret", "/v1/order/cancel", 1700000000123, {"order_id": 2**63 - 1}
    )
    assert set(headers) == {
        "X-GEMINI-APIKEY",
        "X-GEMINI-PAYLOAD",
        "X-GEMINI-SIGNATURE",
        "Content-Type",
        "Content-Length",
        "Cache-Control",
    }
    assert headers["X-GEMINI-APIKEY"] == "account-k"
    assert (headers["Content-Type"], headers["Content-Length"], headers["Cache-Control"]) == (
        "text/plain",
        "0",
        "no-cache",
    )
    text = base64.b64decode(headers["X-GEMINI-PAYLOAD"]).decode()
    assert text == '{"request":"/v1/order/cancel","nonce":1700000000123,"order_id":9223372036854775807}'
    expected = hmac.new(b"s3cret", headers["X-GEMINI-PAYLOAD"].encode(), hashlib.sha384).hexdigest()
    assert headers["X-GEMINI-SIGNATURE"] == expected


def test_bytes_secret_signs_the_same_and_decimals_go_out_as_text() -> None:
    as_text = build_private_headers("k", "s", "/v1/x", 1, {"price": Decimal("0.00000001")})
    as_bytes = build_private_headers("k", b"s", "/v1/x", 1, {"price": Decimal("0.00000001")})
    assert as_text == as_bytes
    assert json.loads(base64.b64decode(as_text["X-GEMINI-PAYLOAD"]))["price"] == "0.00000001"


def test_fields_cannot_replace_request_or_nonce_and_odd_types_are_refused() -> None:
    with pytest.raises(ValueError, match="set by the signer"):
        build_private_headers("k", "s", "/v1/x", 1, {"nonce": 2})
    with pytest.raises(ValueError, match="set by the signer"):
        build_private_headers("k", "s", "/v1/x", 1, {"request": "/v1/y"})
    with pytest.raises(TypeError, match="object"):
        build_private_headers("k", "s", "/v1/x", 1, {"when": object()})


def test_counter_nonce_is_milliseconds_and_strictly_increasing(lock_dir: Path) -> None:
    source = CounterNonce(new_key())
    values = [source() for _ in range(2000)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert len(str(values[0])) == 13  # milliseconds since the epoch, not micro- or nanoseconds
    assert abs(values[0] - time.time() * 1000) < 60_000


def test_counter_nonce_lock_file_is_named_by_hash_and_shared_by_instances(lock_dir: Path) -> None:
    key = new_key()
    first, second = CounterNonce(key), CounterNonce(key)
    path = Path(nonce_file_for(key))
    assert path.parent == lock_dir
    assert key not in path.name and hashlib.sha256(key.encode()).hexdigest() in path.name
    a = first()
    b = second()
    c = first()
    assert a < b < c
    assert int(path.read_bytes().split()[0]) == c


def test_counter_nonce_continues_after_a_value_ahead_of_the_clock(lock_dir: Path) -> None:
    key = new_key()
    ahead = int(time.time() * 1000) + 30_000  # within MAX_STORED_LEAD_MS
    Path(nonce_file_for(key)).write_bytes(b"%020d" % ahead)
    assert CounterNonce(key)() == ahead + 1


def test_counter_nonce_survives_a_corrupt_lock_file(lock_dir: Path) -> None:
    key = new_key()
    Path(nonce_file_for(key)).write_bytes(b"garbage")
    assert abs(CounterNonce(key)() - time.time() * 1000) < 60_000


def test_counter_nonce_is_unique_across_threads(lock_dir: Path) -> None:
    source = CounterNonce(new_key())
    seen: list[list[int]] = [[] for _ in range(8)]

    def work(out: list[int]) -> None:
        out.extend(source() for _ in range(300))

    threads = [threading.Thread(target=work, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    flat = [value for out in seen for value in out]
    assert len(flat) == len(set(flat)) == 8 * 300
    for out in seen:
        assert out == sorted(out)


def test_time_nonce_is_whole_seconds_and_never_repeats_in_a_process() -> None:
    source = TimeNonce()
    first, second = source(), source()
    assert abs(first - time.time()) < 5
    assert second > first


def test_nonce_source_is_shared_per_key_and_mode(lock_dir: Path) -> None:
    key = new_key()
    assert nonce_source("counter", key) is nonce_source("counter", key)
    assert nonce_source("counter", key) is not nonce_source("counter", new_key())
    assert isinstance(nonce_source("time", key), TimeNonce)
    with pytest.raises(ValueError, match="nonce_mode: expected 'counter' or 'time', got 'micro'"):
        nonce_source("micro", key)
