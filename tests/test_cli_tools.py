"""`advise check`, `advise verify`, `advise llamafactory`, `advise facts`, `advise detect` end to end."""
from __future__ import annotations

import json

import pytest
import yaml

from memfit.cli.main import main

from conftest import EXAMPLES, ROOT

LOGS = ROOT / "tests" / "fixtures" / "logs"


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _motivating_config(tmp_path, **zero_changes):
    # LLaMA-Factory's ds_z3_offload_config as the user of the motivating report ran it (pinned CPU
    # offload of parameters and optimizer), batch 1 on one GPU.
    zero = {"stage": 3, "overlap_comm": True, "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "offload_param": {"device": "cpu", "pin_memory": True},
            "stage3_gather_16bit_weights_on_model_save": True, **zero_changes}
    cfg = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "bf16": {"enabled": True}, "zero_optimization": zero}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return path


def test_check_names_a_typo_with_a_suggestion(tmp_path, capsys):
    path = _motivating_config(tmp_path, overlap_com=True)
    code, out, _ = run(["check", path], capsys)
    assert code == 1
    assert "zero_optimization.overlap_com: unknown key; did you mean 'overlap_comm'?" in out


def test_check_against_the_plan_says_it_does_not_fit(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text((EXAMPLES / "qwen32b-one-h100.yaml").read_text().replace("method: auto ", "method: full "))
    code, out, _ = run(["check", _motivating_config(tmp_path), "--plan", plan], capsys)
    assert code == 1
    assert "full/z3/opt=cpu/param=cpu" in out and "DOES NOT FIT" in out  # host OOM (LLaMA-Factory #6755)


def test_check_unreadable_json(tmp_path, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    code, _, err = run(["check", bad], capsys)
    assert code == 2 and "ds.json: not valid JSON at line 1" in err


def test_facts_json_and_empty_file(tmp_path, capsys):
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    code, out, _ = run(["facts", LOGS / "qwen32b_host_oom.log", empty], capsys)
    assert code == 0 and "host_oom" in out and "empty.log: no memory evidence" in out
    code, out, _ = run(["facts", "--json", LOGS / "qwen32b_host_oom.log"], capsys)
    kinds = {f["kind"] for f in json.loads(out)["facts"]}
    assert kinds == {"deepspeed_memory", "host_oom"}


def test_detect_on_a_machine_without_gpus_says_so(capsys):
    code, out, _ = run(["detect"], capsys)
    assert code == 0
    assert "no NVIDIA GPU found" in out
    assert yaml.safe_load(out)["hardware"]["host_memory"] > 0


def test_llamafactory_yaml_in_corrected_yaml_out(tmp_path, capsys, monkeypatch):
    # The motivating case, run from a LLaMA-Factory root: its own ds_z3_offload_config.json (0.9.5).
    from upstream import upstream

    (tmp_path / "examples" / "deepspeed").mkdir(parents=True)
    (tmp_path / "examples" / "deepspeed" / "ds_z3_offload_config.json").write_bytes(
        upstream("llamafactory", "examples/deepspeed/ds_z3_offload_config.json").read_bytes())
    monkeypatch.chdir(tmp_path)
    lf = tmp_path / "qwen_full_sft.yaml"
    lf.write_text(yaml.safe_dump({
        "model_name_or_path": "Qwen/Qwen2.5-32B-Instruct", "stage": "sft", "finetuning_type": "full",
        "cutoff_len": 2048, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "bf16": True,
        "deepspeed": "examples/deepspeed/ds_z3_offload_config.json", "dataset": "alpaca_en_demo"}))
    hw = tmp_path / "hw.yaml"
    hw.write_text("hardware: {gpu_memory: 96GB, gpus_per_node: 1, host_memory: 744GB}\n")
    out_dir = tmp_path / "out"
    code, out, err = run(["llamafactory", lf, "--hardware", hw, "--out", out_dir], capsys)
    assert code == 0, err
    assert "Nothing fits" in out  # finetuning_type full on this machine: see the motivating case
    assert "read      " in out and "ds_z3_offload_config.json (ZeRO stage 3)" in out  # the JSON was read
    lf.write_text(lf.read_text().replace("finetuning_type: full", "finetuning_type: lora"))
    code, out, err = run(["advise", lf, "--hardware", hw, "--out", out_dir, "--force"][1:], capsys)
    assert code == 0 and "Recommended: lora/" in out, err
    written = yaml.safe_load((out_dir / "qwen_full_sft.yaml").read_text())
    assert written["dataset"] == "alpaca_en_demo" and written["finetuning_type"] == "lora"  # user keys kept
    if "deepspeed" in written:
        assert written["deepspeed"] == str((out_dir / "ds_config.json").resolve())
        assert "optimizer" not in json.loads((out_dir / "ds_config.json").read_text())
    code, out, err = run(["llamafactory", lf, "--hardware", tmp_path / "absent.yaml"], capsys)
    assert code == 2 and "absent.yaml: cannot read the hardware" in err


@pytest.mark.slow
def test_verify_runs_the_top_plan_for_real(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("model: Qwen/Qwen2.5-0.5B\nhardware: {gpu_memory: 24, host_memory: 64}\n"
                    "training: {seq_len: 512, precision: bf16, global_batch_size: 8}\n")
    code, out, err = run(["verify", plan, "--top", "2"], capsys)
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("PASS") for line in lines)
    # two distinct DeepSpeed shapes (method/ZeRO stage/offloads), not the same shape twice
    shapes = {"/".join(p for p in line.split()[1].rstrip(":").split("/") if not p.startswith(("mb", "gc", "nogc")))
              for line in lines}
    assert len(shapes) == 2, lines


@pytest.mark.slow
def test_probe_traces_a_step_and_agrees_with_the_formula(tmp_path, capsys):
    import re

    plan = tmp_path / "plan.yaml"
    plan.write_text("model: Qwen/Qwen2.5-0.5B\nhardware: {gpu_memory: 24, host_memory: 64}\n"
                    "training: {method: full, seq_len: 256, micro_batch_size: 2}\n")
    code, out, err = run(["probe", plan], capsys)
    assert code == 0, err
    traced, formula = map(float, re.search(r"traced ([\d.]+) MiB, formula ([\d.]+) MiB", out).groups())
    assert formula == pytest.approx(traced, rel=0.01)  # the probe trace is the oracle for the formula


@pytest.mark.slow
def test_review_json_and_exit_code_on_a_planted_fault(tmp_path, capsys):
    import shutil

    code, out, err = run(["review", "--json", "--out", tmp_path], capsys)  # default 25 examples: ~12 s
    assert code == 0, out + err
    props = json.loads(out)["properties"]
    assert {"name", "passed", "examples"} <= set(props[0]) and all(p["passed"] for p in props)
    # A rule that rejects plans on large GPUs breaks "more hardware never removes a feasible plan".
    faulty = tmp_path / "faulty_rules"
    faulty.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "faulty_rules" / "large_gpu.yaml", faulty)
    code, out, _ = run(["review", "--rules", faulty, "--out", tmp_path / "cex"], capsys)
    assert code == 1
    assert "more-hardware-keeps-feasible" in out and "reject-large-gpu" in out


def test_internal_errors_are_one_line_not_a_traceback(capsys, monkeypatch):
    import memfit.engine as engine

    def broken(*a, **k):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(engine, "advise", broken)
    code, _, err = run([EXAMPLES / "qwen32b-one-h100.yaml"], capsys)
    assert code == 70 and "ERROR internal error: ZeroDivisionError: planted" in err and "Traceback" not in err
