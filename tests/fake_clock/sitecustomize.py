"""A host whose wall clock is FAKE_CLOCK_OFFSET_S seconds off, for tests and benchmarks: with this
directory first on PYTHONPATH, every Python process there imports `sitecustomize` at start-up, before
any module could keep a reference to the real functions.

The cluster tier uses it where libfaketime cannot serve: Debian 12's libfaketime 0.9.10 breaks
Python 3.11's waits (with FAKETIME_DONT_FAKE_MONOTONIC=1 `time.sleep` raises OSError EINVAL; without
it `threading.Event().wait(timeout)` never returns). Only `time.time` and `time.time_ns` move, which
is what the provider's nonces and clocks read; `datetime.now()` keeps the real time.
"""

from __future__ import annotations

import os
import time

_offset = float(os.environ.get("FAKE_CLOCK_OFFSET_S") or 0)
if _offset:
    _real_time, _real_time_ns = time.time, time.time_ns
    _offset_ns = round(_offset * 1e9)

    def _time() -> float:
        return _real_time() + _offset

    def _time_ns() -> int:
        return _real_time_ns() + _offset_ns

    time.time = _time
    time.time_ns = _time_ns
