"""axolotl 0.19.0 and torchtune 0.6.1 configs in, their own format out, on the committed upstream files.

Expected values are the files' own keys and the tools' documented defaults (axolotl
utils/schemas/*.py: gradient_checkpointing False, micro_batch_size 1; torchtune recipes:
enable_activation_checkpointing False, dtype bf16 = pure bf16, lora_/qlora_ builders) as cited in
engine/integrations/axolotl.py and torchtune.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memfit.cli.main import main
from memfit.engine.core.errors import ModelNotFoundError
from memfit.engine.integrations import axolotl, torchtune
from memfit.engine.integrations.foreign import own_strategy, plan_of, read_foreign
from memfit.engine.integrations.keylists import key_list
from memfit.engine.plan.strategy import Strategy

from upstream import HW_8X80, upstream

HW_8 = {"gpu": "H100-SXM-80GB", "gpus_per_node": 8, "host_memory": 1024}


def test_axolotl_lora_8bit(ax_root):
    read = read_foreign("examples/mistral/lora.yml", HW_8)
    t = plan_of(read).training
    assert plan_of(read).model == "mistralai/Mistral-7B-v0.1"  # base_model resolves like any model id
    # adapter: lora with load_in_8bit: LoRA over a bitsandbytes LLM.int8 base, memfit's qlora method with
    # the 8-bit quantization_config (the base's layout: engine/memory/quant.py)
    assert (t.method, t.seq_len, t.lora.rank, t.lora.alpha) == ("qlora", 8192, 32, 16)
    assert t.lora.quantization_config == {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert t.global_batch_size == 2 * 4 * 8  # micro_batch_size x gradient_accumulation_steps x GPUs
    assert read.pinned["gradient_checkpointing"] is True
    assert any(n.startswith("load_in_8bit: LoRA over an LLM.int8 base") for n in read.notes)
    assert read.tool == "axolotl YAML" and read.rules.startswith("axolotl 0.19.0")


def test_axolotl_defaults_and_fsdp(ax_root):
    read = read_foreign("examples/llama-3/3b-fp8-fsdp2.yaml", HW_8)  # no gradient_checkpointing key
    assert read.pinned["gradient_checkpointing"] is False
    assert "gradient checkpointing: off (axolotl default)" in read.notes
    # the file says fsdp_version: 2 and reshard_after_forward (FULL_SHARD): its own strategy is FSDP2
    assert any(n.startswith("fsdp_config: FSDP2 FULL_SHARD") for n in read.notes)
    assert (read.pinned["sharding"], read.pinned["fsdp_version"], read.pinned["fsdp_sharding"],
            read.pinned["zero_stage"]) == ("fsdp", 2, "FULL_SHARD", 3)
    assert own_strategy(read).key.startswith("full/fsdp2-full/")


def test_axolotl_deepspeed_file_and_rl(ax_root):
    read = read_foreign("examples/alst/llama3-8b-deepspeed-alst.yaml", HW_8)
    assert read.deepspeed_path == ax_root / "deepspeed_configs/zero3_bf16_cpuoffload_all.json"
    assert (read.pinned["zero_stage"], read.pinned["offload_optimizer"], read.pinned["offload_param"]) == \
        (3, "cpu", "cpu")
    assert plan_of(read).training.seq_len == 500_000
    dpo = read_foreign("examples/llama-3/instruct-dpo-lora-8b.yml", HW_8)
    assert any(w.startswith("rl: dpo runs chosen and rejected") for w in dpo.warnings)
    qlora = read_foreign("examples/mistral/qlora.yml", HW_8)
    assert qlora.pinned["method"] == "qlora"


def test_axolotl_write_back_keeps_comments_and_drops_fsdp_for_deepspeed(ax_root):
    src = Path("examples/qwen3/qlora-fsdp.yaml")
    read = read_foreign(src, HW_8)
    strategy = Strategy(method="qlora", zero_stage=2, gradient_checkpointing=True, micro_batch_size=2)
    text = axolotl.axolotl_yaml(read, plan_of(read), strategy, "/abs/ds_config.json")
    out = yaml.safe_load(text)
    assert out["deepspeed"] == "/abs/ds_config.json" and "fsdp_config" not in out  # not both
    assert type(out["micro_batch_size"]) is int and out["micro_batch_size"] == 2
    assert out["base_model"] == "Qwen/Qwen3-8B" and out["adapter"] == "qlora"
    for line in src.read_text().splitlines():
        if line.startswith("#"):
            assert line in text.splitlines(), line


def test_axolotl_cli_writes_its_own_format(ax_root, tmp_path, capsys):
    (tmp_path / "hw.yaml").write_text(HW_8X80)
    out_dir = tmp_path / "out"
    assert main(["examples/mistral/lora.yml", "--hardware", str(tmp_path / "hw.yaml"), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "as an axolotl YAML" in out
    assert f"axolotl train {(out_dir / 'lora.yml').resolve()}" in out
    assert yaml.safe_load((out_dir / "lora.yml").read_text())["base_model"] == "mistralai/Mistral-7B-v0.1"


TT_LORA = "recipes/configs/llama3_1/8B_lora_single_device.yaml"


def test_torchtune_builder_and_keys():
    read = read_foreign(upstream("torchtune", TT_LORA), HW_8)
    plan = plan_of(read)
    t = plan.training
    assert plan.model == "meta-llama/Meta-Llama-3.1-8B-Instruct"  # the id its `tune download` line names
    assert (t.method, t.lora.rank, t.lora.alpha, t.precision) == ("lora", 8, 16, "pure_bf16")
    # lora_attn_modules q_proj, v_proj, output_proj (-> o_proj) plus apply_lora_to_mlp
    assert t.lora.target_modules == ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert t.seq_len == 2048 and any(w.startswith("tokenizer.max_seq_len: null") for w in read.warnings)
    assert plan.hardware.world_size == 1  # a single-device recipe uses one of the eight GPUs
    assert t.global_batch_size == 2 * 8  # batch_size x gradient_accumulation_steps
    assert read.pinned["gradient_checkpointing"] is True
    assert read.rules.startswith("torchtune 0.6.1") and "recipe lora_finetune_single_device" in read.rules


@pytest.mark.parametrize("path, method, stage", [
    ("recipes/configs/llama3_1/8B_qlora_single_device.yaml", "qlora", 0),
    ("recipes/configs/llama3_1/8B_full.yaml", "full", 3),  # full_finetune_distributed: FSDP2 ~ ZeRO-3
    ("recipes/configs/qwen2_5/32B_lora.yaml", "lora", 3)])
def test_torchtune_methods_and_sharding(path, method, stage):
    read = read_foreign(upstream("torchtune", path), HW_8)
    assert (read.pinned["method"], read.pinned["zero_stage"]) == (method, stage)
    # distributed recipes shard with FSDP2's fully_shard (torchtune training/_distributed.py)
    assert read.pinned.get("sharding", "deepspeed") == ("fsdp" if stage else "deepspeed")


def test_torchtune_overrides_are_recipe_keys():
    read = read_foreign(upstream("torchtune", "recipes/configs/llama3_1/8B_lora.yaml"), HW_8)
    plan = plan_of(read)
    s = Strategy(method="lora", zero_stage=3, offload_optimizer="cpu", offload_param="cpu",
                 gradient_checkpointing=False, micro_batch_size=4)
    line = torchtune.launch_line(read, plan, s, "8B_lora.yaml")
    assert line.startswith("tune run --nproc_per_node 8 lora_finetune_distributed --config 8B_lora.yaml ")
    overrides = dict(o.split("=") for o in line.split(" --config 8B_lora.yaml ")[1].split())
    assert overrides["batch_size"] == "4" and overrides["enable_activation_checkpointing"] == "False"
    assert overrides["fsdp_cpu_offload"] == "True"
    assert set(overrides) <= key_list("torchtune").names
    assert torchtune.refusal(read.data, Strategy(method="lora", zero_stage=2), "lora_finetune_distributed")


def test_torchtune_unknown_builder_is_a_model_not_found(tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("model:\n  _component_: torchtune.models.flux.flux_1_autoencoder\n")
    with pytest.raises(ModelNotFoundError, match="flux_1_autoencoder: memfit knows no Hugging Face checkpoint"):
        read_foreign(cfg, HW_8)


def test_torchtune_phi3_lora_targets_the_fused_layers():
    read = read_foreign(upstream("torchtune", "recipes/configs/phi3/mini_lora_single_device.yaml"), HW_8)
    targets = plan_of(read).training.lora.target_modules
    assert "qkv_proj" in targets and "q_proj" not in targets  # Phi3ForCausalLM fuses q, k and v


def test_compile_keys_become_training_compile(ax_root, tmp_path):
    # torchtune's recipes compile each layer and the loss when `compile: True` (the shipped file says
    # False); axolotl's `torch_compile: true` goes to TrainingArguments.torch_compile.
    path = upstream("torchtune", TT_LORA)
    assert plan_of(read_foreign(path, HW_8)).training.compile is False
    on = tmp_path / "8B_lora_single_device.yaml"
    on.write_text(Path(path).read_text().replace("compile: False", "compile: True"))
    read = read_foreign(on, HW_8)
    assert plan_of(read).training.compile is True
    assert any(n.startswith("compile: layers and loss compiled") for n in read.notes)
    ax = read_foreign("examples/llama-3/3b-fp8-fsdp2.yaml", HW_8)  # torch_compile: true
    assert plan_of(ax).training.compile is True


def test_peft_use_dora_becomes_lora_use_dora(ax_root, tmp_path):
    # axolotl passes peft_use_dora to peft's LoraConfig(use_dora=...); torchtune's use_dora builds its
    # own DoRALinear, which memfit does not model (a warning, and the plan stays plain LoRA).
    on = tmp_path / "mistral_dora.yml"
    on.write_text(Path("examples/mistral/lora.yml").read_text() + "\npeft_use_dora: true\n")
    read = read_foreign(on, HW_8)
    assert plan_of(read).training.lora.use_dora is True
    assert not any("peft_use_dora" in w for w in read.warnings)
    assert plan_of(read_foreign("examples/mistral/lora.yml", HW_8)).training.lora.use_dora is False
    tt = read_foreign(upstream("torchtune", "recipes/configs/llama3/8B_dora.yaml"), HW_8)
    assert plan_of(tt).training.lora.use_dora is False
    assert any(w.startswith("model.use_dora: torchtune's DoRALinear is not modelled") for w in tt.warnings)
