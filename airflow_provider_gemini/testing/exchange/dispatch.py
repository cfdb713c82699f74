"""One request through the exchange: its fault if one is due, Gemini's checks in Gemini's order (an
API key's signature and nonce, or an OAuth bearer token's scope), then its route; the OAuth token and
authorize endpoints; and the unauthenticated, test-only admin views."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs, urlencode

from .book import Book
from .clock import Clock
from .faults import MAINTENANCE_MESSAGE, Faults, Maintenance
from .journal import Journal, JournalEntry
from .oauth import AccessToken, OAuthServer
from .records import Answer, Reject, Request, decode_payload, dumps, error_answer
from .routes import ROUTES, Route
from .rules import Key, TokenBucket, account_for, check_nonce, check_role, check_signature

ADMIN_PREFIX = "/_admin/"
TOKEN_PATH = "/auth/token"
AUTHORIZE_PATH = "/auth"


class Dispatcher:
    """Turns a request's path and Gemini headers into an `Answer`, and journals it.

    It shares the exchange's state and its one lock with `GeminiExchange`, which owns them.
    """

    def __init__(
        self,
        lock: threading.Lock,
        keys: dict[str, Key],
        book: Book,
        faults: Faults,
        maintenance: Maintenance,
        journal: Journal,
        clock: Clock,
        oauth: OAuthServer,
        rate: float | None,
        burst: int,
    ) -> None:
        self._lock = lock
        self._oauth = oauth
        self._rate = rate
        self._burst = burst
        # The stand-in Key an OAuth app acts through on one account: its session and its rate bucket.
        self._oauth_keys: dict[tuple[str, str], Key] = {}
        self._token_gate: threading.Barrier | None = None
        self._token_gate_left = 0
        self._keys = keys
        self._book = book
        self._faults = faults
        self._maintenance = maintenance
        self._journal = journal
        self._clock = clock

    def post(self, request: Request) -> Answer:
        path, api_key, payload = request.path, request.api_key, request.payload
        if path.startswith(ADMIN_PREFIX):
            return self.admin(path)
        if path == TOKEN_PATH:
            return self.token(request)
        with self._lock:
            fault = self._faults.take(path)
        if fault is not None and fault.answers_first:
            answer = fault.answer()
            decoded = decode_payload(payload) if payload else None
            self._record(
                path, api_key, decoded or {}, 0 if answer.drop else answer.status, answer.reason, fault.kind
            )
            return answer
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay or 0.0)
        answer, decoded, who = self._process(request)
        if fault is not None:
            fault.spoil(answer)
        self._record(path, who, decoded, answer.status, answer.reason, fault.kind if fault else None)
        return answer

    def hold_token_requests(self, parties: int, timeout: float) -> None:
        """Hold each of the next `parties` token requests until all of them have arrived (or
        `timeout` passed), then answer them one by one: refreshes from two processes "at once"."""
        with self._lock:
            self._token_gate = threading.Barrier(parties, timeout=timeout)
            self._token_gate_left = parties

    def _take_token_gate(self) -> threading.Barrier | None:
        """The barrier this token request waits at, if one is set; the last party clears it."""
        gate = self._token_gate
        if gate is not None:
            self._token_gate_left -= 1
            if self._token_gate_left <= 0:
                self._token_gate = None
        return gate

    def token(self, request: Request) -> Answer:
        """`POST /auth/token`: faults apply as on /v1 paths; the journal keeps grant_type and client_id."""
        with self._lock:
            fault = self._faults.take(TOKEN_PATH)
            gate = self._take_token_gate()
        if gate is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait()
        if fault is not None and fault.answers_first:
            answer = fault.answer()
            self._record(TOKEN_PATH, None, {}, 0 if answer.drop else answer.status, answer.reason, fault.kind)
            return answer
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay or 0.0)
        with self._lock:
            answer, seen = self._oauth.token_answer(request.body, request.content_type, self._clock.time())
        if fault is not None:
            fault.spoil(answer)
        client_id = seen.get("client_id")
        self._record(
            TOKEN_PATH,
            client_id if isinstance(client_id, str) else None,
            {"grant_type": seen.get("grant_type")},
            answer.status,
            answer.reason,
            fault.kind if fault else None,
        )
        return answer

    def authorize(self, query: str) -> Answer:
        """`GET /auth?client_id&response_type=code&redirect_uri&state&scope`: the user consents at
        once (there is no user here) and is sent back to redirect_uri with `code` and `state`."""
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if params.get("response_type") != "code":
            return error_answer(400, "InvalidRequest", "response_type must be 'code'")
        try:
            with self._lock:
                code = self._oauth.authorize(
                    params.get("client_id", ""),
                    params.get("scope", ""),
                    params.get("redirect_uri", ""),
                    self._clock.time(),
                )
        except ValueError as err:
            return error_answer(400, "InvalidRequest", str(err))
        back = {"code": code, **({"state": params["state"]} if "state" in params else {})}
        sep = "&" if "?" in params["redirect_uri"] else "?"
        location = params["redirect_uri"] + sep + urlencode(back)
        return Answer(302, b"", content_type=None, headers=[("Location", location)])

    def get(self, path: str, query: str = "") -> Answer:
        """Gemini's private API is POST only: a GET outside the admin views and the OAuth authorize
        page is an unknown endpoint."""
        if path.startswith(ADMIN_PREFIX):
            return self.admin(path)
        if path == AUTHORIZE_PATH:
            return self.authorize(query)
        answer = error_answer(404, "EndpointNotFound", "API entry point not found")
        self._record(path, None, {}, 404, answer.reason, None)
        return answer

    def admin(self, path: str) -> Answer:
        if path == "/_admin/orders":
            with self._lock:
                rows = [
                    {
                        **o.status(),
                        "account": o.account,
                        "state": o.state(),
                        "placed_via": "api" if o.session else "web",
                    }
                    for o in self._book.orders.values()
                ]
            return Answer(200, dumps(rows))
        if path == "/_admin/journal":
            with self._lock:
                entries = self._journal.entries()
            return Answer(200, dumps([asdict(e) for e in entries]))
        if path == "/_admin/health":
            return Answer(200, dumps({"result": "ok"}))
        return error_answer(404, "EndpointNotFound", "Unknown admin endpoint")

    def _process(self, request: Request) -> tuple[Answer, dict[str, Any], str | None]:
        """The answer, the decoded payload ({} when there is none to decode) and who sent it (the
        API key, or `oauth:<client_id>`)."""
        decoded: dict[str, Any] = {}
        who = request.api_key
        try:
            if self._maintenance.active():
                raise Reject(503, "Maintenance", MAINTENANCE_MESSAGE)
            route = ROUTES.get(request.path)
            if route is None:
                raise Reject(404, "EndpointNotFound", "API entry point not found")
            if request.authorization and not request.api_key:
                access = self._bearer(request)
                who = access.session
                parsed = self._payload(request)
                decoded = parsed or {}
                self._check_request_field(request.path, parsed)
                with self._lock:
                    key = self._oauth_key(access)
                    key.bucket.take(time.monotonic())
                    self._oauth.check_scope(access, route.scope)
                    return self._run(route, key, decoded), decoded, who
            # Decoded before the checks, so the journal keeps the payload of a refused request too.
            parsed = decode_payload(request.payload) if request.api_key and request.payload else None
            decoded = parsed or {}
            key = self._signed(request, parsed)
            with self._lock:
                key.last_seen = time.monotonic()
                check_nonce(key, decoded, self._clock.time())
                check_role(key, route.roles)
                return self._run(route, key, decoded), decoded, who
        except Reject as exc:
            return exc.answer(), decoded, who
        except Exception:  # a bug in the exchange: answer like Gemini's 500 and show the traceback
            traceback.print_exc()
            return error_answer(500, "System", "Internal error"), decoded, who

    def _run(self, route: Route, key: Key, decoded: dict[str, Any]) -> Answer:
        account = account_for(key, decoded) if route.needs_account else None
        return Answer(200, dumps(route.handler(self._book, key, account, decoded)))

    def _signed(self, request: Request, parsed: dict[str, Any] | None) -> Key:
        """The key of an API-key request whose signature checks out (`parsed`: its decoded payload)."""
        api_key, payload, sig = request.api_key, request.payload, request.signature
        if not api_key:
            raise Reject(401, "MissingApikeyHeader", "Must provide 'X-GEMINI-APIKEY' header")
        if not payload:
            raise Reject(400, "MissingPayloadHeader", "Must provide 'X-GEMINI-PAYLOAD' header")
        if not sig:
            raise Reject(400, "MissingSignatureHeader", "Must provide 'X-GEMINI-SIGNATURE' header")
        key = self._keys.get(api_key)
        if key is None:
            raise Reject(400, "InvalidApiKey", "Invalid API key")
        with self._lock:
            key.bucket.take(time.monotonic())
        check_signature(key, payload, sig)
        self._check_request_field(request.path, parsed)
        return key

    def _bearer(self, request: Request) -> AccessToken:
        with self._lock:
            return self._oauth.bearer(request.authorization or "", self._clock.time())

    @staticmethod
    def _payload(request: Request) -> dict[str, Any] | None:
        """An OAuth request's decoded payload (None: not a JSON object); as with keys, but no nonce."""
        if not request.payload:
            raise Reject(400, "MissingPayloadHeader", "Must provide 'X-GEMINI-PAYLOAD' header")
        return decode_payload(request.payload)

    @staticmethod
    def _check_request_field(path: str, parsed: dict[str, Any] | None) -> None:
        """The payload must be a JSON object naming the path it was sent to."""
        if parsed is None:
            raise Reject(400, "InvalidJson", "X-GEMINI-PAYLOAD is not base64-encoded JSON object text")
        if parsed.get("request") != path:
            raise Reject(
                400,
                "EndpointMismatch",
                f"Payload request {parsed.get('request')!r} does not match the path {path!r}",
            )

    def _oauth_key(self, access: AccessToken) -> Key:
        """The Key an app acts through on its grant's account: Trader rights (the scope decides), one
        session per app, and one rate bucket per app and account."""
        grant = access.grant
        found = self._oauth_keys.get((grant.client_id, grant.account))
        if found is None:
            now = time.monotonic()
            found = Key(
                api_key=access.session,
                secret=b"",
                roles=frozenset({"Trader"}),
                nonce_mode="counter",
                accounts=(grant.account,),
                require_heartbeat=False,
                heartbeat_timeout=0.0,
                is_master=False,
                bucket=TokenBucket(self._rate, self._burst, float(self._burst), now),
                last_seen=now,
            )
            self._oauth_keys[(grant.client_id, grant.account)] = found
        return found

    def _record(
        self,
        path: str,
        api_key: str | None,
        payload: dict[str, Any],
        status: int,
        reason: str | None,
        fault: str | None,
    ) -> None:
        entry = JournalEntry(time.time(), path, api_key, payload, status, reason, fault)
        with self._lock:
            self._journal.append(entry)
