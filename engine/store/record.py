"""One measurement record: what a real training run used, beside what memfit estimated for it.

The fields are the rows of bench/gpu_calibration.py results (bench/measured/*.json: `status`,
`max_memory_allocated`, `max_memory_reserved`, `nvml_used_bytes`, `host_rss_bytes` in bytes, `step_seconds`,
`error`, `estimate`, `plan`), plus what a store needs to match a record to a later plan: the strategy
(its key and fields), a fingerprint of the model's architecture, versions, and where the record came from.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.errors import StoreError
from ..core.units import GIB

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

# bench/gpu_calibration.py's statuses, plus "incomplete": a run that stopped without reporting its end
# (killed: the kernel's OOM killer sends SIGKILL, which nothing can catch); its peaks are those of its
# last checkpoint.
Status = Literal["ok", "oom", "error", "skipped", "incomplete"]


class MeasurementRecord(BaseModel):
    """A measured run. Byte fields are bytes; None means "not read" (and `notes` says why)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    case: str = Field("", description="a name for the run (bench case name, output_dir, log file)")
    status: Status = "ok"
    plan: dict[str, Any] = Field(..., description="the memfit plan of the run (plan_from_dict accepts it)")
    strategy_key: str = Field(..., description="Strategy.key of the run, e.g. 'lora/z0/gc/mb4'")
    strategy: dict[str, Any] = Field(..., description="Strategy fields of the run")
    model_key: str = Field("", description="fingerprint of the model architecture (model_fingerprint)")
    max_memory_allocated: Optional[int] = None   # torch.cuda.max_memory_allocated()
    max_memory_reserved: Optional[int] = None    # torch.cuda.max_memory_reserved()
    nvml_used_bytes: Optional[int] = None        # peak NVML used memory of the device (CUDA context included)
    host_rss_bytes: Optional[int] = None         # peak RSS of the training process tree
    step_seconds: Optional[float] = None
    error: Optional[str] = None
    estimate: Optional[dict[str, Any]] = Field(None, description="memfit's estimate when the run started")
    date: str = Field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    device_name: Optional[str] = None
    gpu_memory_bytes: Optional[int] = None
    versions: dict[str, str] = Field(default_factory=dict)
    source: str = Field("", description="callback | log:FILE | bench:FILE | import:FILE")
    notes: list[str] = Field(default_factory=list, description="readings skipped, and why")
    run_id: str = Field("", description="set by a run that checkpoints its record: each write replaces the last")

    @property
    def gpu_peak_gib(self) -> Optional[float]:
        """The largest GPU reading, in GiB, as engine/evidence/match.py takes the largest a log shows.

        NVML used memory includes the CUDA context that memfit's estimate also counts; torch's reserved
        and allocated peaks do not, so they serve only where NVML was not read.
        """
        values = [v for v in (self.nvml_used_bytes, self.max_memory_reserved, self.max_memory_allocated) if v]
        return max(values) / GIB if values else None

    @property
    def host_peak_gib(self) -> Optional[float]:
        return self.host_rss_bytes / GIB if self.host_rss_bytes else None

    @property
    def uid(self) -> str:
        """Content hash: the same run imported twice is stored once. The date is left out: a record read
        from a file without one is dated when read, and must still match itself on a second import.
        A record with a run_id is identified by it: the run's checkpoints and its final record are one row."""
        if self.run_id:
            return hashlib.sha256(self.run_id.encode()).hexdigest()[:32]
        body = json.dumps(self.model_dump(mode="json", exclude={"date"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:32]

    @property
    def family(self) -> str:
        s = self.strategy
        return f"{s.get('method')}/z{s.get('zero_stage')}/opt={s.get('offload_optimizer')}/param={s.get('offload_param')}"


def model_fingerprint(model: ModelSpec) -> str:
    """A short hash of the counted architecture (ModelSpec), so a plan naming "Qwen/Qwen2.5-7B" and a run
    that saw the same config inline match, while two models of different shapes never do."""
    parts = (model.model_type, model.total_params, model.num_layers, model.hidden_size, model.intermediate_size,
             model.num_attention_heads, model.num_kv_heads, model.vocab_size, model.tie_word_embeddings,
             model.num_experts)
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def record_from_json(data: Any, where: str) -> MeasurementRecord:
    """Check one record mapping.

    Args:
        data: a decoded JSON object.
        where: "FILE:LINE" for messages.
    Returns:
        The MeasurementRecord.
    Raises:
        StoreError: naming `where` and each bad key.
    """
    if not isinstance(data, dict):
        raise StoreError(f"{where}: a measurement record must be a JSON object (got {type(data).__name__})")
    try:
        return MeasurementRecord.model_validate(data)
    except ValidationError as exc:
        raise StoreError([f"{where}: {'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
                          f"{e['msg']}" for e in exc.errors()]) from None
