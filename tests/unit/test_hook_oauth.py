"""An OAuth connection's fields, checked before any request: each bad field named, the token URL and
the token store Variable derived as documented."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_gemini.hooks.gemini import GeminiConnectionError, client_kwargs
from airflow_provider_gemini.oauth import OAuthSession, fingerprint


def conn(
    extra: dict[str, Any],
    login: str | None = "app-1",
    password: str | None = "app-secret",
    host: str | None = None,
) -> Any:
    return SimpleNamespace(
        conn_id="desk_oauth",
        login=login,
        password=password,
        host=host,
        schema=None,
        port=None,
        extra_dejson=extra,
    )


OAUTH = {"auth_type": "oauth", "refresh_token": "grt-first"}


def test_oauth_connection_makes_a_session_with_gemini_s_token_url_and_a_variable_store() -> None:
    kwargs = client_kwargs(conn(OAUTH))
    session = kwargs["oauth"]
    assert isinstance(session, OAuthSession) and "api_key" not in kwargs and "nonce_mode" not in kwargs
    assert session.token_url == "https://exchange.gemini.com/auth/token"
    assert kwargs["base_url"] == "https://api.gemini.com"
    assert session.label == "desk_oauth" and session.client_id == "app-1"
    assert session.store.key == "gemini_oauth_token_" + fingerprint("app-1 grt-first")  # type: ignore[attr-defined]
    sandbox = client_kwargs(conn({**OAUTH, "environment": "sandbox"}))["oauth"]
    assert sandbox.token_url == "https://exchange.sandbox.gemini.com/auth/token"
    local = client_kwargs(conn(OAUTH, host="http://127.0.0.1:8765"))["oauth"]
    assert local.token_url == "http://127.0.0.1:8765/auth/token"
    named = client_kwargs(
        conn({**OAUTH, "token_variable": "desk_tokens", "token_url": "https://auth.example/t"})
    )
    assert named["oauth"].store.key == "desk_tokens" and named["oauth"].token_url == "https://auth.example/t"


def test_the_default_auth_type_is_the_api_key() -> None:
    kwargs = client_kwargs(conn({}, login="account-abc", password="s"))
    assert kwargs["api_key"] == "account-abc" and "oauth" not in kwargs


@pytest.mark.parametrize(
    ("extra", "login", "password", "problem"),
    [
        ({"auth_type": "bearer"}, "a", "b", "auth_type (extra): expected 'api_key' or 'oauth'"),
        ({"auth_type": "oauth"}, "a", "b", "refresh_token (extra): empty"),
        ({"auth_type": "oauth", "refresh_token": None}, "a", "b", "refresh_token (extra): empty"),
        (OAUTH, None, "b", "OAuth client_id (login) is empty"),
        (OAUTH, "a", " ", "OAuth client_secret (password) is empty"),
        ({**OAUTH, "refresh_token_variable": "v"}, "a", "b", "give one of them, not both"),
        ({**OAUTH, "token_url": "ftp://x"}, "a", "b", "token_url (extra): expected a URL"),
        ({**OAUTH, "token_variable": "two words"}, "a", "b", "token_variable (extra): expected one word"),
        ({**OAUTH, "refresh_token": ["grt"]}, "a", "b", "refresh_token (extra): expected one word of text"),
    ],
)
def test_a_bad_oauth_field_is_named_before_any_request(
    extra: dict[str, Any], login: str | None, password: str | None, problem: str
) -> None:
    with pytest.raises(GeminiConnectionError) as caught:
        client_kwargs(conn(extra, login=login, password=password))
    assert problem in str(caught.value) and "'desk_oauth'" in str(caught.value)
    assert "grt-first" not in str(caught.value)
