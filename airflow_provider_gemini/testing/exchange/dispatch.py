"""One request through the exchange: its fault if one is due, Gemini's checks in Gemini's order, then
its route; and the unauthenticated, test-only admin views."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import asdict
from typing import Any

from .book import Book
from .clock import Clock
from .faults import MAINTENANCE_MESSAGE, Faults, Maintenance
from .journal import Journal, JournalEntry
from .records import Answer, Reject, decode_payload, dumps, error_answer
from .routes import ROUTES
from .rules import Key, account_for, check_nonce, check_role, check_signature

ADMIN_PREFIX = "/_admin/"


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
    ) -> None:
        self._lock = lock
        self._keys = keys
        self._book = book
        self._faults = faults
        self._maintenance = maintenance
        self._journal = journal
        self._clock = clock

    def post(self, path: str, api_key: str | None, payload: str | None, sig: str | None) -> Answer:
        if path.startswith(ADMIN_PREFIX):
            return self.admin(path)
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
        answer, decoded = self._process(path, api_key, payload, sig)
        if fault is not None:
            fault.spoil(answer)
        self._record(path, api_key, decoded, answer.status, answer.reason, fault.kind if fault else None)
        return answer

    def get(self, path: str) -> Answer:
        """Gemini's private API is POST only: a GET outside the admin views is an unknown endpoint."""
        if path.startswith(ADMIN_PREFIX):
            return self.admin(path)
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

    def _process(
        self, path: str, api_key: str | None, payload: str | None, sig: str | None
    ) -> tuple[Answer, dict[str, Any]]:
        """The answer and the decoded payload ({} when there is none to decode)."""
        decoded: dict[str, Any] = {}
        try:
            if self._maintenance.active():
                raise Reject(503, "Maintenance", MAINTENANCE_MESSAGE)
            route = ROUTES.get(path)
            if route is None:
                raise Reject(404, "EndpointNotFound", "API entry point not found")
            if not api_key:
                raise Reject(401, "MissingApikeyHeader", "Must provide 'X-GEMINI-APIKEY' header")
            if not payload:
                raise Reject(400, "MissingPayloadHeader", "Must provide 'X-GEMINI-PAYLOAD' header")
            parsed = decode_payload(payload)
            decoded = parsed or {}
            if not sig:
                raise Reject(400, "MissingSignatureHeader", "Must provide 'X-GEMINI-SIGNATURE' header")
            key = self._keys.get(api_key)
            if key is None:
                raise Reject(400, "InvalidApiKey", "Invalid API key")
            with self._lock:
                key.bucket.take(time.monotonic())
            check_signature(key, payload, sig)
            if parsed is None:
                raise Reject(400, "InvalidJson", "X-GEMINI-PAYLOAD is not base64-encoded JSON object text")
            requested = decoded.get("request")
            if requested != path:
                raise Reject(
                    400, "EndpointMismatch", f"Payload request {requested!r} does not match the path {path!r}"
                )
            with self._lock:
                key.last_seen = time.monotonic()
                check_nonce(key, decoded, self._clock.time())
                check_role(key, route.roles)
                account = account_for(key, decoded) if route.needs_account else None
                result = route.handler(self._book, key, account, decoded)
            return Answer(200, dumps(result)), decoded
        except Reject as exc:
            return exc.answer(), decoded
        except Exception:  # a bug in the exchange: answer like Gemini's 500 and show the traceback
            traceback.print_exc()
            return error_answer(500, "System", "Internal error"), decoded

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
