"""Apache Airflow provider for the Gemini exchange's trading API: cancel orders safely from DAGs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

DEFAULT_CONN_ID = "gemini_default"
"""The connection id every hook, operator, sensor and trigger uses unless given another."""

CONN_TYPE = "geminiexchange"
"""The connection type. No "_": Airflow warns on every URI of a type that is not an RFC 3986 scheme,
and plain "gemini" would meet Google's Gemini models in a shared Airflow."""

LEGACY_CONN_TYPE = "gemini_exchange"
"""The type of connections made by earlier versions; still registered, so they keep working."""

_INTEGRATION = "Gemini Exchange"

# The trigger and connection forms of Airflow 3.3 save every field, a null for each one left empty,
# so no field carries a default: an empty field means the provider's default, stated in its text,
# and a connection saved from the form follows the provider's defaults instead of pinning them.
_CONN_FIELDS: dict[str, Any] = {
    "auth_type": {
        "label": "Auth type",
        "schema": {"type": ["string", "null"], "enum": ["api_key", "oauth"]},
        "description": "api_key (empty): login is the API key, password its secret; oauth: login is the "
        "OAuth app's client_id, password its client_secret, and Refresh token below is required.",
    },
    "refresh_token": {
        "label": "OAuth refresh token",
        # "password": the form masks it as it does the connection's password.
        "schema": {"type": ["string", "null"], "format": "password"},
        "description": "oauth only: the refresh token from the authorization code grant. It is spent at "
        "the first refresh; the newest one is kept in the Variable below.",
    },
    "refresh_token_variable": {
        "label": "OAuth refresh token Variable",
        "schema": {"type": ["string", "null"]},
        "description": "oauth only, instead of the refresh token: the Airflow Variable that holds it.",
    },
    "token_variable": {
        "label": "OAuth token store Variable",
        "schema": {"type": ["string", "null"]},
        "description": "oauth only: the Airflow Variable the rotated tokens are written to "
        "(empty: gemini_oauth_token_<fingerprint of client_id and refresh token>).",
    },
    "token_url": {
        "label": "OAuth token URL",
        "schema": {"type": ["string", "null"]},
        "description": "oauth only (empty: https://exchange.gemini.com/auth/token, the sandbox's for "
        "the sandbox, else Base URL + /auth/token).",
    },
    "environment": {
        "label": "Environment",
        # A None among the choices would show as the text "null"; empty means production.
        "schema": {"type": ["string", "null"], "enum": ["production", "sandbox"]},
        "description": "Which Gemini API to use when Base URL is empty (empty: production).",
    },
    "account": {
        "label": "Account",
        "schema": {"type": ["string", "null"]},
        "description": "Account nickname; required for master keys (master-...).",
    },
    "nonce_mode": {
        "label": "Nonce mode",
        "schema": {"type": ["string", "null"], "enum": ["counter", "time"]},
        "description": "counter (empty): increasing milliseconds, for default keys; "
        "time: seconds, for keys created with 'Uses a time based nonce'.",
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "schema": {"type": ["number", "null"], "minimum": 0},
        "description": "Seconds one attempt may take for the whole answer; each retry gets a new one "
        "(empty: 10).",
    },
    "call_timeout": {
        "label": "Call timeout (seconds)",
        "schema": {"type": ["number", "null"], "minimum": 0},
        "description": "Seconds one request may take in all, retries and their waits included (empty: 60).",
    },
    "rate_limit_per_minute": {
        "label": "Rate limit (requests a minute)",
        # One type: a field of several types is a multi-line JSON box in the form. Text takes both a
        # number and "off".
        "schema": {"type": ["string", "null"], "pattern": r"^\s*([0-9]+(\.[0-9]*)?|off)\s*$"},
        "description": "This process's pacing for the key, or off (empty: 600). "
        "Use an Airflow pool to share one key across workers.",
    },
    "burst": {
        "label": "Burst",
        "schema": {"type": ["integer", "null"], "minimum": 1},
        "description": "Requests allowed back to back before pacing starts (empty: 5).",
    },
    "max_attempts": {
        "label": "Attempts per request",
        "schema": {"type": ["integer", "null"], "minimum": 1},
        "description": "Tries of one request (first one included) on transient errors (empty: 5).",
    },
    "watch_share": {
        "label": "Watch share of the rate limit",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "description": "Fraction of the key's rate limit that deferred sensors may poll with, "
        "all triggers of the key together (empty: 0.25).",
    },
    "audit_trail": {
        "label": "Audit trail",
        "schema": {"type": ["string", "null"]},
        "description": "Where every cancel is recorded as a JSON line: default ($AIRFLOW_HOME/gemini_audit), "
        "an absolute path, or a URL such as s3://bucket/gemini-audit (empty: off).",
    },
    "audit_trail_conn_id": {
        "label": "Audit trail connection",
        "schema": {"type": ["string", "null"]},
        "description": "The Airflow connection an object store Audit trail URL is opened with (empty: none).",
    },
    "redis_url": {
        "label": "Redis URL (shared budget)",
        # "password": the URL may carry the Redis password; the form masks it.
        "schema": {"type": ["string", "null"], "format": "password"},
        "description": "redis://[:password@]host:port/db or rediss:// (TLS): every host shares the key's "
        "rate budget and counter nonces there; set it on every worker that uses the key, or none. "
        "Requests fail while Redis is down (empty: off, each host paces alone).",
    },
    "redis_conn_id": {
        "label": "Redis connection (shared budget)",
        "schema": {"type": ["string", "null"]},
        "description": "Instead of Redis URL: an Airflow connection of type redis (host, port, password, "
        "extra db and ssl) for the shared budget (empty: off).",
    },
}


def _connection_type(conn_type: str, hook_class: str, hook_name: str) -> dict[str, Any]:
    return {
        "connection-type": conn_type,
        "hook-class-name": hook_class,
        "hook-name": hook_name,
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port", "extra"],
            "relabeling": {
                "login": "API key (OAuth: client_id)",
                "password": "API secret (OAuth: client_secret)",
                "host": "Base URL (optional)",
            },
            "placeholders": {
                "login": "account-XXXXXXXXXXXXXXXXXXXX",
                "host": "https://api.sandbox.gemini.com (empty: from Environment)",
            },
        },
        "conn-fields": _CONN_FIELDS,
    }


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's ProvidersManager; plain data, so reading it imports nothing."""
    return {
        "package-name": "airflow-provider-gemini",
        "name": "Gemini Exchange",
        "description": "Cancel orders on the Gemini exchange from Airflow: one, a list, a session, or the stale ones.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://docs.gemini.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_gemini.hooks.gemini"],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_gemini.operators.cancel"],
            }
        ],
        "sensors": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_gemini.sensors.order"],
            }
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_gemini.triggers.order"],
            }
        ],
        "connection-types": [
            _connection_type(CONN_TYPE, "airflow_provider_gemini.hooks.gemini.GeminiHook", _INTEGRATION),
            _connection_type(
                LEGACY_CONN_TYPE,
                "airflow_provider_gemini.hooks.gemini.GeminiLegacyTypeHook",
                f"{_INTEGRATION} (legacy type {LEGACY_CONN_TYPE})",
            ),
        ],
    }
