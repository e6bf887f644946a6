"""Config readers map the keys of issue 17: modules_to_save, 8-bit LoRA bases and optimizer names.

Expected values are the tools' own documented meanings: LLaMA-Factory 0.9.5 finetuning_args.py
(`additional_target` -> peft modules_to_save, model/adapter.py), model_args.py (quantization_bit,
quantization_type nf4, double_quantization true); axolotl 0.19 `lora_modules_to_save`, `load_in_8bit`;
transformers training_args.py OptimizerNames.
"""
from __future__ import annotations

import pytest
import yaml

from memfit.engine.integrations.foreign import plan_of, read_foreign
from memfit.engine.integrations.optimizers import optimizer_of

HW = {"gpu": "H100-SXM-80GB", "gpus_per_node": 1, "host_memory": 512}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_llamafactory_additional_target_and_8bit(tmp_path):
    path = _write(tmp_path, "lf.yaml", {
        "model_name_or_path": "meta-llama/Meta-Llama-3-8B", "stage": "sft", "finetuning_type": "lora",
        "quantization_bit": 8, "additional_target": "embed_tokens,lm_head", "optim": "paged_adamw_8bit"})
    t = plan_of(read_foreign(path, HW)).training
    assert t.method == "qlora"
    assert t.lora.quantization_config == {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert t.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert t.optimizer == "paged_adamw_8bit"


def test_llamafactory_4bit_keeps_its_quantisation_keys(tmp_path):
    path = _write(tmp_path, "lf4.yaml", {
        "model_name_or_path": "meta-llama/Meta-Llama-3-8B", "stage": "sft", "quantization_bit": 4,
        "double_quantization": False, "resize_vocab": True})
    t = plan_of(read_foreign(path, HW)).training
    assert t.lora.quantization_config == {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                          "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False}
    assert t.lora.modules_to_save == ["embed_tokens", "lm_head"]  # resize_vocab trains both embeddings


def test_axolotl_lora_modules_to_save(tmp_path):
    path = _write(tmp_path, "ax.yaml", {
        "base_model": "meta-llama/Meta-Llama-3-8B", "adapter": "lora", "lora_r": 16,
        "lora_target_linear": True, "lora_modules_to_save": ["embed_tokens", "lm_head"],
        "optimizer": "adamw_torch_fused"})
    t = plan_of(read_foreign(path, HW)).training
    assert (t.method, t.lora.modules_to_save, t.optimizer) == ("lora", ["embed_tokens", "lm_head"], "adamw_fused")


@pytest.mark.parametrize("name, expected", [
    ("adamw_torch", "adamw"), ("adamw_torch_fused", "adamw_fused"), ("adamw_bnb_8bit", "adamw_8bit"),
    ("adamw_8bit", "adamw_8bit"), ("paged_adamw_8bit", "paged_adamw_8bit"), ("paged_adamw_32bit", "paged_adamw"),
    ("lion_32bit", "lion"), ("lion_8bit", "lion_8bit"), ("adafactor", "adafactor"), ("sgd", "sgd"),
    ("bitsandbytes.optim.PagedAdamW8bit", "paged_adamw_8bit")])
def test_optimizer_names(name, expected):
    assert optimizer_of(name) == (expected, None)


def test_unknown_optimizer_is_adamw_with_a_warning():
    chosen, warning = optimizer_of("galore_adamw", "optim")
    assert chosen == "adamw" and warning == "optim: galore_adamw is not modelled; estimated as AdamW (effect unknown)"
