"""Apache Airflow provider for the Gemini exchange's trading API: cancel orders safely from DAGs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

DEFAULT_CONN_ID = "gemini_default"
"""The connection id every hook, operator, sensor and trigger uses unless given another."""

_INTEGRATION = "Gemini Exchange"


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
            {
                "connection-type": "gemini_exchange",
                "hook-class-name": "airflow_provider_gemini.hooks.gemini.GeminiHook",
                "hook-name": "Gemini Exchange",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {
                        "login": "API key",
                        "password": "API secret",
                        "host": "Base URL (optional)",
                    },
                    "placeholders": {
                        "login": "account-XXXXXXXXXXXXXXXXXXXX",
                        "host": "https://api.sandbox.gemini.com (empty: from Environment)",
                    },
                },
                "conn-fields": {
                    "environment": {
                        "label": "Environment",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["production", "sandbox", None],
                            "default": "production",
                        },
                        "description": "Which Gemini API to use when Base URL is empty.",
                    },
                    "account": {
                        "label": "Account",
                        "schema": {"type": ["string", "null"]},
                        "description": "Account nickname; required for master keys (master-...).",
                    },
                    "nonce_mode": {
                        "label": "Nonce mode",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["counter", "time", None],
                            "default": "counter",
                        },
                        "description": "counter: increasing milliseconds (default keys); "
                        "time: seconds, for keys created with 'Uses a time based nonce'.",
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 10},
                        "description": "Seconds one attempt may take for the whole answer; "
                        "each retry gets a new one.",
                    },
                    "call_timeout": {
                        "label": "Call timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 60},
                        "description": "Seconds one request may take in all, retries and their waits "
                        "included.",
                    },
                    "rate_limit_per_minute": {
                        "label": "Rate limit (requests a minute)",
                        "schema": {"type": ["number", "string", "null"], "default": 600},
                        "description": "This process's pacing for the key; 'off' disables it. "
                        "Use an Airflow pool to share one key across workers.",
                    },
                    "burst": {
                        "label": "Burst",
                        "schema": {"type": ["integer", "null"], "default": 5},
                        "description": "Requests allowed back to back before pacing starts.",
                    },
                    "max_attempts": {
                        "label": "Attempts per request",
                        "schema": {"type": ["integer", "null"], "default": 5},
                        "description": "Tries of one request (first one included) on transient errors.",
                    },
                },
            }
        ],
    }
