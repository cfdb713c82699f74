"""The local exchange's OAuth and perpetuals, over real HTTP with `requests` (not the provider's client):
the token endpoint as Gemini documents it, one-time refresh tokens, Bearer auth with scopes, revocation."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_gemini.testing.exchange import GeminiExchange

Factory = Callable[..., GeminiExchange]
CLIENT_ID, CLIENT_SECRET = "app-client-1", "app-secret-1"
REDIRECT = "https://app.example/callback"


@pytest.fixture
def ex(gemini_exchange_factory: Factory) -> GeminiExchange:
    exchange = gemini_exchange_factory(rate_limit_per_minute=None)
    exchange.add_oauth_app(CLIENT_ID, CLIENT_SECRET, REDIRECT)
    return exchange


def token(ex: GeminiExchange, **fields: Any) -> requests.Response:
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **fields}
    return requests.post(ex.url + "/auth/token", json=body, timeout=10)


def refresh(ex: GeminiExchange, refresh_token: str) -> requests.Response:
    return token(ex, grant_type="refresh_token", refresh_token=refresh_token)


def bearer(ex: GeminiExchange, access_token: str, path: str, **fields: Any) -> requests.Response:
    payload = base64.b64encode(json.dumps({"request": path, **fields}).encode()).decode()
    headers = {
        "Authorization": f"Bearer {access_token}",
        "X-GEMINI-PAYLOAD": payload,
        "Content-Type": "text/plain",
        "Content-Length": "0",
        "Cache-Control": "no-cache",
    }
    return requests.post(ex.url + path, headers=headers, timeout=10)


def first_tokens(ex: GeminiExchange, scope: str = "orders:create,orders:read") -> dict[str, Any]:
    code = ex.authorize(CLIENT_ID, scope)
    answer = token(ex, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_authorize_page_redirects_with_code_and_state_and_the_code_grant_answers_gemini_fields(
    ex: GeminiExchange,
) -> None:
    query = f"client_id={CLIENT_ID}&response_type=code&redirect_uri={REDIRECT}&state=xyz&scope=orders:create,orders:read"
    page = requests.get(f"{ex.url}/auth?{query}", allow_redirects=False, timeout=10)
    assert page.status_code == 302
    location = urlsplit(page.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    params = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert params["state"] == "xyz"
    answer = token(ex, grant_type="authorization_code", code=params["code"], redirect_uri=REDIRECT)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "scope", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "orders:create,orders:read"
    assert body["expires_in"] == 86399
    # A code works once.
    again = token(ex, grant_type="authorization_code", code=params["code"], redirect_uri=REDIRECT)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")


def test_refresh_tokens_are_one_time_each_refresh_returns_a_new_one(ex: GeminiExchange) -> None:
    first = first_tokens(ex)
    second = refresh(ex, first["refresh_token"])
    assert second.status_code == 200
    new = second.json()
    assert new["refresh_token"] != first["refresh_token"]
    assert new["access_token"] != first["access_token"]
    assert ex.current_refresh_tokens(CLIENT_ID) == [new["refresh_token"]]
    replay = refresh(ex, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json() == {
        "error": "invalid_grant",
        "error_description": replay.json()["error_description"],
    }
    assert refresh(ex, new["refresh_token"]).status_code == 200


def test_refused_grants_in_the_gemini_error_style(ex: GeminiExchange) -> None:
    ex.set_oauth_error_style("gemini")
    answer = refresh(ex, "grt-never-issued")
    assert answer.status_code == 400
    body = answer.json()
    assert (body["result"], body["reason"]) == ("error", "InvalidGrant") and body["message"]


def test_token_endpoint_wants_json_and_the_right_client_secret(ex: GeminiExchange) -> None:
    rt = first_tokens(ex)["refresh_token"]
    form = requests.post(
        ex.url + "/auth/token",
        data={
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_type": "refresh_token",
            "refresh_token": rt,
        },
        timeout=10,
    )
    assert (form.status_code, form.json()["error"]) == (400, "invalid_request")
    wrong = requests.post(
        ex.url + "/auth/token",
        json={
            "client_id": CLIENT_ID,
            "client_secret": "nope",
            "grant_type": "refresh_token",
            "refresh_token": rt,
        },
        timeout=10,
    )
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    odd = token(ex, grant_type="password", username="u", password="p")
    assert (odd.status_code, odd.json()["error"]) == (400, "unsupported_grant_type")
    # None of those spent the refresh token.
    assert refresh(ex, rt).status_code == 200


def test_bearer_requests_need_no_nonce_and_the_scope_of_their_endpoint(ex: GeminiExchange) -> None:
    reader = first_tokens(ex, "orders:read")["access_token"]
    order = ex.place_order(None)
    listing = bearer(ex, reader, "/v1/orders")
    assert listing.status_code == 200 and [o["order_id"] for o in listing.json()] == [order["order_id"]]
    assert bearer(ex, reader, "/v1/order/status", order_id=int(order["order_id"])).status_code == 200
    refused = bearer(ex, reader, "/v1/order/cancel", order_id=int(order["order_id"]))
    assert refused.status_code == 403
    assert refused.json()["reason"] == "MissingRole" and "orders:create" in refused.json()["message"]
    assert ex.order(order["order_id"])["is_live"]
    trader = first_tokens(ex)["access_token"]
    done = bearer(ex, trader, "/v1/order/cancel", order_id=int(order["order_id"]))
    assert done.status_code == 200 and done.json()["is_cancelled"] is True
    mismatch = bearer(ex, trader, "/v1/order/cancel/all", request="/v1/orders")
    assert mismatch.status_code == 400 and mismatch.json()["reason"] == "EndpointMismatch"


def test_unknown_expired_and_revoked_tokens_answer_401(ex: GeminiExchange) -> None:
    assert bearer(ex, "gat-never-issued", "/v1/roles").status_code == 401
    tokens = first_tokens(ex)
    assert bearer(ex, tokens["access_token"], "/v1/roles").status_code == 200
    ex.expire_access_tokens()
    expired = bearer(ex, tokens["access_token"], "/v1/roles")
    assert expired.status_code == 401 and expired.json()["reason"] == "InvalidToken"
    fresh = refresh(ex, tokens["refresh_token"]).json()
    assert bearer(ex, fresh["access_token"], "/v1/roles").status_code == 200
    assert ex.revoke_oauth(CLIENT_ID) == 1
    assert bearer(ex, fresh["access_token"], "/v1/roles").status_code == 401
    assert refresh(ex, fresh["refresh_token"]).json()["error"] == "invalid_grant"


def test_access_token_lifetime_is_settable(gemini_exchange_factory: Factory) -> None:
    ex = gemini_exchange_factory(access_token_lifetime=120)
    ex.add_oauth_app(CLIENT_ID, CLIENT_SECRET, REDIRECT)
    assert first_tokens(ex)["expires_in"] == 120
    ex.set_access_token_lifetime(5)
    assert first_tokens(ex)["expires_in"] == 5
    with pytest.raises(ValueError, match="access_token_lifetime"):
        ex.set_access_token_lifetime(0)


def test_held_token_requests_are_answered_together_one_wins(ex: GeminiExchange) -> None:
    rt = first_tokens(ex)["refresh_token"]
    ex.hold_token_requests(2, timeout=10)
    answers: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(refresh(ex, rt))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 400]
    # The gate is gone after its two parties: the next refresh is not held.
    winner = next(a for a in answers if a.status_code == 200).json()
    assert refresh(ex, winner["refresh_token"]).status_code == 200


def test_perpetuals_orders_live_only_on_a_perpetuals_account(gemini_exchange_factory: Factory) -> None:
    ex = gemini_exchange_factory(
        rate_limit_per_minute=None, api_key="master-perp-key", accounts=("primary", "perps")
    )
    ex.add_perpetuals_account("perps")
    perp = ex.place_order("master-perp-key", symbol="btcgusdperp", price="60000.00", account="perps")
    assert perp["symbol"] == "btcgusdperp"
    with pytest.raises(ValueError, match="perpetuals account"):
        ex.place_order("master-perp-key", symbol="btcgusdperp", account="primary")
    with pytest.raises(ValueError, match="spot account"):
        ex.place_order("master-perp-key", symbol="btcusd", account="perps")
    assert [o["order_id"] for o in ex.live_orders("perps")] == [perp["order_id"]]
