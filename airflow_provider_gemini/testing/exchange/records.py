"""What goes over the wire: answers, error answers, and the JSON and header helpers they share."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

JSON_TYPE = "application/json"


class Reject(Exception):
    """An error answer: Gemini's `{"result":"error","reason":...,"message":...}` body."""

    def __init__(self, status: int, reason: str, message: str, headers: Sequence[tuple[str, str]] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = list(headers)

    def answer(self) -> Answer:
        return error_answer(self.status, self.reason, self.message, self.headers)


@dataclass(frozen=True, slots=True)
class Request:
    """What the exchange reads of one POST: the path, Gemini's auth headers, and the body (only the
    OAuth token endpoint has one)."""

    path: str
    api_key: str | None = None
    payload: str | None = None
    signature: str | None = None
    authorization: str | None = None
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Trickle:
    """Send an answer `chunk_bytes` at a time, the pauses between them adding up to `seconds`."""

    seconds: float
    chunk_bytes: int


@dataclass(slots=True)
class Answer:
    """One HTTP answer as the server will write it; `drop` closes the connection without one."""

    status: int
    body: bytes
    content_type: str | None = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None
    drop: bool = False
    trickle: Trickle | None = None


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def error_answer(status: int, reason: str, message: str, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    body = dumps({"result": "error", "reason": reason, "message": message})
    return Answer(status, body, headers=list(headers), reason=reason)


def seconds_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def decode_payload(text: str) -> dict[str, Any] | None:
    """The payload header as a dict (ints exact, fractions as Decimal), or None if it is not one."""
    try:
        value = json.loads(base64.b64decode(text, validate=True), parse_float=Decimal)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def as_int(value: object) -> int | None:
    """An int from a JSON integer or a string of ASCII digits; None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
    return None
