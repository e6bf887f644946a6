"""Prove an FSDP strategy by running it: two real AdamW steps of a tiny model of the same family on CPU
with gloo, on 1 and 2 ranks (torch.distributed FSDP runs on CPU with gloo), one subprocess per rank
under a timeout, so a crash or hang cannot take the caller down.

What cannot run on CPU is reported as skipped with the reason: fp16 (no CPU gloo path for the
ShardedGradScaler run), QLoRA and 8-bit optimizers (bitsandbytes needs a GPU), FSDP1 CPU offload
(FlatParamHandle asks for the accelerator device even with device_id=cpu).
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Mapping, Sequence

from ..core.findings import VerifyResult

if TYPE_CHECKING:
    from ..plan.schema import Plan
    from ..plan.strategy import Strategy

_RESULT_PREFIX = "MEMFIT_RESULT "
_SEQ_LEN = 16


class FsdpVerifyResult(VerifyResult):
    """The outcome of running one FSDP strategy for real, and on how many ranks."""

    ranks: int = 1


def skip_reason(strategy: Strategy, plan: Plan) -> str | None:
    """Why a strategy cannot run on this CPU machine, or None."""
    if plan.training.precision == "fp16":
        return "fp16 needs a GPU (no gloo CPU path for fp16 gradient scaling)"
    if strategy.method == "qlora" or plan.training.optimizer == "adamw_8bit":
        return "bitsandbytes (QLoRA, 8-bit Adam) needs a GPU"
    if strategy.fsdp_version == 1 and strategy.offload_param == "cpu":
        return "FSDP1 CPU offload needs an accelerator device (FlatParamHandle)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _read_back(fh: IO[str]) -> str:
    """Everything written to a rank's temporary log file so far."""
    fh.seek(0)
    return fh.read()


def _launch(spec: dict[str, Any], ranks: int, timeout_s: float) -> tuple[list[float], str | None]:
    """Start every rank before waiting on any (they meet in init_process_group); each writes to its own
    temporary files, so a chatty rank cannot block on a full pipe while the others wait for it."""
    port, text = str(_free_port()), json.dumps(spec)
    with tempfile.TemporaryDirectory(prefix="memfit-fsdp-") as tmp:
        procs: list[subprocess.Popen[str]] = []
        logs: list[tuple[IO[str], IO[str]]] = []
        for rank in range(ranks):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(ranks),
                       LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ranks), HF_HUB_OFFLINE="1",
                       TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
            out, err = Path(tmp, f"{rank}.out").open("w+"), Path(tmp, f"{rank}.err").open("w+")
            logs.append((out, err))
            procs.append(subprocess.Popen([sys.executable, "-m", "memfit.engine.fsdp._worker"], stdin=subprocess.PIPE,
                                          stdout=out, stderr=err, text=True, env=env))
        for p in procs:
            assert p.stdin is not None  # stdin=PIPE above
            p.stdin.write(text)
            p.stdin.close()
        deadline = time.monotonic() + timeout_s
        try:
            for p in procs:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.wait()
            return [], f"timed out after {timeout_s:.0f} s"
        texts = [(_read_back(o), _read_back(e)) for o, e in logs]
        for o, e in logs:
            o.close()
            e.close()
    failed = [(p.returncode, err) for p, (_, err) in zip(procs, texts) if p.returncode != 0]
    if failed:
        code, stderr_text = failed[0]
        return [], f"exit code {code}\n" + "\n".join(stderr_text.strip().splitlines()[-12:])
    lines = [ln for ln in texts[0][0].splitlines() if ln.startswith(_RESULT_PREFIX)]
    return (json.loads(lines[-1][len(_RESULT_PREFIX):])["losses"] if lines else []), None


def verify_fsdp(plan: Plan, strategies: Sequence[Strategy], tiny_model_config: Mapping[str, Any], ranks: Sequence[int] = (1, 2),
                steps: int = 2, timeout_s: float = 300.0) -> list[FsdpVerifyResult]:
    """Run each FSDP strategy for `steps` optimizer steps on a tiny model, once per rank count.

    Args:
        plan: supplies precision, optimizer and the LoRA rank.
        strategies: FSDP strategies to prove.
        tiny_model_config: a shrunk config.json mapping with model_type (deepspeed.verify.tiny_config).
        ranks: process counts to run each strategy with (gloo, CPU).
        steps: optimizer steps per run.
        timeout_s: wall-clock limit per run.
    Returns:
        One result per strategy and rank count, in order; skipped ones carry the reason.
    """
    results = []
    for s in strategies:
        reason = skip_reason(s, plan)
        for n in ranks:
            key = f"{s.key} x{n} rank(s)"
            if reason:
                results.append(FsdpVerifyResult(key=key, passed=False, skipped=reason, ranks=n))
                continue
            spec = {"model_config": dict(tiny_model_config), "method": "full" if s.method == "full" else "lora",
                    "lora_rank": plan.training.lora.rank, "fsdp_version": s.fsdp_version,
                    "fsdp_sharding": "FULL_SHARD" if s.effective_fsdp_sharding == "HYBRID_SHARD" else s.effective_fsdp_sharding,
                    "offload": s.offload_param == "cpu", "gradient_checkpointing": s.gradient_checkpointing,
                    "precision": plan.training.precision, "steps": steps, "seq_len": _SEQ_LEN,
                    "micro_batch_size": min(s.micro_batch_size, 2)}
            start = time.monotonic()
            losses, error = _launch(spec, n, timeout_s)
            ok = error is None and len(losses) == steps and all(math.isfinite(x) for x in losses)
            results.append(FsdpVerifyResult(key=key, passed=ok, losses=losses, seconds=time.monotonic() - start,
                                            error=None if ok else (error or f"non-finite or missing losses: {losses}"),
                                            ranks=n))
    return results
