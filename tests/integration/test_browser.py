"""The web UI in headless Chromium (Debian's package, driven by Playwright through executable_path):
log in, fill the Gemini connection form, press Test, fill the example DAGs' trigger forms and read
the run's result, as a user would. Screenshots go to test-artifacts/browser/ for the CI artefacts.

The deployment is the session's (conftest.py); these tests share its xdist group, so it starts once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from deployment import PASSWORD, USER, Deployment
from helpers import REPO_ROOT
from playwright.sync_api import expect

from airflow_provider_gemini import _CONN_FIELDS
from airflow_provider_gemini.testing.exchange import GeminiExchange

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("deployment")]

CHROMIUM = os.environ.get("GEMINI_TEST_CHROMIUM", "/usr/bin/chromium")
# The flags Chromium needs as root on a machine with no outside network (each start would otherwise
# try Google's hosts and fail slowly).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO_ROOT / "test-artifacts" / "browser"
UI_CONN = "gemini_ui"

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page


@pytest.fixture(scope="module")
def browser_page(deployed_airflow: Deployment) -> Iterator[Page]:
    """A logged-in page. A missing Chromium fails with the command that installs it; it never skips."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make system-packages` "
            "(apt-get install -y --no-install-recommends chromium), or set GEMINI_TEST_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(f"{deployed_airflow.url}/")
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        page.screenshot(path=SHOTS / "01-login.png")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{deployed_airflow.url}/")
        yield page
        browser.close()


def field(scope: Locator, label: str) -> Locator:
    """The form row (label, input, help text) whose text starts with `label`."""
    # The whole label (a required mark aside): "Audit trail" must not also find "Audit trail connection".
    whole = re.compile(rf"^\s*{re.escape(label)}\s*\*?\s*$")
    return scope.locator("[data-part=root][role=group]").filter(
        has=scope.page.locator("label", has_text=whole)
    )


def rows_of(scope: Locator) -> list[str]:
    return [row.inner_text() for row in scope.locator("[data-part=root][role=group]").all()]


def open_connection_form(page: Page, airflow: Deployment) -> Locator:
    page.goto(f"{airflow.url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").fill("Gemini Exchange")
    options = [option.inner_text() for option in page.get_by_role("option").all()]
    assert options == ["Gemini Exchange", "Gemini Exchange (legacy type gemini_exchange)"], options
    page.keyboard.press("Enter")
    return dialog


def test_the_connection_form_shows_the_gemini_fields_and_saves(
    browser_page: Page, deployed_airflow: Deployment, deployed_exchange: GeminiExchange
) -> None:
    page = browser_page
    dialog = open_connection_form(page, deployed_airflow)
    shown = rows_of(dialog)
    # The relabelled standard fields, and none of the hidden ones (schema, port, the raw extra).
    for label in ("Description", "Base URL (optional)", "API key", "API secret"):
        assert any(row.startswith(label) for row in shown), (label, shown)
    assert not any(row.startswith(("Port", "Schema", "Login", "Password", "Host")) for row in shown), shown
    assert dialog.get_by_placeholder("account-XXXXXXXXXXXXXXXXXXXX").is_visible()
    dialog.get_by_label("Connection ID").fill(UI_CONN)
    dialog.get_by_label("Base URL (optional)").fill(deployed_exchange.url)
    dialog.get_by_label("API key").fill(str(deployed_exchange.api_key))
    dialog.get_by_label("API secret").fill(str(deployed_exchange.api_secret))
    assert dialog.get_by_label("API secret").get_attribute("type") == "password"

    dialog.get_by_text("Extra Fields", exact=True).click()
    for name, spec in _CONN_FIELDS.items():
        row = field(dialog, spec["label"])
        assert row.count() == 1, (name, rows_of(dialog))
        assert spec["description"] in row.inner_text(), (name, row.inner_text())
    field(dialog, "Account").locator("input").fill("primary")
    dialog.screenshot(path=SHOTS / "02-connection-form.png")
    dialog.get_by_role("button", name="Save").click()
    row = page.get_by_role("row").filter(has_text=UI_CONN)
    row.wait_for()
    page.screenshot(path=SHOTS / "03-connection-saved.png")

    stored = deployed_airflow.request("GET", f"/connections/{UI_CONN}").json()
    assert (stored["conn_type"], stored["host"], stored["login"]) == (
        "geminiexchange",
        deployed_exchange.url,
        deployed_exchange.api_key,
    )
    assert stored["port"] is None and stored["password"] == "***"
    # The form saved only what was typed: the empty extras stay empty, so the provider's defaults apply.
    extra = {key: value for key, value in json.loads(stored["extra"]).items() if value}
    assert extra == {"account": "primary"}, stored["extra"]


def test_the_test_button_on_the_pinned_airflow_fails_before_the_hook_runs(
    browser_page: Page, deployed_airflow: Deployment, deployed_exchange: GeminiExchange
) -> None:
    """What the README's "Test button" note says: on 3.3.2 the list's button posts port 0, and the
    api-server refuses it before the hook runs. When an Airflow upgrade fixes that, this fails."""
    page = browser_page
    page.goto(f"{deployed_airflow.url}/connections")
    sent = len(deployed_exchange.journal)
    with page.expect_response(lambda answer: answer.url.endswith("/connections/test")) as tested:
        page.get_by_role("row").filter(has_text=UI_CONN).get_by_role("button", name="Test Connection").click()
    answer = tested.value
    assert answer.status == 400 and "differs from the stored connection" in answer.text()
    assert answer.request.post_data_json["port"] == 0
    page.get_by_text("Test Connection Failed").wait_for()
    page.screenshot(path=SHOTS / "04-test-button.png")
    assert deployed_exchange.journal[sent:] == []
    # The documented working way, the REST call without a port, reaches the hook through the same server.
    stored = deployed_airflow.request("GET", f"/connections/{UI_CONN}").json()
    rest = deployed_airflow.request("POST", "/connections/test", stored)
    assert rest.status_code == 200 and rest.json()["status"] is True, rest.text
    assert "the key has the Trader role" in rest.json()["message"]
    assert [entry.path for entry in deployed_exchange.journal[sent:]] == ["/v1/roles"]
    assert str(deployed_exchange.api_secret) not in rest.text


def open_trigger_form(page: Page, airflow: Deployment, dag_id: str) -> Locator:
    page.goto(f"{airflow.url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    return dialog


@pytest.mark.parametrize(
    ("dag_id", "labels"),
    [
        ("gemini_cancel_order", ["Order ids", "Wait for cancel", "Account"]),
        (
            "gemini_cancel_stale_orders",
            [
                "Max age (minutes)",
                "Symbols",
                "Side",
                "Client order id prefix",
                "Dry run",
                "Max cancellations",
            ],
        ),
    ],
)
def test_the_trigger_forms_show_the_params(
    browser_page: Page, deployed_airflow: Deployment, dag_id: str, labels: list[str]
) -> None:
    dialog = open_trigger_form(browser_page, deployed_airflow, dag_id)
    shown = rows_of(dialog)
    for label in labels:
        assert any(row.startswith(label) for row in shown), (label, shown)
    # Lists of ids or symbols are text, one per line: nothing in the form can round a 17-digit id.
    list_field = "Order ids" if dag_id == "gemini_cancel_order" else "Symbols"
    assert field(dialog, list_field).locator("textarea").get_attribute("placeholder") == (
        "Enter each string on a new line"
    )
    if dag_id == "gemini_cancel_stale_orders":
        side = field(dialog, "Side").inner_text()
        assert "null" not in side, side
    dialog.screenshot(path=SHOTS / f"05-trigger-form-{dag_id}.png")
    dialog.get_by_role("button", name="Close").click()


def test_a_run_triggered_from_the_form_cancels_the_ids_typed_in(
    browser_page: Page, deployed_airflow: Deployment, deployed_exchange: GeminiExchange
) -> None:
    page = browser_page
    assert deployed_exchange.api_key is not None
    ids = [str(deployed_exchange.place_order(deployed_exchange.api_key)["order_id"]) for _ in range(2)]
    kept = str(deployed_exchange.place_order(deployed_exchange.api_key)["order_id"])
    dialog = open_trigger_form(page, deployed_airflow, "gemini_cancel_order")
    field(dialog, "Order ids").locator("textarea").fill("\n".join(ids))
    dialog.get_by_role("button", name="Trigger").click()
    page.wait_for_url(re.compile(r".*/dags/gemini_cancel_order/runs/.+"))
    run_id = page.url.rsplit("/runs/", 1)[1]
    run = wait_for_run(deployed_airflow, "gemini_cancel_order", run_id)
    assert run["state"] == "success", run

    page.goto(f"{deployed_airflow.url}/dags/gemini_cancel_order/runs/{run_id}/tasks/cancel_orders/xcom")
    value = page.get_by_role("row").filter(has_text="return_value")
    value.wait_for()
    page.get_by_role("button", name="Expand all extra JSON").click()
    for oid in ids:
        expect(value).to_contain_text(oid)
    assert kept not in value.inner_text()
    page.screenshot(path=SHOTS / "06-run-result.png")
    assert all(deployed_exchange.order(oid)["is_cancelled"] for oid in ids)
    assert deployed_exchange.order(kept)["is_live"]
    deployed_exchange.cancel_by_exchange(kept, reason="Requested")


def wait_for_run(airflow: Deployment, dag_id: str, run_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = airflow.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
        if run.get("state") in ("success", "failed"):
            return dict(run)
        time.sleep(0.5)
    raise AssertionError(f"{run_id} never finished:\n{airflow.logs('scheduler')}")
