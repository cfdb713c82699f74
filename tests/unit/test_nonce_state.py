"""Nonce state that cannot be planted or redirected, and nonces that never lead the clock far.

The state checks run on real files and directories (as root, files of another uid are made with
chown); the time-nonce rules run on an injected clock, and one signed request goes end to end to the
local exchange.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_gemini.auth import (
    GEMINI_NONCE_WINDOW_SECONDS,
    MAX_STORED_LEAD_MS,
    TIME_NONCE_LEAD_SECONDS,
    CounterNonce,
    TimeNonce,
    nonce_file_name,
    nonce_source,
)
from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.state import (
    STATE_DIR_ENV,
    StateFile,
    StateFileError,
    default_state_dir,
    open_state_file,
    state_dir,
)
from airflow_provider_gemini.testing.exchange import GeminiExchange

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")


def new_key() -> str:
    return f"account-state-{uuid.uuid4().hex}"


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A state directory of the test's own, not yet created (the provider creates it 0700)."""
    return tmp_path / "state"


def plant(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Write a file with exactly `mode`, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the state directory ------------------------------------------------------------------------------


def test_default_dir_is_per_user_in_the_temp_dir_and_the_variable_overrides_it(
    private: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    assert default_state_dir().name == f"airflow-provider-gemini-{os.geteuid()}"
    monkeypatch.setenv(STATE_DIR_ENV, str(private))
    assert state_dir() == private
    info = private.stat()
    assert info.st_mode & 0o777 == 0o700 and info.st_uid == os.geteuid()


def test_a_world_open_state_dir_is_refused(private: Path) -> None:
    private.mkdir()
    private.chmod(0o777)
    with pytest.raises(StateFileError, match=f"{private}: has mode 0777.*chmod 700 {private}"):
        state_dir(private)
    with pytest.raises(StateFileError, match="chmod 700"):
        CounterNonce(new_key(), directory=private)()


@as_root
def test_a_state_dir_of_another_user_is_refused(private: Path) -> None:
    private.mkdir(mode=0o700)
    os.chown(private, NOBODY, NOBODY)
    with pytest.raises(StateFileError, match=f"{private}: is owned by uid {NOBODY}, not by this user"):
        CounterNonce(new_key(), directory=private)()


def test_a_symlink_or_a_file_in_place_of_the_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateFileError, match=f"{link}: is a symlink.*remove it"):
        state_dir(link)
    not_dir = tmp_path / "file"
    not_dir.write_bytes(b"")
    with pytest.raises(StateFileError, match=f"{not_dir}: is not a directory"):
        state_dir(not_dir)
    assert list(real.iterdir()) == []


def test_a_relative_dir_is_refused() -> None:
    with pytest.raises(StateFileError, match="not an absolute path"):
        state_dir("relative/state")


# -- the state file -----------------------------------------------------------------------------------


@as_root
def test_a_state_file_of_another_user_is_refused_with_its_name(private: Path) -> None:
    key = new_key()
    target = state_dir(private) / nonce_file_name(key)
    plant(target, b"%020d" % now_ms())
    os.chown(target, NOBODY, NOBODY)
    with pytest.raises(StateFileError) as caught:
        CounterNonce(key, directory=private)()
    assert str(caught.value).startswith(f"airflow-provider-gemini state {target}: is owned by uid {NOBODY}")
    assert "Remove it" in str(caught.value)
    assert caught.value.path == str(target)
    assert isinstance(caught.value, OSError) and not isinstance(caught.value, ValueError)


def test_a_symlink_in_place_of_the_state_file_is_refused_and_its_target_untouched(
    private: Path, tmp_path: Path
) -> None:
    key = new_key()
    elsewhere = tmp_path / "someone-elses-file"
    plant(elsewhere, b"precious")
    link = state_dir(private) / nonce_file_name(key)
    link.symlink_to(elsewhere)
    with pytest.raises(StateFileError, match=f"{link}: is a symlink"):
        CounterNonce(key, directory=private)()
    assert elsewhere.read_bytes() == b"precious"
    assert link.is_symlink()


def test_a_state_file_open_to_others_is_refused(private: Path) -> None:
    key = new_key()
    target = state_dir(private) / nonce_file_name(key)
    plant(target, b"%020d" % now_ms(), mode=0o644)
    with pytest.raises(StateFileError, match=f"{target}: has mode 0644.*chmod 600 {target}"):
        CounterNonce(key, directory=private)()


def test_a_hard_linked_or_odd_state_file_is_refused(private: Path) -> None:
    directory = state_dir(private)
    plant(directory / "linked", b"")
    os.link(directory / "linked", directory / "second-name")
    with pytest.raises(StateFileError, match="has 2 hard links"):
        open_state_file("linked", directory)
    (directory / "a-dir").mkdir(mode=0o700)
    with pytest.raises(StateFileError, match="a-dir: is not a file"):
        open_state_file("a-dir", directory)
    os.mkfifo(directory / "a-fifo", 0o600)
    with pytest.raises(StateFileError, match="a-fifo: is not a regular file"):
        open_state_file("a-fifo", directory)
    with pytest.raises(ValueError, match="plain file name"):
        open_state_file("../escape", directory)


def test_a_new_state_file_is_private_and_updates_are_read_modify_write(private: Path) -> None:
    state = StateFile("budget", private)
    assert state.update(lambda old: (b"12345", old)) == b""
    assert state.update(lambda old: (b"7", old)) == b"12345"
    assert (private / "budget").read_bytes() == b"7"
    assert (private / "budget").stat().st_mode & 0o777 == 0o600
    state.close()


# -- counter nonces -----------------------------------------------------------------------------------


def test_a_planted_far_future_nonce_is_discarded_with_a_warning(
    private: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key()
    target = state_dir(private) / nonce_file_name(key)
    plant(target, b"%020d" % 10**15)
    source = CounterNonce(key, directory=private)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_gemini.auth"):
        nonce = source()
    assert abs(nonce - now_ms()) < 5_000
    assert int(target.read_bytes().split()[0]) == nonce
    [record] = [r for r in caplog.records if r.name == "airflow_provider_gemini.auth"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert str(target) in message and str(10**15) in message and "ahead of the clock" in message
    assert source() > nonce


def test_a_stored_nonce_a_little_ahead_of_the_clock_is_continued(private: Path) -> None:
    key = new_key()
    ahead = now_ms() + MAX_STORED_LEAD_MS // 2
    plant(state_dir(private) / nonce_file_name(key), b"%020d" % ahead)
    assert CounterNonce(key, directory=private)() == ahead + 1


def test_counter_nonce_takes_its_clock_from_the_argument(private: Path) -> None:
    source = CounterNonce(new_key(), clock=lambda: 1_700_000_000.5, directory=private)
    assert [source(), source(), source()] == [1_700_000_000_500, 1_700_000_000_501, 1_700_000_000_502]


def test_a_signed_request_goes_end_to_end_with_private_state(
    gemini_exchange: GeminiExchange,
    private: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through GeminiClient: the state lands in the directory the variable names, a planted nonce
    there is not sent, and the exchange accepts the signed requests."""
    monkeypatch.setenv(STATE_DIR_ENV, str(private))
    key, secret = new_key(), f"secret-{uuid.uuid4().hex}"
    gemini_exchange.add_key(key, secret)
    target = state_dir() / nonce_file_name(key)
    plant(target, b"%020d" % 10**15)
    with (
        caplog.at_level(logging.WARNING, logger="airflow_provider_gemini.auth"),
        GeminiClient(key, secret, base_url=gemini_exchange.url, rate_limit_per_minute=None) as client,
    ):
        assert client.heartbeat() == {"result": "ok"}
        assert client.roles().is_trader
    sent = [entry.nonce for entry in gemini_exchange.journal if entry.api_key == key]
    assert [entry.status for entry in gemini_exchange.journal if entry.api_key == key] == [200, 200]
    assert len(sent) == 2 and sent[1] > sent[0]
    assert all(abs(nonce - now_ms()) < 5_000 for nonce in sent)
    assert int(target.read_bytes().split()[0]) == sent[-1]
    assert any(str(target) in record.getMessage() for record in caplog.records)


def test_nonce_source_keeps_its_signature_and_sharing(private: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(private))
    key = new_key()
    counter = nonce_source("counter", key)
    assert counter is nonce_source("counter", key)
    assert isinstance(counter, CounterNonce) and counter.path == str(private / nonce_file_name(key))
    assert nonce_source("time", key) is nonce_source("time", key)


# -- time nonces --------------------------------------------------------------------------------------


class SteppingClock:
    """A wall clock for tests: sleeping moves it forward, and it can be stepped back as NTP does."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        self.slept += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Iterator[SteppingClock]:
    yield SteppingClock(1_700_000_000.25)


def test_time_nonces_wait_rather_than_run_ahead_after_a_10_s_step_back(
    clock: SteppingClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = TimeNonce(clock=clock, sleep=clock.sleep)
    before = []
    for _ in range(5):
        before.append(source())
        clock.advance(0.3)
    clock.advance(-10)
    after = []
    with caplog.at_level(logging.WARNING, logger="airflow_provider_gemini.auth"):
        for _ in range(50):
            nonce = source()
            assert nonce <= clock() + TIME_NONCE_LEAD_SECONDS
            after.append(nonce)
    values = before + after
    assert all(later > earlier for earlier, later in itertools.pairwise(values))
    assert clock.slept >= 10 - TIME_NONCE_LEAD_SECONDS - 1  # it waited out the step instead
    assert not caplog.records


def test_a_burst_of_time_nonces_may_lead_the_clock_only_by_the_lead(clock: SteppingClock) -> None:
    source = TimeNonce(clock=clock, sleep=clock.sleep)
    values = [source() for _ in range(20)]
    assert values == list(range(values[0], values[0] + 20))
    assert values[-1] <= clock() + TIME_NONCE_LEAD_SECONDS
    # It waited just long enough for the last one to lead by no more than the lead.
    assert clock.slept == pytest.approx(values[-1] - TIME_NONCE_LEAD_SECONDS - 1_700_000_000.25)


def test_time_nonces_restart_from_the_clock_after_a_120_s_step_back(
    clock: SteppingClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = TimeNonce(clock=clock, sleep=clock.sleep)
    last = source()
    clock.advance(-120)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_gemini.auth"):
        restarted = source()
    assert restarted == int(clock())
    assert restarted < last - GEMINI_NONCE_WINDOW_SECONDS
    assert clock.slept == 0
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "starting again from the clock" in record.getMessage()
    assert str(last) in record.getMessage()
    assert source() == restarted + 1


def test_time_nonce_defaults_to_the_real_clock() -> None:
    source = TimeNonce()
    first, second = source(), source()
    assert abs(first - time.time()) < 5
    assert second > first
