"""The provider's metric names and the sink the client and the cancel runs report to. No Airflow here:
inside Airflow the hook hands the client a sink over Airflow's own `Stats` (StatsD, Datadog or
OpenTelemetry, whichever the deployment configured); elsewhere nothing is sent.

Names (StatsD adds Airflow's `[metrics] statsd_prefix`, "airflow." by default), each tagged with
`conn_id` where the backend takes tags:

- `gemini.cancel.sent`: cancel requests sent (one per order, one per cancel/session or cancel/all);
- `gemini.cancel.<outcome>`: orders per outcome of an answered cancel: cancelled, already_cancelled,
  filled, not_found, still_live;
- `gemini.cancel.failed.<kind>`: cancels that failed, by error kind (rate_limited, service_error, ...);
- `gemini.retry.<kind>`: retries the client made, by the kind of error that caused them;
- `gemini.http_429`: answers with HTTP 429 (rate limited), retried or not;
- `gemini.request.latency` (timer, ms): each HTTP attempt, from the request sent to the whole answer read.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "CANCEL_FAILED",
    "CANCEL_OUTCOME",
    "CANCEL_SENT",
    "HTTP_429",
    "NO_METRICS",
    "REQUEST_LATENCY",
    "RETRY",
    "Metrics",
    "NullMetrics",
]

CANCEL_SENT = "gemini.cancel.sent"
CANCEL_OUTCOME = "gemini.cancel.{outcome}"
CANCEL_FAILED = "gemini.cancel.failed.{kind}"
RETRY = "gemini.retry.{kind}"
HTTP_429 = "gemini.http_429"
REQUEST_LATENCY = "gemini.request.latency"


class Metrics(Protocol):
    """Where counters and timings go: `incr` adds to a counter, `timing` records milliseconds."""

    def incr(self, name: str, count: int = 1) -> None: ...

    def timing(self, name: str, milliseconds: float) -> None: ...


class NullMetrics:
    """Sends nothing: the client's sink outside Airflow, and when metrics are off."""

    def incr(self, name: str, count: int = 1) -> None:
        return None

    def timing(self, name: str, milliseconds: float) -> None:
        return None


NO_METRICS: Metrics = NullMetrics()
