"""The memory model against first principles (bytes per parameter written out here) and its
monotonicity properties (issue 3)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from memfit.engine.memory.estimate import CUDA_CONTEXT_GIB, NCCL_GIB, estimate_memory
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy
from memfit.engine.core.units import GIB

QWEN32 = resolve_model("Qwen/Qwen2.5-32B-Instruct")
LLAMA7 = resolve_model("meta-llama/Llama-2-7b-hf")
P32 = 32_763_876_352  # Qwen2ForCausalLM with lm_head (sources.md §4, meta-device count)


def plan(**training):
    hw = training.pop("hardware", {"gpu_memory": 80, "gpus_per_node": 1, "host_memory": 1024})
    return plan_from_dict({"model": "meta-llama/Llama-2-7b-hf", "hardware": hw,
                           "training": {"seq_len": 2048, **training}}, "t.yaml")


def test_model_that_trains_is_counted():
    assert QWEN32.total_params == P32


def test_full_adamw_mixed_step_is_20_bytes_per_param():
    # bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m 4 + v 4 + fp32 grad partition 4 = 20 B
    # (DeepSpeed's ZeRO-2 comment: 2 params_16bit + 18). ZeRO-0, one GPU, checkpointing, micro-batch 1:
    # the optimizer step is the peak for a 7B model.
    p = plan()
    e = estimate_memory(p, LLAMA7, Strategy(method="full", zero_stage=0, gradient_checkpointing=True))
    n = LLAMA7.total_params
    assert e.gpu_peak_phase == "optimizer step"
    assert e.gpu.weights_gib == pytest.approx(2 * n / GIB)
    assert e.gpu.gradients_gib == pytest.approx(2 * n / GIB)
    assert e.gpu.optimizer_states_gib == pytest.approx(16 * n / GIB)
    assert e.gpu_modelled_gib == pytest.approx(20 * n / GIB + CUDA_CONTEXT_GIB)
    assert not e.gpu_fits  # 125.5 GiB of states on an 80 GiB card


def test_pure_bf16_adamw_step_keeps_a_copy_of_the_second_moments():
    # pure bf16 without ZeRO: weights 2 + grads 2 + Adam m, v in bf16 4 + torch's foreach step copy of
    # v (`exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`, torch/optim/adam.py) 2 = 10 B/param.
    # Published: Mistral-7B fp16 full fine-tuning peaked at 67.96 GiB allocated at batch 4 and 8 alike
    # (fms-acceleration a100_80gb.csv): 9.4 B/param over 7.25B params, an optimizer-step peak.
    p = plan(precision="pure_bf16")
    e = estimate_memory(p, LLAMA7, Strategy(method="full", zero_stage=0, gradient_checkpointing=True))
    assert e.gpu_peak_phase == "optimizer step"
    assert e.gpu_modelled_gib == pytest.approx(10 * LLAMA7.total_params / GIB + CUDA_CONTEXT_GIB)


def test_zero3_shards_states_by_world_size():
    # ZeRO-3 over 8 GPUs: every model state divided by 8 (Rajbhandari et al. 2020).
    p = plan(hardware={"gpu_memory": 80, "gpus_per_node": 8, "host_memory": 1024})
    e = estimate_memory(p, LLAMA7, Strategy(method="full", zero_stage=3, gradient_checkpointing=True))
    n = LLAMA7.total_params
    assert e.gpu.weights_gib == pytest.approx(2 * n / 8 / GIB)


HW8 = {"gpu_memory": 80, "gpus_per_node": 8, "host_memory": 1024}
FULL_OFFLOAD_Z3 = Strategy(method="full", zero_stage=3, offload_optimizer="cpu", offload_param="cpu",
                           gradient_checkpointing=True)


def test_zero3_model_built_whole_is_on_every_gpu_once():
    # Without zero.Init, deepspeed.initialize casts the module to bf16 and moves it whole onto the GPU
    # before ZeRO-3 partitions it (deepspeed/runtime/engine.py _configure_distributed_model:
    # module.to(device) unless the parameters carry ds_id): 2 B/param on every GPU, plus the CUDA
    # context and NCCL's buffers. With full offload nothing else comes close, so that moment is the peak.
    n = LLAMA7.total_params
    e = estimate_memory(plan(zero_init=False, hardware=dict(HW8)), LLAMA7, FULL_OFFLOAD_Z3)
    assert e.gpu_peak_phase == "initialisation"
    assert e.gpu.weights_gib == pytest.approx(2 * n / GIB)
    assert e.gpu_modelled_gib == pytest.approx(2 * n / GIB + CUDA_CONTEXT_GIB + NCCL_GIB)
    # Built under zero.Init (the HF Trainer's default): the parameters live on the host from the start.
    partitioned = estimate_memory(plan(hardware=dict(HW8)), LLAMA7, FULL_OFFLOAD_Z3)
    assert partitioned.gpu_peak_phase != "initialisation"
    assert partitioned.gpu.weights_gib == 0.0


def test_only_zero_init_loads_the_checkpoint_on_rank_0():
    # Under zero.Init rank 0 reads the whole 16-bit state dict into host RAM and scatters it
    # (sources.md §4); a model built whole memory-maps the safetensors on every rank instead, as
    # without ZeRO-3 (no private copy without a dtype change).
    s = Strategy(method="full", zero_stage=3, gradient_checkpointing=True, gather_16bit_on_save=False)
    partitioned = estimate_memory(plan(hardware=dict(HW8)), LLAMA7, s)
    assert partitioned.host_peak_phase == "model loading"
    assert partitioned.host.checkpoint_load_gib == pytest.approx(2 * LLAMA7.total_params / GIB)
    whole = estimate_memory(plan(zero_init=False, hardware=dict(HW8)), LLAMA7, s)
    assert whole.host_peak_phase != "model loading" and whole.host.checkpoint_load_gib == 0.0


def test_qlora_under_zero3_is_built_whole():
    # transformers' from_pretrained never builds a quantised model under zero.Init (modeling_utils.py:
    # needs_zero3_init = is_deepspeed_zero3_enabled() and not _is_quantized): each of the 8 GPUs holds
    # the same whole NF4 model as a single GPU does, once, before the partitioning.
    whole = estimate_memory(plan(method="qlora"), LLAMA7, Strategy(method="qlora", zero_stage=0,
                                                                   gradient_checkpointing=True))
    e = estimate_memory(plan(method="qlora", hardware=dict(HW8)), LLAMA7,
                        Strategy(method="qlora", zero_stage=3, gradient_checkpointing=True))
    assert e.gpu_peak_phase == "initialisation"
    assert e.gpu.weights_gib == pytest.approx(whole.gpu.weights_gib)


def test_motivating_case_host_terms():
    # Full offload of Qwen2.5-32B: host holds fp32 master + m + v + fp32 grads (16 B/param), DeepSpeed's
    # 16-bit gradient partition (2 B/param: stage3.py _setup_for_real_optimizer allocates
    # grad_partitions_flat_buffer on the optimizer's device, the host under offload) and the bf16
    # parameters (2 B/param): 20 B/param = 610 GiB raw, before pinned/allocator slack.
    p = plan_from_dict({"model": "Qwen/Qwen2.5-32B-Instruct",
                        "hardware": {"gpu_memory": "96GB", "host_memory": "744GB"},
                        "training": {"seq_len": 2048}}, "t.yaml")
    s = Strategy(method="full", zero_stage=3, offload_optimizer="cpu", offload_param="cpu",
                 gradient_checkpointing=True)
    e = estimate_memory(p, QWEN32, s)
    assert e.host.offloaded_optimizer_gib == pytest.approx(18 * P32 / GIB)
    assert e.host.offloaded_params_gib == pytest.approx(2 * P32 / GIB)
    # Published: this run was killed by the host OOM killer (LLaMA-Factory issue 6755).
    assert not e.host_fits
    assert e.gpu_fits


def test_lora_freezes_the_base():
    # LoRA r16 all-linear on Qwen2.5-32B trains 134,217,728 parameters (peft count, sources.md §4): the
    # base is 2 B/param bf16 with no gradients or optimizer states.
    p = plan_from_dict({"model": "Qwen/Qwen2.5-32B-Instruct", "hardware": {"gpu_memory": 96, "host_memory": 700},
                        "training": {"seq_len": 2048, "lora": {"rank": 16}}}, "t.yaml")
    e = estimate_memory(p, QWEN32, Strategy(method="lora", zero_stage=0, gradient_checkpointing=True))
    assert e.trainable_params == 134_217_728
    assert e.gpu.weights_gib == pytest.approx((2 * P32 + 20 * 0 + 2 * 134_217_728) / GIB)


def test_qlora_base_is_about_half_a_byte():
    # NF4 with double quantisation: 4.127 bits per quantised weight (QLoRA paper, sec. 2).
    p = plan(method="qlora")
    e = estimate_memory(p, LLAMA7, Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True))
    q = LLAMA7.quantizable_params()
    other = LLAMA7.total_params - q
    lora = e.trainable_params
    # Everything not quantised (embeddings, lm_head, norms) is upcast to fp32 by peft's
    # prepare_model_for_kbit_training (peft docs: "cast the layernorm in fp32 ... upcasting of the lm head").
    assert e.gpu.weights_gib == pytest.approx((q * 4.127 / 8 + other * 4 + lora * 2) / GIB, rel=1e-3)


STAGES = st.sampled_from([0, 1, 2, 3])


@st.composite
def cases(draw):
    method = draw(st.sampled_from(["full", "lora", "qlora"]))
    return {
        "method": method,
        "seq": draw(st.integers(128, 16384)),
        "mb": draw(st.integers(1, 16)),
        "ckpt": draw(st.booleans()),
        "gpus": draw(st.sampled_from([1, 2, 8])),
        "precision": draw(st.sampled_from(["bf16", "fp32", "pure_bf16"])),
        "attention": draw(st.sampled_from(["sdpa", "eager"])),
        "model": draw(st.sampled_from(["Qwen/Qwen2.5-0.5B", "meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-32B"])),
    }


def _est(c, **over):
    c = {**c, **over}
    p = plan_from_dict({"model": c["model"], "hardware": {"gpu_memory": 80, "gpus_per_node": c["gpus"], "host_memory": 4096},
                        "training": {"seq_len": c["seq"], "precision": c["precision"], "attention": c["attention"]}}, "t.yaml")
    s = Strategy(method=c["method"], zero_stage=c.get("stage", 0), offload_optimizer=c.get("opt", "none"),
                 offload_param=c.get("param", "none"), gradient_checkpointing=c["ckpt"], micro_batch_size=c["mb"])
    return estimate_memory(p, resolve_model(c["model"]), s)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_monotone_in_sequence_and_micro_batch(c):
    base = _est(c)
    assert _est(c, seq=c["seq"] + 256).gpu_peak_gib >= base.gpu_peak_gib
    assert _est(c, mb=c["mb"] + 1).gpu_peak_gib >= base.gpu_peak_gib


@settings(max_examples=60, deadline=None)
@given(cases())
def test_monotone_in_parameters(c):
    sizes = ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-32B", "Qwen/Qwen2.5-72B"]
    peaks = [_est(c, model=m).gpu_peak_gib for m in sizes]
    assert peaks == sorted(peaks)


def held_bound(e, c):
    """DeepSpeed's gradient partitions held through forward/backward: <= 2 + 4 B per trainable param and rank."""
    return e.trainable_params * (2 + 4) / c["gpus"] / 2**30


def _states(e):
    return e.gpu.weights_gib + e.gpu.gradients_gib + e.gpu.optimizer_states_gib


@settings(max_examples=60, deadline=None)
@given(cases(), STAGES)
def test_higher_stage_and_offload_never_raise_gpu(c, stage):
    # A higher ZeRO stage never raises the peak by more than what DeepSpeed itself allocates for it:
    # its communication buffers (buckets, gathered parameters under ZeRO-3) and the gradient
    # partitions it holds through forward/backward (16-bit from ZeRO-2 on, fp32 under ZeRO-3: at most
    # 2 + 4 bytes per trainable parameter and rank; stage_1_and_2.py grads_in_partition, stage3.py
    # grad_partitions_flat_buffer and initialize_optimizer_states). That rise is real: on one GPU ZeRO
    # shards nothing (memory/zero.py).
    lower = _est(c, stage=stage)
    for higher in range(stage + 1, 4):
        e = _est(c, stage=higher)
        # Each breakdown is its peak phase's: the forward/backward phase holds no step-time gradients,
        # so states compare like with like only within one phase; across phases the lower stage's
        # peak bounds its optimizer-step states (the peak is the larger phase).
        same_phase = e.gpu_peak_phase == lower.gpu_peak_phase
        # The named terms (gpu_modelled_gib): each group's calibrated centre scales them afterwards, so
        # across groups the calibrated peaks can cross by the ratio of two centres (memory/band.py).
        assert _states(e) <= (_states(lower) if same_phase else lower.gpu_modelled_gib) + held_bound(e, c)
        assert e.gpu_modelled_gib <= lower.gpu_modelled_gib + e.gpu.zero_buffers_gib + held_bound(e, c) + 1e-9
    if stage >= 1:
        assert _est(c, stage=stage, opt="cpu").gpu_modelled_gib <= _est(c, stage=stage).gpu_modelled_gib + 1e-9
    if stage == 3:
        assert (_est(c, stage=3, opt="cpu", param="cpu").gpu_modelled_gib
                <= _est(c, stage=3, opt="cpu").gpu_modelled_gib + 1e-9)


@settings(max_examples=60, deadline=None)
@given(cases(), st.sampled_from([1, 2, 3]))
def test_offload_never_lowers_host(c, stage):
    without = _est(c, stage=stage).host_peak_gib
    with_opt = _est(c, stage=stage, opt="cpu").host_peak_gib
    assert with_opt >= without
    if stage == 3:
        assert _est(c, stage=3, opt="cpu", param="cpu").host_peak_gib >= with_opt
