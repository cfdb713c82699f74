"""Who may call what: keys, the signature check, nonce rules, roles, accounts and the rate limit."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .records import Reject, as_int

DEFAULT_API_KEY = "account-demo-key"
DEFAULT_API_SECRET = "demo-secret"
ROLES = ("Trader", "Fund Manager", "Auditor", "Administrator")
TIME_NONCE_WINDOW = 30


@dataclass(slots=True)
class TokenBucket:
    """A key's rate limit: `burst` tokens, refilled at `rate` a second; `rate=None` never refuses."""

    rate: float | None
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> None:
        """Spend one token, or refuse with 429 `RateLimit` and the seconds until one is back."""
        rate = self.rate
        if rate is None:
            return
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens < 1.0:
            wait = max(1, math.ceil((1.0 - self.tokens) / rate))
            raise Reject(429, "RateLimit", "Rate limit exceeded", headers=[("Retry-After", str(wait))])
        self.tokens -= 1.0


@dataclass(slots=True)
class Key:
    api_key: str
    secret: bytes
    roles: frozenset[str]
    nonce_mode: str
    accounts: tuple[str, ...]
    require_heartbeat: bool
    heartbeat_timeout: float
    is_master: bool
    bucket: TokenBucket
    last_seen: float
    last_nonce: int = 0


def make_key(
    api_key: str,
    api_secret: str,
    roles: Sequence[str],
    nonce_mode: str,
    accounts: Sequence[str],
    require_heartbeat: bool,
    heartbeat_timeout: float,
    bucket: TokenBucket,
    now: float,
) -> Key:
    """A key checked against Gemini's rules for roles, nonce modes and master-key accounts."""
    roles = tuple(roles)
    accounts = tuple(accounts)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"roles: unknown {unknown!r}; choose from {ROLES!r}")
    if "Auditor" in roles and len(roles) > 1:
        raise ValueError("roles: Auditor cannot be combined with other roles")
    if nonce_mode not in ("counter", "time"):
        raise ValueError(f"nonce_mode: must be 'counter' or 'time', got {nonce_mode!r}")
    if not accounts:
        raise ValueError("accounts: at least one account is needed")
    is_master = api_key.startswith("master-")
    if not is_master and len(accounts) != 1:
        raise ValueError("accounts: only a 'master-...' key may name several accounts")
    if is_master and require_heartbeat:
        raise ValueError("require_heartbeat: Gemini does not support it on master keys")
    return Key(
        api_key=api_key,
        secret=api_secret.encode(),
        roles=frozenset(roles),
        nonce_mode=nonce_mode,
        accounts=accounts,
        require_heartbeat=require_heartbeat,
        heartbeat_timeout=heartbeat_timeout,
        is_master=is_master,
        bucket=bucket,
        last_seen=now,
    )


def check_signature(key: Key, payload: str, signature: str) -> None:
    expected = hmac.new(key.secret, payload.encode(), hashlib.sha384).hexdigest()
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Reject(400, "InvalidSignature", "Invalid signature for this request")


def check_nonce(key: Key, payload: dict[str, Any], now: float) -> None:
    """Counter keys need a strictly increasing nonce; time keys one within the window of `now`."""
    if "nonce" not in payload or payload["nonce"] in (None, ""):
        raise Reject(400, "MissingNonce", "Payload must contain a nonce")
    nonce = as_int(payload["nonce"])
    if nonce is None:
        raise Reject(400, "InvalidNonce", f"Nonce '{payload['nonce']}' is not an integer")
    if key.nonce_mode == "time":
        if abs(nonce - now) > TIME_NONCE_WINDOW:
            raise Reject(
                400,
                "InvalidNonce",
                f"Nonce '{nonce}' is not within {TIME_NONCE_WINDOW} seconds of server time",
            )
        return
    if nonce <= key.last_nonce:
        raise Reject(400, "InvalidNonce", f"Nonce '{nonce}' has not increased since your last call")
    key.last_nonce = nonce


def check_role(key: Key, roles: frozenset[str] | None) -> None:
    """`roles` are those that may call the endpoint; None lets any key call it."""
    if roles is not None and not roles & key.roles:
        raise Reject(
            403,
            "MissingRole",
            f"This endpoint needs one of the roles {sorted(roles)}; the key has {sorted(key.roles)}",
        )


def account_for(key: Key, payload: dict[str, Any]) -> str:
    """The account a request acts on: an account key's own; the named one for a master key."""
    if not key.is_master:
        return key.accounts[0]
    account = payload.get("account")
    if not account:
        raise Reject(400, "MissingAccounts", "Master API keys must name an 'account' in the payload")
    if account not in key.accounts:
        raise Reject(400, "InvalidAccount", f"Account {account!r} is not in this key's group")
    return str(account)


def silent_sessions(keys: Iterable[Key], now: float) -> set[str]:
    """The "require heartbeat" keys that have said nothing for longer than their timeout."""
    return {k.api_key for k in keys if k.require_heartbeat and now - k.last_seen > k.heartbeat_timeout}
