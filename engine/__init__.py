"""memfit.engine: the library behind `advise`.

    from memfit.engine import load_plan, advise, estimate
    advice = advise(load_plan("plan.yaml"))
    print(advice.best.key, advice.best.deepspeed_config)
"""
from .advise import advise, estimate
from .errors import LogError, MemfitError, ModelNotFoundError, PlanError, RuleError
from .plan import Plan, load_plan, plan_from_dict
from .results import Advice, CandidateResult, EstimateResult
from .strategy import Strategy

__all__ = [
    "advise", "estimate", "load_plan", "plan_from_dict", "Plan", "Strategy",
    "Advice", "CandidateResult", "EstimateResult",
    "MemfitError", "PlanError", "ModelNotFoundError", "RuleError", "LogError",
]
