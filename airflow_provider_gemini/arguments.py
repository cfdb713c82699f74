"""Every argument check the operators, the sensor, the trigger, the client and the hook share, so all of
them refuse the same values with the same words, naming the field, before any request is sent.

Plain Python (no Airflow import): DAG files import the operators and the sensor, and so this module.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

NONE_TEXTS = frozenset({"None", "none", "null"})
"""What a template renders for None: "None" from Jinja, "null" from tojson."""

MAX_ORDER_ID = 2**63 - 1
SCOPES = ("session", "all")
SIDES = ("buy", "sell")

DEFAULT_MAX_CLOCK_SKEW_SECONDS = 5.0
"""How far the worker's clock may be from the exchange's before a stale sweep refuses to run: well
above what a Date header (whole seconds) and a round trip can blur, well below a typical `max_age`."""

DEFAULT_MAX_START_DELAY = timedelta(minutes=30)
"""How late a scheduled or backfill cancel run may start and still act (`timing.late_start`): room for
a busy scheduler or a queue, far short of the next session."""

Parser = Callable[[Any, str], Any]
"""An argument check: (value, field name) -> the parsed value, or ValueError naming the field."""

_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_MAX_SHOWN = 80
_TRUE_TEXTS = frozenset({"true", "1", "yes", "on"})
_FALSE_TEXTS = frozenset({"false", "0", "no", "off"})
_SYMBOL = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TIMEDELTA_TEXT = re.compile(r"(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_HOSTNAME = re.compile(r"[A-Za-z0-9._:-]+")


def show(value: object) -> str:
    """A value's repr for an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def unrendered(value: object) -> bool:
    """True for a value Airflow has still to render: Jinja text (also inside a collection) or an XComArg."""
    if isinstance(value, str):
        return any(marker in value for marker in _TEMPLATE_MARKERS)
    if isinstance(value, list | tuple | set | frozenset):
        return any(unrendered(item) for item in value)
    if isinstance(value, Mapping):
        return any(unrendered(item) for item in value.values())
    return callable(getattr(value, "resolve", None))


def is_none(value: object) -> bool:
    """None, or the text a template renders for it: for settings where None is a safe default."""
    return value is None or (isinstance(value, str) and value.strip() in NONE_TEXTS)


def real_none(value: object, name: str, meaning: str) -> bool:
    """True only for a real None, for safety settings whose None widens what a run touches (`meaning`:
    "no cap", "every symbol"). Text that reads as none ("None", "null", "") fails closed: a template
    that rendered a missing value must not switch a cap or a filter off."""
    if value is None:
        return True
    if isinstance(value, str) and (not value.strip() or value.strip() in NONE_TEXTS):
        raise ValueError(
            f"{name}: got the text {show(value)}; only a real None means {meaning} "
            "(render templates with render_template_as_native_obj=True, or pass None)"
        )
    return False


def list_from_text(text: str, field: str, what: str = "list") -> list[Any]:
    """The list a template rendered as text: JSON (`tojson`) or a Python literal (`{{ value }}`)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{field}: not a {what}: {show(text)}") from None
    if not isinstance(parsed, list | tuple):
        raise ValueError(f"{field}: not a {what}: {show(text)}")
    return list(parsed)


# -- order ids ------------------------------------------------------------------------------------


def parse_order_id(value: object, field: str = "order_id") -> int:
    """An order id as an exact int: an int (not bool) or a string of ASCII digits, 1..2**63-1."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
    if number is None:
        raise ValueError(f"{field}: expected an order id (an int or a string of digits), got {show(value)}")
    if not 1 <= number <= MAX_ORDER_ID:
        raise ValueError(f"{field}: order id must be between 1 and 2**63-1, got {show(value)}")
    return number


REPORT_ID_LISTS = ("cancelled", "already_cancelled")
"""The lists of a cancel report whose orders a confirm step waits on: the ones that are now cancelled."""


def parse_order_ids(value: object, field: str = "order_id") -> list[int]:
    """One id, a list/tuple of ids, the text of a list (a rendered template), or a cancel operator's
    report (its cancelled and already-cancelled ids; possibly none); deduplicated, in order."""
    items: list[Any]
    if isinstance(value, Mapping) and any(name in value for name in REPORT_ID_LISTS):
        items = [oid for name in REPORT_ID_LISTS for oid in value.get(name) or ()]
        if not items:
            return []
    elif isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str) and value.strip()[:1] in ("[", "("):
        items = list_from_text(value.strip(), field, "list of order ids")
    else:
        return [parse_order_id(value, field)]
    if not items:
        raise ValueError(f"{field}: no order ids given (empty list)")
    seen: dict[int, None] = {}
    for index, item in enumerate(items):
        seen.setdefault(parse_order_id(item, f"{field}[{index}]"), None)
    return list(seen)


# -- operator and sensor arguments ----------------------------------------------------------------


def parse_account(value: object, name: str = "account") -> str | None:
    """An account nickname, or None for the connection's account."""
    if is_none(value):
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"{name}: expected an account nickname or None (the connection's), got {show(value)}")


def parse_bool(value: object, name: str) -> bool:
    """A flag: a bool, 0/1, or its text (true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_TEXTS:
            return True
        if text in _FALSE_TEXTS:
            return False
    raise ValueError(f"{name}: expected true or false, got {show(value)}")


def parse_scope(value: object, name: str = "scope") -> str:
    """'session' (this key's orders) or 'all' (the account's)."""
    if isinstance(value, str) and value.strip().lower() in SCOPES:
        return value.strip().lower()
    raise ValueError(f"{name}: expected 'session' or 'all', got {show(value)}")


def parse_side(value: object, name: str = "side") -> str | None:
    """'buy', 'sell', or None for both sides."""
    if real_none(value, name, "both sides"):
        return None
    if isinstance(value, str) and value.strip().lower() in SIDES:
        return value.strip().lower()
    raise ValueError(f"{name}: expected 'buy', 'sell' or None (both sides), got {show(value)}")


def parse_prefix(value: object, name: str = "client_order_id_prefix") -> str | None:
    """A client order id prefix (case-sensitive), or None for any client order id. An int is taken as
    its digits: client order ids are often numeric, and native rendering turns "2024" into 2024."""
    if real_none(value, name, "any client order id"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"{name}: expected a non-empty string or None (any client order id), got {show(value)}")


def parse_seconds(value: object, name: str = "max_age") -> float:
    """A non-negative age in seconds: a timedelta, a number, or its text ("3600", "1:00:00")."""
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _TIMEDELTA_TEXT.fullmatch(text)
        if match:
            days, hours, minutes, secs = match.groups()
            seconds = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs)
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(
            f"{name}: expected a timedelta or a number of seconds (e.g. 3600), got {show(value)}"
        )
    if seconds < 0:
        raise ValueError(f"{name}: must not be negative, got {show(value)}")
    return seconds


def parse_cap(value: object, name: str = "max_cancellations") -> int | None:
    """A cap of at least 1, or None for no cap."""
    if real_none(value, name, "no cap"):
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number < 1:
        raise ValueError(f"{name}: expected an integer >= 1 or None (no cap), got {show(value)}")
    return number


def parse_symbols(value: object, name: str = "symbols") -> tuple[str, ...] | None:
    """None (every symbol), one symbol, "btcusd,ethusd", a list, or a list's text; lower-cased."""
    if real_none(value, name, "every symbol"):
        return None
    items: list[Any]
    if isinstance(value, str):
        text = value.strip()
        items = list_from_text(text, name) if text[:1] in ("[", "(") else text.split(",")
    elif isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else list(value)
    else:
        raise ValueError(f"{name}: expected a symbol, a list of symbols or None, got {show(value)}")
    symbols: dict[str, None] = {}
    for item in items:
        symbol = item.strip().lower() if isinstance(item, str) else None
        if not symbol or not _SYMBOL.fullmatch(symbol):
            raise ValueError(f"{name}: not a symbol: {show(item)} (in {show(value)})")
        symbols.setdefault(symbol, None)
    if not symbols:
        raise ValueError(f"{name}: empty; pass None to match every symbol")
    return tuple(symbols)


def parse_deadline(value: object, name: str = "deadline") -> datetime | timedelta | None:
    """When a bulk run stops retrying: an aware datetime (or its ISO text), a timedelta from the start
    (or seconds, or their text), or None for the default (derived from execution_timeout)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and "T" in value.strip():
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{name}: not an ISO 8601 date and time: {show(value)}") from None
    else:
        seconds = parse_seconds(value, name)
        if seconds <= 0:
            raise ValueError(f"{name}: expected a time after the start, got {show(value)}")
        return timedelta(seconds=seconds)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name}: needs a time zone (e.g. 2026-01-05T15:55:00-05:00), got {show(value)}")
    return moment


def parse_start_delay(value: object, name: str = "max_start_delay") -> timedelta | None:
    """How late a scheduled run may start: a timedelta or seconds (or their text); a real None turns
    the guard off, and text that reads as none is refused like any other bad value."""
    if value is None:
        return None
    return timedelta(seconds=parse_seconds(value, name))


def parse_conn_id(value: object, name: str = "gemini_conn_id") -> str:
    """An Airflow connection id: non-empty text."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a connection id, got {show(value)}")
    return value


# -- client settings ------------------------------------------------------------------------------


def valid_hostname(hostname: str | None) -> bool:
    """A DNS name or an IP address (IPv6 without its brackets); urlsplit lets spaces and the like through,
    and requests would then fail with an error that is neither a GeminiError nor a retryable one."""
    return bool(hostname) and _HOSTNAME.fullmatch(hostname or "") is not None


def parse_base_url(text: str, name: str = "base_url") -> str:
    """`scheme://host[:port]` with scheme http or https, trailing slash dropped. A path, query, fragment
    or user part is refused: every request path is appended to it, and credentials never ride in a URL."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: not a valid URL: {show(text)} ({exc})") from None
    if (
        parts.scheme not in ("http", "https")
        or not valid_hostname(parts.hostname)
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"{name}: expected http(s)://host[:port], got {show(text)}")
    return f"{parts.scheme}://{parts.netloc}"


def parse_positive(value: object, name: str) -> float:
    """A finite number above zero (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def parse_positive_int(value: object, name: str) -> int:
    """An int of at least 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def parse_audit_trail(value: object, name: str = "audit_trail") -> str | None:
    """Where the audit trail goes: None (the connection decides; off when it says nothing), "off",
    "default" ($AIRFLOW_HOME/gemini_audit), an absolute local path, or a URL (file://, s3://, gs://...)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name}: expected 'off', 'default', an absolute path or a URL such as s3://bucket/audit, "
            f"got {show(value)}"
        )
    text = value.strip()
    if text.lower() in ("off", "default"):
        return text.lower()
    if text.startswith("/") or _URL_SCHEME.fullmatch(text):
        return text
    raise ValueError(
        f"{name}: expected 'off', 'default', an absolute path or a URL such as s3://bucket/audit, "
        f"got {show(value)}"
    )
