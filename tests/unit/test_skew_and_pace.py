"""One key from hosts whose clocks disagree, and from more tasks than its rate allows: nonces move onto
the exchange's clock and past what other hosts sent, and a 429 slows the host's pace, which recovers.

Nonce state is a real file in a private directory; clocks are injected; the end-to-end cases send
signed requests to the local exchange over HTTP.
"""

from __future__ import annotations

import email.utils
import itertools
import uuid
from pathlib import Path

import pytest

from airflow_provider_gemini.auth import (
    MAX_NONCE_LEAD_MS,
    NONCE_LEAD_HALF_LIFE_MS,
    NONCE_LEAD_STEP_MS,
    CounterNonce,
)
from airflow_provider_gemini.client import MIN_PACE, PACE_BACKOFF, PACE_RECOVERY_PER_SECOND, RateLimiter
from airflow_provider_gemini.state import StateFile
from airflow_provider_gemini.transport import ServerClock

NOW = 1_800_000_000.0


def new_key() -> str:
    return f"account-skew-{uuid.uuid4().hex}"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def test_the_correction_is_zero_while_the_exchange_agrees_and_the_offset_when_it_does_not() -> None:
    clock = ServerClock()
    assert clock.correction() is None
    clock.observe(date(NOW), NOW + 0.2, NOW + 0.25)  # a Date of this very second: no evidence
    assert clock.correction() == 0.0

    behind = ServerClock()  # our clock is 2 s behind the exchange's
    behind.observe(date(NOW + 2.0), NOW + 0.4, NOW + 0.45)
    first = behind.correction()
    assert first is not None and 1.5 < first < 2.6
    for phase in (0.1, 0.7, 0.95, 0.03, 0.99):  # answers at other moments of the second narrow it
        behind.observe(date(NOW + 10 + phase + 2.0), NOW + 10 + phase - 0.01, NOW + 10 + phase)
    later = behind.correction()
    assert later is not None and abs(later - 2.0) < 0.05


def test_counter_nonces_follow_the_bounds_and_a_new_process_starts_from_the_host_s(tmp_path: Path) -> None:
    key, clock = new_key(), FakeClock()
    first = CounterNonce(key, clock=clock, directory=tmp_path)
    assert first((-2.1, -1.9)) == int((NOW - 2.0) * 1000)
    clock.now += 5.0
    # Another process of the host that has no answer yet signs on what the first one learnt ...
    second = CounterNonce(key, clock=clock, directory=tmp_path)
    assert second(None) == int((NOW + 3.0) * 1000)
    # ... and what each learns narrows the host's estimate for both.
    assert second((-2.0, -1.8)) == int((NOW + 3.05) * 1000)
    assert first(None) == int((NOW + 3.05) * 1000) + 1


def test_bounds_that_agree_with_this_clock_change_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    assert CounterNonce(new_key(), clock=clock, directory=tmp_path)((-0.4, 0.6)) == int(NOW * 1000)


def test_an_offset_back_continues_from_the_last_nonce_rather_than_going_below_it(tmp_path: Path) -> None:
    key, clock = new_key(), FakeClock()
    source = CounterNonce(key, clock=clock, directory=tmp_path)
    sent = source(None)
    # The exchange says this host is 2 s fast: its nonces stay above what was sent until time catches up.
    later = [source((-2.1, -1.9)) for _ in range(3)]
    assert later == [sent + 1, sent + 2, sent + 3]


def test_a_refused_nonce_raises_the_lead_a_step_once_per_raise_up_to_the_cap(tmp_path: Path) -> None:
    key, clock = new_key(), FakeClock()
    source = CounterNonce(key, clock=clock, directory=tmp_path)
    stale = source()
    source.refused(source())
    clock.now += 1.0
    assert source() - int(clock.now * 1000) == pytest.approx(NONCE_LEAD_STEP_MS, abs=1)  # a ms of decay
    source.refused(stale)  # sent before the raise: nothing new
    clock.now += 1.0
    assert source() - int(clock.now * 1000) == pytest.approx(NONCE_LEAD_STEP_MS, abs=1)
    leads = []
    for _ in range(40):
        source.refused(source())
        clock.now += 0.5
        leads.append(source() - int(clock.now * 1000))
    assert leads[0] == pytest.approx(2 * NONCE_LEAD_STEP_MS, abs=1)
    assert max(leads) <= MAX_NONCE_LEAD_MS
    assert leads[-1] >= MAX_NONCE_LEAD_MS - 2


def test_the_lead_halves_each_half_life_without_a_refusal(tmp_path: Path) -> None:
    key, clock = new_key(), FakeClock()
    source = CounterNonce(key, clock=clock, directory=tmp_path)
    for _ in range(40):
        source.refused(source())
    clock.now += NONCE_LEAD_HALF_LIFE_MS / 1000.0
    lead = source() - int(clock.now * 1000)
    assert MAX_NONCE_LEAD_MS * 0.45 < lead < MAX_NONCE_LEAD_MS * 0.55


def test_an_older_single_number_state_file_is_continued(tmp_path: Path) -> None:
    key, clock = new_key(), FakeClock()
    source = CounterNonce(key, clock=clock, directory=tmp_path)
    ahead = int(NOW * 1000) + 5_000
    path = Path(source.path)
    path.write_bytes(b"%020d" % ahead)
    path.chmod(0o600)
    assert source(None) == ahead + 1


def test_a_429_slows_the_pace_once_per_pause_and_the_pace_recovers(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter(600, 5, clock=clock, state=StateFile("rate-test", tmp_path))
    assert limiter.pace == 1.0
    limiter.penalize(1.0)
    assert limiter.pace == pytest.approx(PACE_BACKOFF)
    # Every request of the host already in flight meets a 429 too: one slowdown for them all.
    limiter.penalize(1.0)
    assert limiter.pace == pytest.approx(PACE_BACKOFF, abs=0.001)
    # Nobody sends during the pause: the next token is due after it, at the slower pace.
    assert limiter.reserve() >= 1.0
    clock.now += 5.0
    limiter.penalize(1.0)
    recovered = PACE_BACKOFF + 5.0 * PACE_RECOVERY_PER_SECOND
    assert limiter.pace == pytest.approx(recovered * PACE_BACKOFF, abs=0.001)
    for _ in range(20):
        clock.now += 2.0
        limiter.penalize(1.0)
    assert limiter.pace == pytest.approx(MIN_PACE, abs=0.02)
    clock.now += 1000.0
    assert limiter.pace == 1.0


def test_the_paced_rate_is_what_the_pace_says(tmp_path: Path) -> None:
    """At pace p the bucket hands out turns 1 / (p x rate) apart."""
    clock = FakeClock(100.0)
    limiter = RateLimiter(600, 1, clock=clock, state=StateFile("rate-p", tmp_path))
    limiter.penalize(0.0)
    clock.now += 0.0001
    waits = [limiter.reserve() for _ in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(gap == pytest.approx(1.0 / (limiter.rate * PACE_BACKOFF), rel=0.01) for gap in gaps)


def test_another_process_sees_the_pause_and_the_slower_pace(tmp_path: Path) -> None:
    """Two limiters on one state file stand for two processes of a host; the clock reads like a
    monotonic clock hours after boot, so the stored numbers are as long as they get."""
    clock = FakeClock(98765.43210987654)
    one, two = (RateLimiter(600, 5, clock=clock, state=StateFile("rate-two", tmp_path)) for _ in range(2))
    one.reserve()
    clock.now += 0.0123456789
    one.penalize(1.7)
    clock.now += 0.3333333
    one.reserve()  # the pace is climbing back: a number with all its digits
    assert two.pace == pytest.approx(PACE_BACKOFF + 0.3333333 * PACE_RECOVERY_PER_SECOND, abs=0.0001)
    assert two.reserve() >= 1.7 - 0.3333333
