"""`advise probe`: a traced training step on fake tensors."""
