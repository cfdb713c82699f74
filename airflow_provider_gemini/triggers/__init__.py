"""Triggers: async, read-only waits that deferrable Gemini tasks hand over to the triggerer."""
