"""Gemini's SDK wire-contract fixtures, run through the client's seams (no server).

Suites run: http/hmac-requests (build_private_headers), http/errors (error_from_response) and json
(decode_json). Every case of those suites must run; the only skip is `websocket-upgrade-nonce`, a
websocket handshake a REST client never makes. The other suites (unsignedRequest: public market data;
wsSubscription and wsEvent: websocket streams) describe APIs this provider does not use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any

import pytest
from helpers import SHARED

from airflow_provider_gemini.auth import build_private_headers
from airflow_provider_gemini.client import decode_json
from airflow_provider_gemini.exceptions import error_from_response

FIXTURES = SHARED / "gemini-conformance"
RUN_SUITES = ("http/hmac-requests", "http/errors", "json")
SKIPPED = {
    "http/hmac-requests/websocket-upgrade-nonce": "a websocket handshake nonce; this provider calls REST only"
}

if not FIXTURES.is_dir():
    pytest.skip(f"conformance fixtures not found at {FIXTURES}", allow_module_level=True)

MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
SUITES = {suite["id"]: suite for suite in MANIFEST["suites"]}
CASES = [f"{suite_id}/{case}" for suite_id in RUN_SUITES for case in SUITES[suite_id]["cases"]]
RAN: set[str] = set()


def load(case_id: str) -> dict[str, Any]:
    case: dict[str, Any] = json.loads((FIXTURES / f"{case_id}.json").read_text())
    assert case["id"] == case_id
    return case


def check_hmac(case: dict[str, Any]) -> None:
    assert case["nonce"]["mode"] == "monotonic"
    creds, request, expect = case["credentials"], case["request"], case["expect"]
    assert request["method"] == "POST"
    headers = build_private_headers(
        creds["apiKey"], creds["apiSecret"], request["path"], int(case["nonce"]["value"]), request["body"]
    )
    for name in expect["headers"]:
        assert name in headers
    assert headers["X-GEMINI-APIKEY"] == expect["apiKeyHeader"]
    assert headers["Content-Type"] == "text/plain"
    assert headers["Content-Length"] == "0"
    payload_text = base64.b64decode(headers["X-GEMINI-PAYLOAD"], validate=True).decode()
    payload = json.loads(payload_text)
    fields = expect["payload"]["fields"]
    assert set(payload) == {"request", "nonce", *fields}
    assert payload["request"] == expect["payload"]["request"]
    assert str(payload["nonce"]) == expect["payload"]["nonce"]
    for name, value in fields.items():
        # Compare JSON text, so a wide integer that lost digits (or became a float) cannot pass.
        assert json.dumps(payload[name]) == json.dumps(value)
        if isinstance(value, int):
            assert f'"{name}":{value}' in payload_text.replace(" ", "")
    assert expect["signature"] == {
        "algorithm": "HMAC-SHA384",
        "over": "payloadBase64",
        "encoding": "hex-lower",
    }
    signature = hmac.new(
        creds["apiSecret"].encode(), headers["X-GEMINI-PAYLOAD"].encode(), hashlib.sha384
    ).hexdigest()
    assert headers["X-GEMINI-SIGNATURE"] == signature


def check_error(case: dict[str, Any]) -> None:
    response, expect = case["response"], case["expect"]
    error = error_from_response(response["status"], response["headers"], response["body"].encode())
    assert error.kind == expect["kind"]
    assert error.status == response["status"]
    if "reason" in expect:
        assert error.reason == expect["reason"]
    if "retryAfterSeconds" in expect:
        assert error.retry_after == expect["retryAfterSeconds"]
    assert error.retryable == (
        response["status"] == 429 or response["status"] >= 500 or error.kind == "invalid_nonce"
    )


def check_json(case: dict[str, Any]) -> None:
    value = decode_json(case["raw"].encode())[case["field"]]
    expect = case["expect"]
    if expect["valueKind"] == "integer":
        assert type(value) is int
        assert str(value) == expect["text"]
    else:
        assert expect["valueKind"] == "decimal"
        assert not isinstance(value, float)
        number = Decimal(value)
        assert number == Decimal(expect["text"])
        assert format(number, "f") == expect["text"]


CHECKS = {"hmacRequest": check_hmac, "errorMapping": check_error, "jsonDecoding": check_json}


@pytest.mark.parametrize("case_id", CASES)
def test_case(case_id: str) -> None:
    if case_id in SKIPPED:
        RAN.add(case_id)
        pytest.skip(SKIPPED[case_id])
    case = load(case_id)
    CHECKS[case["kind"]](case)
    RAN.add(case_id)


def test_manifest_suites_are_known() -> None:
    for suite_id in RUN_SUITES:
        assert SUITES[suite_id]["kind"] in CHECKS
    assert set(SKIPPED) <= set(CASES)


def test_every_case_ran(request: pytest.FixtureRequest) -> None:
    """Runs last in the module: a case of the run suites that is not collected, or (in one process)
    neither passed nor was skipped by name, fails. Under xdist the cases run on several workers, so
    there only the collection is checked here; each collected case passes, fails or is named in SKIPPED."""
    collected = {
        item.callspec.params["case_id"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is request.module
        and item.originalname == "test_case"
    }
    assert sorted(set(CASES) - collected) == [], "conformance cases not collected"
    if not hasattr(request.config, "workerinput"):
        missing = sorted(set(CASES) - RAN)
        assert not missing, f"conformance cases not run: {missing}"
