"""DeepSpeed ZeRO's own GPU and host buffers, term by term, as DeepSpeed 0.19 allocates them.

Each term names the DeepSpeed function that allocates it (deepspeed/runtime/zero/*.py); the
explanation is in docs/explanation/memory-model.md ("ZeRO runtime"). All sizes are bytes per rank and
come from the knobs of the config (core.ds_defaults.zero_knobs: the ones memfit writes, or those
`advise check` read from a config), never from a fitted factor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.ds_defaults import zero_knobs

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.strategy import Strategy

# DeepSpeed communicates gradients in the 16-bit model dtype unless `communication_data_type` or
# `data_types.grad_accum_dtype` says otherwise (engine.py: get_data_types; memfit writes neither).


@dataclass(frozen=True)
class ZeroTerms:
    """DeepSpeed's buffers on one rank, in bytes (0 where a stage or offload does not allocate it)."""

    gathered_params: float      # ZeRO-3: 16-bit parameters gathered at once (reuse window + prefetch)
    persistent_params: float    # ZeRO-3: parameters under param_persistence_threshold, gathered for good
    reduce_scatter_copy: float  # ZeRO-3: reduce_scatter_coalesced's flat copy of one full bucket
    gathered_grad: float        # ZeRO-3: full gradient of the largest trainable module before reduction
    reduce_buckets: float       # ipg buckets (contiguous_gradients), double-buffered under overlap_comm (1/2)
    offload_staging_gpu: float  # ZeRO-1/2 + optimizer offload: the GPU staging buffer of one parameter
    grad_partition: float       # persistent 16-bit gradient partition (ZeRO-2 grads_in_partition, ZeRO-3 flat)
    fp32_grad: float            # fp32 gradient built at the step (ZeRO-3: one sub-group at a time)
    fp32_grad_persistent: bool  # True: held through forward/backward (ZeRO-1's BF16_Optimizer path)
    host_grad16: float          # ZeRO-3 + optimizer offload: the 16-bit gradient partition in host RAM
    host_staging: float         # ZeRO-1/2 + optimizer offload: the pinned host staging buffer
    step_extra: float = 0.0     # ZeRO-1/2 step transients beyond fp32_grad (flat 16-bit copy / fp64 norm copy)
    # ZeRO-1 (DeepSpeedZeroOptimizer): the 16-bit gradients live at the end of backward, before the
    # reduction moves them into the buckets; none is held in full at the step (_stage1_backward_grads).
    backward_grads: float = 0.0

    @property
    def gpu_buffers(self) -> float:
        """What the memory model reports as ZeRO buffers: gathered params and grads, buckets, staging."""
        return (self.gathered_params + self.persistent_params + self.reduce_scatter_copy + self.gathered_grad
                + self.reduce_buckets + self.offload_staging_gpu)


def knobs_for(strategy: Strategy, hidden_size: int | None) -> dict[str, Any]:
    """The strategy's knobs, each unset one filled with the value memfit writes."""
    base = zero_knobs(hidden_size)
    knobs = getattr(strategy, "zero_knobs", None)
    given = knobs.model_dump() if knobs else {}
    return {k: (given[k] if given.get(k) is not None else v) for k, v in base.items()}


def zero_terms(facts: ModelSpec, strategy: Strategy, world: int, n_train: int, weights_bytes: float, w16: float,
               mixed: bool = True, lora_rank: int = 16, bf16: bool = False) -> ZeroTerms:
    """DeepSpeed's ZeRO buffers for one strategy.

    Args:
        facts: ModelSpec (total_params, largest_layer_params, hidden_size).
        strategy: the Strategy (stage, offloads, method, optional knobs).
        world: data-parallel ranks (ZeRO partitions over all of them).
        n_train: trainable parameters.
        weights_bytes: bytes of the whole model's weights as they train (frozen base + trainable).
        w16: bytes per element of the 16-bit (or fp32) model dtype the gradients and buckets use.
        mixed: mixed precision (an fp32 gradient copy exists at the step; in fp32 ZeRO-1/2 reuse it).
        lora_rank: the LoRA rank (sizes the adapter matrices ZeRO-3 keeps persistent).
        bf16: bf16 mixed precision (with fp32 gradient accumulation ZeRO-1 runs BF16_Optimizer).
    Returns:
        ZeroTerms in bytes; all zero for stage 0.
    """
    z = strategy.zero_stage
    if z == 0:
        return ZeroTerms(0, 0, 0, 0, 0, 0, 0, 0, False, 0, 0)
    k = knobs_for(strategy, facts.hidden_size)
    opt_off = strategy.offload_optimizer != "none"
    part = n_train / world
    if z == 3:
        return _stage3(facts, strategy, k, (part, n_train, lora_rank), weights_bytes, w16, opt_off, mixed)
    if z == 1 and bf16 and mixed and k.get("grad_accum_fp32") and not opt_off:
        return _bf16_optimizer(n_train)
    return _stage12(facts, strategy, k, (part, n_train), w16, opt_off, mixed)


def _bf16_optimizer(n_train: int) -> ZeroTerms:
    # engine.py _do_optimizer_sanity_check: bf16 + data_types.grad_accum_dtype fp32 + ZeRO-1 without
    # offload returns BFLOAT16, so _configure_bf16_optimizer builds bf16_optimizer.py BF16_Optimizer,
    # not DeepSpeedZeroOptimizer. Its _setup_for_real_optimizer allocates fp32_groups_gradients_flat,
    # zeros_like the whole bf16 flat buffer in fp32 (4 B x every trainable parameter, not a
    # partition), at init, kept for good; no ipg buckets, no 16-bit gradient partition. Without
    # immediate_grad_update (precision_config.py default False) the bf16 .grad tensors are added to it
    # at the boundary (update_hp_grads) and zeroed, not freed, so they are held from the first
    # backward on (the caller holds the 16-bit gradients when fp32_grad_persistent is set).
    return ZeroTerms(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, n_train * 4.0, True, 0.0, 0.0)


def _stage12(facts: ModelSpec, strategy: Strategy, k: dict[str, Any], sizes: tuple[float, int], w16: float,
             opt_off: bool, mixed: bool) -> ZeroTerms:
    part, n_train = sizes
    # stage_1_and_2.py setup_buckets: one reduce_bucket_size buffer, a second one under overlap_comm
    # ("double buffers to avoid data access conflict"); only with contiguous_gradients. The allgather
    # after the step runs in place on the flat 16-bit buffer (runtime/utils.py all_gather_dp_groups ->
    # all_gather_into_tensor_dp_groups), so allgather_bucket_size allocates nothing.
    n_buf = (2 if k["overlap_comm"] else 1) if k["contiguous_gradients"] else 0
    buckets = n_buf * k["reduce_bucket_size"] * w16
    # ZeRO-2 keeps the 16-bit gradients of its partition in one flat buffer from the first backward
    # on (stage_1_and_2.py copy_grads_in_partition: grads_in_partition); ZeRO-1 keeps full gradients
    # until the reduction at the end of backward (counted by the caller as model gradients). Both are
    # released at the epilogue (_release_ipg_buffers) but the partition lives on in
    # averaged_gradients until the step: present from backward through the step.
    # ZeRO-1 with contiguous_gradients copies its partition the same way (reduce_ipg_grads: "zero
    # stage 1 - partition only optimizer state" -> copy_grads_in_partition), besides the full gradients.
    grad_partition = part * w16 if (not opt_off and (strategy.zero_stage == 2 or k["contiguous_gradients"])) else 0.0
    largest = facts.largest_layer_params if strategy.method == "full" else 0
    # Optimizer offload (stage_1_and_2.py __init__, cpu_offload): temp_grad_buffer_for_gpu_offload on
    # the GPU and temp_grad_buffer_for_cpu_offload (pinned) on the host, each of the largest parameter.
    staging = largest * w16 if opt_off else 0.0
    # The fp32 gradient of the partition is built at the step (stage_1_and_2.py step:
    # flat_grad_partition.to(fp32)) and freed after it; on the host under offload (counted there).
    fp32 = 0.0 if (opt_off or not mixed) else part * 4.0
    # That conversion reads a new flat tensor: step flattens the partition's gradient views
    # (self.flatten(self.averaged_gradients[i]) = torch._utils._flatten_dense_tensors, a torch.cat
    # into fresh memory; DeepSpeed 0.14 and 0.19 alike) while grads_in_partition, whose views they
    # are, is still held; `del flat_grad_partition` frees it only after `.to(fp32)` has built the fp32
    # copy: the partition's gradients exist twice in 16 bits and once in fp32 (in fp32 training `.to`
    # returns the flat copy itself). Before that, scaled_global_norm -> get_grad_norm_direct takes each
    # gradient view's norm on a copy in get_norm_dtype() (zero/utils.py: fp64 where the device has it;
    # 0.14: g.data.double()), one at a time: 8 B x the largest gradient in the partition. The step's
    # transient is the larger of the two moments. Under optimizer offload the step reads the pinned
    # fp32 buffer and takes the norm on the host (no flatten, no copy here).
    flat_copy = 0.0 if opt_off else part * w16
    norm_copy = 0.0 if opt_off else min(largest, part) * 8.0
    extra = max(flat_copy, norm_copy - fp32)
    backward = _stage1_backward_grads(facts, strategy, k, n_train, w16) if strategy.zero_stage == 1 else 0.0
    return ZeroTerms(0.0, 0.0, 0.0, 0.0, buckets, staging, grad_partition, fp32, False, 0.0, staging, extra,
                     backward)


def _stage1_backward_grads(facts: ModelSpec, strategy: Strategy, k: dict[str, Any], n_train: int, w16: float) -> float:
    """ZeRO-1's 16-bit gradients live at once at the end of backward (an accumulation boundary), bytes.

    engine.backward runs the reduction before it returns (allreduce_gradients -> reduce_gradients), and
    stage_1_and_2.py reduce_independent_p_g_buckets_and_remove_grads copies each gradient into the ipg
    bucket and points param.grad at that copy (`grad_reduc.data = new_grad_tensor.data.view_as(...)`),
    so the step holds none in full (traced on CPU: bench/zero_cpu.py z1-w2, z1-nooverlap-w2 and z2-w2
    allocate the same bytes in the optimizer step). Before that: without overlap_comm (DeepSpeed's
    default below stage 3) the gradient hook leaves the gradients alone and reduce_gradients walks
    them after backward, all of them live; with overlap_comm and contiguous_gradients (what memfit
    writes) the hook (process_gradients) moves each into a bucket as it appears, and only a gradient
    of more elements than reduce_bucket_size bypasses the bucket (extra_large_param_to_reduce) and
    stays until the epilogue.
    """
    if not (k["overlap_comm"] and k["contiguous_gradients"]):
        return n_train * w16
    return _bypass_elements(facts, strategy, int(k["reduce_bucket_size"])) * w16


def _bypass_elements(facts: ModelSpec, strategy: Strategy, bucket: int) -> int:
    """Trainable elements in tensors larger than the reduce bucket (full fine-tuning: Linear weights,
    the embedding and an untied LM head; LoRA's adapter matrices are far smaller than any bucket)."""
    if strategy.method != "full":
        return 0
    lm_head = 0 if facts.tie_word_embeddings else facts.lm_head_params
    big = sum(x.weight_params for x in facts.linear_layers if x.in_features * x.out_features > bucket)
    return big + sum(n for n in (facts.embedding_params, lm_head) if n > bucket)


def persistent_params(facts: ModelSpec, strategy: Strategy, threshold: int, n_train: int = 0, lora_rank: int = 16) -> int:
    """Parameters ZeRO-3 keeps gathered on every rank: each tensor of fewer than `threshold` elements.

    parameter_offload.py DeepSpeedZeRoOffload.mark_persistent_parameters sets `ds_persist` on every
    parameter with ds_numel < param_persistence_threshold (model_persistence_threshold, default
    unbounded, caps the total); partitioned_param_coordinator.py never releases them (__params_to_release
    skips ds_persist), with parameter offload too. Counted here: the per-layer vectors (norm weights:
    what the decoder layers hold outside their Linear layers, each at most h wide), Linear biases,
    Linear weights themselves when that small, and LoRA's A (r x in) and B (out x r) matrices.

    Args:
        facts: ModelSpec (total, embedding, lm_head and Linear counts).
        strategy: the Strategy (method).
        threshold: param_persistence_threshold (elements).
        n_train: trainable parameters (the adapters, for lora/qlora).
        lora_rank: LoRA rank for lora/qlora.
    Returns:
        Persistent parameter elements (whole tensors, not partitions).
    """
    linears = [x for x in facts.linear_layers if x.kind == "linear"]
    in_linears = sum(x.params for x in facts.linear_layers)
    lm_head = 0 if facts.tie_word_embeddings else facts.lm_head_params
    vectors = max(0, facts.total_params - facts.embedding_params - lm_head - in_linears)
    small = vectors if facts.hidden_size < threshold else 0
    small += sum(x.out_features * x.count for x in linears if x.bias and x.out_features < threshold)
    # A whole Linear weight under the threshold (small models, or DeepSpeed's 1e5 default with h <= 316).
    small += sum(x.weight_params for x in facts.linear_layers if x.in_features * x.out_features < threshold)
    if strategy.method in ("lora", "qlora") and n_train:
        # The share of adapter elements in matrices under the threshold, over every Linear, applied to
        # the adapters that train (target_modules picks which; this keeps the count target-agnostic).
        mats = [(n, x.count) for x in linears for n in (lora_rank * x.in_features, x.out_features * lora_rank)]
        total = sum(n * c for n, c in mats)
        small += round(n_train * sum(n * c for n, c in mats if n < threshold) / total) if total else 0
    return small


# stage3.py _constant_buffered_norm2: the fp64 norm is taken over chunks of at most this many elements.
NORM_CHUNK = 250_000_000


def boundary_offload_bytes(partition_elems: float, w16: float) -> float:
    """ZeRO-3 + optimizer offload, at the accumulation boundary: GPU bytes of one parameter's offload.

    stage3.py partition_grads -> _offload_grad_partition_at_boundary, while the parameter's full 16-bit
    gradient still exists (param.grad is freed after it): the reduced partition is copied to the GPU
    (grad_buffer.to(grad_partition.device), 16-bit), its norm is taken on an fp64 copy of each chunk
    (_constant_buffered_norm2: part.data.double()), then .to(fp32) builds the copy sent to the host
    buffer, after the fp64 chunk is gone.

    Args:
        partition_elems: the elements of the largest trainable parameter's partition on one rank.
        w16: bytes per 16-bit gradient element.
    Returns:
        The bytes live at once: the 16-bit copy plus the larger of the fp64 chunk and the fp32 copy.
    """
    return partition_elems * w16 + max(8.0 * min(partition_elems, NORM_CHUNK), 4.0 * partition_elems)


def _stage3(facts: ModelSpec, strategy: Strategy, k: dict[str, Any], sizes: tuple[float, int, int], weights_bytes: float,
            w16: float, opt_off: bool, mixed: bool) -> ZeroTerms:
    part, n_train, lora_rank = sizes
    # partitioned_param_coordinator.py: a gathered parameter is released after its module runs unless
    # it is used again within `max_reuse_distance` parameters of the recorded trace
    # (__params_to_release), so those kept for reuse total at most max_reuse_distance; add the module
    # in use (at most L) and the prefetch in flight (fetch_sub_module, prefetch_bucket_size). The
    # prefetcher also marks every queued use it passes over (__most_recent_step_id_param_fetched_for),
    # and when nothing is left to fetch it drains the queue and keeps everything gathered until its
    # backward use: the whole model when it is small (seen on CPU, bench/zero_cpu.py). Never more
    # than the whole model. In the weights' dtype (4-bit + fp32 non-quantised under QLoRA).
    per_param = weights_bytes / facts.total_params
    window = k["max_reuse_distance"] + facts.largest_layer_params + k["prefetch_bucket_size"]
    gathered = min(facts.total_params, window) * per_param
    # The largest trainable module's full 16-bit gradient exists until it is reduced (stage3.py
    # reduce_ready_partitions_and_remove_grads -> __add_grad_to_ipg_bucket; one larger than the bucket
    # is reduced from param.grad itself): DeepSpeed's own 4*L term counts it (estimate_zero3_model_states_mem_needs).
    gathered_grad = facts.largest_layer_params * w16 if strategy.method == "full" else 0.0
    if opt_off and strategy.method == "full":
        gathered_grad += boundary_offload_bytes(facts.largest_layer_params * part / max(n_train, 1), w16)
    # stage3.py _setup_for_real_optimizer: one ipg bucket of reduce_bucket_size per communication dtype
    # (contiguous_gradients), on the GPU even with offload.
    buckets = k["reduce_bucket_size"] * w16 if k["contiguous_gradients"] else 0.0
    # stage3.py __reduce_and_partition_ipg_grads -> __avg_scatter_grads (reduce_scatter, DeepSpeed's
    # default) -> comm/coalesced_collectives.py reduce_scatter_coalesced: a bucket of more than one
    # gradient is interleaved by rank into a new flat tensor (torch.cat) before the reduce-scatter, a
    # second copy of the bucket's elements while the ipg buffer is still held. The bucket fills up to
    # reduce_bucket_size, and never holds more than the trainable parameters.
    scatter_copy = min(k["reduce_bucket_size"], n_train) * w16
    persistent = persistent_params(facts, strategy, k["param_persistence_threshold"], n_train, lora_rank) * w16
    # stage3.py _setup_for_real_optimizer: grad_partitions_flat_buffer, the 16-bit gradients of the
    # whole partition, zeros at init, on the optimizer's device (pinned host RAM under offload).
    # Its dtype is gradient_accumulation_dtype (engine.py get_data_types): fp32 when the config sets
    # data_types.grad_accum_dtype to fp32, else the model dtype.
    grad16 = part * (4.0 if k.get("grad_accum_fp32") else w16)
    # stage3.py step -> _prepare_fp32_grad_for_sub_group: each sub-group's gradients are flattened and
    # converted to fp32 (at most sub_group_size elements), stepped, and released by _release_sub_group
    # before the next one: a step transient on the GPU. The fp32 buffer initialize_optimizer_states
    # allocates is dropped at its end (`group.grad = None` without offload); under optimizer offload
    # each sub-group keeps its own pinned host buffer instead (the host model's 4 B of fp32 gradients).
    # Without fp32 master weights (pure 16-bit training) the partition itself serves.
    fp32 = 0.0 if (opt_off or not mixed) else min(part, k["sub_group_size"]) * 4.0
    # As in ZeRO-1/2, that fp32 gradient is converted from a new flat copy of the sub-group's 16-bit
    # gradient views (_prepare_fp32_grad_for_sub_group: self.flatten(self.averaged_gradients[i]).to(..),
    # a temporary freed at the end of the statement, while grad_partitions_flat_buffer is held). The
    # norm before it (get_grad_norm_direct: .to(get_norm_dtype()), fp64) copies one parameter's
    # partition at a time, 8 B x L/N, counted when larger. Under optimizer offload the step reuses the
    # norms taken at the boundary (boundary_offload_bytes, counted with gathered_grad): no copy here.
    flat_copy = 0.0 if opt_off else min(part, k["sub_group_size"]) * (4.0 if k.get("grad_accum_fp32") else w16)
    norm_copy = 0.0 if opt_off else facts.largest_layer_params * (part / max(n_train, 1)) * 8.0  # L/N
    extra = max(flat_copy, norm_copy - fp32) if strategy.method == "full" else flat_copy
    return ZeroTerms(gathered, persistent, scatter_copy, gathered_grad, buckets, 0.0, 0.0 if opt_off else grad16,
                     fp32, False, grad16 if opt_off else 0.0, 0.0, extra)
