"""`advise probe`'s report: a probe trace beside the analytic per-layer activation term."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..memory.activations import layer_bytes
from ..model.spec import plan_model
from ..plan.schema import Plan
from .probe import probe_plan


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
    from ..memory.activations import layer_bytes
    from ..probe.probe import probe_plan

    t = plan.training
    facts = plan_model(plan)
    mb = t.micro_batch_size if t.micro_batch_size != "auto" else 1
    method = t.method if t.method != "auto" else "full"
    formula = layer_bytes(facts, t.seq_len, mb, t.attention, method=method, lora_rank=t.lora.rank,
                          lora_targets=t.lora.target_modules, lora_dropout=t.lora.dropout)
    return ProbeReport(model=facts.name, method=method, seq_len=t.seq_len, micro_batch=mb,
                       num_layers=facts.num_layers, formula_layer_bytes=formula,
                       result=probe_plan(plan, progress=progress))
