"""Misbehaviour on request: the fault kinds, queued and random faults, and maintenance.

Not locked: callers hold the exchange's lock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .records import Answer, Trickle, error_answer, seconds_header

FAULT_KINDS = (
    "rate_limit",
    "maintenance",
    "server_error_text",
    "not_found_empty",
    "unauthorized",
    "drop",
    "drop_after",
    "delay",
    "trickle",
)
RANDOM_FAULT_KINDS = ("rate_limit", "maintenance", "server_error_text", "drop")
MAINTENANCE_MESSAGE = "The Gemini Exchange is currently undergoing maintenance. Please try again later."
_AFTER_PROCESSING = ("delay", "drop_after", "trickle")  # kinds that let the request through to its endpoint


def check_fault(kind: str, delay: float | None, chunk_bytes: int | None = None) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {FAULT_KINDS!r}")
    if kind in ("delay", "trickle") and (delay is None or delay < 0):
        raise ValueError(f"delay: the {kind!r} fault needs a delay in seconds")
    if chunk_bytes is not None and (isinstance(chunk_bytes, bool) or chunk_bytes < 1):
        raise ValueError(f"chunk_bytes: must be at least 1, got {chunk_bytes!r}")


@dataclass(slots=True)
class Fault:
    kind: str
    path: str | None
    count: int
    retry_after: float | None
    delay: float | None
    chunk_bytes: int | None = None

    @property
    def answers_first(self) -> bool:
        """True if the fault is the whole answer, sent before the request is processed."""
        return self.kind not in _AFTER_PROCESSING

    def answer(self) -> Answer:
        """The answer of a fault that `answers_first`."""
        retry = [("Retry-After", seconds_header(self.retry_after))] if self.retry_after is not None else []
        if self.kind == "rate_limit":
            return error_answer(429, "RateLimit", "Rate limit exceeded", retry)
        if self.kind == "maintenance":
            return error_answer(503, "Maintenance", MAINTENANCE_MESSAGE, retry)
        if self.kind == "server_error_text":
            return Answer(500, b"upstream unavailable", content_type="text/plain")
        if self.kind == "not_found_empty":
            return Answer(404, b"", content_type=None)
        if self.kind == "unauthorized":
            return error_answer(401, "InvalidToken", "The access token is invalid, expired or revoked")
        return Answer(0, b"", drop=True)

    def spoil(self, answer: Answer) -> None:
        """Apply a fault that lets the request through to the answer its endpoint gave."""
        if self.kind == "drop_after":
            answer.drop = True
        elif self.kind == "trickle":
            answer.trickle = Trickle(self.delay or 0.0, self.chunk_bytes or 1)


class Faults:
    """Queued faults, used in queue order, then a seeded random share of the rest."""

    def __init__(self) -> None:
        self._queue: list[Fault] = []
        self._rate = 0.0
        self._rng = random.Random(0)
        self._kinds: tuple[str, ...] = RANDOM_FAULT_KINDS
        self._delay: float | None = None
        self._retry_after: float | None = None
        self._chunk_bytes: int | None = None

    def inject(
        self,
        kind: str,
        path: str | None,
        count: int,
        retry_after: float | None,
        delay: float | None,
        chunk_bytes: int | None,
    ) -> None:
        check_fault(kind, delay, chunk_bytes)
        if count < 1:
            raise ValueError(f"count: must be at least 1, got {count!r}")
        self._queue.append(Fault(kind, path, count, retry_after, delay, chunk_bytes))

    def set_rate(
        self,
        rate: float,
        seed: int | str,
        kinds: Sequence[str],
        delay: float | None,
        retry_after: float | None,
        chunk_bytes: int | None,
    ) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate: must be between 0 and 1, got {rate!r}")
        if not kinds:
            raise ValueError("kinds: at least one fault kind is needed")
        for kind in kinds:
            check_fault(kind, delay, chunk_bytes)
        self._rate = rate
        self._rng = random.Random(seed)
        self._kinds = tuple(kinds)
        self._delay = delay
        self._retry_after = retry_after
        self._chunk_bytes = chunk_bytes

    def clear(self) -> None:
        self._queue.clear()
        self._rate = 0.0

    def take(self, path: str) -> Fault | None:
        """The fault for this request to `path`, if any: the first queued one that matches it."""
        for i, fault in enumerate(self._queue):
            if fault.path is None or fault.path == path:
                fault.count -= 1
                if fault.count <= 0:
                    del self._queue[i]
                return fault
        if self._rate and self._rng.random() < self._rate:
            kind = self._rng.choice(self._kinds)
            return Fault(kind, None, 1, self._retry_after, self._delay, self._chunk_bytes)
        return None


class Maintenance:
    """Maintenance switched on until switched off, or for a while."""

    def __init__(self) -> None:
        self._on = False
        self._until = 0.0

    def set(self, on: bool) -> None:
        self._on = on
        self._until = 0.0

    def for_seconds(self, seconds: float) -> None:
        self._on = False
        self._until = time.monotonic() + seconds

    def active(self) -> bool:
        return self._on or (self._until > 0 and time.monotonic() < self._until)
