"""Peak memory of a running training process: torch.cuda's allocator peaks, NVML's used memory, and
the host RSS of the process tree (psutil), sampled on a background thread.

Each reading that cannot be taken here is left None with its reason in `notes` (a CPU-only run has no
torch.cuda peaks; a machine without the NVIDIA driver has no NVML). Imports happen inside the readers.
"""
from __future__ import annotations

import os
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import psutil

# Seconds between samples: RSS and NVML reads cost ~0.1 ms each; peaks shorter than this can be missed
# (torch.cuda's own peaks are exact, they are kept by the allocator).
DEFAULT_INTERVAL_S = 0.5


class PeakSampler:
    """Start, sample, stop; `peaks()` gives bytes per reading (None: not read, see `notes`)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S):
        self.interval_s = interval_s
        self.notes: list[str] = []
        self.host_rss: Optional[int] = None
        self.nvml_used: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._every: Optional[tuple[float, Callable[[], object]]] = None
        self._process = self._psutil_process()
        self._cuda = self._torch_cuda()
        self._nvml = self._nvml_handle(self._cuda) if self._cuda is not None else None

    def _psutil_process(self) -> Optional[psutil.Process]:
        try:
            import psutil
        except ImportError:
            self.notes.append("host RSS not recorded: psutil is not installed (pip install psutil)")
            return None
        return psutil.Process()

    def _torch_cuda(self) -> Optional[ModuleType]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            self.notes.append("GPU peaks not recorded: torch.cuda is not available (no GPU, or a CPU-only torch)")
            return None
        cuda: ModuleType = torch.cuda
        return cuda

    def _nvml_handle(self, cuda: ModuleType) -> Optional[tuple[ModuleType, Any]]:  # (pynvml, opaque device handle)
        try:
            import pynvml

            pynvml.nvmlInit()
            index = cuda.current_device()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            if visible != [""] and index < len(visible) and visible[index].strip().isdigit():
                index = int(visible[index])  # NVML numbers devices ignoring CUDA_VISIBLE_DEVICES
            return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # no driver, no nvidia-ml-py, a UUID in CUDA_VISIBLE_DEVICES: say why
            self.notes.append(f"NVML peak not recorded: {type(exc).__name__}: {exc}")
            return None

    def _rss(self) -> Optional[int]:
        if self._process is None:
            return None
        total = 0
        try:
            for p in [self._process, *self._process.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except Exception:  # a child (dataloader worker) that exited between listing and reading
                    continue
        except Exception:
            return None
        return total

    @staticmethod
    def _nvml_reading(nvml: tuple[Any, Any]) -> int:
        """This process's GPU memory where NVML lists it, else the device's used memory."""
        pynvml, handle = nvml
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory)
        except Exception:  # containers often hide other pids: fall back to the device's total use
            pass
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    def sample(self) -> None:
        """Take one reading of each source and keep the peaks."""
        rss = self._rss()
        if rss is not None:
            self.host_rss = max(self.host_rss or 0, rss)
        if self._nvml is not None:
            try:
                used = self._nvml_reading(self._nvml)
            except Exception as exc:
                self.notes.append(f"NVML reading failed: {exc}")
                self._nvml = None
                return
            self.nvml_used = max(self.nvml_used or 0, used)

    def _loop(self) -> None:
        import time

        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            self.sample()
            if self._every and time.monotonic() - last >= self._every[0]:
                last = time.monotonic()
                try:
                    self._every[1]()
                except Exception as exc:  # a failed checkpoint must not stop the sampling (or the run)
                    self.notes.append(f"checkpoint failed: {type(exc).__name__}: {exc}")

    def every(self, seconds: float, fn: Callable[[], object]) -> None:
        """Call fn() from the sampling thread every `seconds` (e.g. to checkpoint the record)."""
        self._every = (seconds, fn)

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memfit-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def peaks(self) -> dict[str, Optional[int]]:
        """Bytes: max_memory_allocated, max_memory_reserved, nvml_used_bytes, host_rss_bytes."""
        alloc = reserved = None
        if self._cuda is not None:
            alloc, reserved = int(self._cuda.max_memory_allocated()), int(self._cuda.max_memory_reserved())
        return {"max_memory_allocated": alloc, "max_memory_reserved": reserved,
                "nvml_used_bytes": self.nvml_used, "host_rss_bytes": self.host_rss}

    def device(self) -> tuple[Optional[str], Optional[int]]:
        """(device name, total bytes) of the GPU, or the CPU's name and None."""
        if self._cuda is None:
            import platform

            return f"cpu ({platform.processor() or platform.machine()})", None
        props = self._cuda.get_device_properties(self._cuda.current_device())
        return props.name, int(props.total_memory)
