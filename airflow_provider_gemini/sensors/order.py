"""GeminiOrderCancelledSensor: wait until orders are really gone, cancelling them on the way if asked.

Glue over `watch.OrderWatch`. Only airflow.sdk (and the config) is imported here, so a DAG file that
uses the sensor stays cheap to parse; the hook, the client and the trigger are imported when it runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.arguments import (
    parse_account,
    parse_audit_trail,
    parse_conn_id,
    parse_order_ids,
    unrendered,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_gemini.client import GeminiClient
    from airflow_provider_gemini.hooks.gemini import GeminiHook
    from airflow_provider_gemini.recording import CancelRecorder
    from airflow_provider_gemini.watch import OrderWatch

STATE_KEY = "gemini_order_cancelled_sensor"
"""The task_state_store key that carries settled orders from one rescheduled poke to the next."""


class GeminiOrderCancelledSensor(BaseSensorOperator):
    """Succeed once every order in `order_id` is cancelled; push the cancel operators' report to XCom.

    :param order_id: one order id or a list of them (ints, digit strings, or the text of a list, as a
        Jinja template renders it). Templated.
    :param request_cancel: while an order is live, send its (idempotent) cancel at each poke.
    :param accept_filled: an order that filled instead counts as done (listed under "filled") rather
        than failing the task.
    :param gemini_conn_id: the Gemini connection.
    :param account: account nickname (master keys); None uses the connection's. Templated.
    :param deferrable: send the cancels on the worker, then wait in the triggerer
        (GeminiOrderStatusTrigger). Defaults to ``[operators] default_deferrable``.
    :param audit_trail: where the cancels this sensor sends are recorded, as for the cancel operators:
        None (the connection's ``audit_trail`` extra decides), "off", "default", a path or a URL.

    ``poke_interval``, ``timeout``, ``mode``, ``soft_fail``, ``exponential_backoff`` and the rest are
    BaseSensorOperator's. Transient exchange errors (maintenance, 5xx, rate limits, a closed market)
    make a poke return "not yet"; an unknown id, an unaccepted fill or a refused request (bad key,
    missing role) fail the task without retries (skipped instead under ``soft_fail``).
    """

    template_fields: Sequence[str] = ("order_id", "account")
    ui_color = "#d7f0e6"

    def __init__(
        self,
        *,
        order_id: Any,
        request_cancel: bool = True,
        accept_filled: bool = False,
        gemini_conn_id: str = DEFAULT_CONN_ID,
        account: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        audit_trail: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not unrendered(order_id):
            parse_order_ids(order_id, "order_id")
        for name, flag in (
            ("request_cancel", request_cancel),
            ("accept_filled", accept_filled),
            ("deferrable", deferrable),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}: expected True or False, got {flag!r}")
        parse_conn_id(gemini_conn_id)
        if not unrendered(account):
            parse_account(account)
        self.order_id = order_id
        self.request_cancel = request_cancel
        self.accept_filled = accept_filled
        self.gemini_conn_id = gemini_conn_id
        self.account = account
        self.deferrable = deferrable
        self.audit_trail = parse_audit_trail(audit_trail)
        self._watch: OrderWatch | None = None
        self._hook: GeminiHook | None = None
        self._recorder: CancelRecorder | None = None

    # -- state ---------------------------------------------------------------------------------------

    def _load_watch(self, context: Context) -> OrderWatch:
        """This instance's watch; in reschedule mode, carried on from the task_state_store."""
        from airflow_provider_gemini.watch import OrderWatch

        try:
            order_ids = parse_order_ids(self.order_id, "order_id")
            account = parse_account(self.account)
        except ValueError as err:
            raise AirflowFailException(f"{err} (after rendering)") from None
        if self._watch is not None and self._watch.order_ids == order_ids:
            return self._watch
        state = None
        store = context.get("task_state_store") if self.reschedule else None
        if store is not None:
            stored = store.get(STATE_KEY)
            if (
                isinstance(stored, dict)
                and stored.get("order_ids") == [str(oid) for oid in order_ids]
                and stored.get("account") == account
            ):
                state = stored
        watch = OrderWatch.from_state(
            order_ids, accept_filled=self.accept_filled, account=account, state=state
        )
        if state is not None:
            # Settled orders stay settled; verdicts that failed an earlier try (unknown id, refused key)
            # are asked again, and a new try gets its own clock and request count.
            watch.forget_failures()
            if state.get("try_number") != context["ti"].try_number:
                watch.started_at = time.time()
                watch.report.set_stats(requests=0, retries=0, elapsed_seconds=0.0)
            self.log.info(
                "Carrying on from earlier pokes: %d of %d order(s) settled",
                len(order_ids) - len(watch.pending()),
                len(order_ids),
            )
        self._watch = watch
        return watch

    def _save_watch(self, context: Context, watch: OrderWatch) -> None:
        store = context.get("task_state_store") if self.reschedule else None
        if store is None:
            return
        state = watch.to_state()
        state["order_ids"] = [str(oid) for oid in watch.order_ids]
        state["account"] = watch.account
        state["try_number"] = context["ti"].try_number
        store.set(STATE_KEY, state)

    def _client(self) -> GeminiClient:
        """The hook's client, kept across pokes (one session, one set of stats)."""
        if self._hook is None:
            from airflow_provider_gemini.hooks.gemini import GeminiHook

            self._hook = GeminiHook(gemini_conn_id=self.gemini_conn_id)
        try:
            return self._hook.get_client()
        except ValueError as err:  # the connection's fields cannot make a client: waiting won't help
            raise AirflowFailException(str(err)) from err

    def _cancel_recorder(self, context: Context, account: str | None) -> CancelRecorder | None:
        """The recorder of the cancels this sensor sends, opened on the first poke that may send one."""
        if not self.request_cancel:
            return None
        if self._recorder is None:
            self._client()
            assert self._hook is not None
            try:
                self._recorder = self._hook.recorder(context, self.audit_trail, account)
            except ValueError as err:  # a bad audit_trail extra, or one that cannot be written
                raise AirflowFailException(str(err)) from err
        return self._recorder

    # -- poke ----------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        """Poke once on the worker (sending the cancels), then wait in the triggerer when deferrable."""
        if not self.deferrable:
            return self._emit(context, super().execute(context))
        return self._emit(context, self._poke_then_defer(context))

    def _emit(self, context: Context, report: Any) -> Any:
        """On success: the report's counts and ids on the event of every Asset in `outlets`."""
        if isinstance(report, dict):
            from airflow_provider_gemini.operators.base import emit_outlet_events

            emit_outlet_events(self, context, report, self._recorder)
        return report

    def poke(self, context: Context) -> PokeReturnValue:
        """One look at the pending orders (plus their cancels when `request_cancel`)."""
        watch = self._load_watch(context)
        client = self._client()
        recorder = self._cancel_recorder(context, watch.account)
        result = watch.poll(client, request_cancel=self.request_cancel, log=self.log, recorder=recorder)
        self._save_watch(context, watch)
        if result.fatal:
            client.close()
            self._push_report(context, watch.final_report())
            raise AirflowFailException(result.fatal)
        if result.transient:
            self.log.warning("Exchange not answering (%s); trying again at the next poke", result.transient)
        if result.done:
            client.close()
            return self._done(watch)
        self.log.info(
            "%d of %d order(s) not cancelled yet (%d seen live)",
            len(watch.pending()),
            len(watch.order_ids),
            result.live,
        )
        return PokeReturnValue(is_done=False)

    def _poke_then_defer(self, context: Context) -> Any:
        result = self.poke(context)
        if result.is_done:
            return result.xcom_value
        assert self._watch is not None
        self._client().close()
        self._defer(self._watch)

    def _push_report(self, context: Context, report: dict[str, Any]) -> None:
        """Before failing, push the report as the cancel operators do, so a partial result is kept."""
        if self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=report)

    def _done(self, watch: OrderWatch) -> PokeReturnValue:
        from airflow_provider_gemini.report import CancelReport

        report = watch.final_report()
        summary = CancelReport.from_dict(report).summary_line()
        if self.request_cancel:
            self.log.info("All %d order(s) gone: %s", len(watch.order_ids), summary)
        else:
            # A watcher sends no cancel, so the report files every cancel it confirms, made upstream
            # or by hand, under already_cancelled; cancelled=0 is no failure, and the log says so.
            self.log.info(
                "All %d order(s) confirmed gone: %d cancelled before this sensor looked (the report's "
                "already_cancelled; a watcher sends no cancel), %d filled. %s",
                len(watch.order_ids),
                len(watch.report.already_cancelled),
                len(watch.report.filled),
                summary,
            )
        return PokeReturnValue(is_done=True, xcom_value=report)

    # -- deferrable ----------------------------------------------------------------------------------

    def _defer(self, watch: OrderWatch) -> None:
        from airflow_provider_gemini.triggers.order import GeminiOrderStatusTrigger

        end_time = watch.started_at + self.timeout
        remaining = end_time - time.time()
        if remaining <= 0:
            raise AirflowSensorTimeout(
                f"Sensor has timed out: {len(watch.pending())} order(s) still not cancelled after "
                f"{self.timeout:g} s"
            )
        state = watch.to_state()
        trigger = GeminiOrderStatusTrigger(
            order_ids=[str(oid) for oid in watch.order_ids],
            gemini_conn_id=self.gemini_conn_id,
            account=watch.account,
            poll_interval=self.poke_interval,
            end_time=end_time,
            accept_filled=self.accept_filled,
            return_on_live=self.request_cancel,
            report=state["report"],
            cancel_sent=state["cancel_sent"],
            started_at=watch.started_at,
        )
        self.log.info(
            "Deferring to GeminiOrderStatusTrigger: %d order(s) pending, polled every %g s for up to %.0f s",
            len(watch.pending()),
            self.poke_interval,
            remaining,
        )
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(seconds=remaining))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume from the trigger: return the report, send owed cancels and wait again, or fail."""
        from airflow_provider_gemini.watch import OrderWatch, WatchStatus

        if not isinstance(event, dict):
            raise AirflowFailException(f"GeminiOrderStatusTrigger sent no usable event: {event!r}")
        status = event.get("status")
        message = event.get("message")
        self.log.info("Resumed from GeminiOrderStatusTrigger: status=%s", status)
        state = dict(event.get("state") or {})
        state["report"] = event.get("report") or {}
        self._watch = OrderWatch.from_state(
            parse_order_ids(self.order_id, "order_id"),
            accept_filled=self.accept_filled,
            account=parse_account(self.account),
            state=state,
        )
        if status == WatchStatus.SUCCESS:
            return self._emit(context, self._done(self._watch).xcom_value)
        if status == WatchStatus.CANCEL_NEEDED:
            self.log.info("%s", message)
            return self._emit(context, self._poke_then_defer(context))
        self._push_report(context, self._watch.final_report())
        if status == WatchStatus.TIMEOUT:
            raise AirflowSensorTimeout(f"Sensor has timed out: {message}")
        raise AirflowFailException(message or f"GeminiOrderStatusTrigger failed (status {status!r})")
