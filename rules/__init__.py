"""Bundled rule files (package data; read with importlib.resources)."""
