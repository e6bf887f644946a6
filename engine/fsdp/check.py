"""`advise check` for an accelerate FSDP config YAML: unknown keys, impossible combinations, and, with a
plan, the memory of the strategy it describes.

The known keys are accelerate 1.x's FSDP launch arguments (commands/launch.py, `--fsdp_*`; inside
`fsdp_config` the `fsdp_` prefix is optional, as accelerate adds it) and the top-level fields of its
ClusterConfig (commands/config/config_args.py).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Optional

import yaml
from pydantic import BaseModel

from ..core.findings import CheckResult, Finding
from ..core.errors import PlanError
from ..plan.strategy import Strategy

if TYPE_CHECKING:
    from ..plan.schema import Plan

_FSDP_KEYS = {
    "fsdp_version": (1, 2), "fsdp_sharding_strategy": ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD",
                                                       "_HYBRID_SHARD_ZERO2", 1, 2, 3, 4, 5),
    "fsdp_reshard_after_forward": None, "fsdp_offload_params": (True, False),
    "fsdp_auto_wrap_policy": ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"),
    "fsdp_transformer_layer_cls_to_wrap": None, "fsdp_min_num_params": None,
    "fsdp_backward_prefetch": ("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"), "fsdp_forward_prefetch": (True, False),
    "fsdp_state_dict_type": ("FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"),
    "fsdp_use_orig_params": (True, False), "fsdp_cpu_ram_efficient_loading": (True, False),
    "fsdp_sync_module_states": (True, False), "fsdp_activation_checkpointing": (True, False),
    "fsdp_activation_checkpointing_offload": (True, False), "fsdp_ignored_modules": None,
}
_TOP_KEYS = {"compute_environment", "distributed_type", "mixed_precision", "use_cpu", "debug", "num_processes",
             "num_machines", "machine_rank", "main_process_ip", "main_process_port", "rdzv_backend", "same_network",
             "main_training_function", "enable_cpu_affinity", "fsdp_config", "deepspeed_config", "megatron_lm_config",
             "ipex_config", "mpirun_config", "dynamo_config", "fp8_config", "parallelism_config", "gpu_ids",
             "downcast_bf16", "tpu_name", "tpu_zone", "tpu_use_cluster", "tpu_use_sudo", "tpu_env", "commands",
             "command_file", "num_cpu_threads_per_process", "use_mps_device", "fsdp_config_file"}
_V1_ONLY = ("fsdp_sharding_strategy", "fsdp_backward_prefetch", "fsdp_forward_prefetch", "fsdp_use_orig_params")


def is_accelerate_yaml(path: str | Path) -> bool:
    """Whether a config file is YAML (accelerate) rather than DeepSpeed JSON, by its suffix."""
    return Path(path).suffix.lower() in (".yaml", ".yml")


def load_accelerate_config(path: str | Path) -> dict[str, Any]:
    """Read an accelerate config YAML (safe loading).

    Raises:
        PlanError: unreadable, not YAML, or not a mapping (exit code 2).
    """
    from ..core.inputs import load_yaml, read_text

    p = Path(path)
    data = load_yaml(read_text(p, "the accelerate config", PlanError), str(p), PlanError)
    if not isinstance(data, dict):
        raise PlanError(f"{p}: an accelerate config must be a mapping (got {type(data).__name__})")
    return data


def normalised_fsdp(cfg: dict[str, Any]) -> dict[str, Any]:
    """fsdp_config with every key carrying the fsdp_ prefix, as accelerate launch reads it."""
    block = cfg.get("fsdp_config") or {}
    return {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): v for k, v in block.items()}


def _key_findings(cfg: dict[str, Any], fsdp: dict[str, Any]) -> Iterator[Finding]:
    for key in cfg:
        if key not in _TOP_KEYS:
            close = difflib.get_close_matches(str(key), sorted(_TOP_KEYS), n=1)
            yield Finding(severity="error", key=str(key), message="unknown key" + (f"; did you mean '{close[0]}'?" if close else ""))
    for key, value in fsdp.items():
        if key not in _FSDP_KEYS:
            close = difflib.get_close_matches(key, sorted(_FSDP_KEYS), n=1)
            yield Finding(severity="error", key=f"fsdp_config.{key}",
                          message="unknown key" + (f"; did you mean '{close[0]}'?" if close else ""))
        elif (allowed := _FSDP_KEYS[key]) is not None and value not in allowed:
            yield Finding(severity="error", key=f"fsdp_config.{key}",
                          message=f"must be one of {', '.join(map(str, allowed))} (got {value!r})")


def _combination_findings(cfg: dict[str, Any], fsdp: dict[str, Any]) -> Iterator[Finding]:
    if cfg.get("distributed_type") != "FSDP":
        yield Finding(severity="error", key="distributed_type",
                      message=f"is {cfg.get('distributed_type')!r}: not an FSDP config (expected FSDP)")
    if fsdp.get("fsdp_cpu_ram_efficient_loading") and fsdp.get("fsdp_sync_module_states") is False:
        yield Finding(severity="error", key="fsdp_config.fsdp_sync_module_states",
                      message="cpu_ram_efficient_loading needs sync_module_states true (accelerate refuses to launch)")
    version = fsdp.get("fsdp_version", 1)
    for key in _V1_ONLY:
        if version == 2 and key in fsdp:
            yield Finding(severity="warning", key=f"fsdp_config.{key}",
                          message="FSDP1 only; FSDP2 ignores it (use fsdp_reshard_after_forward)")
    if fsdp.get("fsdp_state_dict_type", "FULL_STATE_DICT") == "FULL_STATE_DICT":
        yield Finding(severity="info", key="fsdp_config.fsdp_state_dict_type",
                      message="FULL_STATE_DICT gathers the whole model, then the optimizer state, on rank 0's host RAM at save")


def strategy_from_accelerate(cfg: dict[str, Any], plan: Plan) -> Strategy:
    """The FSDP Strategy an accelerate config describes (method and micro-batch from the plan)."""
    fsdp = normalised_fsdp(cfg)
    version = int(fsdp.get("fsdp_version", 1))
    if version == 2:
        sharding = "FULL_SHARD" if fsdp.get("fsdp_reshard_after_forward", True) in (True, "true") else "SHARD_GRAD_OP"
    else:
        sharding = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD"))
        sharding = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD"}.get(sharding, sharding)
    sharding = sharding if sharding in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD") else "FULL_SHARD"
    stage = {"FULL_SHARD": 3, "HYBRID_SHARD": 3, "SHARD_GRAD_OP": 2, "NO_SHARD": 0}[sharding]
    off = "cpu" if fsdp.get("fsdp_offload_params") in (True, "true") else "none"
    t = plan.training
    return Strategy(method=t.method if t.method != "auto" else "full", zero_stage=stage, offload_optimizer=off,
                    offload_param=off, micro_batch_size=t.micro_batch_size if t.micro_batch_size != "auto" else 1,
                    gradient_checkpointing=bool(fsdp.get("fsdp_activation_checkpointing"))
                    or t.gradient_checkpointing is True,
                    gather_16bit_on_save=fsdp.get("fsdp_state_dict_type", "FULL_STATE_DICT") == "FULL_STATE_DICT",
                    sharding="fsdp", fsdp_version=version, fsdp_sharding=sharding)


def check_accelerate(config_path: str | Path, plan_path: str | Path | None = None) -> CheckResult:
    """Check an accelerate FSDP config; with a plan, estimate the strategy it describes on that hardware.

    Raises:
        PlanError: unreadable config or plan.
    """
    cfg = load_accelerate_config(config_path)
    fsdp = normalised_fsdp(cfg)
    findings = [*_key_findings(cfg, fsdp), *_combination_findings(cfg, fsdp)]
    out: dict[str, Any] = {"config": str(config_path)}
    if plan_path is not None:
        from ..memory.estimate import estimate_memory
        from ..model.spec import plan_model
        from ..plan.load import load_plan
        from ..search.judge import strategy_verdict

        plan = load_plan(plan_path)
        world = cfg.get("num_processes")
        if isinstance(world, int) and world != plan.hardware.world_size:
            findings.append(Finding(severity="warning", key="num_processes",
                                    message=f"is {world}; the plan has {plan.hardware.world_size} GPU(s)"))
        s = strategy_from_accelerate(cfg, plan)
        model = plan_model(plan)
        e = estimate_memory(plan, model, s)
        p = plan.policy
        gpu_budget, host_budget = e.gpu_capacity_gib * (1 - p.gpu_headroom), e.host_capacity_gib * (1 - p.host_headroom)
        out.update(strategy=s.key, gpu_peak_gib=round(e.gpu_peak_gib, 3), host_peak_gib=round(e.host_peak_gib, 3),
                   gpu_budget_gib=round(gpu_budget, 2), host_budget_gib=round(host_budget, 2),
                   gpu_fits=e.gpu_peak_gib <= gpu_budget, host_fits=e.host_peak_gib <= host_budget,
                   rejected_by=list(strategy_verdict(plan, model, s)))
    out["findings"] = [f.model_dump() for f in findings]
    return CheckResult(**out)
