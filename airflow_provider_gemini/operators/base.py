"""What the cancel operators share: argument checks, the late-run guard, one run through the core,
the report to XCom before any failure, and the verdict as a task outcome."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_gemini import DEFAULT_CONN_ID
from airflow_provider_gemini.arguments import (
    DEFAULT_MAX_START_DELAY,
    Parser,
    parse_audit_trail,
    parse_conn_id,
    parse_start_delay,
    unrendered,
)

if TYPE_CHECKING:
    from datetime import timedelta

    import jinja2
    from airflow.sdk import Context

    from airflow_provider_gemini.cancelling import CancelRun
    from airflow_provider_gemini.recording import CancelRecorder


def emit_outlet_events(
    task: BaseOperator, context: Context, report: dict[str, Any], recorder: CancelRecorder | None
) -> None:
    """Put the report's counts and ids (bounded) on the event of every Asset in the task's `outlets`;
    Airflow emits it when the task succeeds, and DAGs scheduled on the asset get it as their trigger."""
    from airflow.sdk import Asset

    from airflow_provider_gemini.report import event_extra

    assets = [outlet for outlet in task.outlets if isinstance(outlet, Asset)]
    if not assets:
        return
    ti = context.get("ti")
    trail = None if recorder is None else recorder.trail
    extra = event_extra(
        report,
        dag_id=getattr(ti, "dag_id", None),
        run_id=getattr(ti, "run_id", None),
        task_id=getattr(ti, "task_id", None),
        map_index=getattr(ti, "map_index", None),
        try_number=getattr(ti, "try_number", None),
        conn_id=getattr(task, "gemini_conn_id", None),
        audit_trail=None if trail is None else str(trail.root),
    )
    events = context["outlet_events"]
    for asset in assets:
        events[asset].extra.update(extra)


class GeminiCancelBase(BaseOperator):
    """What the cancel operators share: argument checks, the hook, the report, and the verdict."""

    ui_color = "#00dcfa"
    parsers: ClassVar[dict[str, Parser]] = {}
    fail_on_not_found: bool = True
    _active_run: CancelRun | None = None

    def __init__(
        self,
        *,
        gemini_conn_id: str = DEFAULT_CONN_ID,
        account: str | None = None,
        dry_run: bool | str = False,
        max_start_delay: timedelta | float | None = DEFAULT_MAX_START_DELAY,
        audit_trail: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gemini_conn_id = gemini_conn_id
        # None: the connection's audit_trail extra decides; "off", "default", a path or a URL.
        self.audit_trail = parse_audit_trail(audit_trail)
        self.account = account
        self.max_start_delay = parse_start_delay(max_start_delay)
        # Shadows BaseOperator.dry_run(), a leftover nothing in Airflow 3 calls: a template field needs
        # an attribute of the argument's name, and the argument is `dry_run`.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]

    def _arguments(self, *, literal_only: bool) -> dict[str, Any]:
        """Parse every argument; with `literal_only`, leave what Airflow still has to render."""
        parse_conn_id(self.gemini_conn_id)
        parsed: dict[str, Any] = {}
        for name, parser in self.parsers.items():
            value = getattr(self, name)
            if literal_only and unrendered(value):
                continue
            parsed[name] = parser(value, name)
        return parsed

    def _checked(self) -> dict[str, Any]:
        try:
            return self._arguments(literal_only=False)
        except ValueError as error:
            raise AirflowFailException(str(error)) from error

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render, then check the rendered arguments, so a bad value fails before any request."""
        super().render_template_fields(context, jinja_env)
        self._checked()

    def on_kill(self) -> None:
        """SIGTERM: stop before the next request; execute then pushes the partial report and fails."""
        if self._active_run is not None:
            self._active_run.terminate("the task was terminated (SIGTERM)")

    def _skip_if_late(self, context: Context) -> None:
        """A scheduled or backfill run far from its slot is skipped before any request."""
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_provider_gemini.report import CancelReport
        from airflow_provider_gemini.timing import late_start

        dag_run = context.get("dag_run")
        slot = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None)
        why = late_start(getattr(dag_run, "run_type", None), slot, datetime.now(UTC), self.max_start_delay)
        if why is None:
            return
        self.log.warning("Skipping: %s", why)
        if self.do_xcom_push:  # downstream tasks that read the report see an empty one, not none
            report = CancelReport()
            report.stats["skipped"] = why
            context["ti"].xcom_push(key="return_value", value=report.to_dict())
        raise AirflowSkipException(why)

    def execute(self, context: Context) -> dict[str, Any]:
        # Checked again here: Airflow renders mapped tasks without calling render_template_fields.
        arguments = self._checked()
        self._skip_if_late(context)
        from airflow_provider_gemini.cancelling import CancelRun, deadline_at
        from airflow_provider_gemini.hooks.gemini import GeminiHook

        try:
            deadline = deadline_at(arguments.get("deadline"), self.execution_timeout)
            hook = GeminiHook(gemini_conn_id=self.gemini_conn_id)
            client = hook.get_client()
            # Opened before any request: a trail that cannot be written fails the task first.
            recorder = hook.recorder(context, self.audit_trail, arguments["account"])
        except ValueError as error:  # a past deadline, a bad connection, an unwritable audit trail
            raise AirflowFailException(str(error)) from error
        if recorder.trail is not None:
            self.log.info("Gemini audit trail: %s", recorder.trail.path)
        with client:
            run = CancelRun(
                client=client,
                account=arguments["account"],
                log=self.log,
                fail_on_not_found=self.fail_on_not_found,
                deadline=deadline,
                recorder=recorder,
            )
            self._active_run = run
            try:
                self._run(run, arguments)
            except ValueError as error:
                # The client refused a request before sending it (a master key without an account) or
                # could not use an answer: the same task run again would do the same, so no retries.
                self._publish(context, run, push=True)
                raise AirflowFailException(str(error)) from error
            except BaseException:
                # execution_timeout and termination are BaseExceptions: the report of what was done so
                # far must reach XCom and the log on every exit.
                self._publish(context, run, push=True)
                raise
            finally:
                self._active_run = None
                if recorder.trail is not None:
                    recorder.trail.close()
        if recorder.errors:
            # The cancels went through but their record is incomplete: the task must not pass as whole.
            run.refuse(f"audit trail incomplete ({recorder.errors[0]})")
        failing = bool(run.fatal or run.transient or run.terminated)
        data = self._publish(context, run, push=failing)
        if run.fatal:
            raise AirflowFailException(run.verdict(self.do_xcom_push))
        if run.transient or run.terminated:
            raise AirflowException(run.verdict(self.do_xcom_push))
        emit_outlet_events(self, context, data, recorder)
        return data

    def _run(self, run: CancelRun, arguments: dict[str, Any]) -> None:
        raise NotImplementedError

    def _publish(self, context: Context, run: CancelRun, *, push: bool) -> dict[str, Any]:
        """Finish the stats, log the table and the summary, and push the report when the task will fail."""
        data = run.finish()
        self.log.info("Gemini cancel report:\n%s", run.report.format_table())
        self.log.info("%s summary: %s", type(self).__name__, run.report.summary_line())
        if push and self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=data)
        return data
