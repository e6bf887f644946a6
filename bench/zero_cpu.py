"""Ground truth without a GPU: real DeepSpeed ZeRO steps on CPU/gloo, DeepSpeed's buffers against
memfit's terms (engine/memory/zero.py), term by term.

    .venv/bin/python bench/zero_cpu.py [--model small|0.1b] [--runs z3-w2 z2-w1 ...] [--json OUT]

Each run spawns 1 or 2 ranks (torch.multiprocessing, gloo on 127.0.0.1), builds a random-weight Llama
from a config (under HfDeepSpeedConfig, as the HF Trainer does, so ZeRO-3 builds inside zero.Init),
and trains 3 steps with the DeepSpeed JSON memfit writes for that strategy (engine/deepspeed/config.py;
"torch_adam": true where DeepSpeed would JIT-compile fused_adam; offload uses DeepSpeed's CPU Adam,
compiled once into TORCH_EXTENSIONS_DIR). On the CPU accelerator "GPU" tensors are CPU tensors, so
every buffer is readable. On rank 0 it reads DeepSpeed's own buffers after the last backward (ZeRO-1/2's
buckets and gradient partition, which live only during backward, at their largest during it)
(optimizer attributes: ipg buckets, gradient partitions, fp32 partitions, optimizer states), samples
the 16-bit parameters gathered at once on every dispatched op of the last step (a TorchDispatchMode
that also counts the live bytes of tensors the step allocates), and the process's peak RSS. The
first step records ZeRO-3's trace; the last runs with the complete trace, as steady-state training.
ZeRO-3 runs also wrap stage3's reduce_scatter_coalesced (the flat copy of a bucket) and read each
parameter's ds_persist flag; the z1-fp32accum run reads BF16_Optimizer's fp32 gradient flat.

What carries to a GPU: the size of every buffer DeepSpeed allocates comes from the knobs, the
partition sizes and the dtypes, not from the accelerator (the same code paths allocate on
`get_accelerator().current_device_name()`), so the per-term comparison holds on CUDA. What does not:
on the CPU accelerator "device" and "host" are one memory, so peak RSS counts device-side and
offloaded states together (offload moves bytes within one RSS and cannot be read off it), and there
is no caching allocator, no CUDA context, no NCCL buffer and no pinned-memory rounding here.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gloo_ranks import cases_main, spawn_ranks  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

MODELS = {
    # ~9.7M parameters: the slow test's model (tests/test_zero_cpu.py).
    "small": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 16000,
              "tie_word_embeddings": False, "max_position_embeddings": 512},
    # ~0.12B parameters: 4 layers, Llama-shaped.
    "0.1b": {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
             "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
             "tie_word_embeddings": False, "max_position_embeddings": 512},
}
# name -> (world size, strategy fields, knob overrides written into the config)
RUNS = {
    "z1-w2": (2, {"zero_stage": 1}, {}),
    "z2-w1": (1, {"zero_stage": 2}, {}),
    "z2-w2": (2, {"zero_stage": 2}, {}),
    "z3-w1": (1, {"zero_stage": 3}, {}),
    "z3-w2": (2, {"zero_stage": 3}, {}),
    # A reuse window far below the model, prefetch off: what stays gathered is what the reuse
    # distance keeps (with prefetch on, a small model stays gathered whole: memory/zero.py).
    "z3-window-w2": (2, {"zero_stage": 3}, {"stage3_max_reuse_distance": 1_000_000,
                                            "stage3_prefetch_bucket_size": 0}),
    "z2-offload-w2": (2, {"zero_stage": 2, "offload_optimizer": "cpu"}, {}),
    "z3-offload-w2": (2, {"zero_stage": 3, "offload_optimizer": "cpu"}, {}),
    "z3-offload-all-w2": (2, {"zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"}, {}),
    "z1-offload-w2": (2, {"zero_stage": 1, "offload_optimizer": "cpu"}, {}),
    # ZeRO-1 without overlap_comm (DeepSpeed's own default below stage 3): the gradient hooks leave the
    # gradients alone and reduce_gradients reduces them after backward, so full 16-bit gradients are
    # live at once; with memfit's overlap_comm the hooks move each one into a bucket as it appears.
    "z1-nooverlap-w2": (2, {"zero_stage": 1}, {"overlap_comm": False}),
    # DeepSpeed's own defaults for the buckets and the persistence threshold (what a hand-written
    # config without "auto" gets): a 1e5 threshold keeps the small model's biases-free norms resident
    # and a 5e8 bucket takes the whole model (its flat copy in reduce_scatter_coalesced too).
    # bf16 + fp32 gradient accumulation under ZeRO-1: DeepSpeed runs BF16_Optimizer instead.
    "z1-fp32accum-w2": (2, {"zero_stage": 1}, {"data_types": {"grad_accum_dtype": "fp32"}}),
    "z3-dsdefaults-w2": (2, {"zero_stage": 3}, {"reduce_bucket_size": 500_000_000,
                                                "stage3_param_persistence_threshold": 100_000}),
    # torch AdamW's foreach path as the inner optimizer (what the HF Trainer hands DeepSpeed when the
    # config has no "optimizer" block, e.g. LLaMA-Factory's examples/deepspeed/*.json; on CUDA torch
    # picks foreach by default, on CPU it must be asked for): its _foreach_sqrt copy of the second
    # moments is measured as inner_step_transient.
    "z2-foreach-w1": (1, {"zero_stage": 2}, {"foreach": True}),
    "z3-foreach-w1": (1, {"zero_stage": 3}, {"foreach": True}),
}
SEQ, MICRO, STEPS = 64, 2, 3


def plan_for(model: dict, world: int) -> dict:
    """The memfit plan of a run: full fine-tuning in bf16 with AdamW, no checkpointing."""
    return {"model": dict(model), "hardware": {"gpu_memory": 80, "gpus_per_node": world, "host_memory": 64},
            "training": {"method": "full", "seq_len": SEQ, "micro_batch_size": MICRO, "precision": "bf16",
                         "optimizer": "adamw", "gradient_checkpointing": False, "attention": "sdpa"}}


def ds_config_for(model: dict, world: int, fields: dict, overrides: dict) -> dict:
    """memfit's concrete DeepSpeed JSON for the run, made runnable on CPU."""
    from memfit.engine.deepspeed.config import deepspeed_config
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.plan.load import plan_from_dict
    from memfit.engine.plan.strategy import Strategy

    plan = plan_from_dict(plan_for(model, world), "zero_cpu")
    strategy = Strategy(method="full", micro_batch_size=MICRO, **fields)
    cfg = deepspeed_config(strategy, plan, resolve_model(plan.model))
    if fields.get("offload_optimizer", "none") == "none":
        cfg["optimizer"]["params"]["torch_adam"] = True  # fused_adam needs a JIT build; same states
    if "foreach" in overrides:
        cfg["optimizer"]["params"]["foreach"] = overrides["foreach"]  # engine.py get_optimizer_configuration
    cfg["zero_optimization"].update({k: v for k, v in overrides.items() if k not in ("data_types", "foreach")})
    if "data_types" in overrides:
        cfg["data_types"] = overrides["data_types"]
    return cfg


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _buffers_z3(opt, model) -> dict:
    state = [v for s in opt.optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.numel() > 1]
    return {"weights_partition": sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in model.parameters()),
            "grad_partition": _nbytes([opt.grad_partitions_flat_buffer]),
            "fp32_master": _nbytes(opt.fp32_partitioned_groups_flat),
            "optimizer_moments": _nbytes(state),
            "reduce_buckets": _nbytes([b.buffer for b in opt.ipg_buckets.values() if b.buffer is not None]),
            # parameter_offload.py mark_persistent_parameters: gathered for good (ds_persist).
            "persistent_params": sum(p.ds_numel * p.element_size() for p in model.parameters() if p.ds_persist)}


def _watch_reduce_scatter() -> dict:
    """Record the largest flat copy stage3's reduce_scatter_coalesced makes: the bytes of the
    gradients it is handed when it must interleave them (more than one, or a size the world does not
    divide: comm/coalesced_collectives.py), as DeepSpeed calls it during backward."""
    import torch.distributed as tdist
    from deepspeed.runtime.zero import stage3

    seen = {"reduce_scatter_copy": 0}
    original = stage3.reduce_scatter_coalesced

    def wrapped(tensors, group=None):
        world = tdist.get_world_size(group)
        if len(tensors) > 1 or tensors[0].numel() % world:
            copy = sum(-(-t.numel() // world) * world * t.element_size() for t in tensors)
            seen["reduce_scatter_copy"] = max(seen["reduce_scatter_copy"], copy)
        return original(tensors, group)

    stage3.reduce_scatter_coalesced = wrapped
    return seen


def _buffers_z12(opt) -> dict:
    state = [v for s in opt.optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.numel() > 1]
    # DeepSpeedZeroOptimizer's names, else BF16_Optimizer's (bf16_optimizer.py).
    flat16 = getattr(opt, "bit16_groups_flat", None) or opt.bf16_groups_flat
    master = getattr(opt, "single_partition_of_fp32_groups", None) or opt.fp32_groups_flat_partition
    return {"weights_flat": _nbytes(flat16),
            "fp32_master": _nbytes(master),
            "fp32_grad_flat": _nbytes(getattr(opt, "fp32_groups_gradients_flat", [])),
            "optimizer_moments": _nbytes(state),
            "offload_staging_gpu": _nbytes([getattr(opt, "temp_grad_buffer_for_gpu_offload", None)])}


def _watch_fp32_grads(opt) -> dict:
    """Record the fp32 gradient bytes the inner optimizer sees at each call of its step (the one
    sub-group ZeRO-3 prepares at a time; ZeRO-1/2's converted partition)."""
    seen = {"fp32_grad": 0}
    inner = opt.optimizer
    original = inner.step

    def step(*args, **kwargs):
        grads = [p.grad for g in inner.param_groups for p in g["params"]]
        seen["fp32_grad"] = max(seen["fp32_grad"], _nbytes(grads))
        return original(*args, **kwargs)

    inner.step = step
    return seen


def _backward_buffers_z12(opt) -> dict:
    """ZeRO-1/2 buffers that exist only during backward: setup_buckets allocates the ipg buckets and
    copy_grads_in_partition the 16-bit partition; _release_ipg_buffers drops both at the epilogue."""
    buckets = [t for b in getattr(opt, "ipg_buckets", {}).values() for t in (b.buffer or [])]
    grads = getattr(opt, "grads_in_partition", None)
    return {"reduce_buckets": _nbytes(buckets), "grad_partition": _nbytes([grads]) if grads is not None else 0}


def _step_tracker(model, sample=None):
    """A dispatch mode sampling the gathered 16-bit parameters and the live bytes the step allocates."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    params = list(model.parameters())

    class StepTracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.gathered_max = 0
            self.phase = "forward/backward"
            self.gathered_by_phase: dict[str, int] = {}
            self.live = 0
            self.live_max = 0
            self.keys: set[int] = set()
            self.sampled: dict[str, int] = {}
            # Bytes of tensors first allocated after backward and before the inner optimizer's step
            # (phase "optimizer step"; the run sets "inner step" when the inner step starts), live
            # at once: ZeRO-1/2's step transients (the grad norm's fp64 copies, one gradient at a
            # time; then the flat 16-bit gradient copy with its fp32 conversion).
            self.step_new = 0
            self.step_new_max = 0
            self.inner_new = 0      # the same for tensors first allocated inside the inner step
            self.inner_new_max = 0
            self.live_by_phase: dict[str, int] = {}

        def _free(self, key, n, in_step=False, in_inner=False):
            self.keys.discard(key)
            self.live -= n
            if in_step:
                self.step_new -= n
            if in_inner:
                self.inner_new -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    st = t.untyped_storage()
                    if st._cdata not in self.keys:
                        self.keys.add(st._cdata)
                        self.live += st.nbytes()
                        in_step = self.phase == "optimizer step"
                        in_inner = self.phase == "inner step"
                        if in_step:
                            self.step_new += st.nbytes()
                            self.step_new_max = max(self.step_new_max, self.step_new)
                        if in_inner:
                            self.inner_new += st.nbytes()
                            self.inner_new_max = max(self.inner_new_max, self.inner_new)
                        weakref.finalize(st, self._free, st._cdata, st.nbytes(), in_step, in_inner)
            self.live_by_phase[self.phase] = max(self.live_by_phase.get(self.phase, 0), self.live)
            gathered = sum(p.numel() * p.element_size() for p in params if p.data.numel() > 1)
            self.gathered_max = max(self.gathered_max, gathered)
            if gathered > self.gathered_by_phase.get(self.phase, -1):
                self.gathered_by_phase[self.phase] = gathered
            self.live_max = max(self.live_max, self.live)
            if sample is not None:
                for k, v in sample().items():
                    self.sampled[k] = max(self.sampled.get(k, 0), v)
            return out

    return StepTracker()


def _mark_inner_step(opt, tracker) -> None:
    """Switch the tracker's phase to "inner step" when DeepSpeed calls its inner optimizer's step, so
    that the step's own transients before it (stage_1_and_2.py step: flatten, `.to(fp32)`) are
    measured apart from the torch AdamW temporaries of this bench's "torch_adam" (single-tensor on CPU)."""
    inner = opt.optimizer
    previous = inner.step

    def step(*args, **kwargs):
        tracker.phase = "inner step"
        return previous(*args, **kwargs)

    inner.step = step


def _rank_main(rank: int, world: int, port: int, model: dict, cfg: dict, out_q) -> None:
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch
    import torch._dynamo  # noqa: F401  (zero.Init patches modules; HF models need dynamo first)
    import torch.distributed as tdist
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    torch.manual_seed(0)
    # Through deepspeed.comm, so that zero.Init's config check sees the world size (a bare
    # torch.distributed group leaves deepspeed.comm reporting 1 rank).
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    spec = dict(model)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    keep = HfDeepSpeedConfig(cfg)  # noqa: F841  (transformers keeps a weak reference)
    net = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    engine, opt, *_ = deepspeed.initialize(model=net, model_parameters=[p for p in net.parameters()], config=cfg)
    stage = cfg["zero_optimization"]["stage"]
    fp32 = _watch_fp32_grads(opt)
    scatter = _watch_reduce_scatter() if stage == 3 else {}
    tracker = None
    losses = []
    for step in range(STEPS):
        ids = torch.randint(0, model["vocab_size"], (MICRO, SEQ))
        if step == STEPS - 1:
            tracker = _step_tracker(net, None if stage == 3 else (lambda: _backward_buffers_z12(opt)))
            tracker.__enter__()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        if step == STEPS - 1:
            buffers = _buffers_z3(opt, net) if stage == 3 else _buffers_z12(opt)
            tracker.phase = "optimizer step"
            _mark_inner_step(opt, tracker)
        engine.step()
        losses.append(float(loss.detach().float()))
    tracker.__exit__(None, None, None)
    if stage == 3 or not buffers.get("fp32_grad_flat"):
        buffers["step_transient"] = tracker.step_new_max  # not BF16_Optimizer's step (no flatten there)
    if cfg.get("optimizer", {}).get("params", {}).get("foreach"):
        buffers["inner_step_transient"] = tracker.inner_new_max
    result = {"rank": rank, "losses": losses, "buffers": dict(buffers, **fp32, **scatter, **tracker.sampled), "gathered_max": tracker.gathered_max,
              "gathered_by_phase": tracker.gathered_by_phase, "live_by_phase": tracker.live_by_phase,
              "step_live_max": tracker.live_max,
              "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    out_q.put(result)
    tdist.barrier()
    tdist.destroy_process_group()


def run_case(name: str, model_name: str = "small") -> dict:
    """Run one named case on 1 or 2 ranks; return rank 0's measurements and memfit's terms.

    Returns:
        {"name", "world", "measured": {term: bytes}, "memfit": {term: bytes}, "losses", "max_rss"}.
    Raises:
        RuntimeError: a rank failed (its exit code is named).
    """
    world, fields, overrides = RUNS[name]
    model = MODELS[model_name]
    cfg = ds_config_for(model, world, fields, overrides)
    results = spawn_ranks(name, _rank_main, world, (model, cfg), timeout=900)
    r0 = next(r for r in results if r["rank"] == 0)
    measured = dict(r0["buffers"], gathered_params=r0["gathered_max"] if fields["zero_stage"] == 3 else 0)
    return {"name": name, "model": model_name, "world": world, "measured": measured,
            "memfit": memfit_terms(model, world, fields, cfg["zero_optimization"], cfg.get("data_types")),
            "gathered_by_phase": r0["gathered_by_phase"], "live_by_phase": r0["live_by_phase"], "losses": r0["losses"], "max_rss": r0["max_rss"], "step_live_max": r0["step_live_max"]}


def memfit_terms(model: dict, world: int, fields: dict, zero: dict, data_types: dict | None = None) -> dict:
    """memfit's terms for the same run, named as the measured ones (bytes, rank 0)."""
    from memfit.engine.deepspeed.check import knobs_from_config
    from memfit.engine.memory.states import state_bytes
    from memfit.engine.memory.zero import zero_terms
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.plan.load import plan_from_dict
    from memfit.engine.plan.strategy import Strategy

    plan = plan_from_dict(plan_for(model, world), "zero_cpu")
    facts = resolve_model(plan.model)
    s = Strategy(method="full", micro_batch_size=MICRO, zero_knobs=knobs_from_config(zero, data_types), **fields)
    sb = state_bytes("bf16", "adamw", facts.hidden_size)
    n = facts.total_params
    zt = zero_terms(facts, s, world, n, n * sb.weights, sb.weights, bf16=True)
    z = fields["zero_stage"]
    off = fields.get("offload_optimizer", "none") != "none"
    # memfit assumes DeepSpeed's own fused Adam under ZeRO (in place: no inner-step temporary).
    out = {"inner_step_transient": 0.0,
           "grad_partition": zt.grad_partition if not off else zt.host_grad16,
           "fp32_master": n / world * 4, "fp32_grad": (zt.fp32_grad if not off else n / world * 4),
           "optimizer_moments": n / world * 8, "reduce_buckets": zt.reduce_buckets,
           "gathered_params": zt.gathered_params}
    if z == 3:
        out["step_transient"] = zt.fp32_grad + zt.step_extra  # one sub-group here (memory/zero.py _stage3)
        out["weights_partition"] = n / world * 2
        out["persistent_params"] = zt.persistent_params
        out["reduce_scatter_copy"] = zt.reduce_scatter_copy
    else:
        out["weights_flat"] = n * 2
        out["offload_staging_gpu"] = zt.offload_staging_gpu
        out["grad_partition"] = zt.grad_partition
        out["fp32_grad_flat"] = zt.fp32_grad if zt.fp32_grad_persistent else 0.0
        # The step's transient: its flat 16-bit copy and fp32 conversion alive together, or the norm's
        # fp64 copy of the largest gradient in the partition if larger (memory/zero.py _stage12).
        out["step_transient"] = zt.fp32_grad + zt.step_extra
        if zt.fp32_grad_persistent:  # BF16_Optimizer steps a view of its flat (the rank's partition)
            out["fp32_grad"] = n / world * 4
    return out


def render(rows: list[dict]) -> str:
    """A Markdown table: one line per run and term, DeepSpeed's bytes vs memfit's, and the ratio."""
    lines = ["| run | term | DeepSpeed MiB | memfit MiB | memfit/DS |", "|---|---|---|---|---|"]
    for r in rows:
        for term, got in r["measured"].items():
            want = r["memfit"].get(term)
            if want is None:
                continue
            ratio = f"{want / got:.3f}" if got else ("=" if not want else "inf")
            lines.append(f"| {r['name']} ({r['model']}) | {term} | {got / 2**20:.2f} | {want / 2**20:.2f} | {ratio} |")
        lines.append(f"| {r['name']} ({r['model']}) | peak RSS rank 0 | {r['max_rss'] / 2**20:.0f} | - | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cases_main(__doc__, MODELS, RUNS, run_case, render, argv)


if __name__ == "__main__":
    sys.exit(main())
