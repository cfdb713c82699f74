"""The exchange's clock: the host's time plus a settable offset, to play a server whose clock is off."""

from __future__ import annotations

import email.utils
import math
import time


class Clock:
    """What the exchange takes as "now": new orders' timestamps, the time-nonce window, `Date`."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = check_offset(offset)

    def time(self) -> float:
        return time.time() + self.offset

    def ms(self) -> int:
        return int(self.time() * 1000)

    def http_date(self) -> str:
        """Now as an HTTP `Date` value (RFC 7231's IMF-fixdate, always GMT)."""
        return email.utils.formatdate(self.time(), usegmt=True)


def check_offset(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ValueError(f"clock_offset: must be a finite number of seconds, got {seconds!r}")
    return float(seconds)
