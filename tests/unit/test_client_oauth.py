"""GeminiClient in OAuth mode against the local exchange over real HTTP: Bearer requests without nonce or
signature, the refresh before expiry and after a 401 (once per token), scopes, a revoked refresh token,
and two sessions on different "hosts" refreshing the same token at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_gemini.client import GeminiClient
from airflow_provider_gemini.exceptions import GeminiError, InvalidGrantError, MissingScopeError
from airflow_provider_gemini.oauth import MemoryTokenStore, OAuthSession, TokenSet, fingerprint
from airflow_provider_gemini.testing.exchange import GeminiExchange

Factory = Callable[..., GeminiExchange]
CLIENT_ID, CLIENT_SECRET = "oauth-app-7", "oauth-secret-7"
TOKEN = "/auth/token"


@pytest.fixture
def ex(gemini_exchange_factory: Factory) -> GeminiExchange:
    exchange = gemini_exchange_factory(rate_limit_per_minute=None)
    exchange.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
    return exchange


class Clock:
    """Wall-clock seconds that a test moves by hand (the session's idea of now)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def session(
    ex: GeminiExchange, refresh_token: str, tmp_path: Path, host: str = "a", **options: object
) -> OAuthSession:
    lock_dir = tmp_path / f"host-{host}"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    return OAuthSession(
        CLIENT_ID,
        CLIENT_SECRET,
        refresh_token,
        token_url=ex.url + TOKEN,
        label="gemini_oauth_test",
        lock_directory=lock_dir,
        **options,  # type: ignore[arg-type]
    )


def client(ex: GeminiExchange, oauth: OAuthSession) -> GeminiClient:
    return GeminiClient(oauth=oauth, base_url=ex.url, max_attempts=3)


def test_cancels_lists_and_reads_status_with_bearer_requests(ex: GeminiExchange, tmp_path: Path) -> None:
    order = ex.place_order(None)
    with client(ex, session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path)) as gemini:
        assert [o.order_id for o in gemini.active_orders()] == [order["order_id"]]
        assert gemini.cancel_order(order["order_id"]).state == "cancelled"
        assert gemini.order_status(order["order_id"]).is_cancelled
    private = [e for e in ex.journal if e.path != TOKEN]
    assert [(e.path, e.status, e.api_key) for e in private] == [
        ("/v1/orders", 200, f"oauth:{CLIENT_ID}"),
        ("/v1/order/cancel", 200, f"oauth:{CLIENT_ID}"),
        ("/v1/order/status", 200, f"oauth:{CLIENT_ID}"),
    ]
    assert all("nonce" not in e.payload for e in private)  # OAuth payloads carry no nonce
    assert ex.count(TOKEN, 200) == 1  # one refresh served all three


def test_refreshed_before_expiry_without_a_401(ex: GeminiExchange, tmp_path: Path) -> None:
    ex.set_access_token_lifetime(600)
    clock = Clock(1_000_000.0)
    oauth = session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path, clock=clock, margin=60)
    with client(ex, oauth) as gemini:
        gemini.roles()
        clock.now += 530  # 70 s left: outside the margin, no refresh
        gemini.roles()
        assert ex.count(TOKEN) == 1
        clock.now += 15  # 55 s left: inside it
        gemini.roles()
        gemini.roles()
    assert ex.count(TOKEN, 200) == 2
    assert ex.count("/v1/roles", 401) == 0


def test_an_expired_access_token_is_refreshed_once_and_the_request_succeeds(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    order = ex.place_order(None)
    store = MemoryTokenStore()
    with client(ex, session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path, store=store)) as gemini:
        gemini.roles()
        before = store.load()
        ex.expire_access_tokens()  # Gemini stops taking it before the session thinks it is due
        assert gemini.cancel_order(order["order_id"]).state == "cancelled"
    assert ex.count("/v1/order/cancel", 401) == 1
    assert ex.count("/v1/order/cancel", 200) == 1
    assert ex.count(TOKEN, 200) == 2
    after = store.load()
    assert before is not None and after is not None and after.generation == before.generation + 1
    assert ex.current_refresh_tokens(CLIENT_ID) == [after.refresh_token]


def test_a_401_right_after_a_refresh_is_not_refreshed_again(ex: GeminiExchange, tmp_path: Path) -> None:
    """Once per token: a token that was just issued and is refused means something else is wrong."""
    oauth = session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path)
    with client(ex, oauth) as gemini:
        gemini.roles()
        ex.inject_fault("unauthorized", "/v1/roles", count=2)  # the refreshed token is refused too
        with pytest.raises(GeminiError) as caught:
            gemini.roles()
    assert caught.value.status == 401 and not caught.value.retryable
    assert ex.count(TOKEN, 200) == 2 and ex.count("/v1/roles", 401) == 2


def test_a_token_without_orders_create_fails_before_sending_the_cancel(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    order = ex.place_order(None)
    oauth = session(ex, ex.grant_refresh_token(CLIENT_ID, "orders:read"), tmp_path)
    with client(ex, oauth) as gemini:
        assert [o.order_id for o in gemini.active_orders()] == [order["order_id"]]
        with pytest.raises(MissingScopeError) as caught:
            gemini.cancel_order(order["order_id"])
    assert caught.value.kind == "missing_scope" and caught.value.key_level and not caught.value.retryable
    assert "orders:create" in str(caught.value) and "gemini_oauth_test" in str(caught.value)
    assert ex.count("/v1/order/cancel") == 0
    assert ex.order(order["order_id"])["is_live"]


def test_gemini_s_403_for_a_missing_scope_maps_to_missing_scope(ex: GeminiExchange, tmp_path: Path) -> None:
    """When the token answer did not state the scopes, the exchange's 403 is what tells."""
    reader = ex.grant_refresh_token(CLIENT_ID, "orders:read")
    store = MemoryTokenStore()
    oauth = session(ex, reader, tmp_path, store=store)
    with client(ex, oauth) as gemini:
        gemini.roles()
        held = store.load()
        assert held is not None
        store.save(
            TokenSet(
                held.access_token,
                held.refresh_token,
                held.expires_at,
                held.refresh_at,
                None,
                9,
                fingerprint(reader),
            )
        )
        oauth._tokens = None  # a new process: it reads the stored token, whose scopes are unknown
        order = ex.place_order(None)
        with pytest.raises(MissingScopeError) as caught:
            gemini.cancel_order(order["order_id"])
    assert caught.value.status == 403 and "orders:create" in str(caught.value)
    assert ex.count("/v1/order/cancel", 403) == 1


@pytest.mark.parametrize("style", ["oauth", "gemini"])
def test_a_revoked_refresh_token_fails_at_once_naming_the_connection(
    ex: GeminiExchange, tmp_path: Path, style: str
) -> None:
    ex.set_oauth_error_style(style)
    oauth = session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path, race_wait=0.3)
    ex.revoke_oauth(CLIENT_ID)
    with client(ex, oauth) as gemini, pytest.raises(InvalidGrantError) as caught:
        gemini.roles()
    error = caught.value
    assert error.kind == "invalid_grant" and not error.retryable and error.key_level
    assert "'gemini_oauth_test'" in str(error) and "Authorize the app again" in str(error)
    assert ex.count(TOKEN) == 1  # refused grants are not retried
    assert ex.count("/v1/roles") == 0


def test_a_transient_token_endpoint_failure_is_retried(ex: GeminiExchange, tmp_path: Path) -> None:
    ex.inject_fault("maintenance", TOKEN)
    with client(ex, session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path)) as gemini:
        gemini.roles()
    assert [e.status for e in ex.journal if e.path == TOKEN] == [503, 200]


def test_two_hosts_refreshing_at_once_both_end_with_a_working_token(
    ex: GeminiExchange, tmp_path: Path
) -> None:
    """No shared lock (two lock directories), one shared store: Gemini accepts one refresh, the loser
    re-reads the store and goes on with the winner's token."""
    seed = ex.grant_refresh_token(CLIENT_ID)
    store = MemoryTokenStore()
    sessions = [session(ex, seed, tmp_path, host=h, store=store) for h in "ab"]
    ex.hold_token_requests(2, timeout=10)
    results: list[object] = []

    def run(oauth: OAuthSession) -> None:
        try:
            with client(ex, oauth) as gemini:
                results.append(gemini.roles())
        except Exception as exc:  # collected for the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [type(r).__name__ for r in results] == ["Roles", "Roles"]
    assert sorted(e.status for e in ex.journal if e.path == TOKEN) == [200, 400]
    stored = store.load()
    assert stored is not None and ex.current_refresh_tokens(CLIENT_ID) == [stored.refresh_token]
    assert sum(s.refreshes for s in sessions) == 1


def test_one_host_serialises_refreshes_so_only_one_is_sent(ex: GeminiExchange, tmp_path: Path) -> None:
    seed = ex.grant_refresh_token(CLIENT_ID)
    store = MemoryTokenStore()
    sessions = [session(ex, seed, tmp_path, host="same", store=store) for _ in range(4)]
    threads = [threading.Thread(target=lambda s=s: client(ex, s).roles()) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ex.count(TOKEN) == 1 and ex.count("/v1/roles", 200) == 4


def test_a_new_refresh_token_in_the_connection_starts_a_new_chain(ex: GeminiExchange, tmp_path: Path) -> None:
    store = MemoryTokenStore()
    with client(ex, session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path, store=store)) as gemini:
        gemini.roles()
    ex.revoke_oauth(CLIENT_ID)  # the user re-authorizes: the old chain is dead, a new seed is given
    with client(ex, session(ex, ex.grant_refresh_token(CLIENT_ID), tmp_path, store=store)) as gemini:
        gemini.roles()
    stored = store.load()
    assert stored is not None and stored.generation == 1


def test_repr_and_errors_hold_no_token(ex: GeminiExchange, tmp_path: Path) -> None:
    seed = ex.grant_refresh_token(CLIENT_ID)
    store = MemoryTokenStore()
    oauth = session(ex, seed, tmp_path, store=store, race_wait=0.1)
    with client(ex, oauth) as gemini:
        gemini.roles()
        ex.revoke_oauth()
        with pytest.raises(InvalidGrantError) as caught:
            gemini.cancel_order(1)
        shown = " ".join(
            [repr(gemini), repr(oauth), repr(store.load()), str(caught.value), repr(caught.value)]
        )
    for secret in [CLIENT_SECRET, seed, *ex.oauth_tokens_issued()]:
        assert secret not in shown
