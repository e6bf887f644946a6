"""Advice: `advise` and `estimate`, their typed results, and the files `--out` writes."""
