"""CancelRecorder: where every answered cancel goes the moment it arrives, besides the task log: the
audit trail (when one is on) and the outcome counters. Shared by the cancel runs and the sensor's poke,
so both write the same lines and count the same way. No Airflow here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_gemini.metrics import CANCEL_FAILED, CANCEL_OUTCOME, CANCEL_SENT, NO_METRICS, Metrics

if TYPE_CHECKING:
    from airflow_provider_gemini.audit import AuditTrail
    from airflow_provider_gemini.exceptions import GeminiError
    from airflow_provider_gemini.models import Order

CANCEL = "/v1/order/cancel"


@dataclass
class CancelRecorder:
    """Files answered cancels into the trail and the metrics; `trail` None: no trail is written."""

    trail: AuditTrail | None = None
    metrics: Metrics = NO_METRICS
    account: str | None = None
    sent: int = field(default=0, init=False)

    def request_sent(self) -> None:
        """One cancel request (per order, or one bulk cancel) went out."""
        self.sent += 1
        self.metrics.incr(CANCEL_SENT)

    def answered(
        self,
        outcome: str,
        *,
        order: Order | None = None,
        order_id: str | int | None = None,
        requests: int = 1,
        endpoint: str = CANCEL,
        account: str | None = None,
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        """An order's cancel was answered: `outcome` is the report's word (or "still_live"); `reason`
        defaults to the order's own (Gemini's cancel reason, e.g. "Requested")."""
        self.metrics.incr(CANCEL_OUTCOME.format(outcome=outcome))
        if self.trail is None:
            return
        self.trail.record(
            endpoint=endpoint,
            order_id=order.order_id if order is not None else order_id,
            outcome=outcome,
            account=self.account if account is None else account,
            requests=requests,
            client_order_id=None if order is None else order.client_order_id,
            symbol=None if order is None else order.symbol,
            side=None if order is None else order.side,
            reason=reason if reason is not None or order is None else order.reason,
            **extra,
        )

    def failed(
        self,
        error: GeminiError,
        *,
        order_id: str | int | None,
        requests: int,
        endpoint: str = CANCEL,
        account: str | None = None,
        order: Order | None = None,
    ) -> None:
        """A cancel request failed (after the client's own retries); not_found is an outcome, not this."""
        if error.kind == "order_not_found":
            self.answered(
                "not_found",
                order=order,
                order_id=order_id,
                requests=requests,
                endpoint=endpoint,
                account=account,
                reason=error.reason,
            )
            return
        self.metrics.incr(CANCEL_FAILED.format(kind=error.kind))
        if self.trail is None:
            return
        self.trail.record(
            endpoint=endpoint,
            order_id=order_id,
            outcome="failed",
            account=self.account if account is None else account,
            requests=requests,
            client_order_id=None if order is None else order.client_order_id,
            symbol=None if order is None else order.symbol,
            side=None if order is None else order.side,
            kind=error.kind,
            reason=error.reason,
            message=error.message,
        )

    @property
    def errors(self) -> list[str]:
        """Writes to the trail that failed (empty without a trail)."""
        return [] if self.trail is None else self.trail.errors
