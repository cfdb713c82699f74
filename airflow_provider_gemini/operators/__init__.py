"""Operators of the Gemini provider; import them from `airflow_provider_gemini.operators.cancel`."""

from __future__ import annotations
