"""The parts of a record that come from memfit itself: the plan as a self-contained mapping, memfit's
estimate in the shape bench/gpu_calibration.py records it, and the versions of the software involved."""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

from ..memory.estimate import estimate_memory
from ..plan.schema import Plan
from ..plan.strategy import Strategy

if TYPE_CHECKING:
    from ..model.spec import ModelSpec


def plan_dict(plan: Plan, model: ModelSpec) -> dict[str, Any]:
    """The plan as a self-contained mapping: a model read from a path is inlined (the path may not exist
    where the record is read), and rule/log paths relative to the plan file are dropped."""
    data = plan.model_dump(mode="json")
    data.update(rules=[], measured=[])
    if isinstance(plan.model, str) and model.source in ("path", "hf-cache"):
        data["model"] = {**dict(model.config), "_name_or_path": plan.model}
    return data


def estimate_dict(plan: Plan, model: ModelSpec, strategy: Strategy) -> dict[str, Any]:
    """memfit's estimate in the shape bench/gpu_calibration.py records it."""
    e = estimate_memory(plan, model, strategy)
    return {"gpu_peak_gib": round(e.gpu_peak_gib, 4), "host_peak_gib": round(e.host_peak_gib, 4),
            "gpu_peak_phase": e.gpu_peak_phase, "breakdown": {"gpu": e.gpu.as_dict(), "host": e.host.as_dict()}}


def versions() -> dict[str, str]:
    """memfit's and Python's versions, and those of torch/transformers/deepspeed where already imported."""
    import sys

    found = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        found["memfit"] = version("memfit")
    except Exception:  # an uninstalled checkout: the version is unknown, not an error
        pass
    for name in ("torch", "transformers", "deepspeed", "peft", "accelerate"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__version__", None):
            found[name] = str(mod.__version__)
    return found
