"""What this machine has: GPUs (NVML, else torch.cuda), host RAM, CPU cores, NVMe space, DeepSpeed hostfile.

`detect_hardware()` never fails for a missing GPU or library: it says what it could not read in
`notes`, in plain sentences, and leaves those fields empty. Each reading goes through a `Readers`
object, so tests hand in fakes (an NVML-like object, psutil-like numbers) instead of patching libraries.
Heavy imports (pynvml, torch, psutil) happen only inside the readers.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict

from ..core.errors import HostfileError
from ..core.inputs import read_text
from ..core.units import GIB


class GpuUnavailable(Exception):
    """A GPU reader found nothing; the message says why, for the notes."""


class DetectedGpu(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    name: str
    memory_gib: float  # total memory as the driver reports it, bytes / 2**30


class DetectedHardware(BaseModel):
    """What detect_hardware found. Empty fields were not readable; `notes` says why."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpus: list[DetectedGpu] = []
    gpu_count: int = 0
    gpu_memory_gib: Optional[float] = None  # the smallest GPU: a plan must fit on every one
    gpu_source: Optional[str] = None  # "nvml", "torch.cuda", or "hostfile" (slots only)
    gpus_per_node: Optional[int] = None
    nodes: int = 1
    hosts: list[str] = []
    host_memory_gib: Optional[float] = None  # total RAM, or the cgroup limit when that is lower
    host_available_gib: Optional[float] = None
    cpu_cores: Optional[int] = None  # physical cores when known (DeepSpeed's CPU Adam runs on them)
    nvme_path: Optional[str] = None
    nvme_free_gib: Optional[float] = None
    notes: list[str] = []

    def to_hardware_dict(self) -> dict[str, Any]:
        """The plan's `hardware:` mapping (numbers in GiB); keys this machine could not fill are left out."""
        out: dict[str, Any] = {}
        if self.gpu_memory_gib is not None:
            out["gpu_memory"] = self.gpu_memory_gib
        out["gpus_per_node"] = self.gpus_per_node or 1
        out["nodes"] = self.nodes
        if self.host_memory_gib is not None:
            out["host_memory"] = self.host_memory_gib
        if self.nvme_path is not None:
            out["nvme"] = self.nvme_free_gib or 0
            out["nvme_path"] = self.nvme_path
        return out


def read_nvml(nvml: Any = None) -> list[DetectedGpu]:
    """GPUs through NVML (package nvidia-ml-py, module pynvml), or an object with the same functions.

    Raises:
        GpuUnavailable: NVML missing, not loadable, or reporting no device.
    """
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
        except ImportError as exc:
            raise GpuUnavailable(f"NVML unavailable: pynvml not installed ({exc})") from exc
    try:
        nvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses; a fake may raise anything
        raise GpuUnavailable(f"NVML unavailable: {exc}") from exc
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)  # bytes before nvidia-ml-py 11.515
            total = nvml.nvmlDeviceGetMemoryInfo(handle).total  # bytes
            gpus.append(DetectedGpu(index=i, name=name, memory_gib=round(total / GIB, 2)))
    except Exception as exc:
        raise GpuUnavailable(f"NVML failed while reading devices: {exc}") from exc
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    if not gpus:
        raise GpuUnavailable("NVML found no GPU")
    return gpus


def read_torch_cuda() -> list[DetectedGpu]:
    """GPUs through torch.cuda (imports torch: seconds).

    Raises:
        GpuUnavailable: torch missing, CUDA not available, or no NVIDIA driver loaded.
    """
    if sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version"):
        # torch.cuda needs the NVIDIA kernel driver; without it, skip a multi-second torch import
        raise GpuUnavailable("torch.cuda not tried: no NVIDIA driver loaded (/proc/driver/nvidia/version missing)")
    try:
        import torch
    except ImportError as exc:
        raise GpuUnavailable(f"torch not installed ({exc})") from exc
    if not torch.cuda.is_available():
        raise GpuUnavailable("torch.cuda.is_available() is False")
    return [DetectedGpu(index=i, name=torch.cuda.get_device_name(i),
                        memory_gib=round(torch.cuda.get_device_properties(i).total_memory / GIB, 2))
            for i in range(torch.cuda.device_count())]


def read_host_memory(psutil_module: Any = None) -> tuple[int, int]:
    """(total, available) host RAM in bytes: psutil (or an object with its virtual_memory()), else /proc/meminfo."""
    if psutil_module is None:
        try:
            import psutil as psutil_module  # type: ignore[no-redef]
        except ImportError:
            return _read_meminfo()
    vm = psutil_module.virtual_memory()
    return vm.total, vm.available


def _read_meminfo() -> tuple[int, int]:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0]) * 1024  # values are in kB (KiB)
    return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))


def read_cgroup_limit() -> Optional[int]:
    """The memory limit of this process's cgroup in bytes (v2 memory.max, v1 limit_in_bytes), or None."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge sentinel means no limit
            return int(text)
    return None


def read_cpu_cores(psutil_module: Any = None) -> Optional[int]:
    """Physical cores (psutil, or an object with its cpu_count()), else logical CPUs this process may use."""
    if psutil_module is None:
        try:
            import psutil as psutil_module  # type: ignore[no-redef]
        except ImportError:
            psutil_module = None
    physical = psutil_module.cpu_count(logical=False) if psutil_module is not None else None
    if physical:
        return int(physical)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


@dataclass
class Readers:
    """Where each reading comes from; tests replace any of them with fakes."""

    gpus: list[tuple[str, Callable[[], list[DetectedGpu]]]] = field(
        default_factory=lambda: [("nvml", read_nvml), ("torch.cuda", read_torch_cuda)])
    host_memory: Callable[[], tuple[int, int]] = read_host_memory
    cgroup_limit: Callable[[], Optional[int]] = read_cgroup_limit
    cpu_cores: Callable[[], Optional[int]] = read_cpu_cores
    disk_free: Callable[[str], int] = lambda path: shutil.disk_usage(path).free


_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


def parse_hostfile(path: str | Path) -> dict[str, int]:
    """Read a DeepSpeed hostfile: "HOST slots=N" lines, "#" comments and blank lines.

    Args:
        path: the hostfile.
    Returns:
        host -> slots (GPUs on that host), in file order.
    Raises:
        HostfileError: every bad, duplicate or zero-slot line, each as "FILE:LINE: problem (got 'text')".
    """
    lines = read_text(path, "the hostfile", HostfileError).splitlines()
    hosts: dict[str, int] = {}
    problems = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _HOST_LINE.match(line)
        if not m:
            problems.append(f"{path}:{n}: expected 'HOSTNAME slots=N' (got '{line}')")
        elif m.group(1) in hosts:
            problems.append(f"{path}:{n}: host '{m.group(1)}' listed twice")
        elif int(m.group(2)) < 1:
            problems.append(f"{path}:{n}: slots must be >= 1 (got '{line}')")
        else:
            hosts[m.group(1)] = int(m.group(2))
    if not hosts and not problems:
        problems.append(f"{path}: no hosts (expected lines 'HOSTNAME slots=N')")
    if problems:
        raise HostfileError(problems)
    return hosts


def _detect_gpus(readers: Readers, notes: list[str]) -> tuple[list[DetectedGpu], Optional[str]]:
    reasons = []
    for source, read in readers.gpus:
        try:
            return read(), source
        except GpuUnavailable as exc:
            reasons.append(str(exc))
    notes.append(f"no NVIDIA GPU found ({'; '.join(reasons)}); GPU fields left empty")
    return [], None


def _detect_host(readers: Readers, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        total, available = readers.host_memory()
    except Exception as exc:  # psutil missing and no /proc/meminfo (not Linux)
        notes.append(f"host memory unreadable ({exc}); host_memory left empty")
        return out
    limit = readers.cgroup_limit()
    if limit is not None and limit < total:
        notes.append(f"this process's cgroup limits memory to {limit / GIB:.1f} GiB of the host's "
                     f"{total / GIB:.1f} GiB; host_memory is the limit (the kernel kills above it)")
        total, available = limit, min(available, limit)
    out["host_memory_gib"] = round(total / GIB, 2)
    out["host_available_gib"] = round(available / GIB, 2)
    return out


def detect_hardware(nvme_path: str | None = None, hostfile: str | Path | None = None,
                    readers: Readers | None = None) -> DetectedHardware:
    """Read this machine's hardware for a plan's `hardware:` section.

    Args:
        nvme_path: a directory on the NVMe for ZeRO-Infinity offload; its free space is reported.
        hostfile: a DeepSpeed hostfile; nodes = its hosts, gpus_per_node = its slots when no local GPU.
        readers: where readings come from (default: NVML -> torch.cuda, psutil, shutil).
    Returns:
        DetectedHardware; unreadable fields are None and `notes` says why.
    Raises:
        HostfileError: the hostfile is unreadable or has bad lines.
    """
    readers = readers or Readers()
    notes: list[str] = []
    gpus, source = _detect_gpus(readers, notes)
    fields: dict[str, Any] = {"gpus": gpus, "gpu_count": len(gpus), "gpu_source": source}
    if gpus:
        fields["gpu_memory_gib"] = min(g.memory_gib for g in gpus)
        fields["gpus_per_node"] = len(gpus)
        if len({g.name for g in gpus}) > 1 or len({g.memory_gib for g in gpus}) > 1:
            notes.append("GPUs differ; gpu_memory is the smallest, as every rank must fit")
    if hostfile is not None:
        hosts = parse_hostfile(hostfile)
        fields.update(nodes=len(hosts), hosts=list(hosts))
        slots = set(hosts.values())
        if not gpus:
            fields.update(gpus_per_node=min(slots), gpu_source="hostfile")
        elif slots != {len(gpus)}:
            notes.append(f"hostfile slots {sorted(slots)} differ from the {len(gpus)} local GPU(s); "
                         "gpus_per_node uses the local count")
        if len(slots) > 1:
            notes.append("hosts have different slot counts; gpus_per_node is the smallest")
    fields.update(_detect_host(readers, notes))
    fields["cpu_cores"] = readers.cpu_cores()
    if nvme_path is not None:
        fields["nvme_path"] = str(nvme_path)
        try:
            fields["nvme_free_gib"] = round(readers.disk_free(str(nvme_path)) / GIB, 2)
        except OSError as exc:
            notes.append(f"nvme path {nvme_path}: cannot read free space ({exc.strerror or exc}); nvme left empty")
    return DetectedHardware(notes=notes, **fields)
