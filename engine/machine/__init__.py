"""The machine: GPU catalogue and hardware detection (NVML, torch, psutil, cgroups)."""
