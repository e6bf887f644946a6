"""The plan a user writes: its schema, loading and checking, and the Strategy type."""
