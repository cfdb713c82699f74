"""A local, Gemini-compatible exchange for tests, benchmarks, the demo and users' own DAG tests.

`GeminiExchange` speaks Gemini's private REST protocol on 127.0.0.1: HMAC-SHA384 signed payload
headers, counter and time nonces, roles, master-key accounts, OAuth 2.0 (the `/auth/token` grants,
one-time refresh tokens, Bearer requests with scopes; see `oauth`), perpetuals accounts, a per-key
rate limit, orders that can be live, cancelled or filled, and switches that make it misbehave (maintenance, closed markets, injected
faults). It imports nothing from the provider: it is the independent peer the client is tested against.

Choices where Gemini's documentation is silent (see also the README):
- cancelling a filled order answers 200 with its status object, unchanged (is_live and is_cancelled
  both false); cancelling a cancelled order answers 200 with its status object, unchanged;
- an unknown path answers 404 `{"result":"error","reason":"EndpointNotFound",...}` (the empty-bodied
  404 is the `not_found_empty` fault);
- a closed market rejects new orders (400 `MarketClosed`) but still accepts cancels; closing it does
  not touch resting orders (use `cancel_by_exchange` for that);
- a "require heartbeat" key that stays silent past its timeout has its session's live orders
  cancelled with reason `Requested` (what `/v1/order/cancel/session` would do);
- time-nonce keys need a nonce in seconds within +/-30 s and need not increase; counter keys need a
  strictly increasing nonce;
- a master key naming an account outside its group gets 400 `InvalidAccount`; an account key's
  `account` field is ignored;
- every answer carries a `Date` header (RFC 7231 IMF-fixdate), read from the exchange's clock.

The clock is the host's plus `clock_offset` seconds (`GeminiExchange(clock_offset=...)`,
`set_clock_offset`, `--clock-offset`): it dates the answers, stamps orders placed without an explicit
timestamp and their trades, and anchors the time-nonce window. The journal keeps the host's time.

Ways to misbehave beyond maintenance and closed markets: `inject_fault` and `set_fault_rate` (429,
503, a text 500, an empty 404, a connection dropped before or after acting, on any endpoint, cancel/all
and cancel/session included; a delayed answer; a "trickle" answer sent a few bytes at a time, so a
per-read timeout never fires while the whole answer takes `delay` seconds); `reject_cancels`; and
`inject_listing_rows`, raw rows /v1/orders lists after the live orders, for rows a client cannot parse.

Run it alone with `python -m airflow_provider_gemini.testing.exchange --port 8765 --seed demo`.
`GET /_admin/orders`, `/_admin/journal` and `/_admin/health` are unauthenticated, test-only views.

Its parts, each importing only those before it: `records` (answers and JSON helpers), `journal`,
`clock`, `rules` (keys, signatures, nonces, roles, accounts, the rate limit), `oauth` (apps, grants,
tokens, scopes), `book` (orders), `faults`
(injected faults, maintenance), `routes` (the endpoint table), `dispatch` (one request through the
checks to its route), `server` (HTTP), `facade` (`GeminiExchange`) and `cli`.
"""

from __future__ import annotations

from .book import FIRST_ORDER_ID
from .cli import main
from .facade import GeminiExchange
from .faults import FAULT_KINDS
from .journal import JournalEntry
from .rules import DEFAULT_API_KEY, DEFAULT_API_SECRET

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "FAULT_KINDS",
    "FIRST_ORDER_ID",
    "GeminiExchange",
    "JournalEntry",
    "main",
]
