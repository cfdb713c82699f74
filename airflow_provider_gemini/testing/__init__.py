"""Test support: a local Gemini-compatible exchange and the pytest fixtures that run it.

Nothing here is imported by the provider itself; `GeminiExchange` lives in `.exchange`.
"""

from __future__ import annotations
