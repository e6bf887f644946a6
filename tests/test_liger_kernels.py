"""training.kernels: liger, Liger's RMSNorm and SwiGLU kernels in the decoder layers (memory/activations.py
_liger_saving).

Expected numbers come from Liger's own save_for_backward calls (liger_kernel/ops/rms_norm.py
LigerRMSNormFunction saves X, W, RSTD; ops/swiglu.py LigerSiLUMulFunction saves a, b) against what
transformers' modules save, first by formula and then by a CPU trace: Liger's kernels are Triton and
do not run here, so the trace swaps in autograd Functions that save exactly those tensors, and
saved_tensors_hooks count what a real transformers Llama keeps with and without them.
"""
from __future__ import annotations

import pytest

from memfit.engine import plan_from_dict
from memfit.engine.memory.activations import activation_bytes, layer_bytes
from memfit.engine.model.spec import plan_model
from memfit.engine.plan.stack import resolve_stack

S, B = 1024, 2


def _facts(model: str = "meta-llama/Llama-3.1-8B"):
    return plan_model(plan_from_dict({"model": model, "hardware": {"gpu_memory": 80, "host_memory": 512}}))


def _stack(kernels: str, method: str = "full"):
    plan = plan_from_dict({"model": "meta-llama/Llama-3.1-8B", "hardware": {"gpu_memory": 80, "host_memory": 512},
                           "training": {"method": method, "kernels": kernels}})
    return resolve_stack(plan)


def test_layer_saves_four_h_per_norm_and_silu_gate_full():
    # full: LlamaRMSNorm keeps an fp32 copy of X (4h) and the bf16 normalised tensor (2h) where Liger
    # keeps X (2h): 4h per norm, two norms; SwiGLU drops silu(gate) (2I).
    f = _facts()
    h, inter = f.hidden_size, f.intermediate_size
    base = layer_bytes(f, S, B, "sdpa", method="full")
    assert base - layer_bytes(f, S, B, "sdpa", method="full", liger=True) == S * B * (8 * h + 2 * inter)


def test_layer_saving_under_lora_and_the_fp32_residual_of_qlora():
    # LoRA: the frozen norm keeps only its fp32 copy (4h), Liger its bf16 input (2h): 2h per norm. Under
    # QLoRA's k-bit upcast the residual is fp32 already, so the norm saves nothing; SwiGLU still 2I.
    f = _facts()
    h, inter = f.hidden_size, f.intermediate_size
    base = layer_bytes(f, S, B, "sdpa", method="lora")
    assert base - layer_bytes(f, S, B, "sdpa", method="lora", liger=True) == S * B * (4 * h + 2 * inter)
    assert base - layer_bytes(f, S, B, "sdpa", method="lora", liger=True, residual_bytes=4.0) == S * B * 2 * inter


def test_gemma_keeps_the_transformers_count():
    # Gemma's four norms and GeGLU are not the two-norm SwiGLU layer the saving is derived for.
    f = _facts("google/gemma-2-9b")
    assert layer_bytes(f, S, B, "sdpa", liger=True) == layer_bytes(f, S, B, "sdpa")


def test_checkpointed_working_set_and_final_norm():
    # With checkpointing the recomputed layer saves (8h + 2I) per token less, its backward writes the
    # gate and up gradients in place (2I less, ops/swiglu.py swiglu_backward), and the final norm keeps
    # X and its output (4h) instead of 8h. The stored layer inputs do not change.
    f = _facts()
    h, inter = f.hidden_size, f.intermediate_size
    plain = activation_bytes(f, S, B, "sdpa", "full", True, "bf16", stack=_stack("none"))
    liger = activation_bytes(f, S, B, "sdpa", "full", True, "bf16", stack=_stack("liger"))
    assert plain.stored_bytes - liger.stored_bytes == S * B * 4 * h
    assert plain.working_bytes - liger.working_bytes == S * B * (8 * h + 2 * inter + 2 * inter) - S * B * 4 * h


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward."""
    import torch

    own = {p.data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, tuple[int, ...]], int] = {}

    def pack(t):
        if t.data_ptr() not in own:
            seen[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids).last_hidden_state.sum()
    return sum(seen.values())


def _liger_like(model) -> None:
    """Swap each RMSNorm and each MLP's activation product for Functions that save what Liger's do."""
    import torch

    class RMSNormFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, eps):
            rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x, w, rstd)  # LigerRMSNormFunction: X, W, RSTD
            return (x.float() * rstd).to(x.dtype) * w

    class SiLUMulFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)  # LigerSiLUMulFunction: a, b
            return torch.nn.functional.silu(a) * b

    for name, module in list(model.named_modules()):
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = (lambda m: lambda x: RMSNormFn.apply(x, m.weight, m.variance_epsilon))(module)
        if type(module).__name__ == "LlamaMLP":
            module.forward = (lambda m: lambda x: m.down_proj(SiLUMulFn.apply(m.gate_proj(x), m.up_proj(x))))(module)


@pytest.mark.slow
def test_trace_of_a_llama_with_liger_like_modules_matches_the_saving():
    """A real transformers Llama (bf16, every parameter training) saves (8h + 2I) per token per layer
    more than the same model with modules that save what Liger's kernels save, plus 4h for the final
    norm: what memfit subtracts."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=300, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaModel(cfg).to(torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    plain = _saved_bytes(model, ids)
    _liger_like(model)
    liger = _saved_bytes(model, ids)
    tokens, h, inter = ids.numel(), cfg.hidden_size, cfg.intermediate_size
    assert plain - liger == tokens * (cfg.num_hidden_layers * (8 * h + 2 * inter) + 4 * h)
