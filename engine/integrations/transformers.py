"""memfit inside an HF Trainer run: `Trainer(..., callbacks=[MemfitCallback()])`.

At train start it builds the run's plan (TrainingArguments, the model and its config, the DeepSpeed /
FSDP config, this machine's hardware), estimates it and, when it does not fit its headroom, warns or
raises (policy "warn" | "raise") before the first step. During the run it samples peak GPU memory
(torch.cuda, NVML) and the host RSS of the process tree; at the end, or when the run dies of an
uncaught exception (an OOM included), it writes one measurement record into the store (MEMFIT_STORE),
which calibrates later `advise` runs. transformers is imported here only.
"""
from __future__ import annotations

import logging
import statistics
import sys
import time
import uuid
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional

from transformers import TrainerCallback

from ..core.errors import MemfitError, PreflightError
from .preflight import Preflight, preflight, record_run
from .sampler import DEFAULT_INTERVAL_S, PeakSampler
from .trainer_plan import plan_from_trainer

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ..store.record import MeasurementRecord

log = logging.getLogger("memfit")
POLICIES = ("warn", "raise")
# Seconds between checkpoints of a live run's record: one small transaction each.
DEFAULT_CHECKPOINT_S = 30.0
_INCOMPLETE = ("the run has not reported its end: if this stays, it was killed (the kernel's OOM killer "
               "sends SIGKILL); peaks are those of the last checkpoint")


class MemfitWarning(UserWarning):
    """The run does not fit its memory budget (policy 'warn')."""


def _is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()  # CPU allocator failures are plain RuntimeErrors: "can't allocate memory"
    return "out of memory" in text or "can't allocate memory" in text


# transformers is not analysed (follow_imports = skip): its TrainerCallback reads as Any.
class MemfitCallback(TrainerCallback):  # type: ignore[misc]
    """Preflight at train start, peaks during the run, one measurement record at the end.

    Args:
        policy: "warn" (log and warn, keep training) or "raise" (PreflightError before the first step).
        hardware: a plan `hardware:` mapping instead of this machine's (e.g. the cluster's GPUs).
        seq_len: the training sequence length (default: TRL's max_length, else the longest example).
        policy_overrides: a plan `policy:` mapping (gpu_headroom, host_headroom).
        store: the store URL (default MEMFIT_STORE, else the user's data directory).
        record: write the measurement record (False: preflight only).
        history: calibrate the preflight from the store's records.
        sample_seconds: seconds between samples of NVML and host RSS.
        checkpoint_seconds: seconds between checkpoints of the record while the run lives (status
            "incomplete", replaced by the final record): a run killed by SIGKILL (the kernel's OOM killer)
            leaves its last checkpoint behind. 0: no checkpoints.
    """

    def __init__(self, policy: str = "warn", *, hardware: Optional[dict[str, Any]] = None,
                 seq_len: Optional[int] = None, policy_overrides: Optional[dict[str, Any]] = None, store: Optional[str] = None, record: bool = True,
                 history: bool = True, sample_seconds: float = DEFAULT_INTERVAL_S,
                 checkpoint_seconds: float = DEFAULT_CHECKPOINT_S) -> None:
        if policy not in POLICIES:
            raise ValueError(f"MemfitCallback: policy must be one of {POLICIES} (got {policy!r})")
        self.policy, self.hardware, self.seq_len = policy, hardware, seq_len
        self.policy_overrides, self.store, self.record, self.history = policy_overrides, store, record, history
        self.sample_seconds, self.checkpoint_seconds = sample_seconds, checkpoint_seconds
        self.run_id = ""  # one per trainer.train(): its checkpoints and final record share one row
        self.result: Optional[Preflight] = None   # the preflight verdict, once the run started
        self.record_id: Optional[int] = None      # the record's id in the store, once written
        self._sampler: Optional[PeakSampler] = None
        self._case, self._step_start = "", 0.0
        self._steps: list[float] = []
        self._prev_hook: Optional[Callable[..., Any]] = None
        self._main = True

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, train_dataloader: Any = None, **kwargs: Any) -> TrainerControl:
        dataset = getattr(train_dataloader, "dataset", None)
        try:
            plan, gpu_known, notes = plan_from_trainer(args, model, dataset, hardware=self.hardware,
                                                       seq_len=self.seq_len, policy=self.policy_overrides)
            self.result = preflight(plan, gpu_known, tuple(notes), history=self.history)
        except MemfitError as exc:
            if self.policy == "raise":
                raise
            # memfit cannot estimate this run (an architecture it does not count...): never stop training for that
            warnings.warn(f"memfit preflight skipped, nothing will be recorded: {exc}", MemfitWarning, stacklevel=2)
            return control
        self._main, self._case = bool(state.is_world_process_zero), str(getattr(args, "output_dir", "") or "")
        for note in self.result.notes:
            log.info("memfit: %s", note)
        if self.result.fits:
            log.info("%s", self.result.message)
        elif self.policy == "raise":
            raise PreflightError(self.result.message + " (MemfitCallback policy 'raise': stopped before the first step)")
        else:
            log.warning("%s", self.result.message)
            warnings.warn(self.result.message, MemfitWarning, stacklevel=2)
        if self.record and self._main:
            self.run_id = uuid.uuid4().hex
            sampler = self._sampler = PeakSampler(self.sample_seconds)
            sampler.start()
            self._prev_hook, sys.excepthook = sys.excepthook, self._excepthook
            if self.checkpoint_seconds:
                self._write(sampler, "incomplete", _INCOMPLETE)
                sampler.every(self.checkpoint_seconds, lambda: self._write(sampler, "incomplete", _INCOMPLETE))
        return control

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        self._step_start = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._steps.append(time.perf_counter() - self._step_start)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._finish("ok", None)

    def record_failure(self, exc: BaseException) -> Optional[int]:
        """Write the record of a run that died of `exc` (status 'oom' for an out-of-memory error).

        Called by the exception hook for uncaught exceptions; call it yourself around trainer.train()
        when your script catches exceptions. Returns the record's id, or None if nothing was written.
        """
        return self._finish("oom" if _is_oom(exc) else "error", f"{type(exc).__name__}: {exc}"[:500])

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: Optional[TracebackType]) -> None:
        try:
            self.record_failure(value)
        finally:
            (self._prev_hook or sys.__excepthook__)(kind, value, tb)

    def _write(self, sampler: PeakSampler, status: str, error: Optional[str]) -> Optional[MeasurementRecord]:
        """Write (or replace) this run's record; None when the store refused it (logged, never raised)."""
        steps = list(self._steps)  # the sampling thread checkpoints while the trainer appends
        step = statistics.median(steps[1:] or steps) if steps else None  # the first step warms up
        if self.result is None:  # callers write only after the preflight ran
            return None
        try:
            self.record_id, rec = record_run(self.result, sampler.peaks(), status=status, error=error,
                                             case=self._case, device=sampler.device(), step_seconds=step,
                                             notes=tuple(sampler.notes), run_id=self.run_id, url=self.store)
        except MemfitError as exc:  # an unwritable store must not turn a finished run into a failed one
            log.warning("memfit: measurement record not written: %s", exc)
            return None
        return rec

    def _finish(self, status: str, error: Optional[str]) -> Optional[int]:
        sampler, self._sampler = self._sampler, None
        if sampler is None or self.result is None:
            return None  # not recording, or already written
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_hook or sys.__excepthook__
        sampler.stop()
        rec = self._write(sampler, status, error)
        if rec is not None:
            log.info("memfit: measurement record #%s written (%s, GPU peak %s GiB, host RSS %.2f GiB)", self.record_id,
                     status, f"{rec.gpu_peak_gib:.2f}" if rec.gpu_peak_gib else "not read", rec.host_peak_gib or 0.0)
        return self.record_id
