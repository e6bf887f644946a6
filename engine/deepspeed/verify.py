"""Prove an emitted DeepSpeed config by running it: two real steps on a tiny model of the same family.

Each config runs in its own subprocess (`python -m memfit.engine.deepspeed._worker`) on CPU with gloo and
world size 1 (sources.md §5), under a timeout, so a DeepSpeed crash or hang cannot take the caller down.
What cannot run on CPU is reported as skipped with the reason: fp16 (DeepSpeed refuses it on CPU),
QLoRA and 8-bit optimizers (bitsandbytes needs a GPU), NVMe offload (needs libaio and a real drive).
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence


from ..core.findings import VerifyResult
from .config import deepspeed_config
from ..plan.schema import Plan
from ..plan.strategy import Strategy

# The tiny model: small enough for two steps in a few seconds on one CPU core, big enough that heads,
# KV groups, MLP and embeddings all have their real shapes (hidden = heads x head_dim = 4 x 16).
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512}
# Keys that would not survive the shrink: per-layer lists, dtype/quantisation of the real checkpoint,
# remote code, token ids beyond the tiny vocabulary.
_DROP = ("layer_types", "torch_dtype", "dtype", "quantization_config", "auto_map", "architectures",
         "_name_or_path", "transformers_version", "max_window_layers")
# Expert counts (Mixtral num_local_experts, Qwen-MoE num_experts, DeepSeek n_routed_experts) and top-k.
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_PER_TOKEN_KEYS = ("num_experts_per_tok",)
_TINY_EXPERTS = 4
_SEQ_LEN = 16
_MAX_ACCUM = 4  # two verify steps with accumulation 64 would take minutes and prove nothing more
_RESULT_PREFIX = "MEMFIT_RESULT "


def tiny_config(facts_config: Mapping[str, Any]) -> dict[str, Any]:
    """Shrink a model's config.json mapping to a tiny model of the same architecture.

    Returns:
        A config mapping (with model_type) for `AutoConfig.for_model`.
    Raises:
        ValueError: no model_type in the mapping.
    """
    if "model_type" not in facts_config:
        raise ValueError("the model config needs model_type (e.g. llama, qwen2) to build a tiny model")
    cfg = {k: v for k, v in facts_config.items() if k not in _DROP}
    cfg.update(TINY)
    if "head_dim" in cfg:
        cfg["head_dim"] = TINY["hidden_size"] // TINY["num_attention_heads"]
    for key, tiny_id in (("bos_token_id", 1), ("eos_token_id", 2), ("pad_token_id", None)):
        if key in cfg:
            cfg[key] = tiny_id
    # MoE: the expert count would survive the shrink (40,000 experts tried to allocate > 8 GB); a few
    # experts exercise routing and the expert parameters' partitioning just the same.
    for key in _EXPERT_KEYS:
        if isinstance(cfg.get(key), int):
            cfg[key] = max(1, min(cfg[key], _TINY_EXPERTS))
    for key in _PER_TOKEN_KEYS:
        if isinstance(cfg.get(key), int):
            cfg[key] = max(1, min(cfg[key], _TINY_EXPERTS // 2))
    return cfg


def _skip_reason(strategy: Strategy, plan: Plan) -> str | None:
    if plan.training.precision == "fp16":
        return "fp16 needs a GPU (DeepSpeed refuses fp16 on CPU)"
    if strategy.method == "qlora":
        return "QLoRA needs bitsandbytes and a GPU"
    if plan.training.optimizer == "adamw_8bit":
        return "adamw_8bit needs bitsandbytes and a GPU"
    if "nvme" in (strategy.offload_optimizer, strategy.offload_param):
        return "NVMe offload needs libaio and a real NVMe drive"
    return None


def _run_config(strategy: Strategy, plan: Plan, facts: Any) -> dict[str, Any]:
    """The config as emitted, but for the one-process run: world size 1, accumulation capped."""
    cfg = deepspeed_config(strategy, plan, facts, world_size=1)
    accum = min(cfg["gradient_accumulation_steps"], _MAX_ACCUM)
    cfg.update(gradient_accumulation_steps=accum, train_batch_size=strategy.micro_batch_size * accum)
    opt = cfg.get("optimizer")
    if opt is not None and strategy.offload_optimizer == "none":
        # Without offload DeepSpeed would JIT-compile FusedAdam (a GPU kernel); torch's AdamW is the
        # same update on CPU. With CPU offload DeepSpeed's CPU Adam runs, as it will on the GPU box.
        opt["params"]["torch_adam"] = True
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_one(key: str, spec: dict[str, Any], timeout_s: float) -> VerifyResult:
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "memfit.engine.deepspeed._worker"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout_s, env=_env())
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return VerifyResult(key=key, passed=False, seconds=time.monotonic() - start,
                            error=f"timed out after {timeout_s:.0f} s\n{_tail(err)}")
    seconds = time.monotonic() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return VerifyResult(key=key, passed=False, seconds=seconds,
                            error=f"exit code {proc.returncode}\n{_tail(proc.stderr or proc.stdout)}")
    losses = json.loads(lines[-1][len(_RESULT_PREFIX):])["losses"]
    ok = len(losses) == spec["steps"] and all(math.isfinite(x) for x in losses)
    return VerifyResult(key=key, passed=ok, losses=losses, seconds=seconds,
                        error=None if ok else f"non-finite or missing losses: {losses}")


def verify(plan: Plan, strategies: Sequence[Strategy], facts_config: Mapping[str, Any], steps: int = 2,
           timeout_s: float = 300.0, facts: Any = None,
           progress: Callable[[int, int, str], None] | None = None) -> list[VerifyResult]:
    """Run each strategy's DeepSpeed config for `steps` real optimizer steps on a tiny model.

    Args:
        plan: supplies precision, optimizer, global batch (world size is 1 for the run).
        strategies: the strategies to prove, each in its own subprocess.
        facts_config: the plan model's config.json mapping (with model_type); shrunk by `tiny_config`.
        steps: optimizer steps per config.
        timeout_s: per-config wall-clock limit (the first run compiles DeepSpeed's CPU Adam, ~1-2 min).
        facts: optional ModelSpec of the tiny model for bucket sizes (None: DeepSpeed defaults).
        progress: called with (configs done, configs in all, the strategy key starting now) before
            each config and with label "done" at the end.
    Returns:
        One VerifyResult per strategy, in order; skipped ones carry the reason.
    """
    tiny = tiny_config(facts_config)
    results = []
    tell = progress or (lambda done, total, label: None)
    for i, strategy in enumerate(strategies):
        tell(i, len(strategies), strategy.key)
        reason = _skip_reason(strategy, plan)
        if reason is not None:
            results.append(VerifyResult(key=strategy.key, passed=False, skipped=reason))
            continue
        optimizer = plan.training.optimizer
        spec = {"ds_config": _run_config(strategy, plan, facts), "model_config": tiny,
                "method": "full" if strategy.method == "full" else "lora", "lora_rank": plan.training.lora.rank,
                "gradient_checkpointing": strategy.gradient_checkpointing, "steps": steps, "seq_len": _SEQ_LEN,
                "client_optimizer": None if optimizer == "adamw" else optimizer}
        results.append(_run_one(strategy.key, spec, timeout_s))
    tell(len(strategies), len(strategies), "done")
    return results
