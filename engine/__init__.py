"""memfit.engine: the library behind `advise`.

    from memfit.engine import load_plan, advise, estimate
    advice = advise(load_plan("plan.yaml"))
    print(advice.best.key, advice.best.deepspeed_config)
"""
from .advice.advise import advise, estimate
from .core.errors import (ConfigCheckError, LogError, MemfitError, ModelNotFoundError, ModelSpecError, OutputError,
                          OutputExistsError, PlanError, PreflightError, RuleError, StoreError)
from .plan.schema import Plan
from .plan.load import load_plan, plan_from_dict
from .advice.results import Advice, CandidateResult, EstimateResult
from .plan.strategy import Strategy

__all__ = [
    "advise", "estimate", "load_plan", "plan_from_dict", "Plan", "Strategy",
    "Advice", "CandidateResult", "EstimateResult",
    "MemfitError", "PlanError", "ModelNotFoundError", "ModelSpecError", "RuleError", "LogError",
    "ConfigCheckError", "OutputError", "OutputExistsError", "StoreError", "PreflightError",
]
