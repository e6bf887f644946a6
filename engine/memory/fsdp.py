"""Memory terms of PyTorch FSDP (FSDP1 flat parameters and FSDP2 `fully_shard`), per GPU and per node.

Read from torch 2.13 (torch/distributed/fsdp/) and accelerate 1.x (utils/dataclasses.py
FullyShardedDataParallelPlugin); docs/explanation/memory-model.md lists every term with its source.
Units are wrapped per decoder layer (accelerate's TRANSFORMER_BASED_WRAP); what no layer owns
(embeddings, lm_head, final norm) is the root unit.

Three moments (four under FSDP2) compete for the GPU peak:
- start of backward: shards + optimizer states + the root unit and two layer units unsharded (FSDP1's
  `_FreeEventQueue` allows two all-gathers in flight; FSDP2 adds its all-gather output buffer) or,
  under SHARD_GRAD_OP, every unit (not resharded after forward) + the stored activations + the
  larger of the loss peak and the last layer's backward working set;
- end of backward: + all sharded gradients, the root's unsharded gradient and one layer's working set;
- optimizer step: shards + gradients + states + torch AdamW's foreach temporaries;
- FSDP2 on more than one GPU, start of forward: the root and the first layer gathered, each with its
  flat all-gather output still held (_fsdp2_forward_start).
bench/fsdp_cpu.py traces real FSDP steps on CPU/gloo against these moments.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .activations import activation_bytes
from .data import data_host_terms
from .states import QLORA_BYTES_PER_PARAM, fp32_base, state_bytes, trainable_params
from ..core.ds_defaults import accumulation_steps
from ..plan.stack import resolve_stack

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from ..plan.stack import Stack
    from ..plan.strategy import Strategy


@dataclass(frozen=True)
class FsdpTerms:
    """Bytes per GPU (gpu_*) and per node (host_*) at the peak moment of each, with the phases."""

    gpu: dict[str, float]
    gpu_phase: str
    host: dict[str, float]
    host_phase: str
    accumulation_steps: int
    # Every moment's terms, the peak's included (bench/fsdp_cpu.py compares each with a traced run).
    gpu_phases: dict[str, dict[str, float]] = field(default_factory=dict)


def shard_group(strategy: Strategy, gpus_per_node: int, world: int) -> int:
    """GPUs one copy of the states is sharded over: all of them, one node's (HYBRID_SHARD), or none."""
    return {"FULL_SHARD": world, "SHARD_GRAD_OP": world, "HYBRID_SHARD": gpus_per_node, "NO_SHARD": 1}[
        strategy.effective_fsdp_sharding]


def _dtypes(precision: str, optimizer: str, hidden: int, fused: bool) -> dict[str, float]:
    """Bytes per trainable parameter: sharded (at rest) and unsharded (compute) copies."""
    sb = state_bytes(precision, optimizer, hidden)
    mixed = precision in ("bf16", "fp16")
    return {
        # MixedPrecision keeps the sharded FlatParameter in its original dtype (fp32) and casts the
        # gradient back to it (_runtime_utils._cast_grad_to_param_dtype); states follow the shard.
        "param_shard": 4.0 if mixed else sb.weights,
        "grad_shard": 4.0 if mixed else sb.gradients,
        "moments": sb.moments,
        # torch/optim/adam.py _multi_tensor_adam: torch._foreach_sqrt(exp_avg_sqs) copies the second
        # moments of the whole device/dtype group; fused=True steps in place.
        "foreach_temp": 0.0 if fused else sb.foreach_temp,
        "compute": sb.weights,  # param_dtype of the all-gathered unit
        "grad_compute": sb.gradients,  # unsharded gradient before the reduce-scatter
    }


def _frozen_bytes(facts: ModelSpec, method: str, fp32: bool) -> float:
    """Frozen base weights that FSDP shards, or gathers (`fp32`: held in fp32). QLoRA under FSDP
    stores the packed 4-bit weights in a bf16 carrier (bnb_4bit_quant_storage) and every other weight
    in bf16 too: a FlatParameter must have one dtype (_flat_param.py _validate_tensors_to_flatten), so
    peft's fp32 upcast of the norms cannot happen (TRL skips prepare_model_for_kbit_training for
    sharded QLoRA)."""
    if method == "full":
        return 0.0
    w = 4.0 if fp32 else 2.0
    if method == "lora":
        return facts.total_params * w
    quantized = facts.quantizable_params()
    return quantized * 0.5 + (facts.total_params - quantized) * 2.0


def quant_state_bytes(facts: ModelSpec, method: str) -> float:
    """bitsandbytes' quantisation constants (absmax, nested absmax) of every 4-bit weight: attributes
    of Params4bit.quant_state, not parameters, so FSDP neither shards nor offloads them."""
    return facts.quantizable_params() * (QLORA_BYTES_PER_PARAM - 0.5) if method == "qlora" else 0.0


def unit_params(facts: ModelSpec) -> tuple[float, float]:
    """(parameters of one decoder layer, parameters of the root unit: embeddings, lm_head, final norm)."""
    head = 0 if facts.tie_word_embeddings else facts.lm_head_params
    root = facts.embedding_params + head + facts.hidden_size  # + the final norm's weight
    layer = max(facts.total_params - root, 0) / max(facts.num_layers, 1)
    return layer, facts.total_params - layer * facts.num_layers


def lora_in_layer_units(plan: Plan, strategy: Strategy) -> bool:
    """FSDP1 LoRA with the adapters inside each decoder layer's FlatParameter (training.fsdp_lora_wrap:
    layer). With use_orig_params the FlatParameter requires grad when any of its parameters does, so
    autograd fills its whole gradient, frozen weights included, and FSDP reduce-scatters and keeps the
    whole sharded gradient (torch's FSDP docs: mixing frozen and non-frozen parameters in one
    instance gives "higher than expected gradient memory usage"). Traced on CPU: bench/fsdp_cpu.py
    fsdp1-lora-w2, where the sharded gradients are every layer's parameters x 2 B / 2 ranks.
    FSDP2 shards per parameter and gives frozen ones no gradient."""
    return strategy.fsdp_version == 1 and strategy.method == "lora" and plan.training.fsdp_lora_wrap == "layer"


def unlimited_gathers(plan: Plan, strategy: Strategy) -> bool:
    """FSDP1 without its rate limiter (limit_all_gathers=False). _runtime_utils.py _unshard waits on
    _FreeEventQueue (two frees in flight, _limiter_utils.py) only when the flag is set; without it
    the CPU issues each unit's all-gather as soon as it reaches it. Each gathered unit is freed with
    record_stream on the compute stream (_flat_param.py _free_unsharded_flat_param), so its block
    cannot be reused until the GPU has run that unit: when the GPU lags the CPU, the usual case for
    large layers, every unit of the pass is held at once. llama-cookbook pull request 41 measured the
    switch on Llama 2 7B (4 x A100, pure bf16): reserved fell by 13.31 GB, the whole unsharded model in
    bf16 (12.55 GiB) plus the fp32 logits the same change stopped keeping (0.98 GiB). NO_SHARD
    gathers nothing."""
    return (strategy.fsdp_version == 1 and not plan.training.fsdp_limit_all_gathers
            and strategy.effective_fsdp_sharding != "NO_SHARD")


def _sharded_stack(plan: Plan, facts: ModelSpec, method: str) -> Stack:
    """The training stack (loss implementation, offloading: plan/stack.py) as FSDP runs it. QLoRA's
    k-bit upcast cannot happen under FSDP (_frozen_bytes: one dtype per FlatParameter, and FSDP2 too
    wants one original dtype per group), so the norms stay bf16 and so does the residual stream each
    checkpointed layer saves: the activations take kbit_upcast false, as the weights already do."""
    stack = resolve_stack(plan, facts)
    return replace(stack, kbit_upcast=False) if method == "qlora" else stack


def _unit_bytes(facts: ModelSpec, method: str, model_compute: float, layer_p: float, root_p: float) -> tuple[float, float]:
    """(bytes of one gathered decoder layer, bytes of the gathered root unit). Under QLoRA the root
    (embeddings, lm_head, final norm) is not quantised (quantizable_params: decoder Linear weights
    only; bitsandbytes skips lm_head), so it gathers at 2 bytes a parameter while the layers hold the
    4-bit weights; elsewhere every unit has the model's one compute dtype."""
    if method != "qlora":
        return model_compute * layer_p / facts.total_params, model_compute * root_p / facts.total_params
    root = root_p * 2.0
    return (model_compute - root) / max(facts.num_layers, 1), root


def _in_flight(strategy: Strategy, unit_bytes: float, root_bytes: float, model_bytes: float,
               unlimited: bool) -> float:
    """Unsharded parameters on the GPU at the start of backward."""
    if strategy.effective_fsdp_sharding == "NO_SHARD":
        return 0.0  # the parameters are the full copy already counted in the shard
    if strategy.effective_fsdp_sharding == "SHARD_GRAD_OP" or unlimited:
        # reshard_after_forward=False: every unit stays gathered until its backward; without the rate
        # limiter every unit's block is still held (unlimited_gathers).
        return model_bytes
    # The root is not resharded after forward (_runtime_utils._post_forward_reshard: `not
    # state._is_root`; FSDP2 _fsdp_state._lazy_init sets post_forward_mesh_info = None for it).
    layers = 2 * unit_bytes  # current unit + the prefetched one (limit_all_gathers, BACKWARD_PRE)
    if strategy.fsdp_version == 2:
        layers += unit_bytes  # foreach_all_gather's output buffer before foreach_all_gather_copy_out
    return root_bytes + layers


def fsdp_terms(plan: Plan, facts: ModelSpec, strategy: Strategy, slack: float, fused_optimizer: bool = False) -> FsdpTerms:
    """Named memory terms of one FSDP strategy (bytes; the caller adds CUDA context, NCCL, process RSS).

    Args:
        plan: the checked Plan.
        facts: ModelSpec of the model that trains.
        strategy: a Strategy with sharding 'fsdp'.
        slack: caching-allocator slack on short-lived tensors (fraction).
        fused_optimizer: torch AdamW(fused=True) instead of the default foreach path.
    Returns:
        FsdpTerms with GpuBreakdown/HostBreakdown field names (without context, NCCL and baseline).
    """
    t, hw = plan.training, plan.hardware
    n = shard_group(strategy, hw.gpus_per_node, hw.world_size)
    d = _dtypes(t.precision, t.optimizer, facts.hidden_size, fused_optimizer)
    n_train = trainable_params(facts, strategy.method, t.lora.rank, t.lora.target_modules, t.lora.modules_to_save,
                               dora=t.lora.use_dora)
    # A base loaded in fp32 (training.load_dtype) stays fp32 in its shards; MixedPrecision gathers
    # it in param_dtype, 16-bit unless the precision is fp32.
    shard_fp32 = fp32_base(plan, strategy)
    frozen = _frozen_bytes(facts, strategy.method, shard_fp32)
    model_compute = _frozen_bytes(facts, strategy.method, t.precision == "fp32") + n_train * d["compute"]
    layer_p, root_p = unit_params(facts)
    unit, root = _unit_bytes(facts, strategy.method, model_compute, layer_p, root_p)
    train_share = n_train / facts.total_params if strategy.method == "full" else 0.0
    in_layer = lora_in_layer_units(plan, strategy)
    # The one dtype of a layer's FlatParameter, adapters included: its sharded gradient is cast back
    # to it; the unsharded gradient is in the compute dtype.
    base = 4.0 if shard_fp32 else 2.0
    base_compute = 4.0 if t.precision == "fp32" else 2.0
    grad_params = (layer_p * facts.num_layers + n_train) if in_layer else n_train
    shards = {"params": (frozen + n_train * d["param_shard"]) / n,
              "grads": grad_params * (base if in_layer else d["grad_shard"]) / n,
              "opt": n_train * d["moments"] / n, "temp": n_train * d["foreach_temp"] / n}
    offload = strategy.offload_param != "none"
    on_gpu = {k: (0.0 if offload else v) for k, v in shards.items()}
    stack = _sharded_stack(plan, facts, strategy.method)
    act = activation_bytes(facts, t.seq_len, strategy.micro_batch_size, t.attention, strategy.method,
                           strategy.gradient_checkpointing, t.precision, lora_rank=t.lora.rank,
                           lora_targets=t.lora.target_modules, lora_dropout=t.lora.dropout,
                           stack=stack, dora=t.lora.use_dora)
    accum = accumulation_steps(t.global_batch_size, strategy.micro_batch_size, hw.world_size)
    held = _held_gradients(accum, stack.sync_each_batch, n, on_gpu["grads"],
                           grad_params * (base_compute if in_layer else d["grad_compute"]))
    # Unsharded gradients: the root's lives from lm_head's backward to the embedding's (one unit);
    # a layer's until its reduce-scatter. NO_SHARD all-reduces the gradient in place; FSDP1 runs
    # NO_SHARD on one GPU (_init_utils.py _init_process_group_state). FSDP2 has no such switch: on a
    # one-rank mesh it still copies each unit into separate unsharded parameters
    # (_fsdp_param_group.py wait_for_unshard, world_size == 1 branch) and reduces through
    # _fsdp_collectives.py foreach_reduce, which allocates the flat input and output for any world
    # size (traced on CPU: bench/fsdp_cpu.py fsdp2-w1).
    copies = n > 1 or strategy.fsdp_version == 2
    root_grad = root_p * train_share * d["grad_compute"] if copies else 0.0
    if not copies:
        layer_grad = 0.0
    elif in_layer:  # the whole layer's FlatParameter, adapters included
        layer_grad = (layer_p + n_train / max(facts.num_layers, 1)) * base_compute
    else:
        layer_grad = layer_p * train_share * d["grad_compute"]
    unlimited = unlimited_gathers(plan, strategy)
    flight = _in_flight(strategy, unit, root, model_compute, unlimited)
    # Gathered at the end of backward: the root and the last unit, or every unit without the limiter.
    gathered_end = model_compute if unlimited else (root + unit if copies else 0.0)
    # Reduce-scatter buffers for a layer's gradient: the sharded output (FSDP1 _get_reduce_scatter_tensors)
    # and, in FSDP2, the flat input the gradients are copied into first (foreach_reduce_scatter_copy_in).
    reduce_buf = layer_grad / n + (layer_grad if strategy.fsdp_version == 2 else 0.0)
    constants = quant_state_bytes(facts, strategy.method)
    on_gpu["params"] += constants
    # Start of backward: every stored activation is still live while the loss peaks and then while the
    # last decoder layer recomputes and runs its backward (ActivationBytes.peak_split, as without FSDP).
    activations, loss = act.peak_split()
    start = {"weights_gib": on_gpu["params"], "gradients_gib": held, "optimizer_states_gib": on_gpu["opt"],
             "activations_gib": activations, "logits_loss_gib": loss,
             "zero_buffers_gib": flight + root_grad,
             "allocator_slack_gib": (activations + loss) * slack}
    end = {"weights_gib": on_gpu["params"], "gradients_gib": on_gpu["grads"],
           "optimizer_states_gib": on_gpu["opt"], "activations_gib": act.working_bytes, "logits_loss_gib": 0.0,
           "zero_buffers_gib": gathered_end + root_grad + layer_grad + reduce_buf,
           "allocator_slack_gib": act.working_bytes * slack}
    step = {"weights_gib": on_gpu["params"], "gradients_gib": on_gpu["grads"],
            "optimizer_states_gib": on_gpu["opt"] + on_gpu["temp"], "activations_gib": 0.0, "logits_loss_gib": 0.0,
            "zero_buffers_gib": 0.0, "allocator_slack_gib": 0.0}
    phases = {"forward/backward": start, "end of backward": end, "optimizer step": step}
    if strategy.fsdp_version == 2 and n > 1 and strategy.effective_fsdp_sharding in ("FULL_SHARD", "HYBRID_SHARD"):
        phases["start of forward"] = _fsdp2_forward_start(start, root, unit)
    gpu_phase = max(phases, key=lambda k: sum(phases[k].values()))
    host, host_phase = _host(plan, facts, strategy, shards, n, layer_p, d, model_compute, n_train)
    return FsdpTerms(phases[gpu_phase], gpu_phase, host, host_phase, accum, phases)


def _held_gradients(accum: int, sync_each_batch: bool, n: int, sharded: float, unsharded: float) -> float:
    """Gradients already on the GPU when a micro-batch's backward starts.

    One micro-batch per step: none (the optimizer's zero_grad freed them). With accumulation and a
    reduce-scatter after every micro-batch: the sharded gradients. Under no_sync, the training loop
    of transformers' Trainer (every micro-batch but the last: accelerator.no_sync, which calls FSDP1's
    `no_sync` or FSDP2's `set_requires_gradient_sync(False)`) and of litgpt (fabric.no_backward_sync):
    FSDP1 keeps each FlatParameter's unsharded gradient (_runtime_utils.py _post_backward_hook returns
    before the reduce-scatter when `_sync_gradients` is false) and FSDP2 its unsharded_param.grad, in
    the compute dtype (accelerate sets reduce_dtype = param_dtype, so FSDP2 does not upcast them:
    _fsdp_param.py to_accumulated_grad_if_needed). Every unit's full gradient is then on every GPU
    when the last micro-batch starts, and no sharded gradient yet. accelerate's docs name the cost:
    sync_each_batch=True "may reduce memory requirements when using gradient accumulation".
    """
    if accum <= 1:
        return 0.0
    return sharded if sync_each_batch or n == 1 else unsharded


def _fsdp2_forward_start(start: dict[str, float], root: float, unit: float) -> dict[str, float]:
    """FSDP2's first layer copy-out in forward: the root gathered, and the root's flat all-gather
    output still held. _fsdp_param_group.py wait_for_unshard keeps the previous group's all-gather
    result (`prev_all_gather_state`, bound for the whole call) until this group's copy-out is done
    ("free after the next copy-out", world size > 1 only), so the root (gathered + its flat
    output) and the first layer (the same two) are live at once, before any activation
    (traced on CPU: bench/fsdp_cpu.py fsdp2-lora-w2, 11.17 MiB = 2 x (root + layer))."""
    return dict(start, activations_gib=0.0, logits_loss_gib=0.0, allocator_slack_gib=0.0,
                zero_buffers_gib=2 * (root + unit))


def pinned_bytes(nbytes: float) -> float:
    """Host bytes a pinned tensor takes: the CUDA caching host allocator rounds every block up to a
    power of two (ATen/core/CachingHostAllocator.h `PowerOf2Ceil`, default round threshold: no limit)."""
    return float(1 << (max(int(nbytes), 1) - 1).bit_length())


def _host(plan: Plan, facts: ModelSpec, strategy: Strategy, shards: dict[str, float], n: int, layer_p: float,
          d: dict[str, float], model_compute: float, n_train: int) -> tuple[dict[str, float], str]:
    t, hw = plan.training, plan.hardware
    ranks = hw.gpus_per_node
    per_node = ranks  # each rank of this node holds its own shard (HYBRID: a whole copy per node)
    opt_host = params_host = slack = 0.0
    if strategy.offload_param != "none":
        # CPUOffload moves the shard, its gradient (FSDP1 `_cpu_grad`, both pinned in
        # FlatParamHandle._init_shard_metadata / FSDP2 FSDPParam.pin_memory) and the optimizer states
        # (created by AdamW beside the CPU parameters, not pinned) to host RAM. On CPU tensors AdamW
        # takes the single-tensor path (no foreach), whose temporaries are one parameter's.
        opt_host = shards["opt"] * per_node + layer_p * d["moments"] / n * per_node
        params_host = (shards["params"] + shards["grads"]) * per_node
        units = facts.num_layers
        root_share = 1 - layer_p * units / facts.total_params
        layer_shard = (shards["params"] + shards["grads"]) * (1 - root_share) / units
        root_shard = (shards["params"] + shards["grads"]) * root_share
        pinned = units * pinned_bytes(layer_shard) + (pinned_bytes(root_shard) if root_shard > 0 else 0.0)
        slack = (pinned - (shards["params"] + shards["grads"])) * per_node
    data = data_host_terms(plan, strategy.micro_batch_size)
    dataset = data.dataset_private + data.workers
    # Loading: with cpu_ram_efficient_loading (always written by memfit, with sync_module_states) only
    # rank 0 materialises the checkpoint, in the dtype the shards keep; the others start on meta.
    load = facts.total_params * d["param_shard"] if strategy.method == "full" else _load_frozen(plan, facts, strategy)
    # Save with FULL_STATE_DICT: accelerate gathers model, then optimizer state, onto rank 0's CPU
    # (FullStateDictConfig / FullOptimStateDictConfig offload_to_cpu, rank0_only); one at a time.
    gather = 0.0
    if strategy.method == "full" and strategy.gather_16bit_on_save:
        gather = max(n_train * d["param_shard"], n_train * d["moments"])
    train = opt_host + params_host + slack + dataset + gather
    loading = params_host + slack + dataset + load
    if train >= loading:
        values = (opt_host, params_host, slack, 0.0, gather, dataset)
        phase = "training" if gather == 0 else "checkpoint save"
    else:
        values = (0.0, params_host, slack, load, 0.0, dataset)
        phase = "model loading"
    names = ("offloaded_optimizer_gib", "offloaded_params_gib", "offload_slack_gib", "checkpoint_load_gib",
             "save_gather_gib", "dataset_gib")
    host = dict(zip(names, values))
    host["nvme_swap_buffers_gib"] = 0.0
    # One data-pipeline figure under FSDP: the dataset term includes the dataloader's (memory/data.py).
    host["dataloader_gib"] = host["preprocessing_gib"] = 0.0
    return host, phase


def _load_frozen(plan: Plan, facts: ModelSpec, strategy: Strategy) -> float:
    return _frozen_bytes(facts, strategy.method, fp32_base(plan, strategy))
