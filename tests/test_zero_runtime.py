"""DeepSpeed ZeRO's own buffers (engine/memory/zero.py), each against the DeepSpeed 0.19 function that
allocates it, and the knobs `advise check` reads from a config. The traced real-run comparison is
bench/zero_cpu.py (tests/test_zero_cpu.py, slow)."""
from __future__ import annotations

import pytest

from memfit.engine.core.units import GIB
from memfit.engine.deepspeed.check import knobs_from_config, strategy_from_config
from memfit.engine.deepspeed.config import deepspeed_config
from memfit.engine.memory.estimate import estimate_memory
from memfit.engine.memory.zero import zero_terms
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy, ZeroKnobs

LLAMA7 = resolve_model("meta-llama/Llama-2-7b-hf")
N = LLAMA7.total_params          # 6,738,415,616 (meta-device count, sources.md §4)
L = 32_000 * 4_096               # embed_tokens / lm_head: the largest module of Llama-2-7B
H2 = 4_096 * 4_096               # memfit's reduce bucket for h = 4096 (HF "auto" rule h*h)


def plan(gpus=8, **training):
    return plan_from_dict({"model": "meta-llama/Llama-2-7b-hf",
                           "hardware": {"gpu_memory": 80, "gpus_per_node": gpus, "host_memory": 1024},
                           "training": {"seq_len": 2048, "method": "full", **training}}, "t.yaml")


def full(stage, **kw):
    return Strategy(method="full", zero_stage=stage, gradient_checkpointing=True, **kw)


def test_zero3_holds_its_gradient_partition_and_steps_one_fp32_sub_group():
    # stage3.py _setup_for_real_optimizer: grad_partitions_flat_buffer (bf16, P/N) from init on, so
    # forward/backward holds it with the 12 B of master weights and Adam moments; at the step
    # _prepare_fp32_grad_for_sub_group adds the fp32 gradient of one sub-group (P/N < 1e9 here).
    long = plan(micro_batch_size=8)
    e = estimate_memory(long, LLAMA7, full(3, micro_batch_size=8))
    assert e.gpu_peak_phase == "forward/backward"
    assert e.gpu.gradients_gib == pytest.approx(2 * N / 8 / GIB)
    assert e.gpu.optimizer_states_gib == pytest.approx(12 * N / 8 / GIB)
    step = estimate_memory(plan(), LLAMA7, full(3))
    assert step.gpu_peak_phase == "optimizer step"
    assert step.gpu.optimizer_states_gib == pytest.approx((12 + 4) * N / 8 / GIB)


def test_zero3_gathers_up_to_the_reuse_distance():
    # partitioned_param_coordinator.py __params_to_release: parameters used again within
    # max_reuse_distance stay gathered; plus the module in use (<= L) and the prefetch bucket; plus
    # the largest module's bf16 gradient before reduction; plus one bf16 ipg bucket (stage3.py).
    knobs = ZeroKnobs(max_reuse_distance=100_000_000, prefetch_bucket_size=50_000_000, reduce_bucket_size=H2)
    e = estimate_memory(plan(), LLAMA7, full(3, zero_knobs=knobs))
    gathered = (100_000_000 + L + 50_000_000) * 2
    # Plus the bucket's flat copy in reduce_scatter_coalesced (comm/coalesced_collectives.py) and the
    # persistent norm weights (2 per layer + the final norm, h = 4096 < 10*h each: parameter_offload.py
    # mark_persistent_parameters).
    persistent = (2 * 32 + 1) * 4096 * 2
    # The peak is the step, which also holds the flat bf16 copy of the sub-group's gradients that
    # _prepare_fp32_grad_for_sub_group converts to fp32 (P/N = 842M < sub_group_size 1e9).
    assert e.gpu_peak_phase == "optimizer step"
    flat = 2 * N / 8
    assert e.gpu.zero_buffers_gib == pytest.approx((gathered + L * 2 + 2 * H2 * 2 + persistent + flat) / GIB)
    # The default 1e9 window holds more than one 4*L: the "ZeRO-3 buffers too small".
    default = estimate_memory(plan(), LLAMA7, full(3))
    assert default.gpu.zero_buffers_gib > e.gpu.zero_buffers_gib


def test_a_model_smaller_than_the_window_stays_gathered():
    # Qwen2.5-0.5B (494,032,768 params, tied) under ZeRO-3 with the 1e9 default window: every
    # parameter is reused within the window, so all of it is gathered at once in bf16.
    qwen = resolve_model("Qwen/Qwen2.5-0.5B")
    p = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 80, "gpus_per_node": 8, "host_memory": 1024},
                        "training": {"seq_len": 512, "method": "lora"}}, "t.yaml")
    e = estimate_memory(p, qwen, Strategy(method="lora", zero_stage=3))
    bucket = max(896 * 896, 1 << 20) * 2  # h*h, raised to memfit's 2^20 floor (core/ds_defaults.py)
    # reduce_scatter_coalesced copies the filled bucket: min(bucket, trainable adapters) elements.
    adapters = qwen.lora_trainable_params(16)
    scatter = min(1 << 20, adapters) * 2
    # Persistent (under 10*h = 8,960 elements): 24 layers x 2 norms + the final one (896 each), the
    # q/k/v biases (896 + 128 + 128 per layer), and lora_B of k_proj and v_proj (128 x 16 = 2,048
    # each; every other adapter matrix has 16 x 896 or more elements).
    persistent = (24 * 2 + 1) * 896 + 24 * (896 + 128 + 128) + 24 * 2 * 2048
    assert e.gpu.zero_buffers_gib == pytest.approx((e.gpu.weights_gib * 8 * GIB + bucket + scatter
                                                     + persistent * 2) / GIB, rel=1e-6)


def test_zero12_reduce_buckets_are_double_under_overlap_comm():
    # stage_1_and_2.py setup_buckets: buf_0, and buf_1 "to avoid data access conflict when
    # overlap_comm is enabled"; the allgather after the step runs in place (no bucket).
    # The step's flat 16-bit gradient copy (next test) is in zero_buffers_gib at the step too.
    on = estimate_memory(plan(), LLAMA7, full(2))
    off = estimate_memory(plan(), LLAMA7, full(2, zero_knobs=ZeroKnobs(overlap_comm=False)))
    assert on.gpu_peak_phase == off.gpu_peak_phase == "optimizer step"
    assert on.gpu.zero_buffers_gib == pytest.approx((2 * H2 * 2 + 2 * N / 8) / GIB)
    assert off.gpu.zero_buffers_gib == pytest.approx((H2 * 2 + 2 * N / 8) / GIB)


def test_zero12_step_holds_a_flat_16bit_gradient_copy_or_the_norms_fp64_copy():
    # stage_1_and_2.py step: flat_grad_partition = self.flatten(self.averaged_gradients[i]) (a new
    # bf16 tensor of P/N) exists with grads_in_partition (P/N bf16) and its .to(fp32) (P/N fp32):
    # the step peak is W + 2P/N + 2P/N + 4P/N + 12P/N (master + moments), 2 B/param of the partition
    # more than the states. Before it, get_grad_norm_direct copies each gradient to fp64
    # (zero/utils.py get_norm_dtype): 8 B x min(L, P/N), larger than 6 B x P/N once P/N < 4/3 L.
    e = estimate_memory(plan(), LLAMA7, full(2))
    assert e.gpu_modelled_gib == pytest.approx((2 * N + (2 + 2 + 4 + 12) * N / 8 + 2 * H2 * 2) / GIB
                                           + e.gpu.cuda_context_gib + e.gpu.nccl_gib)
    # 64 GPUs: P/N = 105M < L = 131M; the fp64 copy (8 B x 105M, all of the partition) beats the
    # 6 B x P/N of the flat copy and its fp32 conversion: the extra over fp32 is 8 - 4 = 4 B x P/N.
    # (At 64 GPUs forward/backward is the peak, so the step's terms are read off zero_terms.)
    part = N / 64
    wide = zero_terms(LLAMA7, full(2), 64, N, 2 * N, 2.0)
    assert wide.fp32_grad == pytest.approx(4 * part)
    assert wide.step_extra == pytest.approx(8 * min(L, part) - 4 * part)
    # ZeRO-3 (_prepare_fp32_grad_for_sub_group: self.flatten(...).to(fp32)): the flat copy of one
    # sub-group; the norm copies one parameter's partition, 8 B x L/N, below 6 B x P/N here.
    z3 = zero_terms(LLAMA7, full(3, zero_knobs=ZeroKnobs(sub_group_size=100_000_000)), 8, N, 2 * N, 2.0)
    assert z3.fp32_grad == pytest.approx(4 * 100_000_000)
    assert z3.step_extra == pytest.approx(max(2 * 100_000_000, 8 * L / 8 - 4 * 100_000_000))
    # Under optimizer offload neither copy is on the GPU.
    off = estimate_memory(plan(), LLAMA7, full(2, offload_optimizer="cpu"))
    assert off.gpu.zero_buffers_gib == pytest.approx((2 * H2 * 2 + L * 2) / GIB)


def test_zero2_keeps_its_gradient_partition_even_on_one_gpu():
    # stage_1_and_2.py copy_grads_in_partition: grads_in_partition (bf16) lives from the first
    # backward on; on one GPU the partition is the whole model.
    e = estimate_memory(plan(gpus=1), LLAMA7, full(2))
    zero0 = estimate_memory(plan(gpus=1), LLAMA7, full(0))
    assert e.gpu.gradients_gib == pytest.approx(2 * N / GIB)
    assert e.gpu_peak_gib >= zero0.gpu_peak_gib


def test_the_config_memfit_writes_reads_back_to_the_same_estimate():
    # Writer (deepspeed/config.py) and reader (deepspeed/check.py) agree on every buffer-sizing knob.
    p = plan(gradient_checkpointing=True)
    for stage in (1, 2, 3):
        s = full(stage)
        zero = deepspeed_config(s, p, LLAMA7)["zero_optimization"]
        read = strategy_from_config({"zero_optimization": zero, "train_micro_batch_size_per_gpu": 1}, p)
        assert estimate_memory(p, LLAMA7, read).gpu_peak_gib == pytest.approx(estimate_memory(p, LLAMA7, s).gpu_peak_gib)


def test_knobs_left_out_of_a_config_are_deepspeeds_defaults():
    # deepspeed/runtime/zero/config.py: reduce_bucket_size 5e8, stage3_prefetch_bucket_size 5e7,
    # overlap_comm on for stage 3 only; "auto" is the HF Trainer's hidden-size rule (None here).
    k = knobs_from_config({"stage": 2})
    assert (k.reduce_bucket_size, k.overlap_comm, k.contiguous_gradients) == (500_000_000, False, True)
    k3 = knobs_from_config({"stage": 3, "reduce_bucket_size": "auto", "stage3_max_reuse_distance": 0})
    assert (k3.reduce_bucket_size, k3.prefetch_bucket_size, k3.max_reuse_distance, k3.overlap_comm) == \
        (None, 50_000_000, 0, True)


def test_zero1_also_copies_its_gradient_partition():
    # stage_1_and_2.py reduce_ipg_grads: under ZeRO-1 with contiguous_gradients the gradients of the
    # rank's partition are copied into grads_in_partition too (seen on CPU: bench/zero_cpu.py z1-w2,
    # grad_partition), a 2 B x P/N copy held from backward through the step.
    zt = zero_terms(LLAMA7, full(1), 8, N, 2 * N, 2.0)
    assert zt.grad_partition == pytest.approx(2 * N / 8)
    # ZeRO-2's grads_in_partition is the same 2 B x P/N (the end-of-backward test below counts it for ZeRO-1).
    assert zero_terms(LLAMA7, full(2), 8, N, 2 * N, 2.0).grad_partition == pytest.approx(2 * N / 8)


# Llama-2-7B's gradients too large for memfit's reduce bucket (h*h = 16.8M elements): the three MLP
# weights of every layer (4096 x 11008 = 45.1M each) and embed_tokens and lm_head (32000 x 4096);
# q/k/v/o (4096 x 4096) are exactly h*h and fit (stage_1_and_2.py: `param.numel() > reduce_bucket_size`).
BYPASS = 32 * 3 * 4_096 * 11_008 + 2 * L


def test_zero1_step_holds_no_full_gradients_and_backward_holds_what_bypasses_the_bucket():
    # engine.backward reduces before it returns (allreduce_gradients -> reduce_gradients); the
    # reduction copies each gradient into the ipg bucket and points param.grad at the copy, so the
    # step holds only the partition copy (traced: tests/test_zero_cpu.py). With overlap_comm and
    # contiguous_gradients (memfit's config) the gradient hook does it during backward, and only the
    # gradients larger than the bucket wait for the epilogue: 2 B x BYPASS at the end of backward,
    # with the partition copy, the weights and the states, no activations.
    e = estimate_memory(plan(), LLAMA7, full(1))
    assert e.gpu_peak_phase == "end of backward"
    assert e.gpu.gradients_gib == pytest.approx((2 * BYPASS + 2 * N / 8) / GIB)
    assert e.gpu.activations_gib == 0
    assert e.gpu.optimizer_states_gib == pytest.approx(12 * N / 8 / GIB)


def test_zero1_without_overlap_comm_holds_every_gradient_at_the_end_of_backward():
    # DeepSpeed's own default below stage 3 (zero/config.py overlap_comm_valid): the hook leaves the
    # gradients alone (process_gradients reduces only under partition_gradients or overlap_comm), so
    # all 2 B x N are live when reduce_gradients starts, besides the partition copy.
    p = plan(gradient_checkpointing=True)
    cfg = {"zero_optimization": {"stage": 1, "overlap_comm": False}, "train_micro_batch_size_per_gpu": 1,
           "bf16": {"enabled": True}}
    e = estimate_memory(p, LLAMA7, strategy_from_config(cfg, p))
    assert e.gpu_peak_phase == "end of backward"
    assert e.gpu.gradients_gib == pytest.approx((2 * N + 2 * N / 8) / GIB)


def test_zero1_with_fp32_gradient_accumulation_runs_bf16_optimizer():
    # engine.py _do_optimizer_sanity_check: bf16 + data_types.grad_accum_dtype "fp32" + ZeRO-1 ->
    # BF16_Optimizer (bf16_optimizer.py), whose fp32_groups_gradients_flat holds fp32 gradients of the
    # whole model from init (4 B x N, not a partition) and whose bf16 .grad tensors are zeroed, not
    # freed (2 B x N); no ipg buckets. Forward/backward therefore holds 2N + 4N besides the states.
    p = plan(micro_batch_size=1, gradient_checkpointing=True)
    cfg = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 1,
           "bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32"}}
    s = strategy_from_config(cfg, p)
    assert s.zero_knobs.grad_accum_fp32 is True
    e = estimate_memory(p, LLAMA7, s)
    assert e.gpu_peak_phase == "forward/backward"
    assert e.gpu.gradients_gib == pytest.approx(2 * N / GIB)
    assert e.gpu.optimizer_states_gib == pytest.approx((12 * N / 8 + 4 * N) / GIB)
    assert e.gpu.zero_buffers_gib == 0
    # Without it (DeepSpeed's default: the model dtype) ZeRO-1 stays DeepSpeedZeroOptimizer.
    plain = strategy_from_config({k: v for k, v in cfg.items() if k != "data_types"}, p)
    assert plain.zero_knobs.grad_accum_fp32 is False
    assert estimate_memory(p, LLAMA7, plain).gpu_peak_gib < e.gpu_peak_gib - 4 * N / GIB * 0.5


def test_zero3_gradient_partition_takes_the_accumulation_dtype():
    # stage3.py _setup_for_real_optimizer: grad_partitions_flat_buffer is torch.zeros(P/N,
    # dtype=self.gradient_accumulation_dtype): fp32 (4 B) under data_types.grad_accum_dtype fp32.
    p = plan(micro_batch_size=8)
    base = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8, "bf16": {"enabled": True}}
    e16 = estimate_memory(p, LLAMA7, strategy_from_config(base, p))
    e32 = estimate_memory(p, LLAMA7, strategy_from_config({**base, "data_types": {"grad_accum_dtype": "float32"}}, p))
    assert e16.gpu.gradients_gib == pytest.approx(2 * N / 8 / GIB)
    assert e32.gpu.gradients_gib == pytest.approx(4 * N / 8 / GIB)


def test_zero3_optimizer_offload_boundary_copies_the_partition_to_the_gpu():
    # stage3.py partition_grads -> _offload_grad_partition_at_boundary, while the largest parameter's
    # full 16-bit gradient (2 L) still exists: its reduced partition copied to the GPU (2 L/N), the
    # fp64 norm of each chunk of at most 2.5e8 elements (_constant_buffered_norm2: 8 B each), then the
    # fp32 copy for the host (4 L/N) after the fp64 chunk is freed. L = Llama-2-7B's embedding or
    # lm_head (L above); on 8 GPUs L/N = 16.4M, so the fp64 chunk (8 B) is the larger.
    with_off = zero_terms(LLAMA7, full(3, offload_optimizer="cpu", offload_param="cpu"), 8, N, 2 * N, 2.0)
    resident = zero_terms(LLAMA7, full(3), 8, N, 2 * N, 2.0)
    assert resident.gathered_grad == pytest.approx(2 * L)
    assert with_off.gathered_grad == pytest.approx(2 * L + (2 + 8) * L / 8)
    # LoRA: the largest trainable tensor is an adapter, no full gradient term either way.
    adapters = Strategy(method="lora", zero_stage=3, offload_optimizer="cpu", offload_param="none",
                        gradient_checkpointing=True, micro_batch_size=1)
    lora = zero_terms(LLAMA7, adapters, 8, 20_000_000, 2 * N, 2.0)
    assert lora.gathered_grad == 0.0


def test_plan_knobs_size_the_estimate_and_go_into_the_json():
    # training.deepspeed carries the run's own zero_optimization knobs. Llama-2-7B's largest gradient
    # (embed_tokens, 32000 x 4096 = 131M elements) is under a 5e8 bucket, so nothing bypasses it at
    # the end of ZeRO-1's backward, where memfit's h^2 bucket lets 2 B x BYPASS wait (test above).
    knobs = {"reduce_bucket_size": 5e8, "overlap_comm": True}
    p = plan(deepspeed=knobs)
    by_plan = estimate_memory(p, LLAMA7, full(1))
    by_strategy = estimate_memory(plan(), LLAMA7, full(1, zero_knobs=ZeroKnobs(reduce_bucket_size=500_000_000,
                                                                               overlap_comm=True)))
    assert by_plan == by_strategy
    assert by_plan.gpu_peak_gib < estimate_memory(plan(), LLAMA7, full(1)).gpu_peak_gib
    # ... and the config memfit writes runs with them, in both flavors, and reads back to the same estimate.
    for flavor in ("concrete", "hf"):
        zero = deepspeed_config(full(1), p, LLAMA7, flavor)["zero_optimization"]
        assert zero["reduce_bucket_size"] == 500_000_000 and zero["overlap_comm"] is True
    p = plan(deepspeed=knobs, gradient_checkpointing=True)  # the reader takes checkpointing from the plan
    zero = deepspeed_config(full(1), p, LLAMA7)["zero_optimization"]
    read = strategy_from_config({"zero_optimization": zero, "train_micro_batch_size_per_gpu": 1}, p)
    assert estimate_memory(p, LLAMA7, read).gpu_peak_gib == pytest.approx(by_plan.gpu_peak_gib)


def test_stage3_plan_knobs_only_at_stage_3_and_config_knobs_win():
    p = plan(deepspeed={"stage3_max_live_parameters": 1e8, "reduce_bucket_size": 2e8})
    assert "stage3_max_live_parameters" not in deepspeed_config(full(2), p, LLAMA7)["zero_optimization"]
    assert deepspeed_config(full(3), p, LLAMA7)["zero_optimization"]["stage3_max_live_parameters"] == 100_000_000
    # A strategy read from a config (advise check) keeps that config's knobs, whatever the plan says.
    own = full(1, zero_knobs=ZeroKnobs(reduce_bucket_size=H2, overlap_comm=True))
    assert estimate_memory(p, LLAMA7, own) == estimate_memory(plan(), LLAMA7, own)
