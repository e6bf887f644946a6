"""Subprocess worker for `memfit.engine.fsdp.verify`: a few real FSDP steps of a tiny model on CPU (gloo).

Reads one JSON object on stdin: {"model_config": {...}, "method": "full"|"lora", "lora_rank": 8,
"fsdp_version": 1|2, "fsdp_sharding": "FULL_SHARD"|..., "offload": bool, "gradient_checkpointing": bool,
"precision": "fp32"|"bf16"|"pure_bf16", "steps": 2, "seq_len": 16, "micro_batch_size": 1}; prints
`MEMFIT_RESULT {"losses": [...]}` on rank 0. Launched once per rank by the parent (RANK/WORLD_SIZE set).
Not a public API.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

RESULT_PREFIX = "MEMFIT_RESULT "


def _model(spec: dict[str, Any]) -> Any:  # torch/transformers objects are Any here (untyped)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(spec["model_config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(config)
    if spec["precision"] == "pure_bf16":
        model = model.to(torch.bfloat16)
    if spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        r = int(spec.get("lora_rank", 8))
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    return model


def _layer_classes(model: Any) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    base = getattr(model, "get_base_model", lambda: model)()
    names |= set(getattr(base, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def _shard_fsdp1(model: Any, spec: dict[str, Any]) -> Any:
    import functools

    import torch
    from torch.distributed.fsdp import CPUOffload, FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=_layer_classes(model))
    mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16) if spec["precision"] == "bf16" else None
    return FullyShardedDataParallel(model, auto_wrap_policy=policy, sharding_strategy=ShardingStrategy[spec["fsdp_sharding"]],
                                    cpu_offload=CPUOffload(offload_params=spec["offload"]), mixed_precision=mp,
                                    use_orig_params=True, device_id=torch.device("cpu"))


def _shard_fsdp2(model: Any, spec: dict[str, Any]) -> Any:
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kw = {"reshard_after_forward": spec["fsdp_sharding"] == "FULL_SHARD",
          "offload_policy": CPUOffloadPolicy(pin_memory=False) if spec["offload"] else OffloadPolicy()}
    if spec["precision"] == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    layers = _layer_classes(model)
    for m in list(model.modules()):
        if type(m) in layers:
            fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


def run(spec: dict[str, Any]) -> list[float]:
    """`steps` AdamW steps of the sharded tiny model; the mean loss of each (rank 0's view)."""
    import torch
    import torch.distributed as dist

    torch.manual_seed(int(spec.get("seed", 0)))
    dist.init_process_group("gloo")
    model = _model(spec)
    model = (_shard_fsdp1 if spec["fsdp_version"] == 1 else _shard_fsdp2)(model, spec)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    vocab, losses = spec["model_config"]["vocab_size"], []
    for _ in range(int(spec.get("steps", 2))):
        ids = torch.randint(0, vocab, (int(spec.get("micro_batch_size", 1)), int(spec.get("seq_len", 16))))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach().float()))
    dist.destroy_process_group()
    return losses


def main() -> int:
    losses = run(json.loads(sys.stdin.read()))
    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(RESULT_PREFIX + json.dumps({"losses": losses}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
