"""The provider is installable and Airflow finds it: entry point, provider info, connection form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import airflow_provider_gemini
from airflow_provider_gemini import get_provider_info

VENV_BIN = Path(sys.executable).parent


def test_provider_info_validates_against_airflows_schema() -> None:
    import airflow

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_provider_info_is_plain_json_and_names_the_distribution() -> None:
    info = get_provider_info()
    assert json.loads(json.dumps(info)) == info
    assert info["package-name"] == "airflow-provider-gemini"
    assert info["versions"][0] == airflow_provider_gemini.__version__


def test_every_listed_module_and_class_imports() -> None:
    import importlib

    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for conn in info["connection-types"]:
        module, _, cls = conn["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), cls)
        assert hook.conn_type == conn["connection-type"]
        assert hook.hook_name == conn["hook-name"]


def test_providers_manager_discovers_version_and_connection_type(airflow_home: dict[str, str]) -> None:
    code = (
        "import json, warnings; warnings.simplefilter('ignore');"
        "from airflow.providers_manager import ProvidersManager;"
        "pm = ProvidersManager(); p = pm.providers['airflow-provider-gemini'];"
        "types = ('geminiexchange', 'gemini_exchange');"
        "print(json.dumps({'version': p.version, 'behaviour': [pm.field_behaviours.get(t) for t in types],"
        "'widgets': sorted(k for k in pm.connection_form_widgets if 'gemini' in k),"
        "'hooks': [pm.hooks[t].hook_class_name for t in types]}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=airflow_home,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["version"] == airflow_provider_gemini.__version__
    # The type without "_", and the earlier one so that existing connections keep their form and Test.
    assert found["hooks"] == [
        "airflow_provider_gemini.hooks.gemini.GeminiHook",
        "airflow_provider_gemini.hooks.gemini.GeminiLegacyTypeHook",
    ]
    for behaviour in found["behaviour"]:
        assert behaviour["relabeling"] == {
            "login": "API key (OAuth: client_id)",
            "password": "API secret (OAuth: client_secret)",
            "host": "Base URL (optional)",
        }
    assert found["widgets"] == [
        f"extra__{conn_type}__{name}"
        for conn_type in ("gemini_exchange", "geminiexchange")
        for name in sorted(
            [
                "account",
                "auth_type",
                "audit_trail",
                "audit_trail_conn_id",
                "burst",
                "call_timeout",
                "environment",
                "max_attempts",
                "nonce_mode",
                "rate_limit_per_minute",
                "redis_conn_id",
                "redis_url",
                "refresh_token",
                "refresh_token_variable",
                "timeout",
                "token_url",
                "token_variable",
                "watch_share",
            ]
        )
    ]


def test_airflow_providers_list_shows_the_provider(airflow_home: dict[str, str]) -> None:
    out = subprocess.run(
        [str(VENV_BIN / "airflow"), "providers", "list", "-o", "json"],
        env=airflow_home,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    providers = {p["package_name"]: p["version"] for p in json.loads(out.stdout)}
    assert providers["airflow-provider-gemini"] == airflow_provider_gemini.__version__


@pytest.mark.parametrize(
    "module",
    ["airflow_provider_gemini", "airflow_provider_gemini.exceptions", "airflow_provider_gemini.models"],
)
def test_light_modules_import_neither_airflow_nor_requests(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'requests', 'tenacity')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_client_module_works_without_airflow() -> None:
    code = "import sys, airflow_provider_gemini.client; print(sorted(m for m in sys.modules if m.startswith('airflow.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
