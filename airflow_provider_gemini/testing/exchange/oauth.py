"""OAuth 2.0 as Gemini documents it: apps (confidential clients), the authorization code grant, one-time
refresh tokens, access tokens with a lifetime, scopes per endpoint, and revocation.

Wire facts followed: `POST /auth/token` takes a JSON body with `client_id`, `client_secret` and either
`code` + `redirect_uri` (`grant_type: authorization_code`) or `refresh_token` (`grant_type:
refresh_token`); it answers `{"access_token", "refresh_token", "token_type": "Bearer", "scope":
"orders:create,orders:read", "expires_in": 86399}`. A refresh token works once: each refresh returns a
new one and the old one stops working. Scopes in the authorize URL are comma-separated.

Choices where Gemini's documentation is silent (see the package docstring):
- a refused grant answers RFC 6749's shape, 400 `{"error": "invalid_grant", "error_description"}`
  (401 `invalid_client` for a wrong client secret); `error_style="gemini"` answers Gemini's own
  `{"result": "error", "reason": "InvalidGrant", "message"}` instead, so clients meet both;
- a refresh leaves the access tokens issued before it valid until they expire;
- a bearer token that is unknown, expired or revoked answers 401 `InvalidToken`; a token without the
  endpoint's scope answers 403 `MissingRole` (the reason Gemini gives when a key lacks a role), with a
  message naming the scope;
- an authorization code lasts 10 minutes and works once, with the redirect_uri it was issued for.

Not locked: callers hold the exchange's lock.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import Answer, Reject, dumps

DEFAULT_ACCESS_TOKEN_LIFETIME = 86399.0  # what Gemini's token answer says: about 24 h
CODE_LIFETIME = 600.0
ERROR_STYLES = ("oauth", "gemini")
_SCOPE = re.compile(r"[a-z]+(?::[a-z]+)?")
_GEMINI_REASONS = {
    "invalid_request": "InvalidRequest",
    "invalid_client": "InvalidClient",
    "invalid_grant": "InvalidGrant",
    "unsupported_grant_type": "UnsupportedGrantType",
}


def parse_scopes(value: str | Sequence[str]) -> tuple[str, ...]:
    """Scopes from Gemini's comma-separated text (spaces, RFC 6749's separator, accepted too) or a list."""
    items = re.split(r"[,\s]+", value) if isinstance(value, str) else list(value)
    scopes = tuple(dict.fromkeys(s.strip() for s in items if s and s.strip()))
    bad = [s for s in scopes if not _SCOPE.fullmatch(s)]
    if bad or not scopes:
        raise ValueError(f"scopes: expected scopes such as 'orders:create,orders:read', got {value!r}")
    return scopes


@dataclass(slots=True)
class App:
    """A registered OAuth app (a confidential client) acting for one account."""

    client_id: str
    client_secret: str
    redirect_uri: str
    account: str


@dataclass(slots=True)
class Grant:
    """One user's consent to one app: its scopes, its current refresh token, whether it was revoked."""

    client_id: str
    account: str
    scopes: tuple[str, ...]
    refresh_token: str | None = None
    revoked: bool = False


@dataclass(slots=True)
class AccessToken:
    token: str
    grant: Grant
    expires_at: float  # on the exchange's clock

    @property
    def session(self) -> str:
        """The session an OAuth app's orders belong to (what cancel/session cancels)."""
        return f"oauth:{self.grant.client_id}"


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    account: str
    expires_at: float


class OAuthError(Exception):
    """A refused token request: RFC 6749's error code and description, and the HTTP status."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(error)
        self.status, self.error, self.description = status, error, description


@dataclass
class OAuthServer:
    """The exchange's OAuth state: apps, codes, grants, tokens. Every token ever issued is kept in
    `issued` so tests can search logs for any of them."""

    access_token_lifetime: float = DEFAULT_ACCESS_TOKEN_LIFETIME
    error_style: str = "oauth"
    apps: dict[str, App] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    access: dict[str, AccessToken] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _refresh: dict[str, Grant] = field(default_factory=dict)

    def add_app(self, client_id: str, client_secret: str, redirect_uri: str, account: str) -> App:
        if not client_id or not client_secret:
            raise ValueError("client_id, client_secret: both are needed (confidential client)")
        app = App(client_id, client_secret, redirect_uri, account)
        self.apps[client_id] = app
        return app

    def authorize(self, client_id: str, scopes: str | Sequence[str], redirect_uri: str, now: float) -> str:
        """The code a user's consent on Gemini's authorize page sends to the app's redirect_uri."""
        app = self.apps.get(client_id)
        if app is None:
            raise ValueError(f"client_id: no OAuth app {client_id!r} on this exchange")
        if redirect_uri != app.redirect_uri:
            raise ValueError(f"redirect_uri: {redirect_uri!r} is not the app's {app.redirect_uri!r}")
        code = "code-" + secrets.token_urlsafe(18)
        self._codes[code] = _Code(
            client_id, redirect_uri, parse_scopes(scopes), app.account, now + CODE_LIFETIME
        )
        return code

    # -- the token endpoint --------------------------------------------------------------------------

    def token_answer(
        self, body: bytes, content_type: str | None, now: float
    ) -> tuple[Answer, dict[str, Any]]:
        """The answer to `POST /auth/token`, and what the journal keeps of the request (no secret)."""
        seen: dict[str, Any] = {}
        try:
            fields = self._fields(body, content_type)
            seen = {"grant_type": fields.get("grant_type"), "client_id": fields.get("client_id")}
            return self._grant(fields, now), seen
        except OAuthError as err:
            return self._error_answer(err), seen

    def _fields(self, body: bytes, content_type: str | None) -> dict[str, Any]:
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            raise OAuthError(
                400, "invalid_request", "the token request must be JSON (Content-Type: application/json)"
            )
        try:
            fields = json.loads(body or b"null")
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise OAuthError(400, "invalid_request", "the body must be a JSON object")
        return fields

    def _grant(self, f: dict[str, Any], now: float) -> Answer:
        grant_type = f.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        app = self.apps.get(str(f.get("client_id") or ""))
        secret = f.get("client_secret")
        if (
            app is None
            or not isinstance(secret, str)
            or not secrets.compare_digest(secret, app.client_secret)
        ):
            raise OAuthError(401, "invalid_client", "unknown client_id or wrong client_secret")
        if grant_type == "authorization_code":
            grant = self._redeem_code(app, f, now)
        else:
            grant = self._redeem_refresh(app, f)
        return self._issue(grant, now)

    def _redeem_code(self, app: App, f: dict[str, Any], now: float) -> Grant:
        code = self._codes.pop(str(f.get("code") or ""), None)  # one use, even when refused below
        if code is None or code.client_id != app.client_id or code.expires_at < now:
            raise OAuthError(400, "invalid_grant", "the authorization code is invalid, used or expired")
        if f.get("redirect_uri") != code.redirect_uri:
            raise OAuthError(400, "invalid_grant", "redirect_uri does not match the authorization request")
        grant = Grant(app.client_id, code.account, code.scopes)
        self.grants.append(grant)
        return grant

    def _redeem_refresh(self, app: App, f: dict[str, Any]) -> Grant:
        token = f.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise OAuthError(400, "invalid_request", "refresh_token is required")
        grant = self._refresh.pop(token, None)  # one use: the old token dies here
        if grant is None or grant.revoked or grant.client_id != app.client_id:
            raise OAuthError(400, "invalid_grant", "the refresh token is invalid, already used or revoked")
        return grant

    def _issue(self, grant: Grant, now: float) -> Answer:
        access = "gat-" + secrets.token_urlsafe(24)
        refresh = "grt-" + secrets.token_urlsafe(24)
        self.access[access] = AccessToken(access, grant, now + self.access_token_lifetime)
        if grant.refresh_token is not None:
            self._refresh.pop(grant.refresh_token, None)
        grant.refresh_token = refresh
        self._refresh[refresh] = grant
        self.issued += [access, refresh]
        body = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "scope": ",".join(grant.scopes),
            "expires_in": int(self.access_token_lifetime),
        }
        return Answer(200, dumps(body), headers=[("Cache-Control", "no-store")])

    def _error_answer(self, err: OAuthError) -> Answer:
        if self.error_style == "gemini":
            reason = _GEMINI_REASONS.get(err.error, "InvalidRequest")
            body = {"result": "error", "reason": reason, "message": err.description}
        else:
            body = {"error": err.error, "error_description": err.description}
            reason = err.error
        return Answer(err.status, dumps(body), reason=reason)

    # -- bearer checks --------------------------------------------------------------------------------

    def bearer(self, authorization: str, now: float) -> AccessToken:
        """The live access token an `Authorization: Bearer ...` header carries, or 401 InvalidToken."""
        scheme, _, token = authorization.strip().partition(" ")
        access = self.access.get(token.strip()) if scheme.lower() == "bearer" else None
        if access is None or access.grant.revoked or access.expires_at <= now:
            raise Reject(
                401,
                "InvalidToken",
                "The access token is invalid, expired or revoked",
                headers=[("WWW-Authenticate", 'Bearer error="invalid_token"')],
            )
        return access

    @staticmethod
    def check_scope(access: AccessToken, scope: str | None) -> None:
        if scope is not None and scope not in access.grant.scopes:
            raise Reject(
                403,
                "MissingRole",
                f"The OAuth scope {scope} is required; the token has {','.join(access.grant.scopes)}",
            )

    # -- test controls --------------------------------------------------------------------------------

    def revoke(self, client_id: str | None) -> int:
        """Revoke the grants of one app (None: every app): their refresh and access tokens stop working."""
        hit = [g for g in self.grants if client_id in (None, g.client_id) and not g.revoked]
        for grant in hit:
            grant.revoked = True
        return len(hit)

    def expire_access_tokens(self, now: float) -> None:
        for access in self.access.values():
            access.expires_at = min(access.expires_at, now)

    def current_refresh_tokens(self, client_id: str | None = None) -> list[str]:
        """The refresh tokens that would work now (one per live grant)."""
        return [
            g.refresh_token
            for g in self.grants
            if g.refresh_token and not g.revoked and client_id in (None, g.client_id)
        ]


def check_error_style(style: str) -> str:
    if style not in ERROR_STYLES:
        raise ValueError(f"oauth_error_style: expected one of {ERROR_STYLES!r}, got {style!r}")
    return style
