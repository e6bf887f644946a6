"""The candidate search: strategy shapes, micro-batch sizing, facts per candidate."""
