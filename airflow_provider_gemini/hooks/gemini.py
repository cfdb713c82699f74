"""GeminiHook: an Airflow connection (API key or OAuth) turned into a GeminiClient, checked before any
request, with what records its cancels: Airflow's Stats for the metrics and the audit trail the
connection or task names."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from airflow_provider_gemini import CONN_TYPE, DEFAULT_CONN_ID, LEGACY_CONN_TYPE
from airflow_provider_gemini.arguments import parse_audit_trail, parse_base_url
from airflow_provider_gemini.auth import NONCE_MODES
from airflow_provider_gemini.client import PRODUCTION_URL, SANDBOX_URL, GeminiClient
from airflow_provider_gemini.exceptions import GeminiError
from airflow_provider_gemini.oauth import CANCEL_SCOPE, READ_SCOPE, TOKEN_URLS, OAuthSession, fingerprint

if TYPE_CHECKING:
    from airflow_provider_gemini.audit import AuditTrail
    from airflow_provider_gemini.recording import CancelRecorder
ENVIRONMENTS = {"production": PRODUCTION_URL, "sandbox": SANDBOX_URL}
DEFAULT_TIMEOUT = 10.0
AUTH_TYPES = ("api_key", "oauth")
# Gemini's OAuth token endpoint is on the exchange's web host, not the API host.
_TOKEN_URL_FOR_API = {PRODUCTION_URL: TOKEN_URLS["production"], SANDBOX_URL: TOKEN_URLS["sandbox"]}

Fail = Callable[[str], "GeminiConnectionError"]


class GeminiConnectionError(ValueError):
    """The connection's fields cannot make a client; the message names the connection and the field,
    `problem` the field alone (for the Test button, which runs on a temporary copy's id)."""

    def __init__(self, conn_id: str, problem: str) -> None:
        self.conn_id = conn_id
        self.problem = problem
        super().__init__(f"Gemini connection {conn_id!r}: {problem}")


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _base_url(fail: Fail, conn: Any, environment: str) -> str:
    host = "" if _blank(conn.host) else str(conn.host).strip()
    if not host:
        return ENVIRONMENTS[environment]
    schema = str(conn.schema or "").strip().lower()
    text = host if "://" in host else f"{schema if schema in ('http', 'https') else 'https'}://{host}"
    try:
        url = parse_base_url(text, "host")
        if conn.port and urlsplit(url).port is None:
            url = f"{url}:{int(conn.port)}"
    except ValueError:
        raise fail(
            f"host: expected a base URL such as https://api.gemini.com or http://127.0.0.1:8765, got {host!r}"
        ) from None
    return url


def _choice(fail: Fail, extra: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = extra.get(name)
    if _blank(value):
        return default
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text is None or text not in choices:
        allowed = " or ".join(repr(choice) for choice in choices)
        raise fail(f"{name} (extra): expected {allowed}, got {value!r}")
    return text


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _tuning(fail: Fail, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The optional extras rate_limit_per_minute ("off" disables the pacing), burst, max_attempts and
    call_timeout (seconds a call may take, retries included)."""
    tuning: dict[str, Any] = {}
    rate = extra.get("rate_limit_per_minute")
    if isinstance(rate, str) and rate.strip().lower() == "off":
        tuning["rate_limit_per_minute"] = None
    elif not _blank(rate):
        tuning["rate_limit_per_minute"] = _number(rate)
        if tuning["rate_limit_per_minute"] is None:
            raise fail(f"rate_limit_per_minute (extra): expected a positive number or 'off', got {rate!r}")
    for name in ("burst", "max_attempts"):
        value = extra.get(name)
        if _blank(value):
            continue
        number = _number(value)
        if number is None or not number.is_integer():
            raise fail(f"{name} (extra): expected an integer >= 1, got {value!r}")
        tuning[name] = int(number)
    call_timeout = extra.get("call_timeout")
    if not _blank(call_timeout):
        tuning["call_timeout"] = _number(call_timeout)
        if tuning["call_timeout"] is None:
            raise fail(f"call_timeout (extra): expected a positive number of seconds, got {call_timeout!r}")
    return tuning


def _timeout(fail: Fail, extra: Mapping[str, Any]) -> float:
    value = extra.get("timeout")
    if _blank(value):
        return DEFAULT_TIMEOUT
    seconds = _number(value)
    if seconds is None:
        raise fail(f"timeout (extra): expected a positive number of seconds, got {value!r}")
    return seconds


def client_kwargs(conn: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """GeminiClient arguments from a connection; GeminiConnectionError names the first bad field."""
    conn_id = getattr(conn, "conn_id", None) or "?"

    def fail(problem: str) -> GeminiConnectionError:
        return GeminiConnectionError(conn_id, problem)

    if extra is None:
        extra = conn.extra_dejson
    if not isinstance(extra, Mapping):
        raise fail(f"extra: expected a JSON object, got {type(extra).__name__}")
    auth_type = _choice(fail, extra, "auth_type", AUTH_TYPES, "api_key")
    oauth = auth_type == "oauth"
    login = "" if _blank(conn.login) else str(conn.login).strip()
    password = "" if _blank(conn.password) else str(conn.password).strip()
    if not login:
        raise fail("OAuth client_id (login) is empty" if oauth else "API key (login) is empty")
    if not password:
        raise fail("OAuth client_secret (password) is empty" if oauth else "API secret (password) is empty")
    mask_secret(login)
    mask_secret(password)
    environment = _choice(fail, extra, "environment", tuple(ENVIRONMENTS), "production")
    account = extra.get("account")
    if not _blank(account) and not isinstance(account, str):
        raise fail(f"account (extra): expected an account nickname, got {account!r}")
    base_url = _base_url(fail, conn, environment)
    common = {
        "base_url": base_url,
        "account": None if _blank(account) else str(account).strip(),
        "timeout": _timeout(fail, extra),
        **_tuning(fail, extra),
    }
    # The budget is kept per sender, as the client keys it: the API key, or the OAuth app (no nonces).
    identity = f"oauth:{login}" if oauth else login
    coordinator = _coordinator(fail, conn_id, extra, identity, common)
    if coordinator is not None:
        common["coordinator"] = coordinator
    if oauth:
        return {"oauth": _oauth_session(fail, conn_id, login, password, base_url, extra), **common}
    return {
        "api_key": login,
        "api_secret": password,
        "nonce_mode": _choice(fail, extra, "nonce_mode", NONCE_MODES, "counter"),
        **common,
    }


def _text_extra(fail: Fail, extra: Mapping[str, Any], name: str) -> str | None:
    value = extra.get(name)
    if _blank(value):
        return None
    if not isinstance(value, str) or value.strip().split() != [value.strip()]:
        raise fail(f"{name} (extra): expected one word of text, got a {type(value).__name__}")
    return value.strip()


def _coordinator(
    fail: Fail, conn_id: str, extra: Mapping[str, Any], identity: str, tuning: Mapping[str, Any]
) -> Any:
    """The key's RedisCoordinator from the extra `redis_url` or `redis_conn_id` (a connection of type
    redis: host, port, login, password, extra db and ssl); None when neither is set (the default)."""
    url = extra.get("redis_url")
    redis_conn_id = _text_extra(fail, extra, "redis_conn_id")
    if _blank(url) and redis_conn_id is None:
        return None
    from airflow_provider_gemini.coordination import INSTALL_HINT, RedisSettings, shared_coordinator

    field = "redis_url" if redis_conn_id is None else "redis_conn_id"
    if not _blank(url) and redis_conn_id is not None:
        raise fail("redis_url, redis_conn_id (extra): give one of them, not both")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise fail(
            f"{field} (extra): the shared Redis budget needs the redis package: {INSTALL_HINT}"
        ) from None
    where = f"{field} (extra of Gemini connection {conn_id!r})"
    if redis_conn_id is None:
        if not isinstance(url, str):
            raise fail(f"redis_url (extra): expected a redis:// or rediss:// URL, got a {type(url).__name__}")
        mask_secret(url.strip())
        try:
            settings = RedisSettings.from_url(url.strip(), where)
        except ValueError as err:
            raise fail(str(err).replace(where, "redis_url (extra)", 1)) from None
    else:
        settings = _redis_connection(fail, redis_conn_id, where)
    if settings.password:
        mask_secret(settings.password)
    return shared_coordinator(
        settings, identity, tuning.get("rate_limit_per_minute") or 600, tuning.get("burst", 5)
    )


def _redis_connection(fail: Fail, redis_conn_id: str, where: str) -> Any:
    """RedisSettings from the Airflow connection `redis_conn_id` (type redis, as the Redis provider's)."""
    from airflow_provider_gemini.coordination import RedisSettings

    try:
        conn = BaseHook.get_connection(redis_conn_id)
    except Exception:
        raise fail(f"redis_conn_id (extra): no Airflow connection {redis_conn_id!r} can be read") from None
    if str(conn.conn_type or "").lower() != "redis":
        raise fail(
            f"redis_conn_id (extra): connection {redis_conn_id!r} has type {conn.conn_type!r}, not redis"
        )
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, Mapping) else {}
    db, ssl = extra.get("db", 0), extra.get("ssl", False)
    if isinstance(db, str) and db.strip().isdigit():
        db = int(db)
    if isinstance(ssl, str) and ssl.strip().lower() in ("true", "false"):
        ssl = ssl.strip().lower() == "true"
    if not isinstance(ssl, bool):
        raise fail(
            f"redis_conn_id (extra): connection {redis_conn_id!r} has extra ssl {ssl!r}, not true or false"
        )
    password = None if _blank(conn.password) else str(conn.password)
    if password:
        mask_secret(password)
    try:
        return RedisSettings(
            host="" if _blank(conn.host) else str(conn.host).strip(),
            port=int(conn.port) if conn.port else 6379,
            db=db,
            username=None if _blank(conn.login) else str(conn.login).strip(),
            password=password,
            ssl=ssl,
            setting=where,
        )
    except ValueError as err:
        raise fail(
            str(err).replace(where, f"redis_conn_id (extra): connection {redis_conn_id!r}", 1)
        ) from None


def _oauth_session(
    fail: Fail, conn_id: str, client_id: str, client_secret: str, base_url: str, extra: Mapping[str, Any]
) -> OAuthSession:
    """The OAuth session of a connection: its first refresh token from the `refresh_token` extra (or
    the Variable `refresh_token_variable` names), rotated tokens in the Variable `token_variable`."""
    from airflow_provider_gemini.hooks.token_store import (
        TOKEN_VARIABLE_PREFIX,
        VariableTokenStore,
        read_variable,
    )

    refresh_token = _text_extra(fail, extra, "refresh_token")
    variable = _text_extra(fail, extra, "refresh_token_variable")
    if refresh_token and variable:
        raise fail("refresh_token, refresh_token_variable (extra): give one of them, not both")
    if variable:
        try:
            refresh_token = (read_variable(variable) or "").strip()
        except Exception:
            refresh_token = ""
        if not refresh_token:
            raise fail(f"refresh_token_variable (extra): no Airflow Variable {variable!r} can be read")
    if not refresh_token:
        raise fail(
            "refresh_token (extra): empty; an OAuth connection needs the refresh token from the "
            "authorization code grant (or refresh_token_variable naming a Variable that holds it)"
        )
    mask_secret(refresh_token)
    token_url = _text_extra(fail, extra, "token_url")
    if token_url is None:
        token_url = _TOKEN_URL_FOR_API.get(base_url, base_url + "/auth/token")
    else:
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise fail(
                f"token_url (extra): expected a URL such as {TOKEN_URLS['production']}, got {token_url!r}"
            )
    # Named after the app and the first refresh token, not the conn id: the api-server tests a copy of
    # the connection under a random id, and its refresh must land where the real connection reads.
    store_key = _text_extra(fail, extra, "token_variable") or (
        TOKEN_VARIABLE_PREFIX + fingerprint(f"{client_id} {refresh_token}")
    )
    return OAuthSession(
        client_id,
        client_secret,
        refresh_token,
        token_url=token_url,
        store=VariableTokenStore(store_key),
        label=conn_id,
    )


def watch_share(conn: Any, extra: Mapping[str, Any] | None = None) -> float:
    """The extra `watch_share`: the fraction of the key's rate limit that deferred sensors' polling
    may use (empty: DEFAULT_WATCH_SHARE); GeminiConnectionError when it is not in (0, 1]."""
    from airflow_provider_gemini.polling import DEFAULT_WATCH_SHARE

    value = (conn.extra_dejson if extra is None else extra).get("watch_share")
    if _blank(value):
        return DEFAULT_WATCH_SHARE
    share = _number(value)
    if share is None or share > 1.0:
        conn_id = getattr(conn, "conn_id", None) or "?"
        raise GeminiConnectionError(
            conn_id, f"watch_share (extra): expected a fraction in (0, 1], got {value!r}"
        )
    return share


class StatsMetrics:
    """The client's metrics sink over Airflow's own Stats, tagged with the connection id (backends
    without tags, plain StatsD, drop the tag). Stats sends nothing unless [metrics] turns a backend on."""

    def __init__(self, conn_id: str) -> None:
        self.tags = {"conn_id": conn_id}

    def incr(self, name: str, count: int = 1) -> None:
        from airflow.sdk.observability.stats import Stats

        Stats.incr(name, count, tags=self.tags)

    def timing(self, name: str, milliseconds: float) -> None:
        from datetime import timedelta

        from airflow.sdk.observability.stats import Stats

        Stats.timing(name, timedelta(milliseconds=milliseconds), tags=self.tags)


def task_key(context: Mapping[str, Any] | None) -> Any:
    """The audit trail's TaskKey for the running task try (ids None outside a task)."""
    from airflow_provider_gemini.audit import TaskKey

    ti = (context or {}).get("ti")
    try_number = getattr(ti, "try_number", None)
    map_index = getattr(ti, "map_index", None)
    return TaskKey(
        dag_id=getattr(ti, "dag_id", None),
        task_id=getattr(ti, "task_id", None),
        run_id=getattr(ti, "run_id", None),
        try_number=try_number if isinstance(try_number, int) else None,
        map_index=map_index if isinstance(map_index, int) else None,
    )


class GeminiHook(BaseHook):
    """Interact with Gemini's private REST API through a `geminiexchange` connection.

    With the extra `auth_type` api_key (the default), login is the API key and password the API
    secret; with `auth_type` oauth, login is the OAuth client_id, password the client_secret, and the
    extra `refresh_token` (or `refresh_token_variable`) the first refresh token; rotated tokens go to
    the Variable `token_variable` (default gemini_oauth_token_<fingerprint>), and `token_url`
    overrides Gemini's token endpoint. host is an optional base URL (scheme and port), and
    the extras `environment` (production | sandbox, used when host is empty), `account` (needed by
    master keys), `nonce_mode` (counter | time), `timeout` (seconds for each attempt's whole answer),
    and optionally `call_timeout` (seconds for a call, retries included), `rate_limit_per_minute`
    (or "off"), `burst`, `max_attempts`, `watch_share` (the part of the key's rate limit that
    deferred sensors may poll with); `audit_trail` (where the audit trail goes: "default", a path
    or an ObjectStoragePath URL; off when empty) and `audit_trail_conn_id` (the connection an
    object store's URL is opened with); `redis_url` or `redis_conn_id` (the key's rate budget and
    counter nonces shared on Redis by every host; off when empty, see coordination.py).
    """

    conn_name_attr = "gemini_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Gemini Exchange"

    def __init__(self, gemini_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.gemini_conn_id = gemini_conn_id
        self._client: GeminiClient | None = None

    @classmethod
    def client_from_connection(
        cls, conn: Any, extra: Mapping[str, Any] | None = None, **overrides: Any
    ) -> GeminiClient:
        """A new client for a connection object; `overrides` replace GeminiClient arguments. Every
        extra is checked, the ones only the triggerer reads (watch_share) included."""
        kwargs = client_kwargs(conn, extra)
        watch_share(conn, extra)
        return GeminiClient(**{**kwargs, **overrides})

    def get_client(self) -> GeminiClient:
        """The hook's client, built on first use and kept (one session, one set of stats), reporting its
        requests to Airflow's Stats."""
        if self._client is None:
            self._client = self.client_from_connection(
                self.get_connection(self.gemini_conn_id), metrics=StatsMetrics(self.gemini_conn_id)
            )
        return self._client

    def audit_location(self, override: str | None = None) -> str | None:
        """Where the trail goes: `override` (a task's audit_trail; "off" turns it off), else the
        connection's `audit_trail` extra; None when off. GeminiConnectionError names a bad extra."""
        if override is not None:
            location = parse_audit_trail(override, "audit_trail")
        else:
            extra = self.get_connection(self.gemini_conn_id).extra_dejson
            value = extra.get("audit_trail") if isinstance(extra, Mapping) else None
            try:
                location = None if _blank(value) else parse_audit_trail(value, "audit_trail (extra)")
            except ValueError as err:
                raise GeminiConnectionError(self.gemini_conn_id, str(err)) from None
        return None if location in (None, "off") else location

    def open_audit_trail(
        self, context: Mapping[str, Any] | None, override: str | None = None
    ) -> AuditTrail | None:
        """The running task try's audit trail, opened (its directory made) before any request; None when
        off. A local path or file:// URL is a plain file; any other URL an ObjectStoragePath, opened with
        the connection's `audit_trail_conn_id` extra."""
        from airflow_provider_gemini.audit import AuditTrail, trail_root

        location = self.audit_location(override)
        if location is None:
            return None
        if location == "default" or location.startswith("/") or location.startswith("file://"):
            root = trail_root(location)
        else:
            from airflow.sdk import ObjectStoragePath

            extra = self.get_connection(self.gemini_conn_id).extra_dejson
            store_conn = extra.get("audit_trail_conn_id") if isinstance(extra, Mapping) else None
            root = ObjectStoragePath(location, conn_id=None if _blank(store_conn) else str(store_conn))
        try:
            return AuditTrail(root, task_key(context), conn_id=self.gemini_conn_id)
        except OSError as err:
            raise ValueError(f"audit_trail: cannot write below {location}: {err}") from None

    def recorder(
        self, context: Mapping[str, Any] | None, override: str | None = None, account: str | None = None
    ) -> CancelRecorder:
        """What files this task's answered cancels: its audit trail (when on) and Airflow's Stats."""
        from airflow_provider_gemini.recording import CancelRecorder

        client = self.get_client()
        return CancelRecorder(
            trail=self.open_audit_trail(context, override),
            metrics=client.metrics,
            account=account if account is not None else client.account,
        )

    def get_conn(self) -> GeminiClient:
        return self.get_client()

    def test_connection(self) -> tuple[bool, str]:
        """Call /v1/roles and report whether the key holds the Trader role that cancelling needs; for
        an OAuth connection, whether the token's scopes allow cancelling and reading orders."""
        try:
            conn = self.get_connection(self.gemini_conn_id)
            with self.client_from_connection(conn, max_attempts=2) as client:
                roles = client.roles()
        except GeminiError as err:
            return False, f"Could not read the key's roles: {err}"
        except GeminiConnectionError as err:
            # The api-server tests a copy under a random id: name the field, not that id.
            return False, err.problem
        except Exception as err:
            return False, str(err)
        if client.oauth is not None:
            return _scope_verdict(client)
        held = ", ".join(roles.names()) or "none"
        if roles.is_trader:
            return True, f"Connected to {client.base_url}; the key has the Trader role (roles: {held})."
        return False, (
            f"Connected to {client.base_url}, but the key lacks the Trader role that cancelling orders "
            f"needs (roles: {held})."
        )


def _scope_verdict(client: GeminiClient) -> tuple[bool, str]:
    """What an OAuth token may do: cancel needs orders:create, listing and status orders:read."""
    assert client.oauth is not None
    scopes = client.oauth.scopes
    store = getattr(client.oauth.store, "key", None)
    where = f"; rotated tokens are stored in the Airflow Variable {store!r}" if store else ""
    if scopes is None:
        return True, (
            f"Connected to {client.base_url} with OAuth; Gemini did not state the token's scopes, so "
            f"whether it may cancel ({CANCEL_SCOPE}) and read ({READ_SCOPE}) orders shows at the first "
            f"request{where}."
        )
    can_cancel, can_read = CANCEL_SCOPE in scopes, READ_SCOPE in scopes
    verdict = (
        f"Connected to {client.base_url} with OAuth; scopes: {','.join(scopes) or 'none'}. "
        f"Cancel orders ({CANCEL_SCOPE}): {'yes' if can_cancel else 'no'}; "
        f"read orders and status ({READ_SCOPE}): {'yes' if can_read else 'no'}{where}."
    )
    return can_cancel and can_read, verdict


class GeminiLegacyTypeHook(GeminiHook):
    """GeminiHook for connections of the earlier type `gemini_exchange`: same fields, same client."""

    conn_type = LEGACY_CONN_TYPE
    hook_name = "Gemini Exchange (legacy type gemini_exchange)"
