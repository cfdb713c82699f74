"""The cancel operators against the local exchange over real HTTP, executed as Airflow would call them.

Each test calls `op.execute(context)` with a context whose `ti` records `xcom_push`, and checks the
exchange's own state and journal, not only the report the operator returns.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from helpers import REPORT_KEYS, RecordingTI

from airflow_provider_gemini.models import Order
from airflow_provider_gemini.operators.cancel import (
    GeminiCancelAllOrdersOperator,
    GeminiCancelOrderOperator,
    GeminiCancelStaleOrdersOperator,
)
from airflow_provider_gemini.report import CancelReport
from airflow_provider_gemini.testing.exchange import GeminiExchange, JournalEntry

pytestmark = pytest.mark.usefixtures("as_the_task_runner")

CANCEL = "/v1/order/cancel"
HOUR_MS = 3_600_000


class Outcome:
    """What one execute did: its return value or its exception, and what it pushed."""

    def __init__(self, op: Any) -> None:
        self.ti = RecordingTI()
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        try:
            self.result = op.execute({"ti": self.ti, "params": {}})
        except Exception as exc:
            self.error = exc

    @property
    def report(self) -> dict[str, Any]:
        """The report Airflow would store: the return value, or what was pushed before the failure."""
        report = self.result if self.result is not None else self.ti.pushed["return_value"]
        assert set(report) == REPORT_KEYS
        return report


def place(exchange: GeminiExchange, **fields: Any) -> str:
    return str(exchange.place_order(exchange.api_key, **fields)["order_id"])


def live_ids(exchange: GeminiExchange) -> set[str]:
    return {order["order_id"] for order in exchange.live_orders()}


def answered(exchange: GeminiExchange, path: str | None = None) -> list[JournalEntry]:
    """The requests the exchange processed: not those its rate limit (429) or a fault refused."""
    return [
        entry
        for entry in exchange.journal
        if (path is None or entry.path == path) and entry.status != 429 and entry.fault is None
    ]


def cancels_sent(exchange: GeminiExchange) -> list[int]:
    return [entry.payload["order_id"] for entry in answered(exchange, CANCEL)]


# --- the stale sweep over a mixed book of 50 orders ---------------------------------------------------


def place_book(exchange: GeminiExchange) -> list[dict[str, Any]]:
    """48 API orders (3 symbols x 2 sides x 4 client id styles x old/young) and 2 web-UI orders,
    plus 2 orders of another account that no sweep may touch. Old ones are 1.5-25 h old, young ones
    at most 50 minutes, far from a 1-hour cut so the test does not race the clock."""
    now = int(time.time() * 1000)
    book: list[dict[str, Any]] = []
    combos = itertools.product(
        ("btcusd", "ethusd", "solusd"), ("buy", "sell"), ("mm-", "manual-", "MM-", None)
    )
    for index, (symbol, side, prefix) in enumerate(combos):
        for old in (True, False):
            age_ms = int((1.5 + index) * HOUR_MS) if old else (index + 1) * 120_000
            book.append(
                exchange.place_order(
                    exchange.api_key,
                    symbol=symbol,
                    side=side,
                    price=f"{100 + index}.00",
                    client_order_id=None if prefix is None else f"{prefix}{index}-{int(old)}",
                    timestampms=now - age_ms,
                )
            )
    book.append(exchange.place_order(None, symbol="btcusd", side="buy", timestampms=now - 5 * HOUR_MS))
    book.append(exchange.place_order(None, symbol="btcusd", side="buy", timestampms=now - 60_000))
    exchange.add_key("account-other-desk", "other-secret", accounts=("other",))
    for age in (10 * HOUR_MS, 60_000):
        exchange.place_order("account-other-desk", symbol="btcusd", side="buy", timestampms=now - age)
    assert len(book) == 50
    return book


def stale(
    book: list[dict[str, Any]],
    symbols: set[str] | None = None,
    side: str | None = None,
    prefix: str | None = None,
) -> list[str]:
    """The ids a sweep with these filters must cancel (max_age 1 h), oldest first."""
    cutoff = int(time.time() * 1000) - HOUR_MS
    chosen = [
        order
        for order in book
        if order["timestampms"] < cutoff
        and (symbols is None or order["symbol"] in symbols)
        and (side is None or order["side"] == side)
        and (prefix is None or (order.get("client_order_id") or "").startswith(prefix))
    ]
    chosen.sort(key=lambda order: (order["timestampms"], int(order["order_id"])))
    return [order["order_id"] for order in chosen]


def test_stale_sweeps_cancel_exactly_the_matching_orders(exchange: GeminiExchange) -> None:
    book = place_book(exchange)
    other_account = {o["order_id"] for o in exchange.live_orders("other")}
    cancelled: set[str] = set()
    sweeps: list[tuple[dict[str, Any], list[str]]] = [
        (
            {"symbols": ["BTCUSD", "ethusd"], "side": "buy"},
            stale(book, symbols={"btcusd", "ethusd"}, side="buy"),
        ),
        ({"client_order_id_prefix": "mm-"}, stale(book, prefix="mm-")),
        (
            {"symbols": "solusd,ethusd", "side": "SELL"},
            stale(book, symbols={"solusd", "ethusd"}, side="sell"),
        ),
        ({}, stale(book)),
    ]
    for filters, matching in sweeps:
        expected = [oid for oid in matching if oid not in cancelled]
        assert expected, filters
        exchange.clear_journal()
        outcome = Outcome(
            GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=timedelta(hours=1), **filters)
        )
        assert outcome.error is None, outcome.error
        report = outcome.report
        assert report["cancelled"] == expected, filters
        assert report["failed"] == [] and report["not_found"] == [] and report["dry_run"] == []
        assert set(report["orders"]) == set(expected)
        assert report["stats"]["matched"] == len(expected)
        # Requests sent: one listing and one cancel each, plus any retry (a 429 when pacing jitters).
        assert report["stats"]["requests"] == 1 + len(expected) + report["stats"]["retries"]
        assert cancels_sent(exchange) == [int(oid) for oid in expected]
        assert exchange.count("/v1/order/cancel/all") == exchange.count("/v1/order/cancel/session") == 0
        cancelled.update(expected)
        for order in book:
            state = exchange.order(order["order_id"])
            assert state["is_cancelled"] is (order["order_id"] in cancelled), order
        assert live_ids(exchange) >= other_account
    young = {o["order_id"] for o in book if o["timestampms"] > int(time.time() * 1000) - HOUR_MS}
    assert live_ids(exchange) == young | other_account


def test_stale_dry_run_cancels_nothing_and_reports_what_it_would(exchange: GeminiExchange) -> None:
    book = place_book(exchange)
    before = live_ids(exchange)
    exchange.clear_journal()
    outcome = Outcome(
        GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=3600, side="buy", dry_run=True)
    )
    assert outcome.error is None
    expected = stale(book, side="buy")
    assert outcome.report["dry_run"] == expected
    assert outcome.report["cancelled"] == []
    assert outcome.report["orders"][expected[0]]["side"] == "buy"
    assert [entry.path for entry in answered(exchange)] == ["/v1/orders"]
    assert live_ids(exchange) == before


def test_max_cancellations_refuses_and_cancels_nothing(exchange: GeminiExchange) -> None:
    book = place_book(exchange)
    before = live_ids(exchange)
    expected = stale(book, symbols={"btcusd"})
    exchange.clear_journal()
    outcome = Outcome(
        GeminiCancelStaleOrdersOperator(
            task_id="sweep", max_age=3600, symbols="btcusd", max_cancellations=len(expected) - 1
        )
    )
    assert isinstance(outcome.error, AirflowFailException)
    assert f"max_cancellations: {len(expected)} orders matched" in str(outcome.error)
    assert outcome.report["dry_run"] == expected
    assert outcome.report["stats"]["matched"] == len(expected)
    assert outcome.report["cancelled"] == []
    assert cancels_sent(exchange) == []
    assert live_ids(exchange) == before

    at_cap = Outcome(
        GeminiCancelStaleOrdersOperator(
            task_id="sweep", max_age=3600, symbols="btcusd", max_cancellations=str(len(expected))
        )
    )
    assert at_cap.error is None
    assert at_cap.report["cancelled"] == expected


# --- cancelling given ids ------------------------------------------------------------------------------


def test_list_with_not_found_and_already_cancelled(exchange: GeminiExchange) -> None:
    live_a = place(exchange)
    gone = place(exchange)
    exchange.cancel_by_exchange(gone, "MarketClosed")
    live_b = place(exchange, symbol="ethusd", side="sell", client_order_id="mm-7")
    unknown = str(int(live_b) + 1000)
    exchange.clear_journal()

    outcome = Outcome(GeminiCancelOrderOperator(task_id="cancel", order_id=[live_a, gone, unknown, live_b]))
    assert isinstance(outcome.error, AirflowFailException)
    assert f"order {unknown} not found" in str(outcome.error)
    report = outcome.report
    assert report["cancelled"] == [live_a, live_b]
    assert report["already_cancelled"] == [gone]
    assert report["not_found"] == [unknown]
    assert report["orders"][gone]["reason"] == "MarketClosed"
    assert report["orders"][live_b]["client_order_id"] == "mm-7"
    assert cancels_sent(exchange) == [int(live_a), int(gone), int(unknown), int(live_b)]
    assert len(answered(exchange, "/v1/orders")) == 1
    assert not live_ids(exchange) & {live_a, live_b}

    lenient = Outcome(
        GeminiCancelOrderOperator(task_id="cancel", order_id=[unknown, live_a], fail_on_not_found=False)
    )
    assert lenient.error is None
    assert lenient.report["not_found"] == [unknown]
    assert lenient.report["already_cancelled"] == [live_a]


def test_filled_order_is_reported_not_failed(
    exchange: GeminiExchange, capfd: pytest.CaptureFixture[str]
) -> None:
    filled = place(exchange, amount="2")
    exchange.fill_order(filled)
    live = place(exchange)
    outcome = Outcome(GeminiCancelOrderOperator(task_id="cancel", order_id=f"[{filled}, {live}]"))
    assert outcome.error is None
    assert outcome.report["filled"] == [filled]
    assert outcome.report["cancelled"] == [live]
    assert outcome.report["orders"][filled]["remaining_amount"] == "0"
    assert exchange.order(filled)["is_cancelled"] is False
    assert f"Order {filled} is filled (executed 2 of 2): nothing left to cancel" in capfd.readouterr().out


def test_duplicates_are_cancelled_once_and_ids_past_2_53_stay_exact(exchange: GeminiExchange) -> None:
    first = place(exchange)
    second = place(exchange)
    assert int(first) > 2**53
    exchange.clear_journal()
    outcome = Outcome(
        GeminiCancelOrderOperator(
            task_id="cancel", order_id=[int(first), first, f" {first} ", second, second]
        )
    )
    assert outcome.error is None
    assert outcome.report["cancelled"] == [first, second]
    assert cancels_sent(exchange) == [int(first), int(second)]
    assert outcome.report["stats"]["requests"] == 3 + outcome.report["stats"]["retries"]


def test_dry_run_of_ids_sends_no_cancel(exchange: GeminiExchange) -> None:
    live = place(exchange)
    gone = place(exchange)
    exchange.cancel_by_exchange(gone, "Requested")
    filled = place(exchange)
    exchange.fill_order(filled)
    unknown = str(int(filled) + 99)
    exchange.clear_journal()
    outcome = Outcome(
        GeminiCancelOrderOperator(task_id="cancel", order_id=[live, gone, filled, unknown], dry_run="True")
    )
    assert isinstance(outcome.error, AirflowFailException)  # where the real run would fail too
    report = outcome.report
    assert report["dry_run"] == [live]
    assert report["already_cancelled"] == [gone]
    assert report["filled"] == [filled]
    assert report["not_found"] == [unknown]
    assert cancels_sent(exchange) == []
    assert len(answered(exchange, "/v1/order/status")) == 3
    assert live in live_ids(exchange)


def test_successful_run_returns_the_report_without_pushing_it_itself(exchange: GeminiExchange) -> None:
    order = place(exchange)
    outcome = Outcome(GeminiCancelOrderOperator(task_id="cancel", order_id=order))
    assert outcome.result is not None and outcome.ti.pushed == {}
    assert outcome.result["cancelled"] == [order]
    assert CancelReport.from_dict(outcome.result).to_dict() == outcome.result


# --- cancel session / all -------------------------------------------------------------------------------


def test_session_scope_spares_web_orders_and_all_scope_does_not(exchange: GeminiExchange) -> None:
    mine = [place(exchange), place(exchange, symbol="ethusd")]
    web = str(exchange.place_order(None, symbol="btcusd")["order_id"])
    session = Outcome(GeminiCancelAllOrdersOperator(task_id="session"))
    assert session.error is None
    assert sorted(session.report["cancelled"]) == sorted(mine)
    assert live_ids(exchange) == {web}
    assert len(answered(exchange, "/v1/order/cancel/session")) == 1

    again = place(exchange)
    everything = Outcome(GeminiCancelAllOrdersOperator(task_id="all", scope="ALL"))
    assert everything.error is None
    assert sorted(everything.report["cancelled"]) == sorted([web, again])
    assert live_ids(exchange) == set()
    assert len(answered(exchange, "/v1/order/cancel/all")) == 1


def test_cancel_all_dry_run_lists_every_live_order_and_cancels_none(
    exchange: GeminiExchange, capfd: pytest.CaptureFixture[str]
) -> None:
    mine = place(exchange)
    web = str(exchange.place_order(None)["order_id"])
    exchange.clear_journal()
    outcome = Outcome(GeminiCancelAllOrdersOperator(task_id="session", dry_run=True))
    assert outcome.error is None
    assert sorted(outcome.report["dry_run"]) == sorted([mine, web])
    assert [entry.path for entry in answered(exchange)] == ["/v1/orders"]
    assert "every live order of the account" in capfd.readouterr().out
    assert live_ids(exchange) == {mine, web}


def test_fail_on_reject(exchange: GeminiExchange) -> None:
    kept = place(exchange)
    gone = place(exchange)
    exchange.reject_cancels(kept)
    outcome = Outcome(GeminiCancelAllOrdersOperator(task_id="all", scope="all"))
    assert isinstance(outcome.error, AirflowFailException)
    report = outcome.report
    assert report["cancelled"] == [gone]
    assert report["failed"] == [
        {
            "order_id": kept,
            "kind": "invalid_request",
            "reason": "CancelRejected",
            "message": report["failed"][0]["message"],
        }
    ]
    assert kept in live_ids(exchange)

    lenient = Outcome(GeminiCancelAllOrdersOperator(task_id="all", scope="all", fail_on_reject=False))
    assert lenient.error is None
    assert lenient.report["failed"][0]["order_id"] == kept


# --- failures: key-level, transient, injected faults ------------------------------------------------------


@pytest.mark.gemini_exchange(roles=("Auditor",))
def test_key_level_error_stops_and_marks_the_rest_not_attempted(exchange: GeminiExchange) -> None:
    ids = [place(exchange) for _ in range(4)]
    exchange.clear_journal()
    outcome = Outcome(GeminiCancelOrderOperator(task_id="cancel", order_id=ids))
    assert isinstance(outcome.error, AirflowFailException)
    failed = outcome.report["failed"]
    assert [entry["order_id"] for entry in failed] == ids
    assert failed[0]["kind"] == "missing_role" and failed[0]["reason"] == "MissingRole"
    assert all(entry["message"] == "not attempted: missing_role" for entry in failed[1:])
    assert len(answered(exchange, CANCEL)) == 1
    assert live_ids(exchange) == set(ids)


def test_transient_failure_raises_a_retryable_exception(exchange: GeminiExchange) -> None:
    place(exchange, timestampms=int(time.time() * 1000) - 2 * HOUR_MS)
    exchange.inject_fault("maintenance", path="/v1/orders", count=10, retry_after=0.05)
    outcome = Outcome(GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60))
    assert isinstance(outcome.error, AirflowException)
    assert not isinstance(outcome.error, AirflowFailException)
    failed = outcome.report["failed"]
    assert failed[0]["order_id"] is None and failed[0]["kind"] == "service_error"
    assert outcome.report["stats"]["retries"] >= 1


def test_injected_faults_still_end_with_every_targeted_order_cancelled(exchange: GeminiExchange) -> None:
    old = int(time.time() * 1000) - 2 * HOUR_MS
    by_id = [place(exchange) for _ in range(8)]
    stale_ids = [place(exchange, symbol="ethusd", timestampms=old + i) for i in range(8)]
    spared = place(exchange, symbol="solusd", timestampms=old)
    exchange.set_fault_rate(0.3, seed="operators", retry_after=0.05)

    def until_done(make: Callable[[], Any]) -> Iterator[Outcome]:
        # Airflow retries the task after an AirflowException; three tries stand in for that.
        for _ in range(3):
            outcome = Outcome(make())
            yield outcome
            if outcome.error is None:
                return
            assert not isinstance(outcome.error, AirflowFailException), outcome.error

    runs = list(until_done(lambda: GeminiCancelOrderOperator(task_id="cancel", order_id=by_id)))
    runs += until_done(lambda: GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60, symbols="ethusd"))
    exchange.clear_faults()
    assert sum(run.report["stats"]["retries"] for run in runs) > 0
    assert live_ids(exchange) == {spared}
    assert all(exchange.order(oid)["is_cancelled"] for oid in by_id + stale_ids)


@pytest.mark.gemini_exchange(api_key="master-desk-key", accounts=("primary", "desk2"))
def test_account_routes_a_master_key_and_a_bad_one_stops_the_run(exchange: GeminiExchange) -> None:
    now = int(time.time() * 1000)
    primary = place(exchange, timestampms=now - 2 * HOUR_MS)
    desk2 = [place(exchange, account="desk2", timestampms=now - 2 * HOUR_MS) for _ in range(2)]
    outcome = Outcome(GeminiCancelStaleOrdersOperator(task_id="sweep", max_age=60, account="desk2"))
    assert outcome.error is None
    assert outcome.report["cancelled"] == desk2
    assert live_ids(exchange) == {primary}
    assert {entry.payload.get("account") for entry in exchange.journal} == {"desk2"}

    exchange.clear_journal()
    wrong = Outcome(GeminiCancelOrderOperator(task_id="cancel", order_id=[primary, *desk2], account="nope"))
    assert isinstance(wrong.error, AirflowFailException)
    failed = wrong.report["failed"]
    assert failed[0] == {
        "order_id": None,
        "kind": "invalid_request",
        "reason": "InvalidAccount",
        "message": failed[0]["message"],
    }
    assert [entry["message"] for entry in failed[1:]] == ["not attempted: invalid_request"] * 3
    assert [entry.path for entry in answered(exchange)] == ["/v1/orders"]
    assert primary in live_ids(exchange)


# --- arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id="12x"), "order_id"),
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id=[1, -2]), "order_id[1]"),
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id=[]), "order_id"),
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id=True), "order_id"),
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id=1, dry_run="maybe"), "dry_run"),
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id=1, account=""), "account"),
        (lambda: GeminiCancelAllOrdersOperator(task_id="t", scope="everything"), "scope"),
        (lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=-1), "max_age"),
        (lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=timedelta(seconds=-5)), "max_age"),
        (lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age="an hour"), "max_age"),
        (lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=60, side="hold"), "side"),
        (lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=60, symbols=""), "symbols"),
        (lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=60, symbols=["btc usd"]), "symbols"),
        (
            lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=60, max_cancellations=0),
            "max_cancellations",
        ),
        (
            lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=60, client_order_id_prefix=""),
            "client_order_id_prefix",
        ),
    ],
)
def test_bad_literal_arguments_fail_at_construction(make: Callable[[], Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        make()


@pytest.mark.parametrize(
    ("make", "params", "field"),
    [
        (lambda: GeminiCancelOrderOperator(task_id="t", order_id="{{ params.x }}"), {"x": "12x"}, "order_id"),
        (
            lambda: GeminiCancelOrderOperator(task_id="t", order_id="{{ params.x }}"),
            {"x": [1, "a"]},
            "order_id[1]",
        ),
        (lambda: GeminiCancelAllOrdersOperator(task_id="t", scope="{{ params.x }}"), {"x": "world"}, "scope"),
        (
            lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age="{{ params.x }}"),
            {"x": -30},
            "max_age",
        ),
        (
            lambda: GeminiCancelStaleOrdersOperator(task_id="t", max_age=1, side="{{ params.x }}"),
            {"x": "long"},
            "side",
        ),
    ],
)
def test_bad_rendered_arguments_fail_before_any_request(
    exchange: GeminiExchange, make: Callable[[], Any], params: dict[str, Any], field: str
) -> None:
    op = make()
    context: Any = {"params": params, "ti": RecordingTI()}
    with pytest.raises(AirflowFailException, match=f"^{re.escape(field)}: "):
        op.render_template_fields(context)
    with pytest.raises(AirflowFailException, match=f"^{re.escape(field)}: "):
        op.execute(context)  # e.g. a mapped task, whose rendering skips the override
    assert exchange.journal == []


def test_rendered_string_forms_are_parsed(exchange: GeminiExchange) -> None:
    now = int(time.time() * 1000)
    target = place(
        exchange, symbol="ethusd", side="sell", client_order_id="mm-1", timestampms=now - 2 * HOUR_MS
    )
    place(exchange, symbol="ethusd", side="buy", client_order_id="mm-2", timestampms=now - 2 * HOUR_MS)
    op = GeminiCancelStaleOrdersOperator(
        task_id="sweep",
        max_age="{{ params.max_age }}",
        symbols="{{ params.symbols }}",
        side="{{ params.side }}",
        client_order_id_prefix="{{ params.prefix }}",
        dry_run="{{ params.dry_run }}",
        max_cancellations="{{ params.cap }}",
        account="{{ params.account }}",
    )
    params = {
        "max_age": "1:00:00",
        "symbols": ["ETHUSD"],
        "side": "sell",
        "prefix": "mm-",
        "dry_run": False,
        "cap": 3,
        "account": None,
    }
    context: Any = {"params": params}
    op.render_template_fields(context)
    rendered = {name: getattr(op, name) for name in ("symbols", "dry_run", "max_cancellations", "account")}
    assert rendered == {
        "symbols": "['ETHUSD']",
        "dry_run": "False",
        "max_cancellations": "3",
        "account": "None",
    }
    outcome = Outcome(op)
    assert outcome.error is None
    assert outcome.report["cancelled"] == [target]


def test_importing_the_operators_stays_cheap() -> None:
    code = (
        "import sys, airflow.sdk\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_gemini.operators.cancel\n"
        "added = set(sys.modules) - before\n"
        "print(sorted(m for m in added if m.split('.')[0] not in sys.stdlib_module_names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    added = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert "airflow_provider_gemini.operators.cancel" in added
    assert set(added) <= {
        "airflow_provider_gemini",
        "airflow_provider_gemini.arguments",
        "airflow_provider_gemini.exceptions",
        "airflow_provider_gemini.models",
        "airflow_provider_gemini.operators",
        "airflow_provider_gemini.operators.base",
        "airflow_provider_gemini.operators.cancel",
    }


def test_no_secret_in_reports_or_logs(
    exchange: GeminiExchange, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG")
    order = place(exchange)
    exchange.inject_fault("server_error_text", path=CANCEL)
    outcome = Outcome(GeminiCancelOrderOperator(task_id="cancel", order_id=[order, str(int(order) + 5)]))
    assert exchange.api_secret is not None
    assert exchange.api_secret not in json.dumps(outcome.report)
    assert exchange.api_secret not in caplog.text
    captured = capfd.readouterr()
    assert "Gemini cancel report" in captured.out
    assert exchange.api_secret not in captured.out + captured.err
    assert exchange.api_secret not in str(outcome.error)


# --- the report -------------------------------------------------------------------------------------------


def order(order_id: str, **overrides: Any) -> Order:
    data = {
        "order_id": order_id,
        "symbol": "btcusd",
        "side": "buy",
        "price": "1.00",
        "original_amount": "2",
        "executed_amount": "0",
        "remaining_amount": "2",
        "is_live": True,
        "is_cancelled": False,
        "timestampms": 1,
    }
    return Order.from_status({**data, **overrides})


def test_report_keeps_each_id_in_one_place_and_round_trips() -> None:
    report = CancelReport()
    report.record(order("9007199254740993"), "dry_run")
    report.record(order("9007199254740993"), "cancelled")
    report.record(9007199254740995, "not_found")
    report.fail("9007199254740997", "missing_role", "MissingRole", "needs Trader")
    report.fail("9007199254740997", "missing_role", "MissingRole", "needs Trader")
    report.fail(None, "service_error", None, "x" * 2000)
    report.set_stats(5, 1, 0.12345, matched=2)
    data = report.to_dict()
    assert data["cancelled"] == ["9007199254740993"] and data["dry_run"] == []
    assert data["not_found"] == ["9007199254740995"]
    assert [entry["order_id"] for entry in data["failed"]] == ["9007199254740997", None]
    assert len(data["failed"][1]["message"]) == 500
    assert data["stats"] == {"requests": 5, "retries": 1, "elapsed_seconds": 0.123, "matched": 2}
    assert report.counts() == {
        "cancelled": 1,
        "already_cancelled": 0,
        "filled": 0,
        "not_found": 1,
        "dry_run": 0,
        "failed": 2,
    }
    assert CancelReport.from_dict(json.loads(json.dumps(data))).to_dict() == data
    assert report.outcome_of(9007199254740995) == "not_found"
    assert report.outcome_of("9007199254740997") == "failed"


def test_a_report_read_back_from_xcom_still_moves_ids_it_holds() -> None:
    stored = CancelReport()
    stored.record("21", "dry_run")
    stored.fail("22", "service_error", "Maintenance", "later")
    report = CancelReport.from_dict(json.loads(json.dumps(stored.to_dict())))
    report.record("21", "cancelled")
    report.record("22", "already_cancelled")
    built = CancelReport(dry_run=["23"])
    built.record("23", "cancelled")
    assert (report.cancelled, report.dry_run, report.already_cancelled, report.failed) == (
        ["21"],
        [],
        ["22"],
        [],
    )
    assert (built.cancelled, built.dry_run) == (["23"], [])


def test_report_merge_lets_the_later_answer_win_and_adds_stats() -> None:
    first = CancelReport()
    first.fail("11", "service_error", "Maintenance", "later")
    first.record(order("12"), "dry_run")
    first.set_stats(2, 1, 1.0)
    second = CancelReport()
    second.record(order("11", is_live=False, is_cancelled=True, reason="Requested"), "cancelled")
    second.set_stats(1, 0, 0.5)
    first.merge(second)
    assert first.cancelled == ["11"] and first.failed == [] and first.dry_run == ["12"]
    assert first.orders["11"]["reason"] == "Requested"
    assert first.stats == {"requests": 3, "retries": 1, "elapsed_seconds": 1.5}
    first.stats["retries_by_kind"] = {"rate_limited": 1}
    third = CancelReport()
    third.set_stats(2, 2, 0.1, retries_by_kind={"rate_limited": 1, "service_error": 1})
    first.merge(third)
    assert first.stats["retries_by_kind"] == {"rate_limited": 2, "service_error": 1}


def test_report_table_is_fixed_width() -> None:
    report = CancelReport()
    assert report.format_table().splitlines()[-1] == "(no orders)"
    report.record(order("9007199254740993", client_order_id="mm-1"), "cancelled")
    report.fail("7", "invalid_request", "CancelRejected", "rejected")
    lines = report.format_table().splitlines()
    assert lines[0].split() == [
        "order_id",
        "outcome",
        "symbol",
        "side",
        "price",
        "remaining",
        "client_order_id",
        "reason",
    ]
    assert lines[2].startswith("9007199254740993  cancelled  btcusd")
    assert lines[3].startswith("7                 failed")
    assert lines[3].endswith("invalid_request/CancelRejected: rejected")
    assert lines[2].index("mm-1") == lines[0].index("client_order_id")


def test_client_module_imports_no_airflow() -> None:
    code = (
        "import sys, airflow_provider_gemini.client; "
        "bad = [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
