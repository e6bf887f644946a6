"""The rule base: the facts vocabulary, rule loading and checking, evaluators, verdicts."""
