"""What an FSDP strategy looks like to the tools that run it: an accelerate config (`fsdp_config`),
torchtune command-line overrides, and the LLaMA-Factory / axolotl keys.

Keys checked against accelerate 1.x (commands/launch.py FSDP arguments, utils/launch.py
prepare_multi_gpu_env, utils/dataclasses.py FullyShardedDataParallelPlugin), the FSDP YAMLs LLaMA-Factory
ships in examples/accelerate/, torchtune 0.6 recipe configs (fsdp_cpu_offload, enable_activation_checkpointing,
fsdp_reshard_after_forward) and axolotl's `fsdp` / `fsdp_config` keys.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ..plan.schema import Plan
    from ..plan.strategy import Strategy

# memfit precision -> accelerate's mixed_precision. pure_bf16 loads the model in bf16 with no
# MixedPrecision policy (states in bf16); bf16/fp16 keep fp32 shards and compute in 16 bits.
_MIXED = {"bf16": "bf16", "fp16": "fp16", "pure_bf16": "no", "fp32": "no"}


def _fsdp_block(strategy: Strategy) -> dict[str, Any]:
    sharding = strategy.effective_fsdp_sharding
    block: dict[str, Any] = {"fsdp_version": strategy.fsdp_version,
                             # Wraps each decoder layer: accelerate reads the class from the model's
                             # _no_split_modules when fsdp_transformer_layer_cls_to_wrap is not given.
                             "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    if strategy.fsdp_version == 1:
        block.update(fsdp_sharding_strategy=sharding, fsdp_backward_prefetch="BACKWARD_PRE",
                     fsdp_forward_prefetch=False, fsdp_use_orig_params=True)
    else:
        block["fsdp_reshard_after_forward"] = sharding == "FULL_SHARD"  # SHARD_GRAD_OP keeps units gathered
    block.update(fsdp_offload_params=strategy.offload_param == "cpu",
                 # Only rank 0 reads the checkpoint; the others start on meta and receive it by broadcast
                 # (accelerate refuses cpu_ram_efficient_loading without sync_module_states).
                 fsdp_cpu_ram_efficient_loading=True, fsdp_sync_module_states=True,
                 fsdp_state_dict_type="FULL_STATE_DICT" if strategy.gather_16bit_on_save else "SHARDED_STATE_DICT",
                 fsdp_activation_checkpointing=strategy.gradient_checkpointing)
    return block


def accelerate_config(strategy: Strategy, plan: Plan) -> dict[str, Any]:
    """The accelerate config file (`accelerate launch --config_file`) of an FSDP strategy.

    Args:
        strategy: a Strategy with sharding 'fsdp'.
        plan: supplies nodes, GPUs and precision.
    Returns:
        The mapping to dump as YAML.
    Raises:
        ValueError: the strategy is not an FSDP strategy.
    """
    if strategy.sharding != "fsdp":
        raise ValueError(f"{strategy.key} is not an FSDP strategy")
    hw = plan.hardware
    cfg: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": "FSDP",
                           "downcast_bf16": "no", "fsdp_config": _fsdp_block(strategy), "machine_rank": 0,
                           "main_training_function": "main", "mixed_precision": _MIXED[plan.training.precision],
                           "num_machines": hw.nodes, "num_processes": hw.world_size, "rdzv_backend": "static",
                           "same_network": True, "use_cpu": False}
    if hw.nodes > 1:
        cfg.update(main_process_ip="node-1", main_process_port=29500)  # replace node-1; machine_rank per node
    return cfg


def accelerate_yaml(strategy: Strategy, plan: Plan) -> str:
    """accelerate_config as the YAML text memfit writes (fsdp_config.yaml), with a header comment."""
    head = (f"# accelerate FSDP config written by memfit for {strategy.key}.\n"
            "# Run: accelerate launch --config_file fsdp_config.yaml train.py"
            + (" (set machine_rank and main_process_ip on each node)" if plan.hardware.nodes > 1 else "") + "\n")
    body: str = yaml.safe_dump(accelerate_config(strategy, plan), sort_keys=False)
    return head + body


def torchtune_overrides(strategy: Strategy, plan: Plan) -> list[str]:
    """`tune run` key=value overrides for a torchtune distributed recipe (FSDP2 only).

    Returns:
        The overrides; [] when the strategy cannot run under torchtune (FSDP1, HYBRID_SHARD, NO_SHARD).
    """
    if strategy.sharding != "fsdp" or strategy.fsdp_version != 2:
        return []
    dtype = "fp32" if plan.training.precision == "fp32" else "bf16"
    return [f"fsdp_cpu_offload={strategy.offload_param == 'cpu'}",
            f"fsdp_reshard_after_forward={strategy.effective_fsdp_sharding == 'FULL_SHARD'}",
            f"enable_activation_checkpointing={strategy.gradient_checkpointing}",
            f"batch_size={strategy.micro_batch_size}", f"dtype={dtype}"]


def framework_keys(strategy: Strategy, plan: Plan) -> dict[str, dict[str, Any]]:
    """FSDP keys for LLaMA-Factory (its YAML runs under `accelerate launch --config_file`) and axolotl.

    Args:
        strategy: an FSDP strategy.
        plan: the checked Plan.
    Returns:
        {"llamafactory": {...}, "axolotl": {...}}: keys to merge into each tool's training YAML.
    """
    if strategy.sharding != "fsdp":
        return {}
    sharding = strategy.effective_fsdp_sharding
    lf: dict[str, Any] = {"per_device_train_batch_size": strategy.micro_batch_size,
                          # activation checkpointing comes from fsdp_activation_checkpointing instead
                          "disable_gradient_checkpointing": True}
    if plan.training.precision in ("bf16", "pure_bf16"):
        lf["bf16"] = True
    elif plan.training.precision == "fp16":
        lf["fp16"] = True
    if strategy.method == "qlora":
        lf.update(quantization_bit=4, quantization_method="bnb")
    ax_cfg: dict[str, Any] = {"fsdp_version": strategy.fsdp_version, "offload_params": strategy.offload_param == "cpu",
                              "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_ram_efficient_loading": True,
                              "state_dict_type": "FULL_STATE_DICT" if strategy.gather_16bit_on_save else "SHARDED_STATE_DICT",
                              "activation_checkpointing": strategy.gradient_checkpointing}
    if strategy.fsdp_version == 1:
        ax_cfg.update(sharding_strategy=sharding, use_orig_params=True, sync_module_states=True)
    else:
        ax_cfg["reshard_after_forward"] = sharding == "FULL_SHARD"
    ax: dict[str, Any] = {"fsdp_config": ax_cfg, "micro_batch_size": strategy.micro_batch_size,
                          "gradient_checkpointing": False}
    if strategy.method == "qlora":
        ax.update(adapter="qlora", load_in_4bit=True, bnb_4bit_quant_storage="bfloat16")
    return {"llamafactory": lf, "axolotl": ax}
