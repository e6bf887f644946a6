"""Typed results of `advise` and `estimate` (what the CLI renders and schemas/advice.schema.json pins)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ..plan.strategy import Strategy


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSummary(_Out):
    name: str
    model_type: str
    source: str
    total_params: int = Field(description="parameters of the model that trains (lm_head included unless tied)")
    trainable_params: int = Field(description="trainable parameters under the top recommendation's method")
    trainable_params_by_method: dict[str, int]
    largest_layer_params: int
    active_params: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    frozen_extra_params: int = Field(0, description="parameters outside the text model (a multimodal wrapper's "
                                                    "vision tower and projector), held as frozen weights")
    counted_by: str = Field("closed-form", description="closed-form | meta-device (engine/model/meta.py)")


class HardwareSummary(_Out):
    gpu_memory_gib: float
    gpus_per_node: int
    nodes: int
    host_memory_gib: float
    nvme_gib: float
    gpu_headroom: float = Field(0.2, description="fraction of GPU capacity the policy keeps free (policy.gpu_headroom)")
    host_headroom: float = Field(0.25, description="fraction of host RAM the policy keeps free (policy.host_headroom)")
    readings: list[str] = Field(description="how each size in the plan was read, e.g. '744GB read as 692.9 GiB'")


class Explanation(_Out):
    rule: str
    topic: str
    effect: str
    score: float
    message: str
    advice: Optional[str] = None
    source: str


class GpuBand(_Out):
    """The error band of a GPU peak: the estimate times split-conformal quantiles of measured/estimated
    on published runs of its family memfit was not fitted on (engine/memory/band.json, bench/band.py)."""

    low: float = Field(description="GiB: estimate x the low residual ratio (quantile 1 - level)")
    high: float = Field(description="GiB: estimate x the high residual ratio (quantile `level`)")
    n: int = Field(description="calibration runs behind the quantiles")
    pool: str = Field(description="the runs used: the family, its sharding group, its kind (offload / resident) or 'all'")
    level: float = Field(description="coverage of the upper end (policy.band_quantile)")


class MemoryReport(_Out):
    gpu_peak_gib: float
    gpu_peak_phase: str
    host_peak_gib: float
    host_peak_phase: str
    nvme_gib: float
    gpu_fits: bool
    host_fits: bool
    breakdown: dict[str, dict[str, float]]
    gpu_band: Optional[GpuBand] = Field(None, description="error band of gpu_peak_gib from the calibration residuals")


class CandidateResult(_Out):
    rank: int
    key: str
    feasible: bool
    method: str
    zero_stage: int
    offload_optimizer: str
    offload_param: str
    gradient_checkpointing: bool
    micro_batch_size: int
    gradient_accumulation_steps: int
    pin_memory: bool
    gather_16bit_on_save: bool
    score: float
    memory: MemoryReport
    rejected_because: list[str]
    explanation: list[Explanation]
    settings: dict[str, Any]
    notes: list[str]
    deepspeed_config: dict[str, Any]
    launch: dict[str, str]
    # PyTorch FSDP candidates (training.sharding): the engine, its shape, and what runs it.
    sharding: str = "deepspeed"
    fsdp: dict[str, Any] = Field(default_factory=dict, description="FSDP version and sharding strategy; {} for DeepSpeed")
    accelerate_config: dict[str, Any] = Field(default_factory=dict, description="accelerate FSDP config file; {} for DeepSpeed")
    framework_keys: dict[str, Any] = Field(default_factory=dict, description="torchtune overrides, LLaMA-Factory and axolotl FSDP keys")


    def to_strategy(self) -> Strategy:
        """The Strategy this candidate stands for."""
        from ..plan.strategy import Strategy

        return Strategy(method=self.method, zero_stage=self.zero_stage, offload_optimizer=self.offload_optimizer,
                        offload_param=self.offload_param, gradient_checkpointing=self.gradient_checkpointing,
                        micro_batch_size=self.micro_batch_size, pin_memory=self.pin_memory,
                        gather_16bit_on_save=self.gather_16bit_on_save, **({"sharding": "fsdp", **self.fsdp}
                                                                             if self.sharding == "fsdp" else {}))


class Advice(_Out):
    memfit_version: str
    plan: str
    model: ModelSummary
    hardware: HardwareSummary
    evaluator: str
    rules_loaded: int
    measured: list[str] = Field(description="what the logs of real runs contributed, and what they could not")
    summary: str
    what_it_would_take: list[str]
    candidates: list[CandidateResult]

    @property
    def best(self) -> Optional[CandidateResult]:
        return next((c for c in self.candidates if c.feasible), None)


class EstimateResult(_Out):
    plan: str
    model: ModelSummary
    strategy: dict[str, Any]
    gpu_peak_gib: float
    host_peak_gib: float
    nvme_gib: float
    gpu_fits: bool
    host_fits: bool
    nvme_fits: bool
    gpu_capacity_gib: float
    host_capacity_gib: float
    gpu_peak_phase: str
    host_peak_phase: str
    breakdown: dict[str, dict[str, float]]
    max_micro_batch_size: Optional[int] = Field(description="largest micro-batch on which no reject rule fires, at seq_len")
    max_seq_len: Optional[int] = Field(description="longest sequence on which no reject rule fires, at the micro-batch")
    deepspeed_estimate: Optional[dict[str, float]] = Field(
        description="DeepSpeed's own estimator for the same strategy (model states only, x1.5 host buffer)")
    gpu_band: Optional[GpuBand] = Field(None, description="error band of gpu_peak_gib from the calibration residuals")
