"""Hooks of the Gemini provider; import them from `airflow_provider_gemini.hooks.gemini`."""

from __future__ import annotations
