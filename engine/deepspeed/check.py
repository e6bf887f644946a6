"""Review an existing DeepSpeed config: what `advise check ds_config.json` prints.

DeepSpeed itself accepts misspelled top-level keys, wrong types and impossible combinations without
a word, so the checks here are memfit's own: the strict schema (schemas/deepspeed.schema.json: types and
combinations) whose accepted key sets are those of the installed DeepSpeed, generated from its own
config models (`accepted.py`: field names and aliases, keys removed in that version), plus combination
and batch-arithmetic checks with messages a person can act on. Keys starting with `_` are comments.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict

from ..core.ds_defaults import (DS_PERSISTENCE, DS_PREFETCH_BUCKET, DS_REDUCE_BUCKET, MAX_LIVE_PARAMETERS,
                                MAX_REUSE_DISTANCE, SUB_GROUP_SIZE)
from ..core.findings import CheckResult, Finding
from ..core.errors import ConfigCheckError
from ..core.inputs import CONFIG_MAX_BYTES, load_json, read_text
from ..memory.estimate import estimate_memory
from ..model.spec import plan_model
from ..plan.schema import Plan
from ..plan.load import load_plan
from ..plan.strategy import DS_KNOB_KEYS, Strategy, ZeroKnobs
from .accepted import NOT_READ, PYDANTIC_SECTIONS, accepted_keys, deepspeed_schema, without

__all__ = ["Finding", "CheckResult", "check", "check_config", "deepspeed_schema", "load_config",
           "strategy_from_config", "assumptions"]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config.

    Raises:
        ConfigCheckError: unreadable or oversized file, not a regular file, not UTF-8, invalid JSON
            (with line and column), duplicate keys, NaN/Infinity, nesting beyond MAX_DEPTH, or not a
            JSON object.
    """
    p = Path(path)
    text = read_text(p, "the DeepSpeed config", ConfigCheckError, CONFIG_MAX_BYTES)
    data = load_json(text, str(p), ConfigCheckError)
    if not isinstance(data, dict):
        raise ConfigCheckError(f"{p}: a DeepSpeed config must be a JSON object (got {type(data).__name__})")
    return data


def _version_findings(cfg: dict[str, Any]) -> Iterator[Finding]:
    """Keys the installed DeepSpeed removed (it refuses them) or never reads (no effect)."""
    accepted = accepted_keys()
    for dotted, message in accepted["removed"].items():
        parent, _, key = dotted.rpartition(".")
        block = cfg.get(parent) if parent else cfg
        if isinstance(block, dict) and key in block:
            yield Finding(severity="error", key=dotted,
                          message=f"removed in deepspeed {accepted['deepspeed_version']}, which refuses it: {message}")
    for key, real in NOT_READ.items():
        if key in cfg:
            yield Finding(severity="warning", key=key,
                          message=f"not read by deepspeed {accepted['deepspeed_version']} (no effect); {real}")


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _unknown_effect(path: Iterable[int | str]) -> str:
    dotted = ".".join(map(str, path))
    if any(dotted == p or dotted.startswith(p + ".") for p in PYDANTIC_SECTIONS):
        return (f" (deepspeed {accepted_keys()['deepspeed_version']}'s config model for '{dotted}' forbids "
                "extra keys: DeepSpeed refuses this config)")
    return " (DeepSpeed ignores it silently)"


def _schema_findings(cfg: dict[str, Any]) -> Iterator[Finding]:
    import jsonschema  # light, but only needed here

    cfg = without(cfg, set(accepted_keys()["removed"]) | set(NOT_READ))  # reported by _version_findings
    validator = jsonschema.Draft202012Validator(deepspeed_schema())
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if {"then", "not"} & set(map(str, err.schema_path)):
            continue  # combinations: reported below with a clearer message
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            for extra in sorted(k for k in set(err.instance) - set(known) if not str(k).startswith("_")):
                close = difflib.get_close_matches(extra, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else _unknown_effect(err.absolute_path)
                yield Finding(severity="error", key=_dotted([*err.absolute_path, extra]),
                              message=f"unknown key{hint}")
            continue
        yield Finding(severity="error", key=_dotted(err.absolute_path), message=err.message)


def _device(block: Any) -> str:
    return block.get("device", "none") if isinstance(block, dict) else "none"


def _combination_findings(cfg: dict[str, Any]) -> Iterator[Finding]:
    raw_zero = cfg.get("zero_optimization")
    zero: dict[str, Any] = raw_zero if isinstance(raw_zero, dict) else {}
    stage = zero.get("stage", 0)
    if isinstance(stage, int) and stage < 3 and _device(zero.get("offload_param")) != "none":
        yield Finding(severity="error", key="zero_optimization.offload_param",
                      message=f"parameter offload needs ZeRO stage 3 (stage is {stage}); DeepSpeed ignores it "
                              "here: set stage 3 or remove offload_param")
    if stage == 0 and _device(zero.get("offload_optimizer")) != "none":
        yield Finding(severity="error", key="zero_optimization.offload_optimizer",
                      message="optimizer offload needs ZeRO stage 1, 2 or 3 (stage is 0)")
    for name in ("offload_optimizer", "offload_param"):
        block = zero.get(name)
        if isinstance(block, dict) and _device(block) == "nvme" and not block.get("nvme_path"):
            yield Finding(severity="error", key=f"zero_optimization.{name}.nvme_path",
                          message="device nvme needs nvme_path (a directory on a local NVMe drive)")
    enabled = [k for k in ("fp16", "bf16") if isinstance(cfg.get(k), dict) and cfg[k].get("enabled") is True]
    if len(enabled) == 2:
        yield Finding(severity="error", key="fp16.enabled",
                      message="fp16 and bf16 are both enabled: keep one (bf16 on Ampere or newer)")


def _positive_int(value: Any) -> int | None:
    """`value` when it is a positive int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _batch_findings(cfg: dict[str, Any], world: int | None) -> Iterator[Finding]:
    tbs, micro, accum = (_positive_int(cfg.get(k)) for k in
                         ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"))
    if tbs is None or micro is None or accum is None:
        return
    if world is None:
        if tbs % (micro * accum):
            yield Finding(severity="error", key="train_batch_size",
                          message=f"{tbs} is not micro ({micro}) x accumulation ({accum}) x a whole number of GPUs")
        else:
            yield Finding(severity="info", key="train_batch_size",
                          message=f"consistent with {tbs // (micro * accum)} GPUs")
    elif tbs != micro * accum * world:
        yield Finding(severity="error", key="train_batch_size",
                      message=f"{tbs} != micro {micro} x accumulation {accum} x world size {world} "
                              f"= {micro * accum * world}; DeepSpeed refuses to start")


def _auto_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[str]:
    if node == "auto":
        yield _dotted(path)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _auto_paths(v, (*path, k))


def strategy_from_config(cfg: dict[str, Any], plan: Plan, method: str | None = None,
                         gradient_checkpointing: bool | None = None) -> Strategy:
    """The memfit Strategy a DeepSpeed config amounts to, for the plan's memory estimate.

    Method and gradient checkpointing are not in a DeepSpeed JSON: they come from the arguments, else
    the plan, else "full" and off (see `assumptions` for what was assumed). The micro-batch comes from
    the config, else the plan, else 1.

    Raises:
        ConfigCheckError: the stage or offload devices are not valid values.
    """
    t = plan.training
    raw_zero = cfg.get("zero_optimization")
    zero: dict[str, Any] = raw_zero if isinstance(raw_zero, dict) else {}
    micro = cfg.get("train_micro_batch_size_per_gpu")
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1:
        micro = t.micro_batch_size if isinstance(t.micro_batch_size, int) else 1
    stage = zero.get("stage", 0)
    method = method or ("full" if t.method == "auto" else t.method)
    gc = gradient_checkpointing if gradient_checkpointing is not None else t.gradient_checkpointing is True
    try:
        return Strategy(method=method, zero_stage=stage, offload_optimizer=_device(zero.get("offload_optimizer")),
                        offload_param=_device(zero.get("offload_param")) if stage == 3 else "none",
                        gradient_checkpointing=gc, micro_batch_size=micro,
                        zero_knobs=knobs_from_config(zero, cfg.get("data_types")))
    except ValueError as exc:
        raise ConfigCheckError(f"zero_optimization: cannot read a strategy from this config ({exc})") from None


def assumptions(cfg: dict[str, Any], plan: Plan, strategy: Strategy, why: str = "") -> list[str]:
    """One line per strategy choice that neither the config nor the plan fixes, saying what was assumed."""
    t, out = plan.training, []
    reason = why or "assumed"
    if t.method == "auto":
        out.append(f"method: not in a DeepSpeed config and 'auto' in the plan; {reason} {strategy.method}")
    if t.gradient_checkpointing == "auto":
        out.append(f"gradient checkpointing: the trainer's switch, not in the config, and 'auto' in the plan; "
                   f"{reason} {'on' if strategy.gradient_checkpointing else 'off'}")
    micro = cfg.get("train_micro_batch_size_per_gpu")
    if not (isinstance(micro, int) and not isinstance(micro, bool)) and t.micro_batch_size == "auto":
        out.append(f"micro-batch: {micro!r} in the config and 'auto' in the plan; {reason} {strategy.micro_batch_size}")
    return out


# DeepSpeed's own defaults for what a config leaves out (zero/config.py DeepSpeedZeroConfig); "auto" is
# filled by the HF Trainer from the hidden size, the rule memfit writes, so it stays None here.
_DS_DEFAULTS = {"reduce_bucket_size": DS_REDUCE_BUCKET, "prefetch_bucket_size": DS_PREFETCH_BUCKET,
                "param_persistence_threshold": DS_PERSISTENCE, "max_live_parameters": MAX_LIVE_PARAMETERS,
                "max_reuse_distance": MAX_REUSE_DISTANCE, "sub_group_size": SUB_GROUP_SIZE,
                "contiguous_gradients": True}


def knobs_from_config(zero: dict[str, Any], data_types: Any = None) -> ZeroKnobs:
    """The buffer-sizing knobs of a zero_optimization block: its values, DeepSpeed's defaults for the
    keys it leaves out, None for "auto" (the HF Trainer fills those from the hidden size).

    overlap_comm left out follows DeepSpeed (zero/config.py overlap_comm_valid: on for stage 3 only).
    `data_types` (the config's top-level block) gives grad_accum_dtype: "fp32"/"float32" sets
    grad_accum_fp32 (engine.py get_data_types; runtime/config.py DtypeEnum's fp32 spellings).
    """
    out: dict[str, Any] = {}
    for key, name in DS_KNOB_KEYS.items():
        value = zero.get(key, _DS_DEFAULTS.get(name))
        if isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = bool(value) if name in ("overlap_comm", "contiguous_gradients") else int(value)
    if "overlap_comm" not in zero:
        out["overlap_comm"] = zero.get("stage", 0) == 3
    accum = data_types.get("grad_accum_dtype") if isinstance(data_types, dict) else None
    out["grad_accum_fp32"] = str(accum).lower() in ("fp32", "float32", "float", "torch.float32")
    return ZeroKnobs(**out)


def check_config(cfg: dict[str, Any], plan: Plan | None = None, source: str = "ds_config.json") -> list[Finding]:
    """Review a DeepSpeed config.

    Args:
        cfg: the parsed JSON object.
        plan: when given, batch arithmetic uses its world size and the config's strategy is named.
        source: file name, used in messages.
    Returns:
        Findings, errors first; empty when there is nothing to say.
    """
    world = plan.hardware.world_size if plan is not None else None
    found = [*_version_findings(cfg), *_schema_findings(cfg), *_combination_findings(cfg),
             *_batch_findings(cfg, world)]
    autos = list(_auto_paths(cfg))
    if autos:
        found.append(Finding(severity="info", key=autos[0],
                             message=f"HF-flavor config: {len(autos)} \"auto\" value(s) ({', '.join(autos)}); "
                                     "fine under the HF Trainer / accelerate, plain `deepspeed` cannot start"))
    if plan is not None and not any(f.severity == "error" for f in found):
        strategy = strategy_from_config(cfg, plan)
        found.append(Finding(severity="info", key="zero_optimization",
                             message=f"{source} amounts to strategy {strategy.key}"))
        found.extend(_plan_mismatches(cfg, plan))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda f: order[f.severity])


def _plan_mismatches(cfg: dict[str, Any], plan: Plan) -> Iterator[Finding]:
    precision = plan.training.precision
    on = {k for k in ("fp16", "bf16") if isinstance(cfg.get(k), dict) and cfg[k].get("enabled") in (True, "auto")}
    want = {"bf16": "bf16", "pure_bf16": "bf16", "fp16": "fp16"}.get(precision)
    if want and want not in on:
        yield Finding(severity="warning", key=want,
                      message=f"the plan trains in {precision} but {want}.enabled is not set in the config")
    if want is None and on:
        yield Finding(severity="warning", key=sorted(on)[0],
                      message=f"the plan trains in fp32 but the config enables {', '.join(sorted(on))}")
    pinned = plan.training.zero_stage
    stage = (cfg.get("zero_optimization") or {}).get("stage", 0)
    if pinned != "auto" and pinned != stage:
        yield Finding(severity="warning", key="zero_optimization.stage",
                      message=f"the plan pins zero_stage {pinned} but the config uses stage {stage}")


def check(config_path: str | Path, plan_path: str | Path | Plan | None = None, *, method: str | None = None,
          gradient_checkpointing: bool | None = None, micro_batch_size: int | None = None,
          why: str = "") -> CheckResult:
    """Review an existing DeepSpeed config; with a plan, also judge it against the plan's budget.

    The verdict uses the plan's headroom (GPU and host capacity minus policy.gpu_headroom /
    host_headroom), as memfit's own candidates are judged.

    Args:
        config_path: the DeepSpeed JSON.
        plan_path: a plan file or Plan for the fit verdict.
        method, gradient_checkpointing, micro_batch_size: choices the config does not carry, when the
            plan leaves them 'auto' (each one used is stated in `assumptions`, with `why`).
    Raises:
        ConfigCheckError: unreadable JSON. PlanError / ModelNotFoundError: a bad plan.
    """
    from ..search.judge import strategy_verdict

    cfg = load_config(config_path)
    plan = load_plan(plan_path) if isinstance(plan_path, (str, Path)) else plan_path
    findings = check_config(cfg, plan, source=str(config_path))
    if plan is not None:  # the strategy line with its stated assumptions replaces check_config's guess
        findings = [f for f in findings if "amounts to strategy" not in f.message]
    out: dict[str, Any] = {"config": str(config_path), "findings": [f.model_dump() for f in findings],
                           "rules": accepted_keys()["rules"]}
    if plan is not None and not any(f.severity == "error" for f in findings):
        strategy = strategy_from_config(cfg, plan, method, gradient_checkpointing)
        if micro_batch_size and not isinstance(cfg.get("train_micro_batch_size_per_gpu"), int):
            strategy = strategy.model_copy(update={"micro_batch_size": micro_batch_size})
        model = plan_model(plan)
        e = estimate_memory(plan, model, strategy)
        p = plan.policy
        gpu_budget, host_budget = e.gpu_capacity_gib * (1 - p.gpu_headroom), e.host_capacity_gib * (1 - p.host_headroom)
        out.update(strategy=strategy.key, assumptions=assumptions(cfg, plan, strategy, why),
                   gpu_peak_gib=round(e.gpu_peak_gib, 2), host_peak_gib=round(e.host_peak_gib, 2),
                   gpu_budget_gib=round(gpu_budget, 2), host_budget_gib=round(host_budget, 2),
                   gpu_fits=e.gpu_peak_gib <= gpu_budget, host_fits=e.host_peak_gib <= host_budget and e.nvme_fits)
        # The verdict is the rule base's (user reject rules included); the budget numbers are shown.
        out["rejected_by"] = list(strategy_verdict(plan, model, strategy))
    return CheckResult(**out)
