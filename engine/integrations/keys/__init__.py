"""Stored argument-name lists of foreign tools (data only)."""
