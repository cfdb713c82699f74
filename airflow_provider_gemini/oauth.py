"""OAuth 2.0 for Gemini: access tokens kept valid through one-time refresh tokens, shared safely by many
processes and hosts. No Airflow (the Airflow Variable store is in hooks/token_store.py).

Gemini's refresh tokens work once: a refresh returns a new refresh token and the old one dies. So the
rotated token must reach the shared store before anything else happens, and two processes must not
both spend the same token. The rules here:
- on one host, a refresh runs under an exclusive flock on a private lock file (state.py; the file holds
  nothing), and whoever gets the lock first re-reads the store: if another process already refreshed,
  its token is used and no second refresh is sent;
- across hosts (nothing shared but the store), both may send a refresh; Gemini accepts one. The loser
  gets `invalid_grant`, waits up to `race_wait` seconds for the winner's token to appear in the store,
  and uses it. Only when no newer token appears is the refresh token taken as revoked;
- a stored chain remembers a fingerprint of the connection's refresh token it grew from: putting a new
  refresh token in the connection (after a new authorization) starts a new chain.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_provider_gemini.auth import build_oauth_headers
from airflow_provider_gemini.exceptions import GeminiError, InvalidGrantError, MissingScopeError
from airflow_provider_gemini.state import open_state_file

log = logging.getLogger(__name__)

TOKEN_URLS = {
    "production": "https://exchange.gemini.com/auth/token",
    "sandbox": "https://exchange.sandbox.gemini.com/auth/token",
}
CANCEL_SCOPE = "orders:create"
READ_SCOPE = "orders:read"
# The scope each endpoint this provider calls needs (Gemini's endpoint pages); others need none.
REQUIRED_SCOPE = {
    "/v1/order/cancel": CANCEL_SCOPE,
    "/v1/order/cancel/all": CANCEL_SCOPE,
    "/v1/order/cancel/session": CANCEL_SCOPE,
    "/v1/order/new": CANCEL_SCOPE,
    "/v1/order/status": READ_SCOPE,
    "/v1/orders": READ_SCOPE,
}
# Refresh this long before the access token expires, so no request goes out with a dying token.
REFRESH_MARGIN_SECONDS = 300.0
# How long the loser of a refresh race across hosts waits for the winner's token to be stored.
RACE_WAIT_SECONDS = 10.0
RACE_POLL_SECONDS = 0.2


def fingerprint(secret: str) -> str:
    """A short, one-way name for a token: lets two values be compared without storing either."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def parse_scope_text(value: object) -> tuple[str, ...] | None:
    """Scopes from a token answer: Gemini's comma-separated text (RFC 6749's spaces accepted too);
    None when the answer did not say."""
    if not isinstance(value, str) or not value.strip():
        return None
    return tuple(dict.fromkeys(s for s in value.replace(",", " ").split() if s))


@dataclass(frozen=True)
class TokenSet:
    """One refresh's result. `generation` counts refreshes along the chain grown from the connection
    token whose fingerprint is `seed`; `expires_at` and `refresh_at` (when to refresh it, ahead of
    expiry) are wall-clock seconds."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    refresh_at: float
    scopes: tuple[str, ...] | None
    generation: int
    seed: str

    def fresh(self, now: float) -> bool:
        """Good for use without refreshing first."""
        return now < self.refresh_at

    def valid(self, now: float) -> bool:
        """Not expired yet (Gemini should still take it)."""
        return now < self.expires_at

    def to_json(self) -> str:
        return json.dumps(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": self.expires_at,
                "refresh_at": self.refresh_at,
                "scope": None if self.scopes is None else ",".join(self.scopes),
                "generation": self.generation,
                "seed": self.seed,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TokenSet | None:
        """A stored token set, or None for anything that does not read as one (never raises)."""
        try:
            data = json.loads(text)
            return cls(
                access_token=str(data["access_token"]),
                refresh_token=str(data["refresh_token"]),
                expires_at=float(data["expires_at"]),
                refresh_at=float(data["refresh_at"]),
                scopes=parse_scope_text(data.get("scope")),
                generation=int(data["generation"]),
                seed=str(data["seed"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class TokenStore(Protocol):
    """Where the newest token set lives for every process that shares the connection."""

    def load(self) -> TokenSet | None: ...

    def save(self, tokens: TokenSet) -> None:
        """Store `tokens`; raise if they cannot be read back, since a rotated token must not be lost."""
        ...


class MemoryTokenStore:
    """A store for one process (scripts, tests): `on_save` may persist each rotation elsewhere."""

    def __init__(self, on_save: Callable[[TokenSet], None] | None = None) -> None:
        self._tokens: TokenSet | None = None
        self._on_save = on_save
        self._lock = threading.Lock()

    def load(self) -> TokenSet | None:
        with self._lock:
            return self._tokens

    def save(self, tokens: TokenSet) -> None:
        with self._lock:
            self._tokens = tokens
        if self._on_save is not None:
            self._on_save(tokens)


class HostLock:
    """An exclusive lock shared by every process of this user on the host, on an empty private file
    in the state directory (state.py), plus a thread lock for this process."""

    def __init__(self, name: str, directory: str | os.PathLike[str] | None = None) -> None:
        self.name = name
        self._directory = directory
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            fd = open_state_file(self.name, self._directory)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing drops the flock


TokenPost = Callable[[Mapping[str, str]], Any]
"""Sends a token request (its JSON fields) and returns the decoded answer, or raises GeminiError."""


class OAuthSession:
    """Keeps a valid access token for one OAuth connection: refreshed before it expires, once per
    token, and again when Gemini answers 401 to it; each rotated refresh token saved to `store`
    before it is used. `label` names the connection in errors (the Airflow conn id)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        *,
        token_url: str,
        store: TokenStore | None = None,
        label: str | None = None,
        lock_directory: str | os.PathLike[str] | None = None,
        margin: float = REFRESH_MARGIN_SECONDS,
        race_wait: float = RACE_WAIT_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for name, value in (("client_id", client_id), ("client_secret", client_secret)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: expected a non-empty string")
        if not isinstance(refresh_token, str) or not refresh_token.strip():
            raise ValueError("refresh_token: expected the refresh token from the authorization code grant")
        self.client_id = client_id
        self._client_secret = client_secret
        self._seed = refresh_token.strip()
        self._seed_id = fingerprint(self._seed)
        self.token_url = token_url
        self.store: TokenStore = store if store is not None else MemoryTokenStore()
        self.label = label or client_id
        self.margin = margin
        self.race_wait = race_wait
        self._clock = clock
        self._sleep = sleep
        # One lock per chain (app and first refresh token), whatever the conn id: the api-server tests
        # a copy of a connection under a random id, and it must wait for the real one's refresh.
        self._lock = HostLock(
            f"oauth-{fingerprint(f'{token_url} {client_id} {self._seed}')}.lock", lock_directory
        )
        self._tokens: TokenSet | None = None
        self._mutex = threading.Lock()
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"OAuthSession(label={self.label!r}, client_id={self.client_id!r})"

    @property
    def scopes(self) -> tuple[str, ...] | None:
        """The scopes of the current token, None until one is held or when Gemini did not say."""
        return None if self._tokens is None else self._tokens.scopes

    def current(self, post: TokenPost) -> TokenSet:
        """A token set whose access token is valid for at least `margin` seconds more."""
        with self._mutex:
            held = self._tokens
            if held is not None and held.fresh(self._clock()):
                return held
            return self._renew(post, held)

    def renew_after_401(self, post: TokenPost, used: TokenSet) -> TokenSet | None:
        """A new token set after Gemini refused `used`; None if `used` was already replaced by a
        refresh that happened after its own 401 (one refresh per token)."""
        with self._mutex:
            held = self._tokens
            if held is not None and held.access_token != used.access_token:
                return held  # another thread refreshed meanwhile: resend with its token
            return self._renew(post, used, force=True)

    # -- the refresh -------------------------------------------------------------------------------

    def _load(self) -> TokenSet | None:
        stored = self.store.load()
        # A chain grown from another connection token: the connection was given a new refresh token.
        return stored if stored is not None and stored.seed == self._seed_id else None

    def _renew(self, post: TokenPost, stale: TokenSet | None, force: bool = False) -> TokenSet:
        with self._lock.held():
            stored = self._load()
            now = self._clock()
            usable = stored is not None and (stored.valid(now) if force else stored.fresh(now))
            if stored is not None and usable and (stale is None or stored.access_token != stale.access_token):
                self._tokens = stored  # another process refreshed already
                return stored
            spend = stored.refresh_token if stored is not None else self._seed
            generation = stored.generation + 1 if stored is not None else 1
            try:
                answer = post(
                    {
                        "grant_type": "refresh_token",
                        "client_id": self.client_id,
                        "client_secret": self._client_secret,
                        "refresh_token": spend,
                    }
                )
            except InvalidGrantError as err:
                newer = self._await_newer(spend)
                if newer is None:
                    raise self._refused(err, stored is None) from None
                self._tokens = newer
                return newer
            tokens = self._token_set(answer, generation, now)
            # The old refresh token is dead from here on: store the new one before anything else.
            self.store.save(tokens)
            self.refreshes += 1
            self._tokens = tokens
            log.info(
                "OAuth connection %r: access token refreshed (generation %d, scopes %s, valid %d s)",
                self.label,
                generation,
                ",".join(tokens.scopes) if tokens.scopes else "not stated",
                int(tokens.expires_at - now),
            )
            return tokens

    def _await_newer(self, spent: str) -> TokenSet | None:
        """After invalid_grant: the token another process stored when it won the race, if one appears."""
        deadline = self._clock() + self.race_wait
        while True:
            stored = self._load()
            if stored is not None and stored.refresh_token != spent and stored.valid(self._clock()):
                log.info("OAuth connection %r: another process refreshed first; using its token", self.label)
                return stored
            if self._clock() >= deadline:
                return None
            self._sleep(RACE_POLL_SECONDS)

    def _refused(self, err: GeminiError, from_connection: bool) -> InvalidGrantError:
        where = "the connection's refresh token" if from_connection else "the stored refresh token"
        return InvalidGrantError(
            f"OAuth connection {self.label!r}: Gemini refused {where} ({err.reason or err.kind}); it was revoked, "
            "or already used by a process whose new token was not stored. Authorize the app again and "
            "put the new refresh token in the connection",
            reason=err.reason,
            status=err.status,
        )

    def _token_set(self, answer: Any, generation: int, now: float) -> TokenSet:
        if not isinstance(answer, Mapping):
            raise GeminiError(f"OAuth connection {self.label!r}: the token answer is not a JSON object")
        access, refresh = answer.get("access_token"), answer.get("refresh_token")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise GeminiError(
                f"OAuth connection {self.label!r}: the token answer lacks access_token or refresh_token",
                reason="InvalidTokenAnswer",
            )
        try:
            lifetime = float(answer.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        if not lifetime > 0:
            lifetime = 3600.0  # unstated: assume an hour and let a 401 refresh earlier if need be
        # A short-lived token is still used for half its life before the refresh margin applies.
        refresh_at = now + lifetime - min(self.margin, lifetime / 2)
        scopes = parse_scope_text(answer.get("scope"))
        return TokenSet(access, refresh, now + lifetime, refresh_at, scopes, generation, self._seed_id)


class BearerAuth:
    """OAuth mode for GeminiClient: Bearer headers from the session, the scope checked before sending,
    and one refresh per token after a 401."""

    def __init__(self, session: OAuthSession, post: TokenPost) -> None:
        self.session = session
        self._post = post

    @property
    def identity(self) -> str:
        return f"oauth:{self.session.client_id}"

    def headers(self, path: str, fields: Mapping[str, Any]) -> tuple[dict[str, str], object]:
        tokens = self.session.current(self._post)
        check_scope(self.session.label, path, tokens.scopes)
        return build_oauth_headers(tokens.access_token, path, fields), tokens

    def renew(self, used: object) -> bool:
        if not isinstance(used, TokenSet):
            return False
        return self.session.renew_after_401(self._post, used) is not None

    def refused(self, used: object) -> None:
        """OAuth requests carry no nonce: nothing to move."""


def check_scope(label: str, path: str, scopes: tuple[str, ...] | None) -> None:
    """Refuse, before sending, a request whose token lacks the endpoint's scope (when scopes are known)."""
    needed = REQUIRED_SCOPE.get(path)
    if needed is None or scopes is None or needed in scopes:
        return
    raise MissingScopeError(
        f"{path} needs the OAuth scope {needed}; the token of connection {label!r} has "
        f"{','.join(scopes) or 'no scope'} (authorize the app again with scope={needed})",
        reason="MissingScope",
    )
