"""DeepSpeed config emission: arithmetic, bucket sizes, schema, DeepSpeed's own validator, HF 'auto' filling."""
from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import jsonschema
import pytest

from memfit.engine.deepspeed.check import deepspeed_schema
from memfit.engine.deepspeed.config import config_notes, deepspeed_config
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy

# Llama-2-7B shapes (config.json of meta-llama/Llama-2-7b-hf); largest module = embedding 32000 x 4096.
LLAMA7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
FACTS = SimpleNamespace(hidden_size=4096, largest_layer_params=32000 * 4096, total_params=6_738_415_616)
# Qwen2.5-32B's lm_head (sources.md §1): bigger than DeepSpeed's 1e8 default NVMe buffer.
FACTS_32B = SimpleNamespace(hidden_size=5120, largest_layer_params=778_567_680, total_params=32_763_876_352)


def make_plan(precision="bf16", optimizer="adamw", gpus=8, nodes=2, global_batch=None, nvme_path="/mnt/nvme"):
    training = {"precision": precision, "optimizer": optimizer}
    if global_batch:
        training["global_batch_size"] = global_batch
    return plan_from_dict({"model": LLAMA7B, "training": training,
                           "hardware": {"gpu_memory": 80, "host_memory": 512, "gpus_per_node": gpus,
                                        "nodes": nodes, "nvme_path": nvme_path}})


# Every stage/offload shape memfit can emit (param offload only under stage 3, no offload under stage 0).
SHAPES = [(0, "none", "none"), (1, "none", "none"), (1, "cpu", "none"), (2, "none", "none"), (2, "cpu", "none"),
          (2, "nvme", "none"), (3, "none", "none"), (3, "cpu", "none"), (3, "cpu", "cpu"), (3, "nvme", "nvme"),
          (3, "cpu", "nvme")]
PRECISIONS = ["bf16", "fp16", "fp32", "pure_bf16"]


def strategy(stage, opt="none", param="none", micro=2, method="full"):
    return Strategy(method=method, zero_stage=stage, offload_optimizer=opt, offload_param=param,
                    micro_batch_size=micro)


def walk(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)
    else:
        yield node


ALL = [(s, p, f) for s, p in itertools.product(SHAPES, PRECISIONS) for f in ("concrete", "hf")]


@pytest.mark.parametrize("shape,precision,flavor", ALL)
def test_every_emitted_config_passes_the_strict_schema(shape, precision, flavor):
    cfg = deepspeed_config(strategy(*shape), make_plan(precision), FACTS, flavor=flavor)
    jsonschema.Draft202012Validator(deepspeed_schema()).validate(cfg)
    json.dumps(cfg)  # serialisable
    has_auto = "auto" in list(walk(cfg))
    assert has_auto == (flavor == "hf")


def test_batch_arithmetic_rounds_accumulation_up():
    # 16 GPUs x micro 2 = 32 per micro-step; global 100 needs ceil(100/32) = 4 steps -> 128 samples.
    cfg = deepspeed_config(strategy(2), make_plan(global_batch=100), FACTS)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (2, 4, 128)
    assert any("rounded up to 128" in n for n in config_notes(strategy(2), make_plan(global_batch=100)))


def test_no_global_batch_means_no_accumulation():
    cfg = deepspeed_config(strategy(1, micro=3), make_plan(gpus=4, nodes=1), FACTS)
    assert (cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (1, 12)  # 3 x 1 x 4


def test_bucket_sizes_follow_the_hf_auto_rule():
    # transformers/integrations/deepspeed.py trainer_config_finalize: h*h, int(0.9*h*h), 10*h; h = 4096.
    z = deepspeed_config(strategy(3), make_plan(), FACTS)["zero_optimization"]
    assert z["reduce_bucket_size"] == 16_777_216
    assert z["stage3_prefetch_bucket_size"] == 15_099_494
    assert z["stage3_param_persistence_threshold"] == 40_960
    z2 = deepspeed_config(strategy(2), make_plan(), FACTS)["zero_optimization"]
    assert z2["allgather_bucket_size"] == 16_777_216 and "stage3_prefetch_bucket_size" not in z2


def test_fp16_block_uses_dynamic_loss_scaling():
    cfg = deepspeed_config(strategy(2), make_plan("fp16"), FACTS)
    assert cfg["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                           "hysteresis": 2, "min_loss_scale": 1}
    assert "bf16" not in cfg
    assert "fp16" not in deepspeed_config(strategy(2), make_plan("fp32"), FACTS) and \
        "bf16" not in deepspeed_config(strategy(2), make_plan("fp32"), FACTS)


def test_nvme_blocks_and_buffer_holds_the_largest_tensor():
    cfg = deepspeed_config(strategy(3, "nvme", "nvme"), make_plan(), FACTS_32B, pin_memory=False)
    z = cfg["zero_optimization"]
    assert z["offload_param"]["nvme_path"] == z["offload_optimizer"]["nvme_path"] == "/mnt/nvme"
    assert z["offload_param"]["buffer_size"] == 778_567_680  # > DeepSpeed's 1e8 default
    assert z["offload_param"]["pin_memory"] is False and "aio" in cfg


def test_nvme_without_path_is_refused():
    with pytest.raises(ValueError, match="nvme_path"):
        deepspeed_config(strategy(3, "nvme"), make_plan(nvme_path=None), FACTS)


def test_trainer_owned_optimizer_omits_the_block():
    cfg = deepspeed_config(strategy(2, "cpu"), make_plan(optimizer="adafactor"), FACTS)
    assert "optimizer" not in cfg
    assert cfg["zero_allow_untested_optimizer"] is True and cfg["zero_force_ds_cpu_optimizer"] is False


def _ds_config_for_world(cfg, world, monkeypatch):
    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig

    # deepspeed/runtime/config.py reads deepspeed.comm.get_rank/get_world_size at construction time.
    monkeypatch.setattr(deepspeed.comm, "get_world_size", lambda *a, **k: world)
    monkeypatch.setattr(deepspeed.comm, "get_rank", lambda *a, **k: 0)
    return DeepSpeedConfig(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("shape,precision", list(itertools.product(SHAPES, PRECISIONS)))
def test_deepspeed_accepts_every_concrete_config_at_world_16(shape, precision, monkeypatch):
    cfg = deepspeed_config(strategy(*shape), make_plan(precision, global_batch=256), FACTS)
    ds = _ds_config_for_world(cfg, 16, monkeypatch)
    assert ds.world_size == 16 and ds.train_batch_size == 256  # 2 x 8 accum x 16 GPUs
    assert ds.zero_optimization_stage == shape[0]
    assert ds.bfloat16_config.enabled == (precision in ("bf16", "pure_bf16"))
    assert ds.float16_config.enabled == (precision == "fp16")
    offload = ds.zero_config.offload_optimizer
    assert (offload.device if offload else "none") == shape[1]


@pytest.mark.slow
def test_deepspeed_rejects_the_config_at_the_wrong_world_size(monkeypatch):
    # Control for the patch above: 128 = 2 x 4 x 16 cannot be met by 8 GPUs.
    cfg = deepspeed_config(strategy(2), make_plan(global_batch=128), FACTS)
    with pytest.raises(AssertionError, match="[Cc]heck batch related parameters"):
        _ds_config_for_world(cfg, 8, monkeypatch)


def _fill_hf(cfg, args, hidden):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    try:
        hf = HfTrainerDeepSpeedConfig(cfg)
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden)), 100)
        return hf.config
    finally:
        unset_hf_deepspeed_config()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, "none", "none"), (2, "cpu", "none"), (3, "cpu", "cpu"), (3, "nvme", "nvme")])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_hf_flavor_filled_by_transformers_equals_concrete(shape, precision, monkeypatch, tmp_path):
    from transformers import TrainingArguments

    # 16 GPUs: TrainingArguments.world_size reads torch.distributed; pretend it says 16.
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 16))
    plan = make_plan(precision, global_batch=256)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=8,
                             bf16=precision == "bf16", use_cpu=True, report_to=[])
    filled = _fill_hf(deepspeed_config(strategy(*shape), plan, FACTS, flavor="hf"), args, FACTS.hidden_size)
    assert "auto" not in list(walk(filled))
    # HF TrainingArguments defaults (lr 5e-5, betas 0.9/0.999, eps 1e-8, wd 0, max_grad_norm 1) are
    # what the concrete flavor writes, so the two must be identical.
    assert filled == deepspeed_config(strategy(*shape), plan, FACTS)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_plan_knobs_pass_the_schema_and_deepspeed(stage, monkeypatch):
    # training.deepspeed's values go into zero_optimization as DeepSpeed spells them; its own config
    # class (deepspeed/runtime/zero/config.py via DeepSpeedConfig) must accept them.
    plan = plan_from_dict({"model": LLAMA7B, "hardware": {"gpu_memory": 80, "host_memory": 512, "gpus_per_node": 8},
                           "training": {"deepspeed": {"reduce_bucket_size": 2e8, "overlap_comm": False,
                                                      "stage3_max_live_parameters": 3e8, "sub_group_size": 1e8}}})
    cfg = deepspeed_config(strategy(stage), plan, FACTS)
    jsonschema.validate(cfg, deepspeed_schema())
    zero = _ds_config_for_world(cfg, 8, monkeypatch).zero_config
    assert zero.reduce_bucket_size == 200_000_000 and zero.overlap_comm is False
    if stage == 3:
        assert zero.max_live_parameters == 300_000_000 and zero.sub_group_size == 100_000_000
