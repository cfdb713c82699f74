"""The client's retry policy as named tenacity strategies: what is retried, how long to wait, when
to stop. No Airflow."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import tenacity

from airflow_provider_gemini.exceptions import GeminiError, safe_to_repeat

__all__ = [
    "NONCE_EXTRA_ATTEMPTS",
    "retry_if_safe_to_repeat",
    "stop_after_attempts_or_nonce_grace",
    "stop_at_call_deadline",
    "wait_for_gemini",
]

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0
MAX_RETRY_AFTER_SECONDS = 60.0
NONCE_RETRY_SECONDS = (0.01, 0.1)
NONCE_BACKOFF_CAP_SECONDS = 2.0
NONCE_EXTRA_ATTEMPTS = 5

Clock = Callable[[], float]


def _failure(state: tenacity.RetryCallState) -> BaseException | None:
    """The exception an attempt raised, or None when it returned."""
    outcome = state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


def retry_if_safe_to_repeat(state: tenacity.RetryCallState) -> bool:
    """Retry a GeminiError that may succeed later on a path where a repeat cannot act twice, unless the
    server asked for a pause longer than MAX_RETRY_AFTER_SECONDS (Airflow's retry is better then)."""
    exc = _failure(state)
    if not isinstance(exc, GeminiError):
        return False
    if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER_SECONDS:
        return False
    return safe_to_repeat(str(state.args[0]), exc)


class stop_after_attempts_or_nonce_grace(tenacity.stop.stop_base):
    """Stop after `max_attempts`; a nonce collision (another process signed later but arrived first)
    costs nothing at Gemini and gets NONCE_EXTRA_ATTEMPTS more, since busy hosts can collide often.
    A rate limit clears by itself: a 429 is counted against the call's deadline alone, not attempts
    (stop_at_call_deadline ends it), so a busy key slows a run down instead of failing its orders."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        exc = _failure(state)
        limit = self.max_attempts
        if isinstance(exc, GeminiError):
            if exc.kind == "rate_limited":
                return False
            if exc.kind == "invalid_nonce":
                limit += NONCE_EXTRA_ATTEMPTS
        return state.attempt_number >= limit


class stop_at_call_deadline(tenacity.stop.stop_base):
    """Stop when the wait before the next attempt would end at or past the call's deadline (the third
    argument of the retried attempt, on `clock`): a retry that cannot start in time is not waited for."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        deadline = float(state.args[2])
        return self.clock() + state.upcoming_sleep >= deadline


class wait_for_gemini(tenacity.wait.wait_base):
    """How long to wait before the next attempt: a random pause after a nonce collision, longer each
    time (to the next second for time nonces), Retry-After plus jitter when Gemini gave one, else jittered
    exponential backoff (BACKOFF_BASE_SECONDS doubling up to BACKOFF_CAP_SECONDS)."""

    def __init__(self, nonce_mode: str, wall_clock: Clock = time.time) -> None:
        self.nonce_mode = nonce_mode
        self.wall_clock = wall_clock

    def __call__(self, state: tenacity.RetryCallState) -> float:
        exc = _failure(state)
        if isinstance(exc, GeminiError):
            if exc.kind == "invalid_nonce":
                if self.nonce_mode == "time":
                    return 1.0 - self.wall_clock() % 1.0 + random.uniform(*NONCE_RETRY_SECONDS)
                # A collision clears at once; a burst another host signed seconds ahead clears only
                # as the clock passes it: wait longer each time, up to NONCE_BACKOFF_CAP_SECONDS.
                low, high = NONCE_RETRY_SECONDS
                high = min(NONCE_BACKOFF_CAP_SECONDS, high * 2 ** (state.attempt_number - 1))
                return random.uniform(low, high)
            if exc.retry_after is not None:
                return exc.retry_after + random.uniform(0.0, min(0.25, exc.retry_after * 0.1))
        ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)
