"""Hostile inputs through the real CLI: each gets a clear answer fast, under a 3 GiB address space.

Every file in tests/fixtures/bad/ is a case in CASES (file, command, expected message regex, exit
code); files that cannot live in git (FIFOs, devices, a gzip bomb, a sparse 2 GB file, a 100k-key
plan) are made in a temporary folder by `_generated`. Time bounds, from issue 13: 5 s per plan, 10 s
per log or config. The expected messages state what the user must be told (file, key, constraint),
written from the input, not copied from memfit's output.
"""
from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import pytest

from hostile import run_cases

BAD = Path(__file__).parent / "fixtures" / "bad"
UPSTREAM_LF = Path(__file__).parent / "fixtures" / "upstream" / "llamafactory" / "examples__train_lora__qwen3_lora_pretrain.yaml"
PLAN_S, FILE_S = 5.0, 10.0

# (file, command before the file, expected stderr regex, exit code). "{f}" is the file's path.
CASES = [
    ("p_nan_gpu.yaml", ["plan"], r"p_nan_gpu.yaml: hardware.gpu_memory: '.nan' is not a finite number \(line 4, column 15\)", 2),
    ("p_inf_host.yaml", ["plan"], r"p_inf_host.yaml: hardware.host_memory: '.inf' is not a finite number", 2),
    ("p_nan_nvme.yaml", ["plan"], r"hardware.nvme: '.NaN' is not a finite number", 2),
    ("p_nan_dataset.yaml", ["plan"], r"data.dataset_size: '.nan' is not a finite number", 2),
    ("p_nan_headroom.yaml", ["plan"], r"policy.gpu_headroom: '.nan' is not a finite number", 2),
    ("p_dup_key.yaml", ["plan"], r"p_dup_key.yaml: hardware.gpu_memory: duplicate key \(first at line 4\); keep one \(line 7", 2),
    ("p_dup_top.yaml", ["plan"], r"p_dup_top.yaml: training: duplicate key \(first at line 7\)", 2),
    ("p_bool_gpu.yaml", ["plan"], r"p_bool_gpu.yaml: hardware.gpu_memory: Input should be a valid number \(got True\)", 2),
    ("p_str_bool.yaml", ["plan"], r"hardware.bf16: Input should be a valid boolean \(got 'false'\)", 2),
    ("p_target_empty.yaml", ["plan"], r"training.lora.target_modules: must name at least one module", 2),
    ("p_neg_dataset.yaml", ["plan"], r"data.dataset_size: must be >= 0 \(got -5\)", 2),
    ("p_neg_size_str.yaml", ["plan"], r"hardware.gpu_memory: must not be negative \(got '-5GB'\)", 2),
    ("p_huge_int.yaml", ["plan"], r"hardware.gpus_per_node: Input should be less than or equal to 1024 \(got 1000", 2),
    ("p_huge_int_size.yaml", ["plan"], r"hardware.host_memory: Input should be a valid number \(got 1000", 2),
    ("p_float_huge.yaml", ["plan"], r"training.lora.alpha: '1.0e\+400' is not a finite number", 2),
    ("p_spaces_size.yaml", ["plan"], r"hardware.gpu_memory: expected a size .*\(60002 chars\)", 2),
    ("p_nodes_huge.yaml", ["plan"], r"hardware.nodes: Input should be less than or equal to 100000 \(got 1000000\)", 2),
    ("p_gpus_huge.yaml", ["plan"], r"hardware.gpus_per_node: Input should be less than or equal to 1024 \(got 5000\)", 2),
    ("p_control_key.yaml", ["plan"], r"hardware.gpu\\x01memory: unknown key", 2),
    ("p_not_mapping.yaml", ["plan"], r"p_not_mapping.yaml: the plan must be a mapping .*\(got list\)", 2),
    ("p_empty.yaml", ["plan"], r"p_empty.yaml: the plan must be a mapping .*\(got NoneType\)", 2),
    ("p_bad_yaml.yaml", ["plan"], r"p_bad_yaml.yaml: not valid YAML at line \d+", 2),
    ("p_deep.yaml", ["plan"], r"p_deep.yaml: not accepted: nested deeper than 64 levels", 2),
    ("p_alias_bomb.yaml", ["plan"], r"p_alias_bomb.yaml: not accepted: expands to more than 100,000 values", 2),
    ("p_alias_value.yaml", ["plan"], r"hardware.gpu_memory: Input should be a valid number \(got \[\[\[", 2),
    ("p_typo.yaml", ["plan"], r"training.micro_batch_sise: unknown key; did you mean 'micro_batch_size'\?", 2),
    ("p_seq_zero.yaml", ["plan"], r"training.seq_len: Input should be greater than or equal to 1 \(got 0\)", 2),
    ("p_string_int.yaml", ["plan"], r"training.seq_len: Input should be a valid integer \(got '2048'\)", 2),
    ("p_float_int.yaml", ["plan"], r"training.seq_len: Input should be a valid integer \(got 2048.5\)", 2),
    ("p_long_model.yaml", ["plan"], r"model: a model id or path has 1 to 4096 characters \(got 10,000\)", 2),
    ("p_rules_many.yaml", ["plan"], r"rules: List should have at most 256 items", 2),
    ("p_utf16.yaml", ["plan"], r"p_utf16.yaml: the file is UTF-16; memfit reads UTF-8 only", 2),
    ("p_latin1.yaml", ["plan"], r"p_latin1.yaml: not UTF-8 \(byte 0xe9 at offset 5", 2),
    ("p_model_missing.yaml", ["plan"], r"p_model_missing.yaml: model: model './nope/config.json': not in the bundled", 2),
    ("p_model_neg_experts.yaml", ["plan"], r"p_model_neg_experts.yaml: model: .*num_local_experts: must be a positive integer \(got -8\)", 2),
    ("p_model_topk.yaml", ["plan"], r"p_model_topk.yaml: model: .*num_experts_per_tok: 4 is more than num_local_experts 2", 2),
    ("p_model_many_experts.yaml", ["plan"], r"num_local_experts: must be at most 4,096 \(got 40000\)", 2),
    ("p_model_tie_str.yaml", ["plan"], r"p_model_tie_str.yaml: model: .*tie_word_embeddings: must be true or false \(got 'false'\)", 2),
    ("p_model_json_deep.yaml", ["plan"], r"p_model_json_deep.yaml: model: .*deep.json: not accepted JSON: nested deeper than 64", 2),
    ("p_model_json_dup.yaml", ["plan"], r"p_model_json_dup.yaml: model: .*dup.json: .*duplicate key 'hidden_size'", 2),
    ("p_model_json_nan.yaml", ["plan"], r"p_model_json_nan.yaml: model: .*nan.json: .*NaN is not a finite number", 2),
    ("p_model_json_latin1.yaml", ["plan"], r"p_model_json_latin1.yaml: model: .*latin1.json: not UTF-8", 2),
    ("p_model_json_hugedim.yaml", ["plan"], r"p_model_json_hugedim.yaml: model: .*hidden_size: must be at most 16,777,216", 2),
    ("p_measured_missing.yaml", ["plan"], r"p_measured_missing.yaml: measured: .*nope.log: cannot read the log \(No such file", 2),
    ("p_measured_dir.yaml", ["plan"], r"p_measured_dir.yaml: measured: .*models: cannot read the log: it is a directory", 2),
    ("p_rules_missing.yaml", ["plan"], r"p_rules_missing.yaml: rules: .*no_such_rules", 2),
    ("c_dup_stage.json", ["check"], r"c_dup_stage.json: not accepted JSON: duplicate key 'stage'", 2),
    ("c_nan_clip.json", ["check"], r"c_nan_clip.json: not accepted JSON: NaN is not a finite number", 2),
    ("c_inf.json", ["check"], r"c_inf.json: not accepted JSON: 1e999 is out of range", 2),
    ("c_deep.json", ["check"], r"c_deep.json: not accepted JSON: nested deeper than 64 levels", 2),
    ("c_deep_dict.json", ["check"], r"c_deep_dict.json: not accepted JSON: nested deeper than 64 levels", 2),
    ("c_utf16.json", ["check"], r"c_utf16.json: the file is UTF-16", 2),
    ("c_latin1.json", ["check"], r"c_latin1.json: not UTF-8", 2),
    ("c_array.json", ["check"], r"c_array.json: a DeepSpeed config must be a JSON object \(got list\)", 2),
    ("c_bigint.json", ["check"], r"c_bigint.json: not accepted JSON: Exceeds the limit \(4300 digits\)", 2),
    ("c_bad.json", ["check"], r"c_bad.json: not valid JSON at line 1, column \d+", 2),
    ("l_spaces.log", ["facts"], r"^$", 0),
    ("l_smi_spaces.log", ["facts"], r"^$", 0),
    ("l_oom_and.log", ["facts"], r"^$", 0),
    ("l_killed.log", ["facts"], r"^$", 0),
    ("l_binary.log", ["facts"], r"^$", 0),
    ("l_latin1.log", ["facts"], r"^$", 0),
    ("l_truncated.log.gz", ["facts"], r"l_truncated.log.gz: cannot read \(", 2),
    ("l_notgz.gz", ["facts"], r"^$", 0),
    ("lf_dup.yaml", ["llamafactory", "--hardware", str(BAD / "lf_hw.yaml")], r"lf_dup.yaml: finetuning_type: duplicate key \(first at line 2\)", 2),
    # a valid LLaMA-Factory example beside the bad hardware file, so the hardware is what fails
    ("lf_hw_nan.yaml", ["llamafactory", str(UPSTREAM_LF), "--hardware"], r"lf_hw_nan.yaml: hardware.gpu_memory: '.nan' is not a finite number", 2),
    ("lf_hw.yaml", ["verify", "--top", "0"], r"Invalid value for '--top'", 2),
    ("p_typo.yaml", ["verify", "--timeout", "nan"], r"Invalid value for '--timeout': must be a number of seconds", 2),
    ("h_latin1", ["detect", "--hostfile"], r"h_latin1: not UTF-8", 2),
]


def _case(name: str, command: list[str], path: Path, limit_s: float) -> dict:
    return {"name": name, "argv": [*command, str(path)], "limit_s": limit_s}


def _limit(command: list[str]) -> float:
    return PLAN_S if command[0] in ("plan", "verify") else FILE_S


@pytest.fixture(scope="module")
def corpus_results():
    cases = [_case(f"{f} {' '.join(cmd)}", cmd, BAD / f, _limit(cmd)) for f, cmd, _, _ in CASES]
    return run_cases(cases)


def test_corpus_is_big_and_every_file_has_a_case():
    files = {p.relative_to(BAD).as_posix() for p in BAD.rglob("*") if p.is_file()}
    used = {f for f, *_ in CASES} | {"lf_hw.yaml"} | {f"models/{n}.json" for n in ("deep", "dup", "nan", "latin1", "hugedim")}
    assert len(files) >= 60
    assert files <= used, f"fixtures without a case: {sorted(files - used)}"


@pytest.mark.parametrize("file, command, message, code", CASES, ids=[f"{c[0]}-{c[1][0]}" for c in CASES])
def test_hostile_file(corpus_results, file, command, message, code):
    r = corpus_results.get(f"{file} {' '.join(command)}")
    assert r is not None, "the child died before this case (hang or crash)"
    assert r["code"] == code, r["stderr"]
    assert r["seconds"] <= _limit(command)
    if code == 2:
        assert re.search(message, r["stderr"]), r["stderr"]
        assert "Traceback" not in r["stderr"] and "internal error" not in r["stderr"]
        assert len(r["stderr"]) < 2000, "messages show bounded excerpts"
    else:
        assert r["stderr"] == ""


def _gzip_bomb(path: Path, gib: float) -> None:
    """Concatenated gzip members (RFC 1952 allows several): one 64 MiB member of zeros repeated."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        for _ in range(int(gib * 16)):
            fh.write(member)


def _generated(tmp: Path) -> list[tuple[str, list[str], Path, str, int]]:
    os.mkfifo(tmp / "fifo")
    with open(tmp / "sparse.log", "wb") as fh:
        fh.truncate(2 << 30)
    _gzip_bomb(tmp / "bomb.log", 1.25)
    (tmp / "nonl.log").write_bytes(b"memory " * 3_000_000)
    (tmp / "spaces.log").write_text(("max allocated" + " " * 50000 + "\n") * 2000)
    head = "model: Qwen/Qwen2.5-0.5B\nhardware: {gpu_memory: 24GB, host_memory: 64GB}\n"
    (tmp / "keys100k.yaml").write_text(head + "".join(f"k{i}: 1\n" for i in range(100_000)))
    (tmp / "keys9k.yaml").write_text(head + "".join(f"k{i}: 1\n" for i in range(9_000)))
    (tmp / "keys300k.yaml").write_text(head + "".join(f"k{i}: 1\n" for i in range(300_000)))
    (tmp / "model50m.yaml").write_text("model: " + "x" * (50 << 20) + "\n")
    dev = [("urandom", Path("/dev/urandom"), "a device"), ("zero", Path("/dev/zero"), "a device"),
           ("fifo", tmp / "fifo", "a FIFO")]
    out = []
    for label, path, kind in dev:
        out += [(f"{label} plan", ["plan"], path, rf"cannot read the plan: it is {kind}", 2),
                (f"{label} log", ["facts"], path, rf"cannot read the log: it is {kind}", 2),
                (f"{label} config", ["check"], path, rf"cannot read the DeepSpeed config: it is {kind}", 2),
                (f"{label} hostfile", ["detect", "--hostfile"], path, rf"cannot read the hostfile: it is {kind}", 2)]
    return out + [
        ("sparse 2 GB log", ["facts"], tmp / "sparse.log", r"sparse.log: larger than 1 GiB", 2),
        ("gzip bomb", ["facts"], tmp / "bomb.log", r"bomb.log: decompresses to more than 200x its size \(a gzip bomb\?\)", 2),
        ("20 MB without a line break", ["facts"], tmp / "nonl.log", r"^$", 0),
        ("2,000 lines of 50k spaces", ["facts"], tmp / "spaces.log", r"^$", 0),
        ("100k unknown keys", ["plan"], tmp / "keys100k.yaml", r"keys100k.yaml: not accepted: a mapping has more than 10,000 keys", 2),
        ("9,000 unknown keys", ["plan"], tmp / "keys9k.yaml", r"keys9k.yaml: \.\.\. and 8,980 more unknown key\(s\)", 2),
        ("300k unknown keys", ["plan"], tmp / "keys300k.yaml", r"keys300k.yaml: not accepted: a mapping has more than 10,000 keys", 2),
        ("50 MB model string", ["plan"], tmp / "model50m.yaml", r"model50m.yaml: the plan is larger than 4 MiB", 2),
    ]


@pytest.mark.slow
def test_generated_hostile_inputs(tmp_path):
    cases = _generated(tmp_path)
    results = run_cases([_case(n, cmd, p, _limit(cmd)) for n, cmd, p, _, _ in cases])
    failures = []
    for name, cmd, _, message, code in cases:
        r = results.get(name)
        if r is None or r["code"] != code or r["seconds"] > _limit(cmd) or not re.search(message, r["stderr"]):
            failures.append((name, r))
    assert not failures, failures
