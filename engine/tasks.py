"""Library calls behind `advise check`, `advise verify` and `advise llamafactory` (the CLI only
parses arguments and renders)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict

from .advise import advise, estimate_strategy
from .errors import PlanError
from .model_facts import resolve_model
from .plan import Plan, load_plan, plan_from_dict


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
    from .dscheck import check_config, load_config, strategy_from_config

    cfg = load_config(config_path)
    plan = load_plan(plan_path) if plan_path else None
    findings = check_config(cfg, plan, source=str(config_path))
    out: dict[str, Any] = {"config": str(config_path), "findings": [f.model_dump() for f in findings]}
    if plan is not None and not any(f.severity == "error" for f in findings):
        strategy = strategy_from_config(cfg, plan)
        e = estimate_strategy(plan, resolve_model(plan.model, plan.base_dir), strategy)
        out.update(strategy=strategy.key, gpu_peak_gib=round(e.gpu_peak_gib, 2), host_peak_gib=round(e.host_peak_gib, 2),
                   gpu_fits=e.gpu_fits, host_fits=e.host_fits)
    return CheckResult(**out)


def verify_plan(plan_path: str | Path, top: int = 3, timeout_s: float = 300.0):
    """Run the top feasible strategies' DeepSpeed configs for two real steps on a tiny model of the
    plan's architecture (CPU, gloo). Returns (advice, [VerifyResult])."""
    from .verify import verify

    plan = load_plan(plan_path)
    advice = advise(plan)
    model = resolve_model(plan.model, plan.base_dir)
    # Distinct DeepSpeed shapes first: the top candidates often differ only in micro-batch or pinning,
    # and running the same ZeRO/offload shape twice proves little more.
    chosen, shapes = [], set()
    for c in advice.candidates:
        shape = (c.method, c.zero_stage, c.offload_optimizer, c.offload_param)
        if c.feasible and shape not in shapes and len(chosen) < top:
            shapes.add(shape)
            chosen.append(c.to_strategy())
    return advice, verify(plan, chosen, dict(model.config), timeout_s=timeout_s)


def plan_from_llamafactory_file(lf_path: str | Path, hardware_path: str | Path) -> Plan:
    """A memfit plan from a LLaMA-Factory training YAML plus a file holding a `hardware:` mapping
    (a memfit plan or just the hardware section). Strategy choices stay open for the search."""
    from .llamafactory import plan_from_llamafactory

    try:
        hw_doc = yaml.safe_load(Path(hardware_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{hardware_path}: cannot read the hardware ({exc})") from None
    hardware = hw_doc.get("hardware", hw_doc) if isinstance(hw_doc, dict) else None
    if not isinstance(hardware, dict):
        raise PlanError(f"{hardware_path}: hardware: expected a mapping (gpu_memory, gpus_per_node, host_memory)")
    data = plan_from_llamafactory(lf_path, hardware, pin_strategy=False)
    return plan_from_dict(data, str(lf_path), Path(lf_path).parent)


def llamafactory_files(lf_path: str | Path, plan: Plan, advice) -> dict[str, str]:
    """ds_config.json (HF flavor, as LLaMA-Factory's trainer fills "auto") and the corrected lf.yaml."""
    import json

    from .llamafactory import llamafactory_yaml
    from .outputs import hf_config

    best = advice.best
    if best is None:
        return {}
    return {"ds_config.json": json.dumps(hf_config(best, plan), indent=2) + "\n",
            "lf.yaml": llamafactory_yaml(plan, best.to_strategy(), "ds_config.json", original=lf_path)}


class ProbeReport(BaseModel):
    """A probe trace beside the analytic per-layer activation term for the same plan."""
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    model: str
    method: str
    seq_len: int
    micro_batch: int
    num_layers: int
    formula_layer_bytes: float
    result: Any  # engine.probe.ProbeResult


def probe_report(plan: Plan, progress=None) -> ProbeReport:
    """Trace the plan's step (`probe_plan`) and compute the formula memfit uses for the same layer.

    'auto' choices are traced as probe_plan traces them: full fine-tuning, micro-batch 1.
    """
    from .activations import layer_bytes
    from .probe import probe_plan

    t = plan.training
    facts = resolve_model(plan.model, plan.base_dir)
    mb = t.micro_batch_size if t.micro_batch_size != "auto" else 1
    method = t.method if t.method != "auto" else "full"
    formula = layer_bytes(facts, t.seq_len, mb, t.attention, method=method, lora_rank=t.lora.rank,
                          lora_targets=t.lora.target_modules, lora_dropout=t.lora.dropout)
    return ProbeReport(model=facts.name, method=method, seq_len=t.seq_len, micro_batch=mb,
                       num_layers=facts.num_layers, formula_layer_bytes=formula,
                       result=probe_plan(plan, progress=progress))
