"""LLaMA-Factory YAML in, runnable LLaMA-Factory YAML out: one regression test per defect of issue 11.

Every test runs on LLaMA-Factory 0.9.5's own example files (tests/fixtures/upstream/llamafactory/),
from a folder laid out as LLaMA-Factory's root. Expected values come from LLaMA-Factory's source as
cited in engine/integrations/llamafactory*.py (hparams/parser.py refusals, defaults of the argument
dataclasses, launcher.py) and from transformers/accelerate's HfDeepSpeedConfig path handling.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memfit.cli.main import main
from memfit.engine.core.errors import PlanError
from memfit.engine.integrations import llamafactory_write
from memfit.engine.integrations.foreign import plan_of, read_foreign
from memfit.engine.plan.strategy import Strategy

from upstream import HW_8X80, tool_root, upstream

HW_1X80 = {"gpu": "H100-SXM-80GB", "gpus_per_node": 1, "host_memory": 512}
HW_8 = {"gpu": "H100-SXM-80GB", "gpus_per_node": 8, "host_memory": 1024}


@pytest.fixture
def lf_root(tmp_path, monkeypatch):
    root = tool_root("llamafactory", tmp_path / "LLaMA-Factory")
    monkeypatch.chdir(root)
    return root


def advise_out(path: str, tmp_path: Path, capsys, hw: str = HW_8X80, *extra) -> tuple[int, str, str, Path]:
    hw_file = tmp_path / "hw.yaml"
    hw_file.write_text(hw)
    out = tmp_path / "out"
    code = main([path, "--hardware", str(hw_file), "--out", str(out), "--force", *extra])
    got = capsys.readouterr()
    return code, got.out, got.err, out


# 1. The `deepspeed:` file is read, from the working directory as LLaMA-Factory (transformers) opens it.
def test_1_deepspeed_file_is_read_from_the_working_directory(lf_root, tmp_path, monkeypatch, capsys):
    read = read_foreign("examples/train_lora/qwen3_lora_sft_ds3.yaml", HW_8)
    assert read.deepspeed_path == lf_root / "examples/deepspeed/ds_z3_config.json"
    assert read.pinned["zero_stage"] == 3  # the file says "stage": 3
    monkeypatch.chdir(lf_root / "examples")  # the YAML's relative path no longer resolves
    with pytest.raises(PlanError, match=r"deepspeed: examples/deepspeed/ds_z3_config.json: no such file relative "
                                        r"to the working directory"):
        read_foreign("train_lora/qwen3_lora_sft_ds3.yaml", HW_8)
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text(upstream("llamafactory", "examples/train_lora/qwen3_lora_sft_ds3.yaml").read_text()
                     .replace("examples/deepspeed/ds_z3_config.json", "nowhere/ds.json"))
    hw = tmp_path / "hw.yaml"
    hw.write_text(HW_8X80)
    assert main([str(bogus), "--hardware", str(hw)]) == 2
    assert "deepspeed: nowhere/ds.json: no such file" in capsys.readouterr().err


# 2. The method is written as the user wrote it: oft stays oft, freeze stays freeze (modelled nearest, said so).
@pytest.mark.parametrize("path, kind, modelled", [
    ("examples/extras/oft/llama3_oft_sft.yaml", "oft", "lora"),
    ("examples/extras/llama_pro/llama3_freeze_sft.yaml", "freeze", "full")])
def test_2_method_is_kept(lf_root, path, kind, modelled):
    read = read_foreign(path, HW_8)
    assert read.pinned["method"] == modelled
    assert any(w.startswith(f"finetuning_type: {kind}") for w in read.warnings)  # the difference is named
    plan = plan_of(read)
    strategy = Strategy(method=modelled, zero_stage=2, gradient_checkpointing=True, micro_batch_size=1)
    out = yaml.safe_load(llamafactory_write.llamafactory_yaml(read, plan, strategy, "/abs/ds.json"))
    assert out["finetuning_type"] == kind


# 3. No `deepspeed:` where LLaMA-Factory refuses it.
def test_3_refused_combinations_are_never_written(lf_root, tmp_path, capsys):
    galore = read_foreign("examples/extras/galore/llama3_full_sft.yaml", HW_8)
    z2 = Strategy(method="full", zero_stage=2, gradient_checkpointing=True, micro_batch_size=1)
    z3 = Strategy(method="full", zero_stage=3, gradient_checkpointing=True, micro_batch_size=1)
    assert llamafactory_write.refusal(galore.data, z2, 8) == \
        "LLaMA-Factory: GaLore and APOLLO are incompatible with DeepSpeed yet."
    pure = read_foreign("examples/extras/mod/llama3_full_sft.yaml", HW_8)  # pure_bf16: true
    assert llamafactory_write.refusal(pure.data, z3, 8) == \
        "LLaMA-Factory: `pure_bf16` is incompatible with DeepSpeed ZeRO-3."
    assert llamafactory_write.refusal(pure.data, z2, 8) is None
    # Llama-3-8B full fine-tuning needs 16 B/param of model states (128 GiB): no plan without ZeRO fits
    # 80 GiB, and GaLore refuses every ZeRO plan, so nothing is written and the reason is given.
    code, out, err, out_dir = advise_out("examples/extras/galore/llama3_full_sft.yaml", tmp_path, capsys)
    assert code == 0, err
    assert "GaLore and APOLLO are incompatible with DeepSpeed yet." in out
    assert "no plan that fits is accepted by LLaMA-Factory: nothing written" in out
    assert not (out_dir / "llama3_full_sft.yaml").exists()


# 4. The DeepSpeed JSON carries no optimizer block: the tool's `optim:` stays in charge.
def test_4_ds_config_has_no_optimizer_block(lf_root, tmp_path, capsys):
    for shipped in sorted((lf_root / "examples" / "deepspeed").glob("*.json")):
        assert "optimizer" not in json.loads(shipped.read_text()), shipped  # LLaMA-Factory's own: none
    hw = "hardware: {gpu: A10G-24GB, gpus_per_node: 8, host_memory: 512}\n"  # 8B full: needs ZeRO
    code, out, err, out_dir = advise_out("examples/extras/loraplus/llama3_lora_sft.yaml", tmp_path, capsys, hw)
    assert code == 0, err
    cfg = json.loads((out_dir / "ds_config.json").read_text())
    assert "optimizer" not in cfg and cfg["zero_allow_untested_optimizer"] is True
    assert yaml.safe_load((out_dir / "llama3_lora_sft.yaml").read_text())["loraplus_lr_ratio"] == 16.0


# 5. `deepspeed:` is an absolute path (works from any folder) and every DeepSpeed run gets FORCE_TORCHRUN=1.
def test_5_absolute_deepspeed_path_and_force_torchrun(lf_root, tmp_path, capsys, monkeypatch):
    # Qwen3-4B full fine-tuning on one 24 GiB GPU: only ZeRO with CPU offload fits (64 GiB of model states).
    hw = "hardware: {gpu: A10G-24GB, gpus_per_node: 1, host_memory: 512}\n"
    code, out, err, out_dir = advise_out("examples/train_full/qwen3_full_sft.yaml", tmp_path, capsys, hw)
    assert code == 0, err
    written = yaml.safe_load((out_dir / "qwen3_full_sft.yaml").read_text())
    assert Path(written["deepspeed"]).is_absolute() and Path(written["deepspeed"]).is_file()
    assert f"FORCE_TORCHRUN=1 llamafactory-cli train {(out_dir / 'qwen3_full_sft.yaml').resolve()}" in out
    monkeypatch.chdir(tmp_path / "out")  # any other working directory: the written file still reads
    again = read_foreign("qwen3_full_sft.yaml", {"gpu": "A10G-24GB", "gpus_per_node": 1, "host_memory": 512})
    assert again.deepspeed_path == Path(written["deepspeed"])


# 6. The launch line is `llamafactory-cli train`, and launch.sh names only files it writes.
def test_6_launch_line_and_launch_sh(lf_root, tmp_path, capsys):
    code, out, err, out_dir = advise_out("examples/train_lora/qwen3_lora_sft.yaml", tmp_path, capsys)
    assert code == 0, err
    yaml_path = (out_dir / "qwen3_lora_sft.yaml").resolve()
    assert f"llamafactory-cli train {yaml_path}" in out and "train.py" not in out
    script = (out_dir / "launch.sh").read_text()
    assert f"llamafactory-cli train {yaml_path}" in script
    named = script.splitlines()[1].split("written with it: ")[1].split(", ")
    assert all((out_dir / name).exists() for name in named) and "qwen3_lora_sft.yaml" in named


# 7. Without bf16/fp16 the dtype is inferred as LLaMA-Factory infers it.
def test_7_precision_is_inferred(lf_root):
    lora = "examples/extras/nlg_eval/llama3_lora_predict.yaml"  # no bf16/fp16 key
    assert plan_of(read_foreign(lora, HW_1X80)).training.precision == "bf16"
    v100 = {"gpu": "V100-32GB", "gpus_per_node": 1, "host_memory": 256}  # no bf16 on Volta
    assert plan_of(read_foreign(lora, v100)).training.precision == "fp16"
    full = read_foreign("examples/extras/badam/llama3_full_sft.yaml", HW_1X80)  # full, no flag
    assert plan_of(full).training.precision == "fp32"  # trainable params upcast to fp32, no AMP
    assert any("upcasts trainable parameters to fp32" in n for n in full.notes)


# 8. Memory-relevant keys are never ignored without a word.
@pytest.mark.parametrize("path, expected", [
    ("examples/train_lora/qwen3_lora_dpo.yaml", "stage: dpo runs chosen and rejected sequences together"),
    ("examples/train_lora/qwen3_lora_kto.yaml", "stage: kto runs chosen and rejected"),
    ("examples/extras/galore/llama3_full_sft.yaml", "use_galore: GaLore keeps optimizer states"),
    ("examples/extras/apollo/llama3_full_sft.yaml", "use_apollo: APOLLO"),
    ("examples/extras/badam/llama3_full_sft.yaml", "use_badam: BAdam"),
    ("examples/extras/muon/qwen2_full_sft.yaml", "use_muon: Muon"),
    ("examples/extras/adam_mini/qwen2_full_sft.yaml", "use_adam_mini: Adam-mini"),
    ("examples/extras/llama_pro/llama3_freeze_sft.yaml", "finetuning_type: freeze trains 8 layer(s)"),
    ("examples/extras/nlg_eval/llama3_lora_predict.yaml", "do_predict/predict_with_generate"),
    ("examples/extras/mod/llama3_full_sft.yaml", "mixture_of_depths"),
])
def test_8_memory_keys_are_reported(lf_root, path, expected):
    assert any(expected in w for w in read_foreign(path, HW_8).warnings)


def test_8_cli_shows_the_warnings(lf_root, tmp_path, capsys):
    code, out, err, _ = advise_out("examples/train_lora/qwen3_lora_dpo.yaml", tmp_path, capsys)
    assert code == 0 and "warning   stage: dpo" in out and "as a LLaMA-Factory training YAML" in out


# 9. Ints stay ints; flash_attn is left as the user wrote it (auto included).
def test_9_ints_and_flash_attn(lf_root, tmp_path):
    src = upstream("llamafactory", "examples/train_lora/qwen3_lora_sft.yaml")
    user = tmp_path / "qwen3_lora_sft.yaml"
    user.write_text(src.read_text() + "flash_attn: auto\n")  # the upstream file plus LLaMA-Factory's default
    read = read_foreign(user, HW_8)
    plan = plan_of(read)
    switch = Strategy(method="full", zero_stage=3, gradient_checkpointing=True, micro_batch_size=2)
    for strategy in (Strategy(method="lora", zero_stage=0, gradient_checkpointing=False, micro_batch_size=4), switch):
        out = yaml.safe_load(llamafactory_write.llamafactory_yaml(read, plan, strategy, "/abs/ds.json"))
        assert out["flash_attn"] == "auto" and "lora_alpha" not in out
        for key in ("lora_rank", "per_device_train_batch_size", "gradient_accumulation_steps"):
            assert type(out[key]) is int, key


# 10. Comments (and the order of keys) survive the write-back.
def test_10_comments_and_order_survive(lf_root):
    src = Path("examples/train_lora/qwen3_lora_sft_ds3.yaml")
    read = read_foreign(src, HW_8)
    strategy = Strategy(method="lora", zero_stage=2, gradient_checkpointing=True, micro_batch_size=2)
    text = llamafactory_write.llamafactory_yaml(read, plan_of(read), strategy, "/abs/ds_config.json")
    original = src.read_text().splitlines()
    for line in original:
        if line.lstrip().startswith("#"):
            assert line in text.splitlines(), line
    keys = [k for k in yaml.safe_load(src.read_text())]
    assert [k for k in yaml.safe_load(text) if k in keys] == keys
    assert "deepspeed: /abs/ds_config.json  # choices: [ds_z0_config.json" in text  # its comment kept


def test_v1_format_is_refused_with_a_message(lf_root):
    with pytest.raises(PlanError, match="LLaMA-Factory's v1 config format"):
        read_foreign("examples/v1/train_lora/train_lora_sft.yaml", HW_8)


def test_6_plan_launch_sh_names_no_file_it_does_not_write(tmp_path, capsys):
    from conftest import EXAMPLES

    assert main([str(EXAMPLES / "qwen7b-rtx4090.yaml"), "--out", str(tmp_path / "out")]) == 0
    script = (tmp_path / "out" / "launch.sh").read_text()
    assert "lf.yaml" not in script and "ds_config.json" in script


def test_deepspeed_option_replaces_the_yaml_one_and_json_output(lf_root, tmp_path, capsys):
    hw = tmp_path / "hw.yaml"
    hw.write_text(HW_8X80)
    ds = lf_root / "examples/deepspeed/ds_z2_offload_config.json"
    read = read_foreign("examples/train_lora/qwen3_lora_sft_ds3.yaml", HW_8, deepspeed=ds)
    assert read.deepspeed_path == ds and (read.pinned["zero_stage"], read.pinned["offload_optimizer"]) == (2, "cpu")
    assert main(["examples/train_lora/qwen3_lora_sft_ds3.yaml", "--hardware", str(hw), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["format"] == "LLaMA-Factory training YAML" and got["rules"].startswith("llamafactory 0.9.5")
    assert got["your_config"]["key"].startswith("lora/z3/") and got["advice"]["candidates"]


def test_memfit_plan_takes_hardware_from_the_option(tmp_path, capsys):
    from conftest import EXAMPLES

    plan = tmp_path / "plan.yaml"
    text = (EXAMPLES / "qwen7b-rtx4090.yaml").read_text()
    plan.write_text(text[:text.index("hardware:")] + text[text.index("training:"):])  # no hardware section
    hw = tmp_path / "hw.yaml"
    hw.write_text("hardware: {gpu_memory: 80, host_memory: 512, gpus_per_node: 2}\n")
    assert main([str(plan), "--hardware", str(hw)]) == 0
    assert "1 node(s) x 2 GPU(s) of 80.0 GiB" in capsys.readouterr().out
    assert main([str(plan)]) == 2
    assert "hardware" in capsys.readouterr().err


def test_torch_compile_becomes_training_compile(lf_root):
    # LLaMA-Factory's YAML carries TrainingArguments' keys; torch_compile: true has the Trainer compile
    # the model, whose forward computes the loss (training.compile). The shipped example leaves it out.
    path = lf_root / "examples/train_lora/qwen3_lora_sft_ds3.yaml"
    assert plan_of(read_foreign(path, HW_8)).training.compile is False
    on = lf_root / "examples/train_lora/compiled.yaml"
    on.write_text(path.read_text() + "\ntorch_compile: true\n")
    read = read_foreign(on, HW_8)
    assert plan_of(read).training.compile is True
    assert "torch_compile: layers and loss keep what inductor saves (training.compile)" in read.notes


def test_use_dora_becomes_lora_use_dora(lf_root):
    # finetuning_args.use_dora goes to peft's LoraConfig(use_dora=...) (model/adapter.py): modelled
    # (training.lora.use_dora), so no longer a not-modelled warning.
    path = lf_root / "examples/train_lora/qwen3_lora_sft_ds3.yaml"
    assert plan_of(read_foreign(path, HW_8)).training.lora.use_dora is False
    on = lf_root / "examples/train_lora/dora.yaml"
    on.write_text(path.read_text() + "\nuse_dora: true\n")
    read = read_foreign(on, HW_8)
    assert plan_of(read).training.lora.use_dora is True
    assert not any("use_dora" in w for w in read.warnings)
