"""LLaMA-Factory YAML -> memfit plan, and back. Defaults per LLaMA-Factory hparams/*.py (cited in the module)."""
from __future__ import annotations

import json

import pytest
import yaml

from memfit.engine.deepspeed.config import deepspeed_config
from memfit.engine.core.errors import PlanError
from memfit.engine.integrations.llamafactory import ignored_keys, llamafactory_yaml, plan_from_llamafactory
from memfit.engine.plan.schema import plan_from_dict
from memfit.engine.plan.strategy import Strategy

HW = {"gpu_memory": 80, "host_memory": 512, "gpus_per_node": 8, "nodes": 1}

# Shaped like LLaMA-Factory's examples/train_full/llama3_full_sft.yaml.
FULL_SFT = """\
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true
stage: sft
do_train: true
finetuning_type: full
deepspeed: ds_z3_offload.json
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 4096
output_dir: saves/llama3-8b/full/sft
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 1.0e-5
bf16: true
flash_attn: fa2
"""
DS_Z3_OFFLOAD = {"train_batch_size": "auto", "zero_optimization": {
    "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
    "offload_param": {"device": "cpu", "pin_memory": True}}}


@pytest.fixture
def lf_file(tmp_path):
    (tmp_path / "ds_z3_offload.json").write_text(json.dumps(DS_Z3_OFFLOAD))
    path = tmp_path / "sft.yaml"
    path.write_text(FULL_SFT)
    return path


def test_full_sft_yaml_becomes_a_valid_plan(lf_file):
    mapping = plan_from_llamafactory(lf_file, HW)
    plan = plan_from_dict(mapping)  # the mapping passes memfit's own plan checks
    t = plan.training
    assert plan.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (t.method, t.seq_len, t.precision, t.attention) == ("full", 4096, "bf16", "flash_attention_2")
    assert (t.micro_batch_size, t.global_batch_size) == (2, 64)  # 2 x 4 accumulation x 8 GPUs
    assert (t.zero_stage, t.offload_optimizer, t.offload_param) == (3, "cpu", "cpu")
    assert t.gradient_checkpointing is True  # LLaMA-Factory checkpoints unless disable_gradient_checkpointing


def test_lf_defaults_and_qlora():
    # finetuning_type defaults to lora; lora_alpha None means 2 x lora_rank; lora_target "all" = all linear.
    t = plan_from_dict(plan_from_llamafactory({"model_name_or_path": "m", "lora_rank": 16, "quantization_bit": 4,
                                               "disable_gradient_checkpointing": True, "fp16": True}, HW)).training
    assert (t.method, t.lora.rank, t.lora.alpha, t.lora.target_modules) == ("qlora", 16, 32, "all-linear")
    assert (t.precision, t.gradient_checkpointing, t.micro_batch_size, t.zero_stage) == ("fp16", False, 8, 0)
    t2 = plan_from_dict(plan_from_llamafactory({"model_name_or_path": "m", "lora_target": "q_proj, v_proj",
                                                "optim": "paged_adamw_8bit", "pure_bf16": True}, HW)).training
    assert (t2.lora.target_modules, t2.optimizer, t2.precision) == (["q_proj", "v_proj"], "adamw_8bit", "pure_bf16")


def test_unpinned_leaves_the_strategy_to_memfit(lf_file):
    t = plan_from_dict(plan_from_llamafactory(lf_file, HW, pin_strategy=False)).training
    assert (t.zero_stage, t.micro_batch_size, t.gradient_checkpointing) == ("auto", "auto", "auto")


def test_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(PlanError, match="model_name_or_path: required"):
        plan_from_llamafactory({"finetuning_type": "full"}, HW)
    with pytest.raises(PlanError, match=r"finetuning_type: must be full, lora, freeze or oft \(got 'qlora'\)"):
        plan_from_llamafactory({"model_name_or_path": "m", "finetuning_type": "qlora"}, HW)
    with pytest.raises(PlanError, match="cannot read"):
        plan_from_llamafactory(tmp_path / "nope.yaml", HW)


def test_ignored_keys_are_listed(lf_file):
    assert ignored_keys(lf_file) == ["dataset", "do_train", "learning_rate", "output_dir", "stage", "template",
                                     "trust_remote_code"]


def test_write_back_keeps_user_keys_and_round_trips(lf_file, tmp_path):
    plan = plan_from_dict(plan_from_llamafactory(lf_file, HW))
    chosen = Strategy(method="lora", zero_stage=2, offload_optimizer="cpu", gradient_checkpointing=True,
                      micro_batch_size=4)
    ds_path = tmp_path / "ds_memfit.json"
    ds_path.write_text(json.dumps(deepspeed_config(chosen, plan, flavor="hf")))
    text = llamafactory_yaml(plan, chosen, "ds_memfit.json", original=lf_file)
    assert text.startswith("# LLaMA-Factory config written by memfit")
    out = yaml.safe_load(text)
    assert out["deepspeed"] == "ds_memfit.json" and out["learning_rate"] == 1.0e-5 and out["template"] == "llama3"
    assert (out["finetuning_type"], out["per_device_train_batch_size"], out["gradient_accumulation_steps"]) == \
        ("lora", 4, 2)  # global 64 / (4 x 8 GPUs) = 2
    (tmp_path / "new.yaml").write_text(text)
    again = plan_from_dict(plan_from_llamafactory(tmp_path / "new.yaml", HW)).training
    assert (again.method, again.zero_stage, again.offload_optimizer, again.micro_batch_size,
            again.gradient_checkpointing, again.global_batch_size) == ("lora", 2, "cpu", 4, True, 64)
