"""Errors raised for Gemini answers: one class per canonical kind, the mapping from a raw answer, and the
error policy: whether the client retries an error, a poke waits it out, or a cancel run stops on it.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

_MAX_MESSAGE_CHARS = 300

_KEY_LEVEL_KINDS = frozenset(
    {"invalid_signature", "missing_role", "terms_required", "missing_nonce", "missing_scope", "invalid_grant"}
)
_KEY_LEVEL_REASONS = frozenset(
    {
        "InvalidApiKey",
        "InvalidSignature",
        "MissingApikeyHeader",
        "ApiKeyIpFilteringFailure",
        "MissingAccounts",
        "InvalidAccount",
        "InvalidAccountName",
        "AccountNotFound",
        "EndpointMismatch",
    }
)

# Gemini's SDK files an unknown key under the canonical kind invalid_signature; the reason tells the
# user which half of the credentials to check.
_HINTS = {
    "InvalidApiKey": "Gemini does not know this API key; check the key, and that Environment or Base "
    "URL is the API the key was made on, since sandbox keys fail on production",
    "InvalidSignature": "the API secret does not match the key",
    "MissingApikeyHeader": "the request carried no API key",
    "ApiKeyIpFilteringFailure": "the key's IP allow list does not hold this host's address",
    "invalid_client": "the OAuth client_id (login) or client_secret (password) is wrong",
    "InvalidClient": "the OAuth client_id (login) or client_secret (password) is wrong",
}

UNSAFE_TO_REPEAT = ("/v1/order/new", "/v1/withdraw")
"""Paths whose repeat could act twice (place an order, move funds): everything else is idempotent."""


def safe_to_repeat(path: str, error: GeminiError) -> bool:
    """Whether a failed request to `path` may be sent again: any retryable error on an idempotent path;
    on a path in UNSAFE_TO_REPEAT only what Gemini refused unread (429, InvalidNonce)."""
    if not error.retryable:
        return False
    if path.startswith(UNSAFE_TO_REPEAT):
        return error.status == 429 or error.kind == "invalid_nonce"
    return True


class GeminiError(Exception):
    """A Gemini request that failed: `kind` is canonical, `reason` is Gemini's own word for it."""

    kind: ClassVar[str] = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(self.__str__())

    @property
    def retryable(self) -> bool:
        """True when the same request, signed again, may succeed later: the client retries it."""
        if self.status is None or self.status == 429 or self.status >= 500:
            return True
        return self.kind == "invalid_nonce"

    @property
    def transient(self) -> bool:
        """True when waiting fixes it (a retryable error or a closed market): a poke says "not yet"."""
        return self.retryable or self.kind == "market_closed"

    @property
    def key_level(self) -> bool:
        """True when it concerns the key or the account, not one order: every further request of a run
        would fail alike, so the run stops."""
        return (
            self.kind in _KEY_LEVEL_KINDS
            or self.reason in _KEY_LEVEL_REASONS
            or (self.status is not None and self.status in (401, 403))
        )

    def __str__(self) -> str:
        where = "no HTTP answer" if self.status is None else f"HTTP {self.status}"
        if self.reason:
            where = f"{where}, {self.reason}"
        hint = _HINTS.get(self.reason or "")
        return f"{self.kind} ({where}): {self.message}" + (f"; {hint}" if hint else "")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, reason={self.reason!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.reason, self.status, self.retry_after))


def _rebuild(
    cls: type[GeminiError], message: str, reason: str | None, status: int | None, retry_after: float | None
) -> GeminiError:
    return cls(message, reason=reason, status=status, retry_after=retry_after)


class InvalidNonceError(GeminiError):
    """The nonce was not larger than the last one the key used, or (time keys) off by more than 30 s."""

    kind = "invalid_nonce"


class MissingNonceError(GeminiError):
    """The payload carried no nonce."""

    kind = "missing_nonce"


class InvalidSignatureError(GeminiError):
    """The signature, key or secret does not match: credentials are wrong."""

    kind = "invalid_signature"


class MissingRoleError(GeminiError):
    """The key lacks the role the endpoint needs (Trader for every cancel)."""

    kind = "missing_role"


class TermsRequiredError(GeminiError):
    """The account has to accept Gemini's terms first."""

    kind = "terms_required"


class InsufficientFundsError(GeminiError):
    """Not enough funds for the order."""

    kind = "insufficient_funds"


class RateLimitedError(GeminiError):
    """Too many requests (HTTP 429); `retry_after` holds the server's hint in seconds when given."""

    kind = "rate_limited"


class OrderNotFoundError(GeminiError):
    """No order with that id for this account."""

    kind = "order_not_found"


class MarketClosedError(GeminiError):
    """The market is closed or not open yet."""

    kind = "market_closed"


class NotFoundError(GeminiError):
    """Unknown endpoint (404 without a Gemini reason)."""

    kind = "not_found"


class ServiceError(GeminiError):
    """Gemini failed (5xx, maintenance) or could not be reached (status None)."""

    kind = "service_error"


class InvalidRequestError(GeminiError):
    """Any other rejected request: bad fields, missing account, endpoint mismatch."""

    kind = "invalid_request"


class MissingScopeError(GeminiError):
    """The OAuth access token lacks the scope the endpoint needs (orders:create to cancel,
    orders:read to list or read a status). Raised before sending when the token's scopes are known."""

    kind = "missing_scope"

    @property
    def retryable(self) -> bool:
        return False


class InvalidGrantError(GeminiError):
    """The token endpoint refused the refresh token (or code): revoked, already used, or unknown.
    Nothing but a new authorization fixes it, so it is never retried."""

    kind = "invalid_grant"

    @property
    def retryable(self) -> bool:
        return False


ERROR_CLASSES: dict[str, type[GeminiError]] = {
    cls.kind: cls
    for cls in (
        InvalidNonceError,
        MissingNonceError,
        InvalidSignatureError,
        MissingRoleError,
        TermsRequiredError,
        InsufficientFundsError,
        RateLimitedError,
        OrderNotFoundError,
        MarketClosedError,
        NotFoundError,
        ServiceError,
        InvalidRequestError,
        MissingScopeError,
        InvalidGrantError,
    )
}

_KIND_BY_REASON: dict[str, str] = {
    "InvalidNonce": "invalid_nonce",
    "MissingNonce": "missing_nonce",
    "InvalidSignature": "invalid_signature",
    "InvalidApiKey": "invalid_signature",
    "MissingRole": "missing_role",
    "AcceptTermsRequired": "terms_required",
    "MustAccepTerms": "terms_required",
    "MustAcceptTerms": "terms_required",
    "HasNotAgreedToCustodyTerms": "terms_required",
    "InsufficientFunds": "insufficient_funds",
    "RateLimit": "rate_limited",
    "RateLimited": "rate_limited",
    "OrderNotFound": "order_not_found",
    "MarketClosed": "market_closed",
    "MarketNotOpen": "market_closed",
    "TradingClosed": "market_closed",
    "Maintenance": "service_error",
    "System": "service_error",
    "EndpointNotFound": "not_found",
    # OAuth: RFC 6749 error codes and Gemini-style reasons alike (Gemini does not document which).
    "invalid_grant": "invalid_grant",
    "InvalidGrant": "invalid_grant",
    "invalid_client": "invalid_signature",
    "InvalidClient": "invalid_signature",
    "unauthorized_client": "invalid_signature",
    "MissingScope": "missing_scope",
    "InsufficientScope": "missing_scope",
    "insufficient_scope": "missing_scope",
    "InvalidToken": "invalid_signature",
    "invalid_token": "invalid_signature",
}


def _kind_for(status: int, reason: str | None) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "service_error"
    if reason is not None and reason in _KIND_BY_REASON:
        return _KIND_BY_REASON[reason]
    if status == 404:
        return "not_found"
    if status == 406:
        return "insufficient_funds"
    return "invalid_request"


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def error_from_response(
    status: int, headers: Mapping[str, str] | None, body: bytes | str | None
) -> GeminiError:
    """Map an error answer of any shape (result/reason, error-keyed, plain text, empty) to a GeminiError."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    reason: str | None = None
    message = ""
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        raw_reason = data.get("reason") or data.get("error")
        if isinstance(raw_reason, str) and raw_reason:
            reason = raw_reason
        raw_message = data.get("message") or data.get("error_description")  # the latter: RFC 6749
        if isinstance(raw_message, str):
            message = raw_message
    elif text.strip():
        message = text
    if not message:
        message = reason or ("empty answer" if not text.strip() else "unrecognised answer")
    kind = _kind_for(status, reason)
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    return ERROR_CLASSES[kind](_short(message), reason=reason, status=status, retry_after=retry_after)
