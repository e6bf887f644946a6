"""Measured facts from logs (memfit.engine.evidence.logs).

Expected numbers are worked out here from the text of each fixture line and the unit definitions
(KiB = 2**10, MiB = 2**20, GiB = 2**30 bytes; the kernel's "kB" is KiB), never copied from parser output.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from memfit.engine.core.errors import LogError
from memfit.engine.evidence.logs import LogRecord, fragmentation_hint, parse_log, parse_logs, summarize

LOGS = Path(__file__).parent / "fixtures" / "logs"
approx = lambda x: pytest.approx(x, abs=1e-4)  # facts are rounded to 4 decimals of a GiB


def _only(facts: list[LogRecord], kind: str) -> list[LogRecord]:
    return [f for f in facts if f.kind == kind]


def test_old_wording_cuda_oom():
    facts = parse_log(LOGS / "cuda_oom_old.log")
    assert [f.kind for f in facts] == ["gpu_oom", "gpu_oom"]
    first, second = facts
    # "Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total capacity; 77.30 GiB already allocated;
    #  15.06 MiB free; 78.20 GiB reserved in total by PyTorch)"
    assert first.source == f"{LOGS / 'cuda_oom_old.log'}:13"
    assert first.gpu_index == 0
    assert first.requested_gib == approx(20 / 1024)
    assert first.total_gib == approx(79.15)
    assert first.allocated_gib == approx(77.30)
    assert first.free_gib == approx(15.06 / 1024)
    assert first.reserved_gib == approx(78.20)
    assert first.reserved_unallocated_gib == approx(78.20 - 77.30)  # derived for the old wording
    # second message carries "35.00 GiB allowed; " (set_per_process_memory_fraction) before reserved
    assert (second.gpu_index, second.reserved_gib, second.allocated_gib) == (1, approx(36.50), approx(30.12))
    assert second.requested_gib == approx(1.53)


def test_new_wording_cuda_oom():
    facts = parse_log(LOGS / "cuda_oom_new.log")
    assert len(facts) == 3 and all(f.kind == "gpu_oom" for f in facts)
    a, b, c = facts
    # "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.23 GiB is free.
    #  Including non-PyTorch memory, this process has 77.86 GiB memory in use. Of the allocated memory
    #  75.01 GiB is allocated by PyTorch, and 1.84 GiB is reserved by PyTorch but unallocated."
    assert (a.requested_gib, a.total_gib, a.free_gib) == (approx(2.0), approx(79.10), approx(1.23))
    assert (a.in_use_gib, a.allocated_gib, a.reserved_unallocated_gib) == (approx(77.86), approx(75.01), approx(1.84))
    assert a.reserved_gib == approx(75.01 + 1.84)
    assert a.line.startswith("[rank0]: torch.OutOfMemoryError: CUDA out of memory.") and len(a.line) <= 300
    # rank 1: another process's "Process 51877 has 3.00 GiB" must not be read as this process's use;
    # "with 512.00 MiB allocated in private pools" sits between allocated and unallocated
    assert (b.gpu_index, b.in_use_gib, b.free_gib) == (1, approx(75.79), approx(301.44 / 1024))
    assert (b.allocated_gib, b.reserved_unallocated_gib) == (approx(73.50), approx(612.25 / 1024))
    # torch 2.1 spelled "total capacty"
    assert (c.total_gib, c.reserved_unallocated_gib) == (approx(23.65), approx(217.30 / 1024))


def test_cuda_oom_in_bytes_and_kib():
    # format_size() prints "N bytes" up to 1 KiB and KiB up to 1 MiB
    line = ("RuntimeError: CUDA out of memory. Tried to allocate 512 bytes (GPU 3; 15.78 GiB total capacity; "
            "14.20 GiB already allocated; 768.00 KiB free; 14.90 GiB reserved in total by PyTorch)\n")
    fact = _parse_text(line)[0]
    assert (fact.requested_gib, fact.free_gib, fact.gpu_index) == (approx(512 / 2**30), approx(768 / 2**20), 3)


def test_fragmentation_hint_thresholds():
    new = parse_log(LOGS / "cuda_oom_new.log")
    old = parse_log(LOGS / "cuda_oom_old.log")
    assert fragmentation_hint(new[0])  # 1.84 GiB >= 1 GiB
    assert fragmentation_hint(new[1]) is False  # 0.60 GiB < 1 GiB and < 5 % of 79.10 GiB (3.96)
    assert fragmentation_hint(new[2]) is False  # 0.21 GiB < 5 % of 23.65 GiB (1.18)
    assert fragmentation_hint(old[1])  # 36.50 - 30.12 = 6.38 GiB
    assert fragmentation_hint(old[0]) is False  # 0.90 GiB < 1 GiB and < 3.96 GiB
    small_gpu = _parse_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
                            "total capacity of 7.79 GiB of which 3.00 MiB is free. Of the allocated memory 6.90 GiB "
                            "is allocated by PyTorch, and 512.00 MiB is reserved by PyTorch but unallocated.\n")[0]
    assert fragmentation_hint(small_gpu)  # 0.5 GiB >= 5 % of 7.79 GiB (0.39)


def test_dmesg_host_oom():
    facts = parse_log(LOGS / "dmesg_host_oom.log")
    # the oom-kill:, task table and oom_reaper lines are not separate facts
    assert len(facts) == 1
    fact = facts[0]
    assert (fact.kind, fact.pid, fact.process) == ("host_oom", 48213, "python")
    assert fact.anon_rss_gib == approx(731906048 * 1024 / 2**30)  # anon-rss:731906048kB
    assert fact.source.endswith("dmesg_host_oom.log:10")


def test_old_kernel_kill_lines_merge_and_cgroup_kill():
    facts = parse_log(LOGS / "journal_host_oom_old.log")
    # "Out of memory: Kill process 7731 ..." and "Killed process 7731 ... anon-rss" are one kill
    assert [(f.pid, f.process) for f in facts] == [(7731, "python"), (7790, "pt_data_worker")]
    assert facts[0].anon_rss_gib == approx(251658240 / 2**20)  # 240 GiB
    assert facts[0].source.endswith(":3")
    assert facts[1].anon_rss_gib == approx(4194304 / 2**20)  # 4 GiB, "Memory cgroup out of memory"


@pytest.mark.parametrize("line, pid", [
    ("[2025-01-24 21:14:08,557] [ERROR] [launch.py:325:sigkill_handler] ['python', 'train.py'] exits with "
     "return code = -9", None),
    ("  exitcode  : -9 (pid: 4411)", 4411),
    ("ERROR:torch.distributed.elastic.multiprocessing.api:failed (exitcode: -9) local_rank: 0 (pid: 4411) of "
     "binary: /usr/bin/python", 4411),
    ("Killed", None),
    ("/var/spool/slurmd/job77/slurm_script: line 12: 90210 Killed                  python train.py", 90210),
    ("slurmstepd: error: Detected 1 oom_kill event in StepId=77.batch. Some of the step tasks have been OOM Killed.",
     None),
])
def test_kill_reports_without_numbers(line, pid):
    facts = _parse_text(line + "\n")
    assert [(f.kind, f.pid, f.anon_rss_gib) for f in facts] == [("host_oom", pid, None)]


@pytest.mark.parametrize("line", [
    "[2025-01-24 21:14:08,557] [ERROR] [launch.py:325:sigkill_handler] ['python'] exits with return code = 1",
    "  exitcode  : 1 (pid: 4411)",
    "[3021178.993410] oom_reaper: reaped process 48213 (python), now anon-rss:0kB, file-rss:0kB",
    "Killing subprocess 48213",
    "Killed 3 stale dataloader workers",
    "max_grad_norm: 1.0",
    "Max allocated 0.5",  # no separator, no unit: not evidence
    "peak allocated: 0.5",  # a bare fraction has no knowable unit
    " 45%|####5     | 450/1000 [12:01<14:41,  1.60s/it]",
    "memory_breakdown ............. False",
])
def test_lines_that_are_not_evidence(line):
    assert _parse_text(line + "\n") == []


def test_see_memory_usage_print_format():
    facts = parse_log(LOGS / "ds_see_memory_usage.log")
    assert [f.label for f in facts] == ["Before initializing optimizer states", "After initializing optimizer states"]
    before = facts[0]
    # "MA 15.3 GB  Max_MA 16.5 GB  CA 16.6 GB  Max_CA 17 GB": DeepSpeed's GB is bytes / 2**30 = GiB as printed
    assert (before.allocated_gib, before.max_allocated_gib) == (approx(15.3), approx(16.5))
    assert (before.reserved_gib, before.max_reserved_gib, before.host_used_gib) == (approx(16.6), approx(17), approx(81.95))
    assert before.source.endswith(":5")


def test_qwen32b_motivating_failure():
    facts = parse_log(LOGS / "qwen32b_host_oom.log")
    ds = _only(facts, "deepspeed_memory")
    assert ds[0].label == "DeepSpeedZeRoOffload initialize [begin]"  # logger prefix stripped
    assert [f.host_used_gib for f in ds] == [98.6, 161.4, 161.4, 227.8, 227.8, 351.9, 351.9, 596.3, 598.0]
    assert ds[-1].label == "After initializing ZeRO optimizer" and ds[-1].max_allocated_gib == approx(3.93)
    kills = _only(facts, "host_oom")
    assert [(k.pid, k.anon_rss_gib is None) for k in kills] == [(None, True), (48213, False)]
    assert kills[1].anon_rss_gib == approx(734003200 / 2**20)  # 700 GiB of a 744 GiB host
    # config dumps mentioning pin_memory / memory_breakdown are not evidence
    assert len(facts) == 11
    summary = summarize(facts)
    assert summary["any_host_oom"] and not summary["any_gpu_oom"] and not summary["fragmentation"]
    assert summary["host_peak_gib"] == approx(700.0)
    assert summary["kinds"]["deepspeed_memory"]["max_host_used_gib"] == approx(598.0)
    assert summary["kinds"]["host_oom"]["worst"]["pid"] == 48213


def test_nvidia_smi_csv_repeated_header_and_na():
    facts = parse_log(LOGS / "nvidia_smi.csv")
    assert [(f.kind, f.gpu_index) for f in facts] == [("gpu_memory_trace", 0), ("gpu_memory_trace", 1)]
    # GPU 0 peaks at 79731 MiB (after a repeated header); the "[N/A]" row is skipped
    assert facts[0].gpu_peak_gib == approx(79731 / 1024)
    assert facts[0].total_gib == approx(81559 / 1024)  # H100 80GB HBM3 as NVML reports it
    assert facts[1].gpu_peak_gib == approx(71002 / 1024)
    assert facts[0].source.endswith(":7")


def test_nvidia_smi_nounits_other_column_order():
    [fact] = parse_log(LOGS / "nvidia_smi_nounits.csv")
    assert (fact.gpu_index, fact.gpu_peak_gib, fact.total_gib) == (0, approx(48128 / 1024), approx(97871 / 1024))


def test_torch_peak_prints():
    facts = parse_log(LOGS / "torch_peaks.log")
    assert [(f.max_allocated_gib, f.max_reserved_gib) for f in facts] == [
        (approx(12884901888 / 2**30), approx(15032385536 / 2**30)),  # 12 and 14 GiB in bytes
        (None, approx(25769803776 / 2**30)),  # a bare integer from max_memory_reserved() is bytes
        (None, approx(23.1)),  # "GB" read as GiB, the torch-print convention (/ 1024**3)
        (approx(20480 / 1024), None),  # "(MiB)" in the label
    ]


def test_memory_summary_table():
    # the fixture was produced by torch's own memory_summary() over stats with peak allocated
    # 74 GiB + 512 MiB and peak reserved 77 GiB + 768 MiB (see its header comment)
    [fact] = parse_log(LOGS / "memory_summary.log")
    assert (fact.kind, fact.gpu_index) == ("torch_memory", 0)
    assert fact.max_allocated_gib == approx(74.5)
    assert fact.max_reserved_gib == approx(77.75)


def test_gzip_crlf_and_bad_utf8(tmp_path):
    raw = (LOGS / "dmesg_host_oom.log").read_bytes().replace(b"\n", b"\r\n")
    raw = b"\xff\xfe garbage \xc3\x28\r\n" + raw
    path = tmp_path / "kern.log.gz"
    path.write_bytes(gzip.compress(raw))
    [fact] = parse_log(path)
    assert fact.source == f"{path}:11" and fact.pid == 48213


def test_progress_bar_carriage_returns_share_a_line(tmp_path):
    path = tmp_path / "bar.log"
    path.write_bytes(b" 1%|  | 1/100\r 2%|  | 2/100\rRuntimeError: CUDA error: out of memory\nnext\n")
    [fact] = parse_log(path)
    assert (fact.kind, fact.source, fact.line) == ("gpu_oom", f"{path}:1", "RuntimeError: CUDA error: out of memory")


def test_block_boundaries_keep_line_numbers(tmp_path):
    # > 1 MiB of noise so the evidence falls in a later block; labels survive a skipped block
    path = tmp_path / "big.log"
    noise = b"step 1 loss 2.0 lr 1e-5\n" * 60000
    path.write_bytes(noise + b"Before step\nMA 1.0 GB         Max_MA 2.0 GB         CA 3.0 GB         Max_CA 3 GB \n")
    [fact] = parse_log(path)
    assert fact.source == f"{path}:60002" and fact.label == "Before step"


def test_no_evidence_is_empty(tmp_path):
    path = tmp_path / "clean.log"
    path.write_text("{'loss': 1.2}\n{'loss': 1.1}\n")
    assert parse_log(path) == []
    assert summarize([]) == {"any_gpu_oom": False, "any_host_oom": False, "fragmentation": False,
                             "gpu_peak_gib": None, "host_peak_gib": None, "kinds": {}}


def test_unreadable_paths_reported_together(tmp_path):
    bad_gz = tmp_path / "broken.log.gz"
    bad_gz.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(LogError) as err:
        parse_logs([tmp_path / "missing.log", tmp_path, bad_gz, LOGS / "dmesg_host_oom.log"])
    problems = err.value.problems
    assert len(problems) == 3
    assert problems[0] == f"{tmp_path / 'missing.log'}: cannot read the log (No such file or directory)"
    assert problems[1] == f"{tmp_path}: cannot read the log: it is a directory; give a regular file"
    assert problems[2].startswith(f"{bad_gz}: cannot read (")


def test_parse_logs_concatenates_in_order():
    facts = parse_logs([LOGS / "cuda_oom_old.log", LOGS / "dmesg_host_oom.log"])
    assert [f.kind for f in facts] == ["gpu_oom", "gpu_oom", "host_oom"]


def test_summary_worst_gpu_evidence():
    facts = parse_logs([LOGS / "cuda_oom_new.log", LOGS / "nvidia_smi.csv", LOGS / "memory_summary.log"])
    summary = summarize(facts)
    assert summary["any_gpu_oom"] and summary["fragmentation"]
    # largest GPU use across kinds: nvidia-smi's 79731 MiB beats the OOM's 77.86 GiB in use
    assert summary["gpu_peak_gib"] == approx(79731 / 1024)
    assert summary["kinds"]["gpu_oom"]["worst"]["in_use_gib"] == approx(77.86)
    assert summary["kinds"]["gpu_oom"]["count"] == 3


def test_fact_is_frozen_and_strict():
    fact = parse_log(LOGS / "dmesg_host_oom.log")[0]
    with pytest.raises(Exception):
        fact.pid = 1  # type: ignore[misc]
    with pytest.raises(Exception):
        LogRecord(kind="gpu_oom", source="x:1", line="", bogus=1)  # type: ignore[call-arg]


def _parse_text(text: str) -> list[LogRecord]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snippet.log"
        path.write_text(text)
        return parse_log(path)
