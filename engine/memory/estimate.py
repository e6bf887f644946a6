"""Peak memory per GPU and per node's host RAM for one strategy, as a named breakdown.

Composition (docs/explanation/memory-model.md has every term with its source):
- GPU, forward/backward phase: weights + optimizer states kept on the GPU + gradients kept across
  micro-steps (accumulation > 1) + ZeRO buffers + activations + logits/loss + allocator slack + CUDA
  context (+ NCCL buffers with more than one GPU).
- GPU, optimizer-step phase: weights + optimizer states + all gradients + the fp32 gradient partition +
  ZeRO buffers + context. The peak is the larger phase; ZeRO shards model states, never activations.
- GPU, initialisation: under ZeRO-3 on a model built whole (no zero.Init, or QLoRA), the whole model
  plus context, once, before the partitioning (built_whole); it is the peak when it is the largest.
- GPU, end of backward (ZeRO-1): the reduction runs inside engine.backward, so the step holds no
  full gradients; before it, the full 16-bit gradients (without overlap_comm) or those too large for
  a bucket (with overlap_comm + contiguous_gradients, as memfit writes) are live, without activations.
- Host per node: per-process baseline + offloaded states (+ measured offload slack) + the data set,
  during training (+ the 16-bit gather at save under ZeRO-3); or, while loading, the checkpoint on
  rank 0 (ZeRO-3) / dtype conversions per rank. The peak is the larger phase.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from .activations import activation_bytes
from .allocator import fragmentation
from .autocast import autocast_copies, with_copies
from .band import centre_for
from .data import data_host_terms
from .fsdp import fsdp_terms
from .states import fp32_base, frozen_weight_bytes, state_bytes, trainable_params
from .zero import zero_terms
from ..core.units import GIB
from ..plan.stack import Stack, resolve_stack
from ..plan.strategy import knobs_from_plan
from ..core.ds_defaults import (OPT_NVME_BUFFERS, PARAM_NVME_BUFFER_SIZE, PARAM_NVME_BUFFERS, SUB_GROUP_SIZE,
                               accumulation_steps)

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from ..plan.strategy import Strategy

# CUDA context + cuBLAS/cuDNN workspaces per GPU process, outside PyTorch's allocator: 0.3-2 GiB
# measured across cards (sources.md §3; 1.3 GB on a V100 in the transformers docs). Point estimate.
CUDA_CONTEXT_GIB = 0.75
# NCCL communicator buffers with more than one GPU (several channels x 4 MiB NCCL_BUFFSIZE per peer).
NCCL_GIB = 0.5
# Caching-allocator slack on short-lived allocations with fixed shapes (memory/allocator.py has the
# rate per data shape); kept under this name for FSDP's terms and the tests that read it.
ALLOCATOR_SLACK = fragmentation(fixed_shapes=True, expandable_segments=False)
# Host RSS of one training process before any model state: Python, torch, CUDA runtime and
# libraries, a tokenizer. Point estimate of a few GiB per rank.
HOST_PROCESS_GIB = 3.0
# Offloaded states cost more host RAM than their raw bytes (pinned buffers rounded up by the CUDA host
# allocator, optimizer step temporaries per sub-group, allocator fragmentation). Published: a 33B
# ZeRO-3 offload run needed 750-800 GB of host RAM, 1.26-1.35x its raw 18 B/param (sources.md §1).
# memfit now counts DeepSpeed's own 16-bit gradient partition explicitly (memory/zero.py), so the raw
# offloaded bytes are 20 B/param and the same run leaves 1.305 x 18 / 20 - 1 = 17 % for the rest.
OFFLOAD_SLACK_PINNED = round(1.305 * 18 / 20 - 1, 2)
# Without pinning there is no page-locked rounding; assumed half the pinned slack (unmeasured).
OFFLOAD_SLACK_UNPINNED = OFFLOAD_SLACK_PINNED / 2


class _Breakdown:
    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @property
    def total_gib(self) -> float:
        return sum(self.as_dict().values())


# Plain frozen dataclasses: the sweep builds hundreds of these per plan, and the cold path is timed.
@dataclass(frozen=True)
class GpuBreakdown(_Breakdown):
    weights_gib: float
    gradients_gib: float
    optimizer_states_gib: float
    activations_gib: float
    logits_loss_gib: float
    zero_buffers_gib: float
    allocator_slack_gib: float
    cuda_context_gib: float
    nccl_gib: float
    # The modelled terms above times the group's calibrated centre less one (memory/band.py centre_for):
    # what published runs hold beyond the named terms, by the held-out median. Not a mechanism.
    calibration_gib: float = 0.0


@dataclass(frozen=True)
class HostBreakdown(_Breakdown):
    process_baseline_gib: float
    offloaded_optimizer_gib: float
    offloaded_params_gib: float
    offload_slack_gib: float
    nvme_swap_buffers_gib: float
    checkpoint_load_gib: float
    save_gather_gib: float
    dataset_gib: float        # private copies of the data set (memory/data.py; page cache not counted)
    dataloader_gib: float     # dataloader workers' own pages and the batches in flight
    preprocessing_gib: float  # tokenisation workers (data.preprocessing_workers > 1), their own phase
    offloaded_activations_gib: float = 0.0  # activation offloading: the layers' saved tensors, pinned


@dataclass(frozen=True)
class MemoryEstimate:
    """Best point estimates of peak use; `*_fits` compare them with capacity (no headroom)."""

    gpu_peak_gib: float            # reserved by the caching allocator + CUDA context (+ NCCL): what ends a run
    gpu_peak_phase: str
    host_peak_gib: float
    host_peak_phase: str
    nvme_gib: float
    gpu_capacity_gib: float
    host_capacity_gib: float
    nvme_capacity_gib: float
    gpu_fits: bool
    host_fits: bool
    nvme_fits: bool
    trainable_params: int
    gradient_accumulation_steps: int
    gpu: GpuBreakdown
    host: HostBreakdown

    @property
    def gpu_modelled_gib(self) -> float:
        """The peak the named terms explain, before the calibrated centre (memory/band.py centre_for)."""
        return self.gpu_peak_gib - self.gpu.calibration_gib

    @property
    def gpu_centre(self) -> float:
        """The calibrated centre the modelled peak was scaled by (1.0 without one)."""
        modelled = self.gpu_modelled_gib
        return self.gpu_peak_gib / modelled if modelled else 1.0

    @property
    def gpu_allocated_gib(self) -> float:
        """What torch.cuda.max_memory_allocated would report: the modelled peak without slack, context and
        NCCL, scaled by the centre (the published allocated peaks sit as far above it as the others)."""
        g = self.gpu
        modelled = self.gpu_modelled_gib - g.allocator_slack_gib - g.cuda_context_gib - g.nccl_gib
        return modelled * self.gpu_centre

    @property
    def gpu_reserved_gib(self) -> float:
        """What torch.cuda.max_memory_reserved would report: allocated plus the allocator's slack."""
        return self.gpu_allocated_gib + self.gpu.allocator_slack_gib * self.gpu_centre


def estimate_memory(plan: Plan, facts: ModelSpec, strategy: Strategy) -> MemoryEstimate:
    """Estimate peak GPU memory per device and host RAM per node for one strategy.

    Args:
        plan: the checked Plan (hardware, training settings, data).
        facts: ModelSpec of the model that trains.
        strategy: the concrete Strategy.
    Returns:
        MemoryEstimate with the peak, its phase, capacity, verdicts and breakdowns, in GiB.
    """
    if strategy.sharding == "fsdp":  # PyTorch FSDP: its own terms (memory/fsdp.py)
        gpu, gpu_phase, accum, host, host_phase, nvme = _fsdp_peaks(plan, facts, strategy)
    else:
        strategy = with_plan_knobs(strategy, plan)
        gpu, gpu_phase, accum = _gpu_peak(plan, facts, strategy)
        host, host_phase, nvme = _host_peak(plan, facts, strategy)
    hw = plan.hardware
    centre = centre_for(strategy, hw.world_size)
    gpu = replace(gpu, calibration_gib=gpu.total_gib * (centre - 1.0))
    gpu_peak = gpu.total_gib
    host_peak = host.total_gib
    return MemoryEstimate(
        gpu_peak_gib=gpu_peak, gpu_peak_phase=gpu_phase,
        host_peak_gib=host_peak, host_peak_phase=host_phase,
        nvme_gib=nvme,
        gpu_capacity_gib=hw.gpu_memory_gib, host_capacity_gib=hw.host_memory_gib,
        nvme_capacity_gib=hw.nvme_gib,
        gpu_fits=gpu_peak <= hw.gpu_memory_gib, host_fits=host_peak <= hw.host_memory_gib,
        nvme_fits=nvme <= hw.nvme_gib,
        trainable_params=trainable_params(facts, strategy.method, plan.training.lora.rank,
                                          plan.training.lora.target_modules, plan.training.lora.modules_to_save,
                                          dora=plan.training.lora.use_dora),
        gradient_accumulation_steps=accum,
        gpu=gpu, host=host,
    )


def with_plan_knobs(strategy: Strategy, plan: Plan) -> Strategy:
    """The strategy with the DeepSpeed knobs the plan sets (`training.deepspeed`); knobs the strategy
    already carries (read from a config by `advise check`) win, and ZeRO-0 has none."""
    if strategy.zero_knobs is not None or strategy.zero_stage == 0:
        return strategy
    knobs = knobs_from_plan(plan.training.deepspeed.given())
    return strategy if knobs is None else strategy.model_copy(update={"zero_knobs": knobs})


def _shards(strategy: Strategy, world: int) -> tuple[int, int, int]:
    """Divisors for weights, gradients and optimizer states under the ZeRO stage."""
    z = strategy.zero_stage
    return (world if z >= 3 else 1), (world if z >= 2 else 1), (world if z >= 1 else 1)


def built_whole(strategy: Strategy, stack: Stack) -> bool:
    """ZeRO-3 on a model that is not built inside deepspeed.zero.Init (`training.zero_init: false`, or
    QLoRA: transformers' from_pretrained never builds a quantised model under it, modeling_utils.py
    `needs_zero3_init`). deepspeed.initialize then moves the whole module onto the GPU before ZeRO-3
    partitions it (deepspeed/runtime/engine.py _configure_distributed_model: `module.to(device)`
    unless the parameters already carry a ds_id), so every GPU holds the whole model once."""
    return (strategy.sharding != "fsdp" and strategy.zero_stage == 3
            and (not stack.zero_init or strategy.method == "qlora"))


def _gpu_peak(plan: Plan, facts: ModelSpec, strategy: Strategy) -> tuple[GpuBreakdown, str, int]:
    t, world = plan.training, plan.hardware.world_size
    stack = resolve_stack(plan, facts)
    sb = state_bytes(t.precision, t.optimizer, facts.hidden_size)
    n_train = trainable_params(facts, strategy.method, t.lora.rank, t.lora.target_modules, t.lora.modules_to_save,
                               dora=t.lora.use_dora)
    w_div, g_div, o_div = _shards(strategy, world)
    whole_weights = (frozen_weight_bytes(facts, strategy.method, t.precision, t.lora.quantization_config,
                                         kbit_upcast=stack.kbit_upcast, base_fp32=fp32_base(plan, strategy))
                     + n_train * sb.weights)
    weights = whole_weights / w_div
    if strategy.offload_param != "none":
        weights = 0.0
    grads = n_train * sb.gradients / g_div
    opt = n_train * (sb.master + sb.moments) / o_div
    # Step transients: DeepSpeed's fp32 gradient partition (mixed precision), or, without ZeRO (the
    # plain trainer path), torch AdamW's foreach temporaries; ZeRO's fused optimizers step in place.
    temp = sb.foreach_temp if strategy.zero_stage == 0 else 0.0  # 0 for adamw_fused (memory/states.py)
    grad32 = n_train * max(sb.grad_fp32, temp) / o_div
    zt = zero_terms(facts, strategy, world, n_train, whole_weights, sb.weights, mixed=sb.grad_fp32 > 0,
                    lora_rank=t.lora.rank, bf16=t.precision == "bf16")
    if strategy.zero_stage >= 1:
        grad32 = zt.fp32_grad  # DeepSpeed's own fp32 gradient partition (memory/zero.py)
    if strategy.zero_stage >= 2:
        grads = zt.grad_partition  # DeepSpeed's flat 16-bit gradient partition, held from backward on
    held_partition = zt.grad_partition if strategy.zero_stage == 1 else 0.0  # ZeRO-1's copy, besides full grads
    if strategy.offload_optimizer != "none":
        opt = grad32 = 0.0
    buffers = zt.gpu_buffers
    lora = t.lora
    act = activation_bytes(facts, t.seq_len, strategy.micro_batch_size, t.attention, strategy.method,
                           strategy.gradient_checkpointing, t.precision, lora_rank=lora.rank,
                           lora_targets=lora.target_modules, lora_dropout=lora.dropout, stack=stack,
                           dora=lora.use_dora)
    act = with_copies(act, autocast_copies(facts, plan, strategy, stack), facts.num_layers,
                      strategy.gradient_checkpointing)
    accum = accumulation_steps(t.global_batch_size, strategy.micro_batch_size, world)
    slack_rate = fragmentation(stack.fixed_shapes, stack.expandable_segments)
    context = CUDA_CONTEXT_GIB * GIB
    nccl = NCCL_GIB * GIB if world > 1 else 0.0
    # The loss peak (start of backward) and a layer's backward working set come at different moments:
    # stored activations plus the larger of the two (ActivationBytes.peak_bytes).
    activations, logits = act.peak_split()
    dynamic = activations + logits
    # BF16_Optimizer (fp32_grad_persistent) zeroes its bf16 .grad tensors instead of freeing them.
    held_grads = (grads if (accum > 1 or strategy.zero_stage >= 2 or zt.fp32_grad_persistent) else 0.0) + held_partition
    grads += held_partition
    held_fp32 = grad32 if zt.fp32_grad_persistent else 0.0  # BF16_Optimizer allocates it at init
    fb = weights + opt + held_grads + held_fp32 + buffers + dynamic * (1 + slack_rate)
    # ZeRO-1/2's step also holds a flattened 16-bit copy of the partition's gradients while it
    # converts them to fp32, or before it an fp64 copy of the largest gradient for the norm
    # (memory/zero.py _stage12): DeepSpeed's own transients, shown with its buffers.
    step_buffers = buffers + zt.step_extra
    end = 0.0
    if strategy.zero_stage == 1 and not zt.fp32_grad_persistent:
        # ZeRO-1 (memory/zero.py _stage1_backward_grads): the reduction inside engine.backward leaves
        # no full 16-bit gradients for the step; what is live before it is counted at the end of
        # backward, when the activations are gone.
        grads = held_partition
        end = weights + opt + held_fp32 + held_partition + zt.backward_grads + buffers
    step = weights + opt + grads + grad32 + step_buffers
    # A model built whole under ZeRO-3 is on every GPU whole once, before the partitioning.
    init = whole_weights if built_whole(strategy, stack) else 0.0
    if init > max(fb, step):
        parts = (init, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        phase = "initialisation"
    elif end > max(fb, step):
        parts = (weights, held_partition + zt.backward_grads, opt + held_fp32, 0.0, 0.0, buffers, 0.0)
        phase = "end of backward"
    elif fb >= step:
        parts = (weights, held_grads, opt + held_fp32, activations, logits, buffers,
                 dynamic * slack_rate)
        phase = "forward/backward"
    else:
        parts = (weights, grads, opt + grad32, 0.0, 0.0, step_buffers, 0.0)
        phase = "optimizer step"
    names = ("weights_gib", "gradients_gib", "optimizer_states_gib", "activations_gib",
             "logits_loss_gib", "zero_buffers_gib", "allocator_slack_gib")
    values = {k: v / GIB for k, v in zip(names, parts)}
    return GpuBreakdown(**values, cuda_context_gib=context / GIB, nccl_gib=nccl / GIB), phase, accum


def _host_peak(plan: Plan, facts: ModelSpec, strategy: Strategy) -> tuple[HostBreakdown, str, float]:
    t, hw = plan.training, plan.hardware
    stack = resolve_stack(plan, facts)
    ranks = hw.gpus_per_node
    node_share = ranks / hw.world_size  # this node's share of ZeRO-partitioned states
    sb = state_bytes(t.precision, t.optimizer, facts.hidden_size)
    n_train = trainable_params(facts, strategy.method, t.lora.rank, t.lora.target_modules, t.lora.modules_to_save,
                               dora=t.lora.use_dora)
    base_fp32 = fp32_base(plan, strategy)
    weight_bytes = (frozen_weight_bytes(facts, strategy.method, t.precision, t.lora.quantization_config,
                                        kbit_upcast=stack.kbit_upcast, base_fp32=base_fp32)
                    + n_train * sb.weights)
    opt_host = opt_nvme = params_host = params_nvme = swap = 0.0
    # DeepSpeed's own host buffers under optimizer offload: ZeRO-3's 16-bit gradient partition,
    # ZeRO-1/2's pinned staging buffer of one parameter (memory/zero.py).
    zt = zero_terms(facts, strategy, hw.world_size, n_train, weight_bytes, sb.weights, mixed=sb.grad_fp32 > 0,
                    lora_rank=t.lora.rank)
    ds_host = (zt.host_grad16 * hw.world_size * node_share + zt.host_staging * ranks)
    if strategy.offload_optimizer == "cpu":
        opt_host = n_train * sb.optimizer * node_share + ds_host
    elif strategy.offload_optimizer == "nvme":
        # Master weights and moments swap to NVMe; the fp32 gradient partition stays in host RAM.
        opt_nvme = n_train * (sb.master + sb.moments) * node_share
        opt_host = n_train * sb.grad_fp32 * node_share + ds_host
        sub_group = min(SUB_GROUP_SIZE, n_train / hw.world_size)
        swap += ranks * OPT_NVME_BUFFERS * sub_group * 4.0
    if strategy.offload_param == "cpu":
        params_host = weight_bytes * node_share
    elif strategy.offload_param == "nvme":
        params_nvme = weight_bytes * node_share
        buffer = max(PARAM_NVME_BUFFER_SIZE, facts.largest_layer_params)  # as dsconfig writes buffer_size
        swap += ranks * PARAM_NVME_BUFFERS * buffer * sb.weights
    slack_rate = OFFLOAD_SLACK_PINNED if strategy.pin_memory else OFFLOAD_SLACK_UNPINNED
    slack = (opt_host + params_host) * slack_rate
    baseline = HOST_PROCESS_GIB * GIB * ranks
    data = data_host_terms(plan, strategy.micro_batch_size)
    dataset, loader = data.dataset_private, data.workers
    # Checkpoint in 16 bits on disk (the usual release format).
    ckpt16 = facts.total_params * 2.0
    save_gather = ckpt16 if (strategy.zero_stage == 3 and strategy.method == "full"
                             and strategy.gather_16bit_on_save) else 0.0
    if strategy.zero_stage == 3 and not built_whole(strategy, stack):
        load = ckpt16  # rank 0 loads the whole state dict under zero.Init (sources.md §4)
    elif base_fp32:
        load = ranks * facts.total_params * 4.0  # each rank converts its copy to fp32
    else:
        load = 0.0  # memory-mapped safetensors, no private copy without a dtype change
    lora = t.lora
    offloaded_acts = ranks * activation_bytes(
        facts, t.seq_len, strategy.micro_batch_size, t.attention, strategy.method, strategy.gradient_checkpointing,
        t.precision, lora_rank=lora.rank, lora_targets=lora.target_modules, lora_dropout=lora.dropout,
        stack=stack, dora=lora.use_dora).offloaded_bytes if stack.activation_offloading else 0.0
    train = (opt_host + params_host + slack + swap + dataset + loader + save_gather + offloaded_acts)
    loading = params_host * (1 + slack_rate) + swap + dataset + load
    # Tokenisation runs before the model loads (the data set is built, then the Trainer starts).
    preprocessing = data.preprocessing
    if preprocessing > max(train, loading):
        values = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, preprocessing)
        phase = "data preprocessing"
    elif train >= loading:
        values = (opt_host, params_host, slack, swap, 0.0, save_gather, dataset, loader, 0.0)
        phase = "training" if save_gather == 0 else "checkpoint save"
    else:
        values = (0.0, params_host, params_host * slack_rate, swap, load, 0.0, dataset, 0.0, 0.0)
        phase = "model loading"
    names = ("offloaded_optimizer_gib", "offloaded_params_gib", "offload_slack_gib",
             "nvme_swap_buffers_gib", "checkpoint_load_gib", "save_gather_gib", "dataset_gib",
             "dataloader_gib", "preprocessing_gib")
    host = HostBreakdown(process_baseline_gib=baseline / GIB, **{k: v / GIB for k, v in zip(names, values)},
                         offloaded_activations_gib=(offloaded_acts if phase in ("training", "checkpoint save") else 0.0) / GIB)
    return host, phase, (opt_nvme + params_nvme) / GIB


def _fsdp_peaks(plan: Plan, facts: ModelSpec, strategy: Strategy) -> tuple[GpuBreakdown, str, int, HostBreakdown, str, float]:
    """FSDP's terms (bytes) as breakdowns in GiB, plus the per-process terms shared with DeepSpeed."""
    stack = resolve_stack(plan, facts)
    terms = fsdp_terms(plan, facts, strategy, fragmentation(stack.fixed_shapes, stack.expandable_segments))
    gpu = GpuBreakdown(**{k: v / GIB for k, v in terms.gpu.items()}, cuda_context_gib=CUDA_CONTEXT_GIB,
                       nccl_gib=NCCL_GIB if plan.hardware.world_size > 1 else 0.0)
    host = HostBreakdown(process_baseline_gib=HOST_PROCESS_GIB * plan.hardware.gpus_per_node,
                         **{k: v / GIB for k, v in terms.host.items()})
    return gpu, terms.gpu_phase, terms.accumulation_steps, host, terms.host_phase, 0.0
