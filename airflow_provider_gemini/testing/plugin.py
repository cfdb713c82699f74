"""pytest plugin (pytest11 entry point `gemini_exchange`): fixtures that run the local exchange.

- `gemini_exchange`: a running `GeminiExchange` with one Trader key (`.api_key`, `.api_secret`);
  configure it with `@pytest.mark.gemini_exchange(rate_limit_per_minute=None, nonce_mode="time", ...)`.
- `gemini_exchange_factory`: start more exchanges, each stopped at teardown.
- `gemini_credentials`: that key as `GeminiCredentials(api_key, api_secret)`.
- `gemini_connection`: sets `AIRFLOW_CONN_GEMINI_DEFAULT` to point at the exchange; returns the conn id.

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


def pytest_configure(config: pytest.Config) -> None:
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
        **exchange_options: Any,
    ) -> GeminiExchange:
        exchange = GeminiExchange(**exchange_options)
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
