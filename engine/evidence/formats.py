"""The log formats engine/evidence/logs.py reads: their regexes, unit conversion, and the per-file parser.

`FileParser` is fed one decoded line at a time by engine/evidence/logs.py (which does the streaming, the
keyword pre-filter and the public API) and turns lines into LogRecord. It is private and separate
from engine/evidence/logs.py only to keep both modules small; nothing outside engine/evidence/logs.py should use it.

Formats, and where their wording comes from:
- PyTorch CUDA OOM, c10/cuda/CUDACachingAllocator.cpp (DeviceCachingAllocator::malloc):
  old (torch <= 2.0): "CUDA out of memory. Tried to allocate S (GPU D; S total capacity; S already
  allocated; S free; [S allowed; ]S reserved in total by PyTorch) If reserved memory is >> allocated
  memory try setting max_split_size_mb ..." (torch 1.0-1.3 printed "S cached" in place of "reserved
  in total by PyTorch");
  new (torch >= 2.1): "CUDA out of memory. Tried to allocate S. GPU D has a total capacity of S of
  which S is free. [Including non-PyTorch memory, this process has S memory in use. ][S allowed; ]Of
  the allocated memory S is allocated by PyTorch, [with S allocated in private pools (e.g., CUDA
  Graphs), ]and S is reserved by PyTorch but unallocated. If reserved but unallocated memory is large
  try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True ..." (2.1 spelled "total capacty").
  S is format_size(): "N bytes" up to 1 KiB, else two decimals and KiB/MiB/GiB.
- Kernel OOM killer: "Out of memory: Killed process PID (NAME) total-vm:NkB, anon-rss:NkB, ..."
  (older kernels: "Out of memory: Kill process PID (NAME) score N ..." then "Killed process PID ...";
  cgroups: "Memory cgroup out of memory: Killed process ..."), with dmesg or journal prefixes.
- DeepSpeed launcher (deepspeed/launcher/launch.py, sigkill_handler):
  logger.error(f"{cmd} exits with return code = {last_return_code}"); -9 is SIGKILL, the OOM killer's
  signal. torchrun reports the same as "exitcode  : -9 (pid: N)".
- DeepSpeed see_memory_usage (deepspeed/runtime/utils.py, 0.19 here; older versions logger.info the
  same text): print(message), then
  f"MA {round(get_accelerator().memory_allocated() / (1024 * 1024 * 1024),2 )} GB ... Max_CA ... GB "
  and f'CPU Virtual Memory:  used = {used_GB} GB, percent = {vm_stats.percent}%' where used_GB is
  (total - available) / (1024**3). Every DeepSpeed "GB" is bytes / 2**30, i.e. already GiB.
- nvidia-smi --query-gpu=...,memory.used,memory.total --format=csv[,noheader][,nounits].
- torch: max_memory_allocated()/max_memory_reserved() prints, and memory_summary() tables
  (torch/cuda/memory.py: rows "Allocated memory" and "GPU reserved memory", column "Peak Usage",
  sizes floor-divided to an integer with B/KiB/MiB/GiB).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from ..core.units import GIB

from .record import LINE_CHARS, LogRecord


# Units in GiB. Logs' "KB/MB/GB/TB" are read as binary: DeepSpeed and the usual torch prints divide by
# powers of 1024 (see the module docstring); for a peak this errs towards more memory, never less.
_UNIT_GIB = {
    "bytes": 1 / GIB, "b": 1 / GIB, "kib": 2**-20, "mib": 2**-10, "gib": 1.0, "tib": 2**10, "pib": 2**20,
    "kb": 2**-20, "mb": 2**-10, "gb": 1.0, "tb": 2**10,
}


def _gib(number: str, unit: str) -> float:
    return round(float(number) * _UNIT_GIB[unit.lower()], 4)


_S = r"([0-9]+(?:\.[0-9]+)?) (bytes|KiB|MiB|GiB|TiB)"  # format_size() in CUDACachingAllocator.cpp
_OOM_OLD = re.compile(
    rf"Tried to allocate {_S} \(GPU (\d+); {_S} total capacity; {_S} already allocated; {_S} free; "
    rf"(?:{_S} allowed; )?{_S} (?:reserved in total by PyTorch|cached)\)")
_OOM_NEW = re.compile(rf"Tried to allocate {_S}\. GPU (\d+) has a total capac\w+ of {_S} of which {_S} is free")
_OOM_IN_USE = re.compile(rf"this process has {_S} memory in use")
_OOM_SPLIT = re.compile(rf"Of the allocated memory {_S} is allocated by PyTorch, (?:with [^()]*\([^)]*\), )?and {_S} is reserved")
_KILLED = re.compile(r"Kill(?:ed)? process (\d+) \(([^)]*)\)")
_ANON_RSS = re.compile(r"anon-rss:\s*(\d+)\s*kB")
# a bare "Killed" (the shell reporting SIGKILL) or a script's "...: line 12: PID Killed   CMD"
_BASH_KILLED = re.compile(r"^\s*(?:Killed\s*$|\S.*?: line \d+:\s+(\d+) Killed\s)")
_TORCHRUN_KILL = re.compile(r"exitcode\s*:\s*-9\b(?:.*?\(pid:\s*(\d+)\))?")
_DS_MA = re.compile(r"\bMA ([0-9.]+) GB\s+Max_MA ([0-9.]+) GB\s+CA ([0-9.]+) GB\s+Max_CA ([0-9.]+) GB")
_DS_CPU = re.compile(r"CPU Virtual Memory:\s+used = ([0-9.]+) GB")
_LOG_PREFIX = re.compile(r"^(?:\[[^\]]*\]:?\s*)+")  # "[time] [INFO] [utils.py:781:see_memory_usage] "
_TORCH_PEAK = re.compile(
    r"(?i)\b(?:torch\.cuda\.)?(?:max|peak)[ _](?:gpu[ _])?(?:memory[ _])?(allocated|reserved)(?:[ _]memory)?"
    r"(?:\(\))?\s*(?:\(([kmgt]i?b|bytes)\)\s*)?[:=]\s*([0-9]+(?:\.[0-9]+)?(?:e\+?[0-9]+)?)\s*([kmgtp]i?b|bytes|b)?\b")
_SUMMARY_HEAD = re.compile(r"memory summary, device ID (\d+)")
_SUMMARY_ROW = re.compile(r"\|\s*(Allocated memory|GPU reserved memory|Reserved memory)\s*\|[^|]*\|\s*(\d+) (B|KiB|MiB|GiB|TiB|PiB)\s*\|")
_SMI_VALUE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(MiB|GiB|KiB)?")  # fullmatch on the stripped cell


class FileParser:
    """State for one file: the previous line (DeepSpeed labels), an open nvidia-smi CSV, a summary table."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[dict[str, Any]] = []
        self.prev = b""  # the raw line before the one being fed: see_memory_usage prints its label there
        self.ds_last: Optional[tuple[int, dict[str, Any]]] = None
        self.host_by_pid: dict[int, int] = {}
        self.csv: Optional[dict[str, Any]] = None
        self.trace: dict[str, dict[str, Any]] = {}
        self.summary: Optional[dict[str, Any]] = None

    def _add(self, kind: str, n: int, text: str, **fields: Any) -> dict[str, Any]:
        item = {"kind": kind, "source": f"{self.name}:{n}", "line": text.strip()[:LINE_CHARS], **fields}
        self.items.append(item)
        return item

    def feed(self, n: int, text: str) -> None:
        """Look at one decoded line (the caller already found a keyword in it)."""
        if "Max_MA" in text:  # before "memory": DeepSpeed's logger prefix names see_memory_usage
            self._ds_ma(n, text)
        elif "CPU Virtual Memory" in text:
            self._ds_cpu(n, text)
        elif "memory" in text:
            self._memory_line(n, text)
        elif "Killed" in text:
            self._host_oom(n, text)
        elif "return code = -9" in text:
            self._add("host_oom", n, text)
        elif "exitcode" in text:
            m = _TORCHRUN_KILL.search(text)
            if m:
                self._add_host(n, text, int(m.group(1)) if m.group(1) else None, None, None)
        elif "llocated" in text or "eserved" in text:
            self._torch_peak(n, text)

    def _memory_line(self, n: int, text: str) -> None:
        if "of memory" in text:
            if "Tried to allocate" in text:
                self._gpu_oom(n, text)
            elif "Kill" in text:
                self._host_oom(n, text)
            elif "CUDA error: out of memory" in text:
                self._add("gpu_oom", n, text)
        elif "memory.used" in text and "," in text:
            self._smi_header(text)
        elif "d memory" in text and "|" in text:
            self._summary_row(n, text)
        elif "memory summary" in text:
            m = _SUMMARY_HEAD.search(text)
            self.summary = {"gpu_index": int(m.group(1)) if m else None}
        elif "llocated" in text or "eserved" in text:
            self._torch_peak(n, text)

    def _gpu_oom(self, n: int, text: str) -> None:
        m = _OOM_OLD.search(text)
        if m:
            g = m.groups()
            # groups: requested 0-1, GPU 2, total 3-4, allocated 5-6, free 7-8, allowed 9-10, reserved 11-12
            alloc, reserved = _gib(*g[5:7]), _gib(*g[11:13])
            self._add("gpu_oom", n, text, requested_gib=_gib(*g[0:2]), gpu_index=int(g[2]),
                      total_gib=_gib(*g[3:5]), allocated_gib=alloc, free_gib=_gib(*g[7:9]),
                      reserved_gib=reserved, reserved_unallocated_gib=round(reserved - alloc, 4))
            return
        m = _OOM_NEW.search(text)
        if not m:
            self._add("gpu_oom", n, text)
            return
        g = m.groups()
        fields = {"requested_gib": _gib(*g[0:2]), "gpu_index": int(g[2]), "total_gib": _gib(*g[3:5]),
                  "free_gib": _gib(*g[5:7])}
        use = _OOM_IN_USE.search(text)
        if use:
            fields["in_use_gib"] = _gib(*use.groups())
        split = _OOM_SPLIT.search(text)
        if split:
            # printed allocated + printed unallocated == reserved_bytes (private pools cancel out)
            alloc, unalloc = _gib(*split.groups()[0:2]), _gib(*split.groups()[2:4])
            fields.update(allocated_gib=alloc, reserved_unallocated_gib=unalloc,
                          reserved_gib=round(alloc + unalloc, 4))
        self._add("gpu_oom", n, text, **fields)

    def _host_oom(self, n: int, text: str) -> None:
        m = _KILLED.search(text)
        if m:
            rss = _ANON_RSS.search(text)
            # anon-rss is in kB (KiB): kB / 2**20 = GiB
            rss_gib = round(int(rss.group(1)) / 2**20, 4) if rss else None
            self._add_host(n, text, int(m.group(1)), m.group(2), rss_gib)
        elif "OOM Killed" in text or "oom_kill event" in text:  # slurmstepd, cgroup kill
            self._add("host_oom", n, text)
        else:
            b = _BASH_KILLED.match(text)
            if b:
                self._add_host(n, text, int(b.group(1)) if b.group(1) else None, None, None)

    def _add_host(self, n: int, text: str, pid: Optional[int], process: Optional[str], rss: Optional[float]) -> None:
        """One fact per killed pid: old kernels print "Kill process" then "Killed process ... anon-rss"."""
        if pid is not None and pid in self.host_by_pid:
            old = self.items[self.host_by_pid[pid]]
            if rss is not None and old.get("anon_rss_gib") is None:
                old.update(source=f"{self.name}:{n}", line=text.strip()[:LINE_CHARS], anon_rss_gib=rss,
                           process=process or old.get("process"))
            return
        self._add("host_oom", n, text, pid=pid, process=process, anon_rss_gib=rss)
        if pid is not None:
            self.host_by_pid[pid] = len(self.items) - 1

    def _ds_ma(self, n: int, text: str) -> None:
        m = _DS_MA.search(text)
        if not m:
            return
        ma, max_ma, ca, max_ca = (_gib(v, "gib") for v in m.groups())  # DeepSpeed "GB" = bytes / 2**30
        item = self._add("deepspeed_memory", n, text, label=self._label(), allocated_gib=ma,
                         max_allocated_gib=max_ma, reserved_gib=ca, max_reserved_gib=max_ca)
        self.ds_last = (n, item)

    def _ds_cpu(self, n: int, text: str) -> None:
        m = _DS_CPU.search(text)
        if not m:
            return
        used = _gib(m.group(1), "gib")  # (total - available) / 1024**3
        if self.ds_last and n - self.ds_last[0] <= 3 and "host_used_gib" not in self.ds_last[1]:
            self.ds_last[1]["host_used_gib"] = used
        else:
            self._add("deepspeed_memory", n, text, label=self._label(), host_used_gib=used)

    def _label(self) -> Optional[str]:
        label = _LOG_PREFIX.sub("", self.prev.decode("utf-8", "replace").strip()).strip()
        if not label or "Max_MA" in label or "CPU Virtual Memory" in label:
            return None
        return label[:120]

    def _torch_peak(self, n: int, text: str) -> None:
        fields = {}
        # Whitespace runs collapsed first: the pattern is linear, but each space of a long run costs a
        # retry of the optional unit and separator (2,000 lines of 50k spaces: 6 s uncollapsed).
        for m in _TORCH_PEAK.finditer(" ".join(text.split())):
            what, unit_in_name, number, unit = m.groups()
            unit = unit or unit_in_name
            if unit is None:
                if "." in number or "e" in number.lower() or int(number) < 2**20:
                    continue  # a bare small or fractional number has no knowable unit
                unit = "bytes"
            fields["max_allocated_gib" if what.lower() == "allocated" else "max_reserved_gib"] = _gib(number, unit)
        if fields:
            self._add("torch_memory", n, text, **fields)

    def _summary_row(self, n: int, text: str) -> None:
        m = _SUMMARY_ROW.search(text)
        if not m:
            return
        if self.summary is None:
            self.summary = {"gpu_index": None}
        key = "max_allocated_gib" if m.group(1) == "Allocated memory" else "max_reserved_gib"
        self.summary[key] = _gib(m.group(2), m.group(3))
        self.summary.setdefault("_first", (n, text))
        if key == "max_reserved_gib":
            self._flush_summary()

    def _flush_summary(self) -> None:
        s, self.summary = self.summary, None
        if s and "_first" in s:
            n, text = s.pop("_first")
            self._add("torch_memory", n, text, **s)

    def _smi_header(self, text: str) -> None:
        cols = [c.strip() for c in text.strip().split(",")]
        names = [c.split(" [")[0].strip() for c in cols]
        units = [c.split(" [")[1].rstrip("]") if " [" in c else None for c in cols]
        if "memory.used" not in names:
            return
        key = next((k for k in ("index", "uuid", "pci.bus_id") if k in names), None)
        used = names.index("memory.used")
        total = names.index("memory.total") if "memory.total" in names else None
        self.csv = {"commas": text.count(","), "used": used, "total": total,
                    "key": names.index(key) if key else None, "is_index": key == "index",
                    "unit_used": units[used] or "MiB", "unit_total": units[total] if total is not None else None}

    def smi_row(self, n: int, text: str) -> bool:
        """Take one nvidia-smi CSV data row; False when the line is not one."""
        c = self.csv
        if c is None or text.count(",") != c["commas"]:
            return False
        parts = text.strip().split(",")
        used = self._smi_value(parts[c["used"]], c["unit_used"])
        if used is None:
            return False
        total = self._smi_value(parts[c["total"]], c["unit_total"] or "MiB") if c["total"] is not None else None
        key = parts[c["key"]].strip() if c["key"] is not None else ""
        t = self.trace.setdefault(key, {"gpu_peak_gib": -1.0, "first": n})
        if used > t["gpu_peak_gib"]:
            t.update(gpu_peak_gib=used, n=n, text=text)
        if total is not None:
            t["total_gib"] = max(total, t.get("total_gib", 0.0))
        if c["is_index"] and key.isdigit():
            t["gpu_index"] = int(key)
        return True

    @staticmethod
    def _smi_value(cell: str, unit: str) -> Optional[float]:
        m = _SMI_VALUE.fullmatch(cell.strip())
        return _gib(m.group(1), m.group(2) or unit) if m else None

    def finish(self) -> list[LogRecord]:
        """All facts of the file, in order of their lines (GPU traces after the rest)."""

        self._flush_summary()
        for t in sorted(self.trace.values(), key=lambda t: t["first"]):
            self._add("gpu_memory_trace", t["n"], t["text"], gpu_peak_gib=t["gpu_peak_gib"],
                      total_gib=t.get("total_gib"), gpu_index=t.get("gpu_index"))
        return [LogRecord(**{k: v for k, v in item.items() if v is not None}) for item in self.items]

