"""Sensors: wait on the Gemini exchange until orders are really gone."""
