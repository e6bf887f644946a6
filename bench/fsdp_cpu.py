"""Ground truth without a GPU: real FSDP1 / FSDP2 steps on CPU/gloo, traced live bytes against
memfit's FSDP terms (engine/memory/fsdp.py), term by term and phase by phase.

    .venv/bin/python bench/fsdp_cpu.py [--model small] [--runs fsdp2-w2 fsdp1-w2 ...] [--json OUT]

Each run spawns 1 or 2 ranks (torch.multiprocessing, gloo on 127.0.0.1), builds a random-weight Llama
from a config as `advise verify` does (engine/fsdp/_worker.py `_model`, `_layer_classes`), wraps every
decoder layer and then the root (accelerate's TRANSFORMER_BASED_WRAP) with FSDP2 `fully_shard` or FSDP1
(use_orig_params, as accelerate sets it), bf16 mixed precision with bf16 reduction (accelerate's
`mixed_precision: bf16` for both versions: utils/dataclasses.py FullyShardedDataParallelPlugin), and
trains two AdamW steps (foreach=True: what torch picks on CUDA). On rank 0 the second step runs under
bench/fsdp_trace.py's tracker: the peak live bytes of forward, backward and the optimizer step, and
what was live at each peak by category (FSDP's own objects).

memfit's side: `fsdp_terms` on an inline-config plan of the same shapes (every moment, not only the
peak), without the CUDA context, NCCL and allocator slack (there is no CUDA context or caching
allocator on CPU). What does not carry to a GPU: the caching allocator's reserved memory, NCCL's
buffers, and CUDA streams (FSDP1's `_FreeEventQueue` and FSDP2's all-gather stream let the next
unit's all-gather run ahead of compute on a GPU; on CPU/gloo collectives are synchronous, so fewer
units are gathered at once here than memfit counts for a GPU).
"""
from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gloo_ranks import cases_main, spawn_ranks  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# 3.9M parameters, 2 decoder layers of 0.79M and a 2.1M root unit (embeddings + lm_head + norm).
_SMALL = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 4096,
          "tie_word_embeddings": False, "max_position_embeddings": 256}
MODELS = {
    "small": _SMALL,
    # The small model's layers with a 256-token vocabulary, trained at 1024 tokens (SEQ_OF): the logits
    # are small and the activations large, so the last decoder layer's backward, on top of every
    # stored activation, sets the peak of backward rather than the loss.
    "small-long": {**_SMALL, "vocab_size": 256, "max_position_embeddings": 1024},
    # 30M parameters: 4 layers of hidden 512, a larger share in the layers.
    "medium": {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
               "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192,
               "tie_word_embeddings": False, "max_position_embeddings": 256},
}
# name -> (world size, FSDP version, sharding, method, gradient checkpointing)
RUNS = {
    "fsdp2-w1": (1, 2, "FULL_SHARD", "full", False),
    "fsdp2-w2": (2, 2, "FULL_SHARD", "full", False),
    "fsdp2-gc-w2": (2, 2, "FULL_SHARD", "full", True),
    "fsdp2-lora-w2": (2, 2, "FULL_SHARD", "lora", False),
    "fsdp2-sgo-w2": (2, 2, "SHARD_GRAD_OP", "full", False),
    "fsdp1-w1": (1, 1, "FULL_SHARD", "full", False),  # torch runs NO_SHARD on one rank (_init_utils.py)
    "fsdp1-w2": (2, 1, "FULL_SHARD", "full", False),
    "fsdp1-gc-w2": (2, 1, "FULL_SHARD", "full", True),
    "fsdp1-sgo-w2": (2, 1, "SHARD_GRAD_OP", "full", False),
    # LoRA with the adapters inside each decoder layer's FlatParameter (use_orig_params, wrapped by layer
    # class only: litgpt's FSDPStrategy, accelerate without peft's wrap policy)
    "fsdp1-lora-w2": (2, 1, "FULL_SHARD", "lora", False),
    # Two micro-batches per optimizer step, the first under no_sync as transformers' Trainer runs them
    # (accelerator.no_sync: FSDP1 `no_sync()`, FSDP2 `set_requires_gradient_sync(False)`); the sixth
    # field is the accumulation.
    "fsdp1-ga2-w2": (2, 1, "FULL_SHARD", "full", False, 2),
    "fsdp2-ga2-w2": (2, 2, "FULL_SHARD", "full", False, 2),
}
SEQ, MICRO, RANK = 64, 2, 8
SEQ_OF = {"small-long": 1024}  # tokens per sample where a model is not traced at SEQ


def seq_of(model: dict) -> int:
    """The sequence length a model is traced at: SEQ_OF by name, else SEQ."""
    return next((n for name, n in SEQ_OF.items() if MODELS[name] == model), SEQ)


def accumulation(run: tuple) -> int:
    """Micro-batches per optimizer step of a RUNS entry (its optional sixth field; 1 without)."""
    return run[5] if len(run) > 5 else 1


def plan_for(model: dict, world: int, method: str, gc: bool, version: int = 2, accum: int = 1) -> dict:
    """The memfit plan of a run: bf16 mixed precision, AdamW, `accum` micro-batches per step (the global
    batch says so; memfit's frameworks default to no_sync, as the trace runs them). FSDP1 LoRA runs
    all in bf16 with the adapters inside the layers' FlatParameters (_rank_main): pure_bf16, layer wrap."""
    in_layer = version == 1 and method == "lora"
    training = {"method": method, "seq_len": seq_of(model), "micro_batch_size": MICRO,
                "global_batch_size": MICRO * world * accum,
                "precision": "pure_bf16" if in_layer else "bf16", "optimizer": "adamw", "gradient_checkpointing": gc,
                "attention": "sdpa", "sharding": "fsdp", "lora": {"rank": RANK, "dropout": 0.0, "target_modules": "all-linear"}}
    if in_layer:
        training["fsdp_lora_wrap"] = "layer"
    return {"model": dict(model), "hardware": {"gpu_memory": 80, "gpus_per_node": world, "host_memory": 64},
            "training": training}


def _shard(model, version: int, sharding: str):
    import functools

    import torch
    from memfit.engine.fsdp._worker import _layer_classes

    layers = _layer_classes(model)
    if version == 2:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw = {"reshard_after_forward": sharding == "FULL_SHARD",
              "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)}
        for m in list(model.modules()):
            if type(m) in layers:
                fully_shard(m, **kw)
        fully_shard(model, **kw)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    return FullyShardedDataParallel(
        model, auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers),
        sharding_strategy=ShardingStrategy[sharding], use_orig_params=True, device_id=torch.device("cpu"),
        mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16))


def _rank_main(rank: int, world: int, port: int, model_cfg: dict, run: tuple, out_q) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")
    import torch
    import torch.distributed as dist
    from memfit.engine.fsdp._worker import _model

    import fsdp_trace

    _, version, sharding, method, gc = run[:5]
    accum = accumulation(run)
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    # LoRA: the frozen base in bf16 (memfit's FSDP LoRA assumption), peft upcasts the adapters to fp32.
    spec = {"model_config": model_cfg, "method": method, "lora_rank": RANK, "gradient_checkpointing": gc,
            "precision": "pure_bf16" if method == "lora" else "bf16"}
    model = _model(spec)
    if version == 1 and method == "lora":
        model.to(torch.bfloat16)  # adapters and base in one FlatParameter need one dtype (litgpt's bf16-true)
    net = _shard(model, version, sharding)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3, foreach=True)
    objects = fsdp_trace.fsdp2_objects if version == 2 else fsdp_trace.fsdp1_objects

    def structures():
        cats = objects(net)
        cats["optimizer_states"] = fsdp_trace.optimizer_objects(opt)
        return cats

    tracker = fsdp_trace.make_tracker(structures)
    fsdp_trace.label_collectives(tracker, version)
    losses = []
    for step in range(2):
        last = step == 1 and rank == 0
        if last:
            tracker.register_structures()
            tracker.__enter__()
        for micro in range(accum):
            ids = torch.randint(0, model_cfg["vocab_size"], (MICRO, seq_of(model_cfg)))
            with _no_sync(net, version, micro < accum - 1):
                tracker.phase = "forward"
                loss = net(input_ids=ids, labels=ids).loss
                tracker.phase = "backward"
                loss.backward()
        tracker.phase = "optimizer step"
        opt.step()
        opt.zero_grad(set_to_none=True)
        if last:
            tracker.__exit__(None, None, None)
        losses.append(float(loss.detach().float()))
    out = {"rank": rank, "losses": losses, "peaks": {k: {"total": v[0], **v[1]} for k, v in tracker.peaks.items()},
           "buffer_peaks": {k: {"buffers": v[0], **v[1]} for k, v in tracker.buffer_peaks.items()},
           "category_max": tracker.category_max}
    out_q.put(out)
    dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def _no_sync(net, version: int, skip: bool):
    """accelerate's Accelerator.no_sync for the micro-batches that do not end a step (`skip`)."""
    if not skip:
        yield
    elif version == 1:
        with net.no_sync():
            yield
    else:
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)


def memfit_phases(model_cfg: dict, run: tuple) -> dict:
    """memfit's terms at each of its three moments (bytes), without context, NCCL and slack."""
    from memfit.engine.memory.fsdp import fsdp_terms
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.plan.load import plan_from_dict
    from memfit.engine.plan.strategy import Strategy

    world, version, sharding, method, gc = run[:5]
    plan = plan_from_dict(plan_for(model_cfg, world, method, gc, version, accumulation(run)), "fsdp_cpu")
    s = Strategy(method=method, sharding="fsdp", fsdp_version=version, fsdp_sharding=sharding,
                 zero_stage={"FULL_SHARD": 3, "SHARD_GRAD_OP": 2}[sharding],
                 gradient_checkpointing=gc, micro_batch_size=MICRO)
    terms = fsdp_terms(plan, resolve_model(plan.model), s, slack=0.0)
    return {phase: {k: v for k, v in t.items() if k != "allocator_slack_gib"} for phase, t in terms.gpu_phases.items()}


def compare(measured: dict, buffers: dict, memfit: dict) -> list[dict]:
    """Rows (phase, term, traced bytes, memfit bytes): the traced peak of forward+backward against
    memfit's larger forward/backward moment, the step's peak against memfit's step, FSDP's own
    gradients and transient bytes at their largest anywhere in forward+backward against memfit's
    larger gradients + zero_buffers, and the step's peak against memfit's peak."""
    moments = [k for k in memfit if k != "optimizer step"]  # FSDP2 adds "start of forward"
    fb_name = max(moments, key=lambda k: sum(memfit[k].values()))
    fb = max((measured[p] for p in ("forward", "backward") if p in measured), key=lambda m: m["total"])
    rows = []
    for phase, m, f in ((f"forward+backward (memfit: {fb_name})", fb, memfit[fb_name]),
                        ("optimizer step", measured["optimizer step"], memfit["optimizer step"])):
        step = phase == "optimizer step"
        pairs = {
            "sharded params": (m["params_sharded"], f["weights_gib"]),
            "sharded grads": (m["grads_sharded"], f["gradients_gib"]),
            # At the step, "other" is what AdamW allocates there (its foreach temporaries).
            "optimizer states (+ step temporaries)": (m["optimizer_states"] + (m["other"] if step else 0),
                                                      f["optimizer_states_gib"]),
            "unsharded params + grads + comm buffers": (_fsdp_buffers(m), f["zero_buffers_gib"]),
            "activations + loss": (0 if step else m["other"], f["activations_gib"] + f["logits_loss_gib"]),
            "total": (m["total"], sum(f.values())),
        }
        rows += [{"phase": phase, "term": k, "measured": a, "memfit": b} for k, (a, b) in pairs.items()]
    worst = max((buffers[p]["buffers"] for p in ("forward", "backward") if p in buffers), default=0)
    rows.append({"phase": "forward+backward, any moment", "term": "grads + unsharded params + comm buffers",
                 "measured": worst,
                 "memfit": max(memfit[k]["zero_buffers_gib"] + memfit[k]["gradients_gib"] for k in moments)})
    rows.append({"phase": "peak of the step", "term": "total", "measured": max(v["total"] for v in measured.values()),
                 "memfit": max(sum(v.values()) for v in memfit.values())})
    return rows


def _fsdp_buffers(m: dict) -> int:
    return m["params_unsharded"] + m["grads_unsharded"] + m["comm_buffers"] + m["mp_shard"]


def run_case(name: str, model_name: str = "small") -> dict:
    """Run one named case on 1 or 2 ranks; rank 0's traced peaks and memfit's terms.

    Returns:
        {"name", "model", "world", "peaks": {phase: {category: bytes}}, "memfit": {moment: {term: bytes}},
        "rows": compare(...), "losses"}.
    Raises:
        RuntimeError: a rank failed (its exit code is named).
    """
    run, model_cfg = RUNS[name], MODELS[model_name]
    results = spawn_ranks(name, _rank_main, run[0], (model_cfg, run), timeout=600)
    r0 = next(r for r in results if r["rank"] == 0)
    memfit = memfit_phases(model_cfg, run)
    return {"name": name, "model": model_name, "world": run[0], "peaks": r0["peaks"], "memfit": memfit,
            "buffer_peaks": r0["buffer_peaks"], "category_max": r0["category_max"],
            "rows": compare(r0["peaks"], r0["buffer_peaks"], memfit), "losses": r0["losses"]}


def render(rows: list[dict]) -> str:
    """A Markdown table: one line per run, phase and term, traced MiB vs memfit's, and the ratio."""
    lines = ["| run | phase | term | traced MiB | memfit MiB | memfit/traced |", "|---|---|---|---|---|---|"]
    for r in rows:
        for x in r["rows"]:
            got, want = x["measured"], x["memfit"]
            ratio = f"{want / got:.3f}" if got else ("=" if not want else "inf")
            lines.append(f"| {r['name']} ({r['model']}) | {x['phase']} | {x['term']} | {got / 2**20:.2f} | "
                         f"{want / 2**20:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cases_main(__doc__, MODELS, RUNS, run_case, render, argv)


if __name__ == "__main__":
    sys.exit(main())
