"""A host whose clock is off, for tests and benchmarks: with this directory on PYTHONPATH, a process
adds FAKE_CLOCK_OFFSET_S seconds to time.time and time.time_ns (its wall clock; monotonic untouched)."""

import os
import time

_offset = float(os.environ.get("FAKE_CLOCK_OFFSET_S") or 0)
if _offset:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _offset
    time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
