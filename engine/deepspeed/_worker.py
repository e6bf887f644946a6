"""Subprocess worker for `memfit.engine.deepspeed.verify`: run a few real DeepSpeed steps on a tiny model.

Reads one JSON object on stdin:
    {"ds_config": {...}, "model_config": {...}, "method": "full"|"lora", "lora_rank": 8,
     "gradient_checkpointing": false, "client_optimizer": null|"sgd"|"adafactor", "steps": 2,
     "seq_len": 16, "seed": 0}
and prints one line `MEMFIT_RESULT {"losses": [...]}` on stdout. Anything else on stdout/stderr is
DeepSpeed's logging. The parent sets MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK.
Run as `python -m memfit.engine.deepspeed._worker`; not a public API.
"""
from __future__ import annotations

import json
import sys
from typing import Any

RESULT_PREFIX = "MEMFIT_RESULT "
_HF_DS_CONFIG = None


def _build_model(spec: dict[str, Any]) -> Any:  # a transformers model (torch is untyped here)
    import torch._dynamo  # noqa: F401  (zero.Init patches modules; HF models need dynamo imported first)
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    cfg = dict(spec["model_config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    # As under the HF Trainer: with a live HfDeepSpeedConfig, transformers builds ZeRO-3 models inside
    # zero.Init and initialises the partitioned weights itself (a bare zero.Init around from_config
    # left a tied qwen2 lm_head uninitialised: first loss 64 instead of ln(vocab) = 6.2).
    global _HF_DS_CONFIG  # transformers keeps only a weak reference
    _HF_DS_CONFIG = HfDeepSpeedConfig(spec["ds_config"])
    model = AutoModelForCausalLM.from_config(config)
    if spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.get("method") == "lora":
        from peft import LoraConfig, get_peft_model

        rank = int(spec.get("lora_rank", 8))
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    return model


def _client_optimizer(name: str | None, params: Any) -> Any:
    import torch

    if name is None:
        return None
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False)
    raise ValueError(f"no CPU stand-in for optimizer {name!r}")


def run(spec: dict[str, Any]) -> list[float]:
    """Run `steps` optimizer steps; return the mean loss of each."""
    import torch
    import torch.distributed as tdist
    import deepspeed

    torch.manual_seed(int(spec.get("seed", 0)))
    if not tdist.is_initialized():
        tdist.init_process_group("gloo")
    model = _build_model(spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _client_optimizer(spec.get("client_optimizer"), params)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer,
                                      config=spec["ds_config"])
    accum = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    vocab = spec["model_config"]["vocab_size"]
    losses = []
    for _ in range(int(spec.get("steps", 2))):
        total = 0.0
        for _ in range(accum):
            ids = torch.randint(0, vocab, (micro, int(spec.get("seq_len", 16))))
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            total += float(loss.detach().float())
        losses.append(total / accum)
    return losses


def main() -> int:
    spec = json.loads(sys.stdin.read())
    losses = run(spec)
    sys.stdout.write(RESULT_PREFIX + json.dumps({"losses": losses}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
