"""Measured evidence: log records parsed from real runs, and matching them to a plan."""
