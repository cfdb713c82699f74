"""Checks of operator and sensor arguments, shared so both refuse the same values with the same words.

Plain Python (no Airflow import): DAG files import the operators and the sensor, and so this module.
"""

from __future__ import annotations

from collections.abc import Mapping

NONE_TEXTS = frozenset({"None", "none", "null"})
"""What a template renders for None: "None" from Jinja, "null" from tojson."""

_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_MAX_SHOWN = 80


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
    """None, or the text a template renders for it."""
    return value is None or (isinstance(value, str) and value.strip() in NONE_TEXTS)


def parse_account(value: object, name: str = "account") -> str | None:
    """An account nickname, or None for the connection's account."""
    if is_none(value):
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"{name}: expected an account nickname or None (the connection's), got {show(value)}")
