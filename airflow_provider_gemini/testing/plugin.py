"""pytest plugin (pytest11 entry point `gemini_exchange`): fixtures that run the local exchange.

- `gemini_exchange`: a running `GeminiExchange` with one Trader key (`.api_key`, `.api_secret`);
  configure it with `@pytest.mark.gemini_exchange(rate_limit_per_minute=None, nonce_mode="time", ...)`.
- `gemini_exchange_factory`: start more exchanges, each stopped at teardown.
- `gemini_credentials`: that key as `GeminiCredentials(api_key, api_secret)`.
- `gemini_connection`: sets `AIRFLOW_CONN_GEMINI_DEFAULT` to point at the exchange; returns the conn id.
- `gemini_oauth_app`: an OAuth app on that exchange and a first refresh token (`GeminiOAuthApp`);
  scopes from `@pytest.mark.gemini_oauth(scopes="orders:read")` (default orders:create,orders:read).
- `gemini_oauth_connection`: sets `AIRFLOW_CONN_GEMINI_DEFAULT` to an OAuth connection for that app.
  Rotated tokens go to an Airflow Variable: through the task SDK in a task (`airflow dags test`),
  straight to the metadata database elsewhere, so a hook used outside a task needs `airflow db migrate`.

The exchange module is imported only when a fixture runs, so loading the plugin costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_gemini import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow_provider_gemini.testing.exchange import GeminiExchange

CONN_ID = DEFAULT_CONN_ID


@dataclass(frozen=True)
class GeminiCredentials:
    """The fixture key; the secret stays out of repr so a failing assert does not print it."""

    api_key: str
    api_secret: str = field(repr=False)


@dataclass(frozen=True)
class GeminiOAuthApp:
    """The fixture OAuth app and its first refresh token; secrets stay out of repr."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)


OAUTH_CLIENT_ID = "gemini-test-oauth-app"
OAUTH_CLIENT_SECRET = "gemini-test-oauth-secret"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gemini_oauth(scopes='orders:create,orders:read'): the scopes the gemini_oauth_app fixture's "
        "first refresh token is granted",
    )
    config.addinivalue_line(
        "markers",
        "gemini_exchange(**options): options for the gemini_exchange fixture: GeminiExchange arguments "
        "(rate_limit_per_minute=None turns the limit off, burst, first_order_id, heartbeat_timeout) and "
        "the fixture key's (api_key, api_secret, roles, nonce_mode, accounts, require_heartbeat)",
    )


@pytest.fixture
def gemini_exchange_factory() -> Iterator[Callable[..., GeminiExchange]]:
    """`factory(**options) -> GeminiExchange`, started, with a Trader key unless `api_key=None`."""
    from airflow_provider_gemini.testing.exchange import DEFAULT_API_KEY, DEFAULT_API_SECRET, GeminiExchange

    started: list[GeminiExchange] = []

    def factory(
        *,
        api_key: str | None = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        roles: Sequence[str] = ("Trader",),
        nonce_mode: str = "counter",
        accounts: Sequence[str] = ("primary",),
        require_heartbeat: bool = False,
        perpetuals_accounts: Sequence[str] = (),
        **exchange_options: Any,
    ) -> GeminiExchange:
        exchange = GeminiExchange(**exchange_options)
        for account in perpetuals_accounts:
            exchange.add_perpetuals_account(account)
        if api_key is not None:
            exchange.add_key(api_key, api_secret, roles, nonce_mode, accounts, require_heartbeat)
        started.append(exchange.start())
        return exchange

    yield factory
    for exchange in started:
        exchange.stop()


@pytest.fixture
def gemini_exchange(
    request: pytest.FixtureRequest, gemini_exchange_factory: Callable[..., GeminiExchange]
) -> GeminiExchange:
    """A running exchange on 127.0.0.1 with one Trader key, rate limited as Gemini is (600/min,
    burst 5) unless the test's `gemini_exchange` marker says otherwise."""
    marker = request.node.get_closest_marker("gemini_exchange")
    options = dict(marker.kwargs) if marker is not None else {}
    return gemini_exchange_factory(**options)


@pytest.fixture
def gemini_credentials(gemini_exchange: GeminiExchange) -> GeminiCredentials:
    if gemini_exchange.api_key is None or gemini_exchange.api_secret is None:
        raise pytest.UsageError("gemini_credentials: the gemini_exchange marker set api_key=None")
    return GeminiCredentials(gemini_exchange.api_key, gemini_exchange.api_secret)


@pytest.fixture
def gemini_connection(gemini_exchange: GeminiExchange, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point Airflow's `gemini_default` connection at the exchange (env var, JSON form)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", gemini_exchange.airflow_connection())
    return CONN_ID


@pytest.fixture
def gemini_oauth_app(request: pytest.FixtureRequest, gemini_exchange: GeminiExchange) -> GeminiOAuthApp:
    """An OAuth app acting for the fixture key's first account, and its first refresh token."""
    marker = request.node.get_closest_marker("gemini_oauth")
    scopes = (marker.kwargs.get("scopes") if marker is not None else None) or "orders:create,orders:read"
    account = "primary"
    if gemini_exchange.api_key is not None:
        account = gemini_exchange.accounts_of(gemini_exchange.api_key)[0]
    gemini_exchange.add_oauth_app(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, account=account)
    refresh_token = gemini_exchange.grant_refresh_token(OAUTH_CLIENT_ID, scopes)
    return GeminiOAuthApp(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, refresh_token)


@pytest.fixture
def gemini_oauth_connection(
    gemini_exchange: GeminiExchange, gemini_oauth_app: GeminiOAuthApp, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Point `gemini_default` at the exchange as an OAuth connection (env var, JSON form)."""
    value = gemini_exchange.oauth_connection(gemini_oauth_app.client_id, gemini_oauth_app.refresh_token)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", value)
    return CONN_ID
