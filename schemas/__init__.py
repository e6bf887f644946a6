"""Bundled JSON Schemas (package data; read with importlib.resources)."""
