"""PyTorch FSDP outputs: accelerate config writer and checker, torchtune/LLaMA-Factory/axolotl keys, CPU verify."""
