"""pytest plugin (pytest11 entry point `gemini_exchange`): fixtures that run the local exchange."""

from __future__ import annotations
