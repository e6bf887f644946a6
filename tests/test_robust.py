"""Boundaries, one test per class of bad input (issue 13): strict values, limits, linear parsing,
one log reader, regular files only, messages that name the plan key, all-or-nothing outputs.

Expected messages are what the user must be told (file, key path, constraint), stated from the input.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memfit.engine.advice.output import MANIFEST, write_files
from memfit.engine.core.errors import (ConfigCheckError, LogError, MemfitError, ModelSpecError, OutputError,
                                       OutputExistsError, PlanError, about)
from memfit.engine.core.inputs import excerpt, load_json, load_yaml, read_text
from memfit.engine.core.units import parse_size_gib
from memfit.engine.deepspeed.verify import tiny_config
from memfit.engine.evidence.logs import parse_log
from memfit.engine.evidence.match import infer_run
from memfit.engine.evidence.reader import LINE_MAX_BYTES, BLOCK_BYTES, read_lines
from memfit.engine.model.spec import spec_from_config
from memfit.engine.plan.load import plan_from_dict

BASE = {"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": "24GB", "host_memory": "64GB"}}

YAML_BAD = [
    ("duplicate key", "a: 1\nb: 2\na: 3\n", r"p.yaml: a: duplicate key \(first at line 1\); keep one \(line 3, column 1\)"),
    ("duplicate nested", "h:\n  x: 1\n  x: 2\n", r"p.yaml: h.x: duplicate key \(first at line 2\)"),
    ("NaN", "x: .nan\n", r"p.yaml: x: '.nan' is not a finite number"),
    ("NaN in a list", "x: [1, .NaN]\n", r"p.yaml: x\[1\]: '.NaN' is not a finite number"),
    ("infinity", "x: -.inf\n", r"p.yaml: x: '-.inf' is not a finite number"),
    ("float overflow", "x: 1.0e+999\n", r"p.yaml: x: '1.0e\+999' is not a finite number"),
    ("deep", "x: " + "[" * 65 + "]" * 65 + "\n", r"p.yaml: not accepted: nested deeper than 64 levels"),
    ("keys", "".join(f"k{i}: 1\n" for i in range(10_001)), r"a mapping has more than 10,000 keys"),
    ("alias bomb", 'a: &a [x, x, x, x, x, x, x, x, x, x]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join(["*" + chr(97 + i)] * 10) + "]\n" for i in range(6)),
     r"expands to more than 100,000 values once aliases"),
    ("syntax", "a: [\n", r"p.yaml: not valid YAML at line 2"),
]


@pytest.mark.parametrize("name, text, message", YAML_BAD, ids=[c[0] for c in YAML_BAD])
def test_strict_yaml_refuses(name, text, message):
    start = time.perf_counter()
    with pytest.raises(PlanError, match=message):
        load_yaml(text, "p.yaml", PlanError)
    assert time.perf_counter() - start < 2


def test_strict_yaml_keeps_what_is_valid():
    # a merge key overriding a merged value is not a duplicate (YAML 1.1 merge semantics)
    assert load_yaml("b: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n", "p", PlanError) == {"b": {"x": 1}, "c": {"x": 2}}
    assert load_yaml("x: 1.5\ny: '.nan'\n", "p", PlanError) == {"x": 1.5, "y": ".nan"}  # a quoted string


JSON_BAD = [
    ("duplicate", '{"zero_optimization": {"stage": 0, "stage": 3}}', r"c.json: not accepted JSON: duplicate key 'stage'"),
    ("NaN", '{"gradient_clipping": NaN}', r"NaN is not a finite number"),
    ("Infinity", '{"a": -Infinity}', r"-Infinity is not a finite number"),
    ("overflow", '{"a": 1e400}', r"1e400 is out of range"),
    ("deep lists", "[" * 100_000, r"nested deeper than 64 levels"),  # RecursionError in json before
    ("deep objects", '{"a": ' * 70 + "1" + "}" * 70, r"nested deeper than 64 levels"),
    ("digits", '{"a": 1' + "0" * 5000 + "}", r"Exceeds the limit \(4300 digits\)"),
    ("syntax", '{"a": 1,}', r"c.json: not valid JSON at line 1, column 9"),
]


@pytest.mark.parametrize("name, text, message", JSON_BAD, ids=[c[0] for c in JSON_BAD])
def test_strict_json_refuses(name, text, message):
    with pytest.raises(ConfigCheckError, match=message):
        load_json(text, "c.json", ConfigCheckError)


ENCODINGS = [
    ("UTF-16", "x: 1\n".encode("utf-16"), r"f: the file is UTF-16; memfit reads UTF-8 only: save it as UTF-8"),
    ("Latin-1", "x: caf\xe9\n".encode("latin-1"), r"f: not UTF-8 \(byte 0xe9 at offset 6; Latin-1"),
]


@pytest.mark.parametrize("name, data, message", ENCODINGS, ids=[c[0] for c in ENCODINGS])
def test_text_must_be_utf8(tmp_path, monkeypatch, name, data, message):
    (tmp_path / "f").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlanError, match=message):
        read_text("f", "the plan", PlanError)


def test_utf8_bom_is_dropped(tmp_path):
    (tmp_path / "f").write_bytes(b"\xef\xbb\xbfx: 1\n")
    assert read_text(tmp_path / "f", "the plan", PlanError) == "x: 1\n"


def test_oversized_file_refused_without_reading_it_all(tmp_path):
    with open(tmp_path / "big", "wb") as fh:
        fh.truncate(1 << 30)  # sparse: costs nothing on disk
    with pytest.raises(PlanError, match=r"big: the plan is larger than 4 MiB"):
        read_text(tmp_path / "big", "the plan", PlanError)


SPECIAL = [("FIFO", "fifo", "a FIFO"), ("/dev/zero", "/dev/zero", "a device"),
           ("/dev/urandom", "/dev/urandom", "a device"), ("directory", ".", "a directory")]


@pytest.mark.parametrize("name, path, kind", SPECIAL, ids=[c[0] for c in SPECIAL])
def test_regular_files_only(tmp_path, name, path, kind):
    os.mkfifo(tmp_path / "fifo")
    target = tmp_path / path if not path.startswith("/") else Path(path)
    start = time.perf_counter()
    for reader, error, what in ((lambda p: read_text(p, "the plan", PlanError), PlanError, "the plan"),
                                (parse_log, LogError, "the log"), (infer_run, LogError, "the log")):
        with pytest.raises(error, match=f"cannot read {what}: it is {kind}; give a regular file"):
            reader(target)
    assert time.perf_counter() - start < 1  # refused at once, never blocked


SIZES = [
    ("spaces then junk", "1" + " " * 60_000 + "!", r"expected a size .*\(60002 chars\)"),  # 22 s before
    ("negative", "-5GB", r"^must not be negative$"),
    ("10^400", 10**400, r"must be a finite number"),
    ("NaN", float("nan"), r"must be a finite number"),
    ("infinity", float("inf"), r"must be a finite number"),
    ("bool", True, r"expected a size"),
    ("list", [80], r"expected a size .*\(got a list\)"),
]


@pytest.mark.parametrize("name, value, message", SIZES, ids=[c[0] for c in SIZES])
def test_size_parser_refuses_fast(name, value, message):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        parse_size_gib(value)
    assert time.perf_counter() - start < 0.1


def _plan(**sections) -> dict:
    data = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


PLANS = [
    ("bool for a size", _plan(hardware={"gpu_memory": True}), r"hardware.gpu_memory: Input should be a valid number \(got True\)"),
    ("string for a bool", _plan(hardware={"bf16": "false"}), r"hardware.bf16: Input should be a valid boolean \(got 'false'\)"),
    ("NaN size", _plan(hardware={"gpu_memory": float("nan")}), r"hardware.gpu_memory: Input should be a finite number"),
    ("NaN headroom", _plan(policy={"gpu_headroom": float("nan")}), r"policy.gpu_headroom: Input should be a finite number"),
    ("no LoRA targets", _plan(training={"lora": {"target_modules": []}}), r"training.lora.target_modules: must name at least one module"),
    ("negative data", _plan(data={"dataset_size": -5}), r"data.dataset_size: must be >= 0 \(got -5\)"),
    ("negative size string", _plan(data={"dataset_size": "-5GB"}), r"data.dataset_size: must not be negative"),
    ("1024+ GPUs per node", _plan(hardware={"gpus_per_node": 1025}), r"hardware.gpus_per_node: Input should be less than or equal to 1024"),
    ("100k+ nodes", _plan(hardware={"nodes": 100_001}), r"hardware.nodes: Input should be less than or equal to 100000"),
    ("implausible GPU memory", _plan(hardware={"gpu_memory": "8TB"}), r"hardware.gpu_memory: must be at most 4096 GiB"),
    ("control character key", _plan(hardware={"gpu\x01mem": 1}), r"hardware.gpu\\x01mem: unknown key"),
    ("50 MB model string", _plan(model="x" * (50 << 20)), r"model: a model id or path has 1 to 4096 characters \(got 52,428,800\)"),
    ("huge value excerpt", _plan(hardware={"gpu_memory": "x" * 10**6}), r"hardware.gpu_memory: expected a size .*\(1000000 chars\)"),
]


@pytest.mark.parametrize("name, data, message", PLANS, ids=[c[0] for c in PLANS])
def test_plan_values_are_strict(name, data, message):
    with pytest.raises(PlanError, match=message) as err:
        plan_from_dict(data, "p.yaml")
    assert all(len(line) < 400 for line in err.value.problems)  # bounded excerpts
    assert all(line.startswith("p.yaml: ") for line in err.value.problems)


def test_many_unknown_keys_are_bounded():
    data = {**BASE, **{f"key{i}": 1 for i in range(100_000)}}  # 124 s before (difflib per key, O(n^2) dedup)
    start = time.perf_counter()
    with pytest.raises(PlanError) as err:
        plan_from_dict(data, "p.yaml")
    assert time.perf_counter() - start < 5
    assert len(err.value.problems) == 21
    assert err.value.problems[-1] == "p.yaml: ... and 99,980 more unknown key(s)"


MIXTRAL = {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512}
MODELS = [
    ("negative experts", {**MIXTRAL, "num_local_experts": -8}, r"num_local_experts: must be a positive integer \(got -8\)"),
    ("top-k above experts", {**MIXTRAL, "num_local_experts": 2, "num_experts_per_tok": 4},
     r"num_experts_per_tok: 4 is more than num_local_experts 2"),
    ("too many experts", {**MIXTRAL, "num_local_experts": 40_000}, r"num_local_experts: must be at most 4,096"),
    ("string flag", {**MIXTRAL, "tie_word_embeddings": "false"}, r"tie_word_embeddings: must be true or false \(got 'false'\)"),
    ("huge dimension", {**MIXTRAL, "hidden_size": 10**400}, r"hidden_size: must be at most 16,777,216"),
    ("bool dimension", {**MIXTRAL, "num_hidden_layers": True}, r"num_hidden_layers: must be a positive integer \(got True\)"),
]


@pytest.mark.parametrize("name, cfg, message", MODELS, ids=[c[0] for c in MODELS])
def test_model_config_validated_before_counting(name, cfg, message):
    with pytest.raises(ModelSpecError, match=message):
        spec_from_config(cfg, name="cfg", source="inline")


def test_plan_errors_name_the_plan_key_then_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "hidden_size": 128}')
    plan = plan_from_dict({**BASE, "model": str(tmp_path / "config.json")}, "p.yaml", tmp_path)
    from memfit.engine.model.spec import plan_model

    with pytest.raises(ModelSpecError, match=rf"^p.yaml: model: {tmp_path}/config.json: not accepted JSON: duplicate key"):
        plan_model(plan)
    with pytest.raises(MemfitError, match=r"^p.yaml: measured: .*nope.log: cannot read the log"):
        from memfit.engine import advise

        advise(plan_from_dict({**BASE, "measured": ["nope.log"]}, "p.yaml", tmp_path))


def test_about_prefixes_once():
    with pytest.raises(PlanError) as err:
        with about("p.yaml: model"):
            with about("p.yaml: model"):
                raise PlanError(["a", "p.yaml: model: b"])
    assert err.value.problems == ["p.yaml: model: a", "p.yaml: model: b"]


# ---- logs ----------------------------------------------------------------------------------------

DS_PRINT = ("[2025-01-24 20:56:01,000] [INFO] [config.py:1003:print]   zero_config .................. stage=3 "
            "offload_param=DeepSpeedZeroOffloadParamConfig(device='cpu', pin_memory=True) "
            "offload_optimizer=DeepSpeedZeroOffloadOptimizerConfig(device='cpu', pin_memory=True)\n"
            "[2025-01-24 20:56:01,001] [INFO] [config.py:1003:print]   train_micro_batch_size_per_gpu  2\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
            "of 79.00 GiB of which 1.00 GiB is free.\n")


def test_gzipped_log_without_gz_suffix_gives_facts_and_the_run(tmp_path):
    path = tmp_path / "crash.log"  # gzip inside, no .gz suffix: facts but no run before
    path.write_bytes(gzip.compress(DS_PRINT.encode()))
    assert [f.kind for f in parse_log(path)] == ["gpu_oom"]
    assert infer_run(path) == {"zero_stage": 3, "offload_param": "cpu", "offload_optimizer": "cpu",
                               "pin_memory": True, "micro_batch_size": 2}


def test_long_lines_are_cut_and_counted(tmp_path):
    path = tmp_path / "long.log"
    long_line = b"memory " * (3 * BLOCK_BYTES // 7)  # ~3 MiB without a line break
    path.write_bytes(long_line + b"\nKilled process 7 (python) total-vm:1kB, anon-rss:1048576kB\n")
    lines = list(read_lines(path))
    assert [n for n, _ in lines] == [1, 2]
    assert len(lines[0][1]) <= BLOCK_BYTES + LINE_MAX_BYTES
    facts = parse_log(path)
    assert [(f.kind, f.source, f.anon_rss_gib) for f in facts] == [("host_oom", f"{path}:2", 1.0)]  # 2**20 kB


LOG_LINES = [  # each took seconds to minutes with backtracking patterns (issue 13)
    ("max allocated + spaces", "max allocated" + " " * 50_000),
    ("nvidia-smi cell + spaces", "index, memory.used [MiB], memory.total [MiB]\n0, 5" + " " * 50_000 + "x, 8"),
    ("OOM split + 'and's", "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.00 GiB "
     "of which 1.00 GiB is free. Of the allocated memory 1.00 GiB is allocated by PyTorch, with " + "and " * 20_000),
    ("bash Killed + spaces", "a" + " " * 50_000 + ": line 1: " + " " * 50_000),
    ("exitcode -9 + spaces", "exitcode : -9 " + " " * 100_000),
]


@pytest.mark.parametrize("name, text", LOG_LINES, ids=[c[0] for c in LOG_LINES])
def test_log_patterns_are_linear(tmp_path, name, text):
    (tmp_path / "x.log").write_text((text + "\n") * 50)
    start = time.perf_counter()
    parse_log(tmp_path / "x.log")
    assert time.perf_counter() - start < 2


# ---- outputs -------------------------------------------------------------------------------------

def test_force_removes_what_the_previous_run_left(tmp_path):
    out = tmp_path / "out"
    write_files(out, {"advice.json": "{}\n", "ds_config.json": "{}\n", "launch.sh": "x\n", "plans/01-a/ds_config.json": "{}\n"})
    write_files(out, {"advice.json": '{"nothing": "fits"}\n'}, force=True)  # a run where nothing fits
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [MANIFEST, "advice.json"]


def test_force_keeps_files_memfit_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    write_files(out, {"advice.json": "{}\n"})
    write_files(out, {"advice.json": "{}\n"}, force=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_symlinked_target_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "plans").symlink_to(elsewhere)
    with pytest.raises(OutputError, match=r"out/plans: is a symbolic link; memfit writes only inside"):
        write_files(out, {"advice.json": "{}\n", "plans/01-a/ds_config.json": "{}\n"}, force=True)
    assert list(elsewhere.iterdir()) == [] and not (out / "advice.json").exists()


def test_full_disk_changes_nothing(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past 100 bytes (EFBIG), as a full disk would part-way
    out = tmp_path / "out"
    write_files(out, {"advice.json": "old\n"})
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100)); "
            "from memfit.engine.advice.output import write_files; from memfit.engine.core.errors import OutputError\n"
            "try:\n write_files(sys.argv[1], {'advice.json': 'new\\n', 'ds_config.json': 'x' * 1000}, force=True)\n"
            "except OutputError as e:\n print(e); sys.exit(2)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot write the output (File too large); nothing was changed" in proc.stdout
    assert (out / "advice.json").read_text() == "old\n" and not (out / "ds_config.json").exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_concurrent_writers_only_one_wins(tmp_path):
    out, results = tmp_path / "out", []

    def one(i: int) -> None:
        try:
            write_files(out, {"advice.json": f"{i}\n", "ds_config.json": f"{i}\n"})
            results.append("ok")
        except OutputExistsError:
            results.append("exists")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * 9 + ["ok"]
    assert (out / "advice.json").read_text() == (out / "ds_config.json").read_text()  # one run's files


def test_excerpt_is_bounded():
    shared = ["lol"] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10**9 leaves if expanded
    assert len(excerpt(shared)) <= 163 and len(excerpt("x" * 10**7)) <= 163


def test_verify_tiny_model_keeps_few_experts():
    tiny = tiny_config({**MIXTRAL, "num_local_experts": 40_000, "num_experts_per_tok": 8})
    assert (tiny["num_local_experts"], tiny["num_experts_per_tok"]) == (4, 2)
