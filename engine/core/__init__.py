"""Bottom layer: errors every layer raises, size units, DeepSpeed's default knob values."""
