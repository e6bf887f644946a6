"""Review an existing DeepSpeed config: what `advise check ds_config.json` prints.

DeepSpeed itself accepts misspelled keys, wrong types and impossible combinations without a word
(DOMAIN.md §5), so the checks here are memfit's own: the strict schema
(schemas/deepspeed.schema.json) plus combination and batch-arithmetic checks with messages a person
can act on.
"""
from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict

from ..core.ds_defaults import (DS_PERSISTENCE, DS_PREFETCH_BUCKET, DS_REDUCE_BUCKET, MAX_LIVE_PARAMETERS,
                                MAX_REUSE_DISTANCE, SUB_GROUP_SIZE)
from ..core.errors import ConfigCheckError
from ..memory.estimate import estimate_memory
from ..model.spec import resolve_model
from ..plan.schema import Plan, load_plan
from ..plan.strategy import Strategy, ZeroKnobs


class Finding(BaseModel):
    """One remark about a config: severity, the dotted key it is about, and what to do."""

    model_config = ConfigDict(frozen=True)

    severity: Literal["error", "warning", "info"]
    key: str
    message: str


@lru_cache(maxsize=1)
def deepspeed_schema() -> dict[str, Any]:
    """The strict DeepSpeed schema shipped in memfit.schemas."""
    return json.loads(files("memfit.schemas").joinpath("deepspeed.schema.json").read_text(encoding="utf-8"))


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config.

    Raises:
        ConfigCheckError: unreadable file, invalid JSON (with line and column), or not a JSON object.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigCheckError(f"{p}: cannot read the DeepSpeed config ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigCheckError(f"{p}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigCheckError(f"{p}: a DeepSpeed config must be a JSON object (got {type(data).__name__})")
    return data


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _schema_findings(cfg: dict[str, Any]) -> Iterator[Finding]:
    import jsonschema  # light, but only needed here

    validator = jsonschema.Draft202012Validator(deepspeed_schema())
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if {"then", "not"} & set(map(str, err.schema_path)):
            continue  # combinations: reported below with a clearer message
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(known)):
                close = difflib.get_close_matches(extra, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else " (DeepSpeed ignores it silently)"
                yield Finding(severity="error", key=_dotted([*err.absolute_path, extra]),
                              message=f"unknown key{hint}")
            continue
        yield Finding(severity="error", key=_dotted(err.absolute_path), message=err.message)


def _device(block: Any) -> str:
    return block.get("device", "none") if isinstance(block, dict) else "none"


def _combination_findings(cfg: dict[str, Any]) -> Iterator[Finding]:
    zero = cfg.get("zero_optimization") if isinstance(cfg.get("zero_optimization"), dict) else {}
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
        if _device(block) == "nvme" and not block.get("nvme_path"):
            yield Finding(severity="error", key=f"zero_optimization.{name}.nvme_path",
                          message="device nvme needs nvme_path (a directory on a local NVMe drive)")
    enabled = [k for k in ("fp16", "bf16") if isinstance(cfg.get(k), dict) and cfg[k].get("enabled") is True]
    if len(enabled) == 2:
        yield Finding(severity="error", key="fp16.enabled",
                      message="fp16 and bf16 are both enabled: keep one (bf16 on Ampere or newer)")


def _batch_findings(cfg: dict[str, Any], world: int | None) -> Iterator[Finding]:
    tbs, micro, accum = (cfg.get(k) for k in
                         ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (tbs, micro, accum)):
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


def _auto_paths(node: Any, path: tuple = ()) -> Iterator[str]:
    if node == "auto":
        yield _dotted(path)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _auto_paths(v, (*path, k))


def strategy_from_config(cfg: dict[str, Any], plan: Plan) -> Strategy:
    """The memfit Strategy a DeepSpeed config amounts to, for the plan's memory estimate.

    Method comes from `plan.training.method` ("full" when auto); gradient checkpointing from the plan
    (the JSON does not carry the HF switch); micro-batch from the config, else the plan, else 1.

    Raises:
        ConfigCheckError: the stage or offload devices are not valid values.
    """
    t = plan.training
    zero = cfg.get("zero_optimization") if isinstance(cfg.get("zero_optimization"), dict) else {}
    micro = cfg.get("train_micro_batch_size_per_gpu")
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1:
        micro = t.micro_batch_size if isinstance(t.micro_batch_size, int) else 1
    stage = zero.get("stage", 0)
    try:
        return Strategy(method="full" if t.method == "auto" else t.method, zero_stage=stage,
                        offload_optimizer=_device(zero.get("offload_optimizer")),
                        offload_param=_device(zero.get("offload_param")) if stage == 3 else "none",
                        gradient_checkpointing=t.gradient_checkpointing is True, micro_batch_size=micro,
                        zero_knobs=knobs_from_config(zero))
    except ValueError as exc:
        raise ConfigCheckError(f"zero_optimization: cannot read a strategy from this config ({exc})") from None


# The config keys that size DeepSpeed's buffers (deepspeed/runtime/zero/config.py aliases) -> ZeroKnobs.
_KNOB_KEYS = {"reduce_bucket_size": "reduce_bucket_size", "stage3_prefetch_bucket_size": "prefetch_bucket_size",
              "stage3_param_persistence_threshold": "param_persistence_threshold",
              "stage3_max_live_parameters": "max_live_parameters", "stage3_max_reuse_distance": "max_reuse_distance",
              "sub_group_size": "sub_group_size", "overlap_comm": "overlap_comm",
              "contiguous_gradients": "contiguous_gradients"}
# DeepSpeed's own defaults for what a config leaves out (zero/config.py DeepSpeedZeroConfig); "auto" is
# filled by the HF Trainer from the hidden size, the rule memfit writes, so it stays None here.
_DS_DEFAULTS = {"reduce_bucket_size": DS_REDUCE_BUCKET, "prefetch_bucket_size": DS_PREFETCH_BUCKET,
                "param_persistence_threshold": DS_PERSISTENCE, "max_live_parameters": MAX_LIVE_PARAMETERS,
                "max_reuse_distance": MAX_REUSE_DISTANCE, "sub_group_size": SUB_GROUP_SIZE,
                "contiguous_gradients": True}


def knobs_from_config(zero: dict[str, Any]) -> ZeroKnobs:
    """The buffer-sizing knobs of a zero_optimization block: its values, DeepSpeed's defaults for the
    keys it leaves out, None for "auto" (the HF Trainer fills those from the hidden size).

    overlap_comm left out follows DeepSpeed (zero/config.py overlap_comm_valid: on for stage 3 only).
    """
    out: dict[str, Any] = {}
    for key, name in _KNOB_KEYS.items():
        value = zero.get(key, _DS_DEFAULTS.get(name))
        if isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = bool(value) if name in ("overlap_comm", "contiguous_gradients") else int(value)
    if "overlap_comm" not in zero:
        out["overlap_comm"] = zero.get("stage", 0) == 3
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
    found = [*_schema_findings(cfg), *_combination_findings(cfg), *_batch_findings(cfg, world)]
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


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    config: str
    findings: list[dict[str, Any]]
    strategy: Optional[str] = None
    gpu_peak_gib: Optional[float] = None
    host_peak_gib: Optional[float] = None
    gpu_fits: Optional[bool] = None
    host_fits: Optional[bool] = None

    @property
    def ok(self) -> bool:
        return not any(f["severity"] == "error" for f in self.findings) and self.gpu_fits is not False \
            and self.host_fits is not False


def check(config_path: str | Path, plan_path: str | Path | None = None) -> CheckResult:
    """Review an existing DeepSpeed config; with a plan, also estimate whether it fits the hardware.

    Raises:
        ConfigCheckError: unreadable JSON. PlanError / ModelNotFoundError: a bad plan.
    """
    from ..deepspeed.check import check_config, load_config, strategy_from_config

    cfg = load_config(config_path)
    plan = load_plan(plan_path) if plan_path else None
    findings = check_config(cfg, plan, source=str(config_path))
    out: dict[str, Any] = {"config": str(config_path), "findings": [f.model_dump() for f in findings]}
    if plan is not None and not any(f.severity == "error" for f in findings):
        strategy = strategy_from_config(cfg, plan)
        e = estimate_memory(plan, resolve_model(plan.model, plan.base_dir), strategy)
        out.update(strategy=strategy.key, gpu_peak_gib=round(e.gpu_peak_gib, 2), host_peak_gib=round(e.host_peak_gib, 2),
                   gpu_fits=e.gpu_fits, host_fits=e.host_fits)
    return CheckResult(**out)
