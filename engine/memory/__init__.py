"""The memory model: model states, activations, and the per-strategy GPU/host/NVMe estimate."""
