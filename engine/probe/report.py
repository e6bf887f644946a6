"""`advise probe`'s report: a probe trace beside the analytic per-layer activation term."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..memory.activations import layer_bytes, stored_layer_bytes
from ..model.spec import plan_model
from ..plan.schema import Plan
from .probe import Progress, probe_plan


class ProbeReport(BaseModel):
    """A probe trace beside the analytic per-layer activation term for the same plan, like for like:
    the formula is evaluated with the traced checkpointing, precision and method (QLoRA is traced as
    LoRA on bf16 weights, so its formula is LoRA's too)."""
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    model: str
    method: str
    seq_len: int
    micro_batch: int
    num_layers: int
    gradient_checkpointing: bool
    formula_layer_bytes: float
    result: Any  # engine.probe.ProbeResult
    # training.compile without checkpointing: one layer's saved bytes under inductor's partition, traced
    # (engine/probe/compiled.py) and by memfit's compiled terms; None otherwise
    compiled_traced_layer_bytes: float | None = None
    compiled_formula_layer_bytes: float | None = None


def probe_report(plan: Plan, progress: Progress | None = None) -> ProbeReport:
    """Trace the plan's step (`probe_plan`) and compute the formula memfit uses for the same layer.

    'auto' choices are traced as probe_plan traces them: full fine-tuning, no checkpointing,
    micro-batch 1.
    """
    t = plan.training
    facts = plan_model(plan)
    mb = t.micro_batch_size if t.micro_batch_size != "auto" else 1
    method = t.method if t.method != "auto" else "full"
    ckpt = t.gradient_checkpointing if t.gradient_checkpointing != "auto" else False
    formula = stored_layer_bytes(facts, t.seq_len, mb, t.attention, "lora" if method == "qlora" else method, ckpt,
                                 t.precision, lora_rank=t.lora.rank, lora_targets=t.lora.target_modules,
                                 lora_dropout=t.lora.dropout, checkpoint_policy=t.checkpoint_policy,
                                 dora=t.lora.use_dora)
    compiled: dict[str, float] = {}
    if t.compile and not ckpt:
        # The eager trace above is the step without torch.compile; the compiled layer is traced apart
        # (AOTAutograd with inductor's partitioner, micro-batch 1: what a layer saves is per token).
        from .compiled import saved_per_token

        lora_method = "lora" if method == "qlora" else method
        per_token = saved_per_token(facts.config, t.seq_len, method=lora_method, attention=t.attention,
                                    lora_rank=t.lora.rank, lora_targets=t.lora.target_modules,
                                    lora_dropout=t.lora.dropout).per_layer
        dtype_bytes = 4.0 if t.precision == "fp32" else 2.0
        compiled = {"compiled_traced_layer_bytes": per_token * t.seq_len * mb,
                    "compiled_formula_layer_bytes": layer_bytes(
                        facts, t.seq_len, mb, t.attention, dtype_bytes, method=lora_method, lora_rank=t.lora.rank,
                        lora_targets=t.lora.target_modules, lora_dropout=t.lora.dropout, compiled=True)}
    return ProbeReport(model=facts.name, method=method, seq_len=t.seq_len, micro_batch=mb,
                       num_layers=facts.num_layers, gradient_checkpointing=ckpt, formula_layer_bytes=formula,
                       result=probe_plan(plan, progress=progress), **compiled)
