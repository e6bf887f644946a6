"""What a config check and a verify run report, one shape for DeepSpeed (engine/deepspeed/check.py,
verify.py) and FSDP (engine/fsdp/check.py, verify.py), so one renderer serves both. They live in the
bottom layer because the DeepSpeed and FSDP packages are siblings that may not import each other."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict


class Finding(BaseModel):
    """One remark about a config: severity, the dotted key it is about, and what to do."""

    model_config = ConfigDict(frozen=True)

    severity: Literal["error", "warning", "info"]
    key: str
    message: str


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    config: str
    findings: list[dict[str, Any]]
    rules: Optional[str] = None
    strategy: Optional[str] = None
    assumptions: list[str] = []
    gpu_peak_gib: Optional[float] = None
    host_peak_gib: Optional[float] = None
    gpu_budget_gib: Optional[float] = None
    host_budget_gib: Optional[float] = None
    gpu_fits: Optional[bool] = None
    host_fits: Optional[bool] = None
    rejected_by: list[str] = []  # reject rules of the plan's rule base that fire on the config as written

    @property
    def ok(self) -> bool:
        return not any(f["severity"] == "error" for f in self.findings) and not self.rejected_by


class VerifyResult(BaseModel):
    """The outcome of running one strategy's config for real."""

    model_config = ConfigDict(frozen=True)

    key: str
    passed: bool
    skipped: str | None = None
    losses: list[float] = []
    seconds: float = 0.0
    error: str | None = None
