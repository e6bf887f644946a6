"""Hardware detection (memfit.engine.machine.detect) with fake NVML and psutil readings; no GPU needed."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from memfit.engine.machine.detect import (DetectedGpu, GpuUnavailable, HostfileError, Readers, detect_hardware,
                                  parse_hostfile, read_cpu_cores, read_host_memory, read_nvml)

MIB, GIB = 2**20, 2**30


class FakeNvml:
    """The pynvml functions read_nvml calls, answering like 8 x H100 80GB HBM3 (81559 MiB each)."""

    def __init__(self, totals_mib=(81559,) * 8, name="NVIDIA H100 80GB HBM3", init_error=None):
        self.totals, self.name, self.init_error = totals_mib, name, init_error
        self.shut = False

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetCount(self):
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return self.name

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=self.totals[handle] * MIB, used=0, free=self.totals[handle] * MIB)

    def nvmlShutdown(self):
        self.shut = True


def fake_readers(nvml=None, total=2048 * GIB, available=1900 * GIB, cgroup=None, cores=96, free=3500 * GIB):
    nvml = nvml or FakeNvml()
    return Readers(gpus=[("nvml", lambda: read_nvml(nvml))], host_memory=lambda: (total, available),
                   cgroup_limit=lambda: cgroup, cpu_cores=lambda: cores, disk_free=lambda path: free)


def test_eight_h100_from_nvml():
    nvml = FakeNvml()
    hw = detect_hardware(readers=fake_readers(nvml))
    assert hw.gpu_count == 8 and hw.gpus_per_node == 8 and hw.gpu_source == "nvml"
    # NVML reports an H100 80GB HBM3 as 81559 MiB: 81559 / 1024 = 79.647 GiB
    assert hw.gpu_memory_gib == pytest.approx(81559 / 1024, abs=0.01)
    assert hw.gpus[3] == DetectedGpu(index=3, name="NVIDIA H100 80GB HBM3", memory_gib=hw.gpu_memory_gib)
    assert nvml.shut and hw.notes == []
    assert hw.to_hardware_dict() == {"gpu_memory": hw.gpu_memory_gib, "gpus_per_node": 8, "nodes": 1,
                                     "host_memory": 2048.0}


def test_mixed_gpus_take_the_smallest_and_bytes_names():
    nvml = FakeNvml(totals_mib=(81920, 40960), name=b"NVIDIA A100-SXM4-80GB")
    hw = detect_hardware(readers=fake_readers(nvml))
    assert hw.gpu_memory_gib == 40.0 and hw.gpus[0].name == "NVIDIA A100-SXM4-80GB"
    assert any("smallest" in n for n in hw.notes)


def test_fallback_chain_and_notes():
    def no_torch():
        raise GpuUnavailable("torch.cuda.is_available() is False")

    readers = fake_readers(FakeNvml(init_error=RuntimeError("NVML Shared Library Not Found")))
    readers.gpus.append(("torch.cuda", no_torch))
    hw = detect_hardware(readers=readers)
    assert hw.gpus == [] and hw.gpu_memory_gib is None and hw.gpu_source is None
    assert hw.notes == ["no NVIDIA GPU found (NVML unavailable: NVML Shared Library Not Found; "
                        "torch.cuda.is_available() is False); GPU fields left empty"]
    assert "gpu_memory" not in hw.to_hardware_dict()


def test_second_reader_used_when_first_fails():
    gpu = DetectedGpu(index=0, name="NVIDIA L4", memory_gib=22.03)
    readers = fake_readers(FakeNvml(totals_mib=()))  # NVML loads but sees no device
    readers.gpus.append(("torch.cuda", lambda: [gpu]))
    hw = detect_hardware(readers=readers)
    assert hw.gpu_source == "torch.cuda" and hw.gpus == [gpu] and hw.notes == []


def test_fake_psutil_and_cgroup_limit():
    psutil = SimpleNamespace(virtual_memory=lambda: SimpleNamespace(total=744 * GIB, available=700 * GIB),
                             cpu_count=lambda logical=True: 64 if not logical else 128)
    assert read_host_memory(psutil) == (744 * GIB, 700 * GIB)
    assert read_cpu_cores(psutil) == 64  # physical cores, not the 128 threads
    readers = fake_readers(total=744 * GIB, available=700 * GIB, cgroup=512 * GIB)
    hw = detect_hardware(readers=readers)
    assert (hw.host_memory_gib, hw.host_available_gib) == (512.0, 512.0)
    assert any("cgroup limits memory to 512.0 GiB" in n for n in hw.notes)


def test_nvme_free_space_and_bad_path(tmp_path):
    hw = detect_hardware(nvme_path=str(tmp_path), readers=fake_readers(free=int(3.5 * 1024 * GIB)))
    assert hw.nvme_free_gib == 3584.0
    assert hw.to_hardware_dict()["nvme"] == 3584.0 and hw.to_hardware_dict()["nvme_path"] == str(tmp_path)

    readers = fake_readers()
    readers.disk_free = lambda path: __import__("shutil").disk_usage(path).free
    hw = detect_hardware(nvme_path=str(tmp_path / "absent"), readers=readers)
    assert hw.nvme_free_gib is None
    assert hw.notes == [f"nvme path {tmp_path / 'absent'}: cannot read free space (No such file or directory); "
                        "nvme left empty"]


def test_hostfile_nodes_and_slots(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nworker-0 slots=8\n\n  worker-1   slots=8  \n")
    assert parse_hostfile(hostfile) == {"worker-0": 8, "worker-1": 8}
    # no local GPU: gpus_per_node comes from the slots
    readers = fake_readers(FakeNvml(totals_mib=()))
    hw = detect_hardware(hostfile=hostfile, readers=readers)
    assert (hw.nodes, hw.gpus_per_node, hw.gpu_source, hw.hosts) == (2, 8, "hostfile", ["worker-0", "worker-1"])
    assert hw.to_hardware_dict()["nodes"] == 2


def test_hostfile_bad_lines_all_reported(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("worker-0 slots=8\nworker-1 slots=eight\nworker-0 slots=8\nworker-2 slots=0\nworker-3\n")
    with pytest.raises(HostfileError) as err:
        parse_hostfile(hostfile)
    assert err.value.problems == [
        f"{hostfile}:2: expected 'HOSTNAME slots=N' (got 'worker-1 slots=eight')",
        f"{hostfile}:3: host 'worker-0' listed twice",
        f"{hostfile}:4: slots must be >= 1 (got 'worker-2 slots=0')",
        f"{hostfile}:5: expected 'HOSTNAME slots=N' (got 'worker-3')",
    ]


@pytest.mark.parametrize("text, message", [
    ("# only a comment\n\n", "no hosts"),
    (None, "cannot read the hostfile (No such file or directory)"),
])
def test_hostfile_empty_or_missing(tmp_path, text, message):
    hostfile = tmp_path / "hostfile"
    if text is not None:
        hostfile.write_text(text)
    with pytest.raises(HostfileError, match=re.escape(message)):
        detect_hardware(hostfile=hostfile, readers=fake_readers())


@pytest.mark.slow
def test_hostfile_agrees_with_deepspeed(tmp_path):
    # DeepSpeed's own launcher parser is the independent reference for good files
    from deepspeed.launcher.runner import _parse_hostfile

    text = "# cluster\nnode-a slots=4\n\nnode-b slots=2\n"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(text)
    assert parse_hostfile(hostfile) == dict(_parse_hostfile(text.splitlines(keepends=True)))


def test_real_machine_without_gpu():
    # this CI machine has no NVIDIA driver: detection must say so and still read RAM and cores
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("an NVIDIA driver is loaded here")
    hw = detect_hardware()
    assert hw.gpus == [] and hw.gpu_memory_gib is None
    assert hw.notes and hw.notes[0].startswith("no NVIDIA GPU found (")
    assert hw.host_memory_gib > 0 and hw.host_available_gib > 0 and hw.cpu_cores >= 1
