"""Where an OAuth connection's rotated tokens live: an Airflow Variable, so every worker, host, the
triggerer and the CLI share the newest refresh token. Airflow glue over oauth.TokenStore.

Inside a task (and the triggerer) the Variable is read and written through the task SDK, which sends
the write to the API server's metadata database; elsewhere (`airflow connections test`, the api-server's
Test) through `airflow.models.Variable`, straight to the database. Variable values whose key holds
"token" are hidden in Airflow's UI, and each value read is registered with the log masker.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.sdk.log import mask_secret

from airflow_provider_gemini.oauth import TokenSet

TOKEN_VARIABLE_PREFIX = "gemini_oauth_token_"


class TokenStoreError(ValueError):
    """The rotated token could not be stored where the next task finds it. A ValueError: the same task
    run again would meet the same store, so it fails without retries."""


def _in_task_runtime() -> bool:
    """True in a task or the triggerer: the task SDK's supervisor channel is there (airflow.models
    itself decides so)."""
    return hasattr(sys.modules.get("airflow.sdk.execution_time.task_runner"), "SUPERVISOR_COMMS")


def read_variable(key: str) -> str | None:
    """An Airflow Variable's text, or None when there is none: through the task SDK in a task or the
    triggerer, through airflow.models elsewhere (the SDK has no channel to the database there)."""
    value: Any
    if _in_task_runtime():
        from airflow.sdk import Variable

        value = Variable.get(key, default=None)
    else:
        from airflow.models import Variable as DbVariable

        value = DbVariable.get(key, default_var=None)
    return value if isinstance(value, str) else None


class VariableTokenStore:
    """The newest TokenSet of one OAuth chain, as JSON in the Airflow Variable `key`."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"VariableTokenStore(key={self.key!r})"

    def _get(self) -> str | None:
        return read_variable(self.key)

    def _set(self, text: str) -> None:
        description = "airflow-provider-gemini: the newest OAuth tokens of a connection (rotated on refresh)"
        if _in_task_runtime():
            from airflow.sdk import Variable

            Variable.set(self.key, text, description=description)
        else:
            from airflow.models import Variable as DbVariable

            DbVariable.set(self.key, text, description=description)

    def load(self) -> TokenSet | None:
        text = self._get()
        tokens = TokenSet.from_json(text) if text else None
        if tokens is not None:
            mask_secret(tokens.access_token)
            mask_secret(tokens.refresh_token)
        return tokens

    def save(self, tokens: TokenSet) -> None:
        mask_secret(tokens.access_token)
        mask_secret(tokens.refresh_token)
        text = tokens.to_json()
        try:
            self._set(text)
        except Exception as err:
            raise TokenStoreError(
                f"Airflow Variable {self.key!r}: the rotated OAuth token could not be stored "
                f"({type(err).__name__}); the refresh token it replaced no longer works"
            ) from None
        back = self._get()
        if back != text:
            # Variable.get reads secrets backends before the metadata database: a Variable of this
            # name defined there hides every write.
            raise TokenStoreError(
                f"Airflow Variable {self.key!r} does not read back what was just stored: it is defined in "
                "a secrets backend (or an AIRFLOW_VAR_ environment variable), which takes precedence over "
                "the metadata database the provider writes to. Remove it there, or name another Variable "
                "in the connection's token_variable extra"
            )
