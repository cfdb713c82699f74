"""A key's rate budget and counter-nonce sequence shared by every process on every host, on Redis
(the cluster's Celery broker, say). No Airflow; needs the `redis` extra.

`RedisCoordinator` has client.RateLimiter's interface (reserve, refund, penalize: the same bucket,
paced RATE_SAFETY_MARGIN under the key's rate with one token of the burst in reserve) and a nonce
source (`next_nonce`: max(Redis TIME in ms, last + 1)). Both are one Lua script, run atomically by
Redis on Redis's clock, so hosts whose clocks disagree still agree on the turns and the nonces. The
keys are named after sha256(api key), never the key, and expire after `ttl` seconds unused.

It fails closed: when Redis cannot be reached or answers anything but what the script returns, the
request raises CoordinationError before it is signed, and nothing falls back to this host's own nonces
(they could be lower than what other hosts already sent). The Redis password appears in no message
or repr.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from airflow_provider_gemini.client import bucket_shape

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "INSTALL_HINT",
    "KEY_PREFIX",
    "CoordinationError",
    "RedisCoordinator",
    "RedisSettings",
    "shared_coordinator",
]

log = logging.getLogger(__name__)

KEY_PREFIX = "airflow-provider-gemini"
DEFAULT_TTL_SECONDS = 3600
"""How long a key's bucket and last nonce outlive their last use. Expiry loses nothing: the bucket
refills in well under a second, and a nonce restarts from Redis's clock, long past the last one."""
DEFAULT_SOCKET_TIMEOUT = 2.0
"""Seconds to connect to Redis and for each answer: a dead Redis fails the request this fast."""
MAX_STORED_LEAD_MS = 60_000
"""As for the host's nonce file (auth.MAX_STORED_LEAD_MS): a stored nonce this far ahead of Redis's
clock was not sent by this client; it is dropped with a warning, so a planted value cannot lock the key."""
INSTALL_HINT = "pip install 'airflow-provider-gemini[redis]'"

# KEYS[1] the bucket (hash: t = tokens, s = stamp in s), KEYS[2] the last nonce (ms).
# ARGV: op, ttl, then for reserve/penalize: rate a second, capacity, penalty seconds;
# for nonce: the caller's floor (its last nonce + 1), the largest lead kept (ms).
# TIME is allowed in a script since Redis 5 replicates effects, not scripts (the only mode in 7).
SCRIPT = """
local op = ARGV[1]
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if op == 'nonce' then
  local now_ms = math.floor(now_us / 1000)
  local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  local dropped = 0
  if last - now_ms > tonumber(ARGV[4]) then
    last = 0
    dropped = 1
  end
  local n = math.max(now_ms, last + 1, tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], string.format('%.0f', n), 'EX', ttl)
  return {string.format('%.0f', n), dropped}
end
local rate = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local now = now_us / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil or tokens < -60 * rate then
  tokens = capacity
  stamp = now
end
if stamp > now then
  stamp = now
end
tokens = math.min(capacity, tokens + (now - stamp) * rate)
if op == 'reserve' then
  tokens = tokens - 1
elseif op == 'penalize' then
  tokens = math.min(tokens, -tonumber(ARGV[5]) * rate)
elseif op == 'refund' then
  tokens = math.min(capacity, tokens + 1)
else
  return redis.error_reply('unknown op ' .. op)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%.17g', now))
redis.call('EXPIRE', KEYS[1], ttl)
if tokens >= 0 then
  return '0'
end
return string.format('%.17g', -tokens / rate)
"""


class CoordinationError(OSError):
    """The shared budget and nonces on Redis are configured but cannot be used: Redis unreachable,
    refusing the password, or answering garbage. Raised before the request is signed or sent.

    An OSError, as state.StateFileError is, not a GeminiError: it is not Gemini's answer, so the
    client does not retry it as a transient Gemini failure five times per order (nor a cancel run
    file every order as failed one by one); it fails the task, which Airflow may retry once Redis is
    back or on another worker. It never falls back to this host's nonces."""

    def __init__(self, setting: str, target: str, problem: str) -> None:
        self.setting = setting
        self.target = target
        self.problem = problem
        super().__init__(
            f"airflow-provider-gemini {setting} ({target}): {problem}; this request was not sent to Gemini. "
            f"Bring Redis back, or remove {setting} on every worker that uses this key (all of them "
            "together: a host on its own nonces may send lower ones than the others already did)"
        )


@dataclass(frozen=True)
class RedisSettings:
    """Where the shared state lives: host, port, db, optional username and password, TLS. `setting`
    names where it came from (for errors, e.g. "redis_url (extra)"). The password is in no repr."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    setting: str = "redis"
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip() or self.host.split() != [self.host]:
            raise ValueError(f"{self.setting}: expected a Redis host name, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"{self.setting}: expected a port 1-65535, got {self.port!r}")
        if isinstance(self.db, bool) or not isinstance(self.db, int) or self.db < 0:
            raise ValueError(f"{self.setting}: expected a database number >= 0, got {self.db!r}")
        if not (isinstance(self.socket_timeout, int | float) and self.socket_timeout > 0):
            raise ValueError(f"{self.setting}: socket_timeout must be positive")

    @classmethod
    def from_url(cls, url: str, setting: str = "redis_url") -> RedisSettings:
        """redis://[[user]:password@]host[:port][/db] or rediss:// (TLS); ?db=N also names the db.
        ValueError names `setting` and shows the URL with its password masked."""
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"{setting}: expected a redis:// or rediss:// URL, got {type(url).__name__}")
        shown = mask_url(url)
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"{setting}: not a URL: {shown}") from None
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{setting}: expected a redis:// or rediss:// URL, got {shown}")
        if not parts.hostname:
            raise ValueError(f"{setting}: no host in {shown}")
        db_text = parts.path.strip("/") or (parse_qs(parts.query).get("db") or [""])[0]
        try:
            db = int(db_text) if db_text else 0
        except ValueError:
            raise ValueError(f"{setting}: the database must be a number, got {shown}") from None
        return cls(
            host=parts.hostname,
            port=6379 if port is None else port,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            ssl=parts.scheme == "rediss",
            setting=setting,
        )

    @property
    def target(self) -> str:
        """The URL these settings reach, the password shown as ***."""
        scheme = "rediss" if self.ssl else "redis"
        user = quote(self.username, safe="") if self.username else ""
        auth = f"{user}:***@" if self.password else (f"{user}@" if user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


def mask_url(url: str) -> str:
    """`url` with the password of its userinfo replaced by *** (the text unchanged otherwise)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostport}{slash}{tail}"


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            f"the shared Redis budget needs the redis package, which is not installed: {INSTALL_HINT}"
        ) from None
    return redis


_clients: dict[RedisSettings, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client_for(settings: RedisSettings) -> redis.Redis:
    """One Redis client (one connection pool, safe across threads and fork) per settings a process."""
    module = _redis_module()
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = _clients[settings] = module.Redis(
                host=settings.host,
                port=settings.port,
                db=settings.db,
                username=settings.username,
                password=settings.password,
                ssl=settings.ssl,
                socket_timeout=settings.socket_timeout,
                socket_connect_timeout=settings.socket_timeout,
                # One retry at once: a pooled connection Redis closed (a restart) is reopened; a Redis
                # that is down fails within socket_timeout instead of after a backoff of seconds.
                retry=Retry(NoBackoff(), 1),
                decode_responses=False,
                client_name="airflow-provider-gemini",
            )
        return client


class RedisCoordinator:
    """One key's token bucket and counter nonces on Redis, for every process on every host.

    Same bucket as client.RateLimiter (`per_minute` less RATE_SAFETY_MARGIN, capacity burst - 1, may
    go negative so that each waiting process gets its own turn; a 429 empties it for everyone), kept
    by Redis on Redis's clock. `next_nonce()` is max(Redis TIME in ms, last + 1, this process's last
    + 1): strictly increasing across every host, whatever their clocks say. A round trip (about 0.2 ms
    on a LAN) per reserve and per nonce. Make one per key and setting in a process
    (`shared_coordinator`); `client` is an injectable redis.Redis (tests).
    """

    def __init__(
        self,
        settings: RedisSettings | str,
        api_key: str,
        *,
        per_minute: float = 600,
        burst: int = 5,
        ttl: int = DEFAULT_TTL_SECONDS,
        prefix: str = KEY_PREFIX,
        client: redis.Redis | None = None,
    ) -> None:
        self.settings = RedisSettings.from_url(settings) if isinstance(settings, str) else settings
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key: expected a non-empty key")
        if not (isinstance(per_minute, int | float) and math.isfinite(per_minute) and per_minute > 0):
            raise ValueError(f"per_minute: expected a positive number, got {per_minute!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst: expected an integer >= 1, got {burst!r}")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 60:
            raise ValueError(f"ttl: expected whole seconds >= 60, got {ttl!r}")
        self.key_hash = hashlib.sha256(api_key.encode()).hexdigest()
        self.per_minute = float(per_minute)
        self.burst = burst
        self.rate, self.capacity = bucket_shape(per_minute, burst)
        self.ttl = ttl
        # One hash tag: on a Redis Cluster both keys of a script must live on one slot.
        self.keys = [f"{prefix}:{{{self.key_hash}}}:bucket", f"{prefix}:{{{self.key_hash}}}:nonce"]
        self._client = client
        self._script: Any = None
        self._lock = threading.Lock()
        self._last_nonce = 0

    def __repr__(self) -> str:
        return f"RedisCoordinator({self.settings.target!r}, key sha256 {self.key_hash[:12]}...)"

    def serves(self, api_key: str) -> bool:
        """Whether this coordinator holds the state of `api_key`."""
        return hashlib.sha256(api_key.encode()).hexdigest() == self.key_hash

    # -- the script --------------------------------------------------------------------------------

    def _fail(self, problem: str) -> CoordinationError:
        password = self.settings.password
        if password:
            problem = problem.replace(password, "***")
        return CoordinationError(self.settings.setting, self.settings.target, problem)

    def _run(self, *args: str | int | float) -> Any:
        """Run the script (EVALSHA, loaded once; redis-py loads it again after a NOSCRIPT)."""
        try:
            redis_error: type[Exception] = _redis_module().RedisError
        except ImportError as err:
            raise self._fail(str(err)) from None
        try:
            with self._lock:
                if self._script is None:
                    client = self._client if self._client is not None else _client_for(self.settings)
                    self._script = client.register_script(SCRIPT)
                script = self._script
            return script(keys=self.keys, args=list(args))
        except (redis_error, OSError, ValueError, TypeError) as err:
            # from None: the redis-py exception (and its connection) does not ride along.
            raise self._fail(f"Redis failed ({type(err).__name__}: {err})") from None

    def _update(self, op: str, penalty: float = 0.0) -> float:
        answer = self._run(op, self.ttl, repr(self.rate), repr(self.capacity), repr(penalty))
        try:
            wait = float(answer.decode() if isinstance(answer, bytes) else answer)
        except (TypeError, ValueError, UnicodeDecodeError):
            wait = math.nan
        # Never more than a minute of debt (the script resets beyond it), or the penalty just set.
        if not (math.isfinite(wait) and 0.0 <= wait <= max(61.0, penalty + 1.0)):
            raise self._fail(
                f"Redis answered {answer!r:.60} to the rate budget script, not a wait in seconds"
            )
        return wait

    # -- RateLimiter's interface -------------------------------------------------------------------

    def reserve(self) -> float:
        """Take one token now and return the seconds until it is due (0 when one was there)."""
        return self._update("reserve")

    def penalize(self, seconds: float) -> None:
        """Gemini answered 429: no process on any host sends with this key for `seconds`."""
        self._update("penalize", max(0.0, float(seconds)))

    def refund(self) -> None:
        """Give back a turn taken by `reserve` and not used."""
        self._update("refund")

    # -- the nonce ---------------------------------------------------------------------------------

    def next_nonce(self) -> int:
        """The key's next counter nonce (ms), larger than any other process or host has had."""
        with self._lock:
            floor = self._last_nonce + 1
        answer = self._run("nonce", self.ttl, floor, MAX_STORED_LEAD_MS)
        try:
            raw, dropped = answer
            nonce = int(raw)
            dropped = int(dropped)
        except (TypeError, ValueError):
            raise self._fail(f"Redis answered {answer!r:.60} to the nonce script, not a nonce") from None
        if nonce < floor:
            raise self._fail(f"Redis answered the nonce {nonce}, below this process's last + 1 ({floor})")
        if dropped:
            log.warning(
                "Shared nonce on %s held a value more than %d ms ahead of Redis's clock: not sent by this "
                "client; starting again from Redis's clock",
                self.settings.target,
                MAX_STORED_LEAD_MS,
            )
        with self._lock:
            self._last_nonce = max(self._last_nonce, nonce)
        return nonce


class RedisNonce:
    """A coordinator's nonces as auth.NonceSource: on Redis's clock, so the local offset is not used.
    A refusal means a sender outside Redis (a host or tool without this setting) is ahead; Redis's
    sequence cannot see it, which is why every worker of the key must use the setting."""

    def __init__(self, coordinator: RedisCoordinator) -> None:
        self.coordinator = coordinator

    def __call__(self, bounds: object = None) -> int:
        return self.coordinator.next_nonce()

    def refused(self, nonce: int) -> None:
        log.warning(
            "Nonce %d from the shared sequence on %s was refused: a sender outside it is ahead",
            nonce,
            self.coordinator.settings.target,
        )


_coordinators: dict[tuple[RedisSettings, str, float, int], RedisCoordinator] = {}
_coordinators_lock = threading.Lock()


def shared_coordinator(
    settings: RedisSettings, api_key: str, per_minute: float = 600, burst: int = 5
) -> RedisCoordinator:
    """The process's coordinator for a key and settings (one bucket and nonce floor per process)."""
    key = (settings, hashlib.sha256(api_key.encode()).hexdigest(), float(per_minute), burst)
    with _coordinators_lock:
        coordinator = _coordinators.get(key)
        if coordinator is None:
            coordinator = _coordinators[key] = RedisCoordinator(
                settings, api_key, per_minute=per_minute, burst=burst
            )
        return coordinator
