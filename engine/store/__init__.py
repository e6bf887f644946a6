"""Measured runs: records of real training runs (plan, strategy, measured peaks, memfit's estimate), kept
in a store (SQLite under the user's data directory, or PostgreSQL by URL) that calibrates later advice."""
