"""`advise verify`: advise a plan, then run its top distinct DeepSpeed shapes for two real steps."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..deepspeed.verify import verify
from ..model.spec import plan_model
from ..plan.load import load_plan
from ..plan.strategy import Strategy
from .advise import advise

if TYPE_CHECKING:
    from ..core.findings import VerifyResult
    from ..fsdp.verify import FsdpVerifyResult
    from .results import Advice


def verify_plan(plan_path: str | Path, top: int = 3, timeout_s: float = 300.0,
                progress: Callable[[int, int, str], None] | None = None
                ) -> tuple[Advice, list[VerifyResult | FsdpVerifyResult]]:
    """Run the top feasible strategies' DeepSpeed configs for two real steps on a tiny model of the
    plan's architecture (CPU, gloo). Returns (advice, [VerifyResult]).

    progress: called with (done, total, label) before each config (see deepspeed.verify.verify)."""
    from ..deepspeed.verify import verify

    plan = load_plan(plan_path)
    advice = advise(plan)
    model = plan_model(plan)
    # Distinct DeepSpeed shapes first: the top candidates often differ only in micro-batch or pinning,
    # and running the same ZeRO/offload shape twice proves little more.
    chosen: list[Strategy] = []
    shapes: set[tuple[object, ...]] = set()
    for c in advice.candidates:
        shape = (c.method, c.zero_stage, c.offload_optimizer, c.offload_param, c.sharding, str(c.fsdp))
        if c.feasible and shape not in shapes and len(chosen) < top:
            shapes.add(shape)
            chosen.append(c.to_strategy())
    ds = [s for s in chosen if s.sharding == "deepspeed"]
    fs = [s for s in chosen if s.sharding == "fsdp"]
    results: list[VerifyResult | FsdpVerifyResult] = []
    results += verify(plan, ds, dict(model.config), timeout_s=timeout_s, progress=progress) if ds else []
    if fs:  # PyTorch FSDP on CPU with gloo, 1 and 2 ranks (engine/fsdp/verify.py)
        from ..deepspeed.verify import tiny_config
        from ..fsdp.verify import verify_fsdp

        results += verify_fsdp(plan, fs, tiny_config(dict(model.config)), timeout_s=timeout_s)
    return advice, results
