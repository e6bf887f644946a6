"""Other tools' formats: LLaMA-Factory (and more to come)."""
