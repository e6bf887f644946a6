"""Catalogue of GPUs: memory as the driver reports it (GiB) and bf16 support.

Numbers are the vendors' nominal memory, which the driver reports in binary units (an A100 80GB
shows 81,920 MiB). The CUDA context is not subtracted here: the memory model counts it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    bf16: bool  # Ampere (sm_80) and newer


GPUS: dict[str, GpuSpec] = {
    g.name.lower(): g
    for g in [
        GpuSpec("H100-SXM-80GB", 80, True),
        GpuSpec("H100-PCIe-80GB", 80, True),
        GpuSpec("H100-NVL-94GB", 94, True),
        GpuSpec("H100-96GB", 96, True),  # GH200 / H100 96GB variants
        GpuSpec("H200-141GB", 141, True),
        GpuSpec("B200-180GB", 180, True),
        GpuSpec("A100-80GB", 80, True),
        GpuSpec("A100-40GB", 40, True),
        GpuSpec("A800-80GB", 80, True),
        GpuSpec("L40S-48GB", 48, True),
        GpuSpec("A6000-48GB", 48, True),
        GpuSpec("L4-24GB", 24, True),
        GpuSpec("A10G-24GB", 24, True),
        GpuSpec("RTX-4090-24GB", 24, True),
        GpuSpec("RTX-3090-24GB", 24, True),
        GpuSpec("V100-32GB", 32, False),
        GpuSpec("V100-16GB", 16, False),
        GpuSpec("T4-16GB", 16, False),
    ]
}


def find_gpu(name: str) -> GpuSpec | None:
    """Look a GPU up by catalogue name, case-insensitively."""
    return GPUS.get(name.strip().lower())
