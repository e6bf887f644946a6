"""Bundled model configs (package data): the offline catalogue."""
