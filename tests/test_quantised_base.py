"""Quantised checkpoints as the frozen base, modules_to_save, and the paged / 8-bit optimizers (issue 17).

Expected bytes come from the formats' own tensor shapes, written out here by hand (auto_gptq
QuantLinear, autoawq WQLinear_GEMM, aqlm QuantizedLinear, transformers FineGrainedFP8), or from real
bitsandbytes tensors and optimizer states built on CPU; parameter counts from peft on a real model.
"""
from __future__ import annotations

import math

import pytest

from memfit.engine.core.errors import ModelSpecError
from memfit.engine.memory.estimate import estimate_memory
from memfit.engine.memory.quant import QuantFormat, base_format, parse_quantization
from memfit.engine.memory.states import ADAM8BIT_BYTES_PER_PARAM, frozen_weight_bytes, state_bytes, trainable_params
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy

LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False}
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
# Llama 3 8B decoder Linears (in, out), 32 layers: q, k, v, o, gate, up, down.
LINEARS = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)]


def _gptq_bytes(k: int, n: int, bits: int = 4, g: int = 128) -> int:
    # auto_gptq qlinear_cuda_old.QuantLinear: qweight int32 [k // 32 * bits, n]; qzeros int32
    # [ceil(k / g), n // 32 * bits]; scales fp16 [ceil(k / g), n]; g_idx int32 [k].
    return (k // 32 * bits * n * 4 + math.ceil(k / g) * (n // 32 * bits) * 4 + math.ceil(k / g) * n * 2 + k * 4)


def test_gptq_layer_bytes_from_its_tensor_shapes():
    assert QuantFormat("gptq", 4, 128).linear_bytes(4096, 4096) == _gptq_bytes(4096, 4096) == 8_732_672
    # group_size -1 (act-order checkpoints without groups): one group of all in-features.
    assert QuantFormat("gptq", 4, -1).linear_bytes(4096, 1024) == 4096 * 1024 // 2 + 512 + 2048 + 16384


def test_awq_layer_bytes_from_its_tensor_shapes():
    # autoawq WQLinear_GEMM: qweight int32 [k, n // 8]; qzeros int32 [k // g, n // 8]; scales fp16 [k // g, n].
    k, n = 4096, 14336
    assert QuantFormat("awq", 4, 128).linear_bytes(k, n) == k * (n // 8) * 4 + (k // 128) * (n // 8) * 4 + (k // 128) * n * 2


def test_aqlm_layer_bytes_from_its_tensor_shapes():
    # aqlm QuantizedLinear, 1x16 scheme: codes int16 [n, k // 8, 1]; codebooks fp16 [1, 65536, 1, 8];
    # scales fp16 [n, 1, 1, 1]: 2 bits per weight plus a 1 MiB codebook per layer.
    fmt = parse_quantization({"quant_method": "aqlm", "in_group_size": 8, "out_group_size": 1,
                              "num_codebooks": 1, "nbits_per_codebook": 16})
    assert fmt.linear_bytes(4096, 4096) == 4096 * 512 * 2 + 65536 * 8 * 2 + 4096 * 2


def test_fp8_layer_bytes():
    # transformers FineGrainedFP8: float8_e4m3fn weight [n, k] + fp32 weight_scale_inv [n / 128, k / 128].
    assert parse_quantization({"quant_method": "fp8"}).linear_bytes(4096, 4096) == 4096 * 4096 + 32 * 32 * 4


def test_compressed_tensors_group_scheme():
    # W4A16 group 128, symmetric: 4-bit packed weights plus one 16-bit scale per group of 128 per row.
    fmt = parse_quantization({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 4, "strategy": "group", "group_size": 128, "symmetric": True}}}})
    assert fmt.linear_bytes(4096, 1024) == 4096 * 1024 / 2 + 1024 * 32 * 2


@pytest.mark.slow
def test_bitsandbytes_layouts_match_real_tensors():
    """Real bitsandbytes on CPU: NF4 with double quantisation and LLM.int8, bytes of what it stores."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(512, 1024, dtype=torch.bfloat16)  # n = 512 out, k = 1024 in
    q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    stored = (q.numel() * q.element_size() + st.absmax.numel() * st.absmax.element_size()
              + st.state2.absmax.numel() * st.state2.absmax.element_size())
    nf4 = parse_quantization({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_use_double_quant": True})
    assert nf4.linear_bytes(1024, 512) == stored
    cb, scb, _ = F.int8_vectorwise_quant(w.float())
    int8 = parse_quantization({"quant_method": "bitsandbytes", "load_in_8bit": True})
    assert int8.linear_bytes(1024, 512) == cb.numel() * cb.element_size() + scb.numel() * scb.element_size()


@pytest.mark.slow
def test_8bit_adamw_states_match_bitsandbytes():
    """bitsandbytes AdamW8bit and PagedAdamW8bit on CPU (paged falls back to ordinary tensors there):
    two uint8 moments plus an fp32 absmax per 256-element block each."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    for cls in (bnb.optim.AdamW8bit, bnb.optim.PagedAdamW8bit):
        p = torch.nn.Parameter(torch.zeros(512, 1024))
        opt = cls([p])
        p.grad = torch.ones_like(p)
        opt.step()
        st = opt.state[p]
        held = sum(st[k].numel() * st[k].element_size() for k in ("state1", "state2", "absmax1", "absmax2"))
        assert held == pytest.approx(ADAM8BIT_BYTES_PER_PARAM * p.numel())
    assert state_bytes("bf16", "paged_adamw_8bit", 4096).moments == ADAM8BIT_BYTES_PER_PARAM
    assert state_bytes("bf16", "paged_adamw", 4096).moments == 8.0


def test_optimizers_bytes_from_first_principles():
    assert state_bytes("bf16", "lion", 4096).moments == 4.0  # one fp32 momentum
    assert state_bytes("bf16", "lion_8bit", 4096).moments == 1 + 4 / 256
    # fused AdamW updates in place: no foreach copy of the second moments
    assert state_bytes("bf16", "adamw_fused", 4096).foreach_temp == 0.0
    assert state_bytes("bf16", "adamw", 4096).foreach_temp == 4.0


def _gptq_plan(method: str = "auto", **lora):
    return plan_from_dict({"model": {**LLAMA3_8B, "quantization_config": GPTQ},
                           "hardware": {"gpu": "A10G-24GB", "host_memory": "64GB"},
                           "training": {"method": method, "seq_len": 1024, "lora": lora}}, "gptq.yaml")


def test_gptq_checkpoint_base_is_packed_linears_plus_16bit_rest():
    plan = _gptq_plan()
    spec = resolve_model(plan.model)
    packed = 32 * sum(_gptq_bytes(k, n) for k, n in LINEARS)
    linear_params = 32 * sum(k * n for k, n in LINEARS)
    # peft's prepare_model_for_kbit_training leaves a GPTQ model's other parameters in 16 bits.
    rest = (spec.total_params - linear_params) * 2
    assert frozen_weight_bytes(spec, "lora", "bf16") == packed + rest
    # the same config with method qlora: the checkpoint's own format, not NF4
    assert frozen_weight_bytes(spec, "qlora", "bf16") == packed + rest


def test_bitsandbytes_base_upcasts_the_rest_to_fp32():
    spec = resolve_model({**LLAMA3_8B, "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}})
    linear_params = 32 * sum(k * n for k, n in LINEARS)
    int8 = 32 * sum(k * n + 4 * n for k, n in LINEARS)
    assert frozen_weight_bytes(spec, "lora", "bf16") == int8 + (spec.total_params - linear_params) * 4


def test_plan_quantization_config_sets_the_qlora_base():
    spec = resolve_model(LLAMA3_8B)
    eight = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert base_format(spec, "qlora", eight) == QuantFormat("bitsandbytes", 8, 0)
    assert base_format(spec, "lora", eight) is None  # LoRA over an unquantised checkpoint stays 16-bit
    assert base_format(spec, "qlora", None) == QuantFormat("bitsandbytes", 4, 64, double_quant=True)


def test_full_finetuning_of_a_quantised_checkpoint_is_refused():
    from memfit.engine.advice.advise import advise

    a = advise(_gptq_plan(method="full"))
    assert a.best is None
    assert all(any("checkpoint is quantised (gptq-4bit-g128)" in r for r in c.rejected_because)
               for c in a.candidates)
    auto = advise(_gptq_plan())
    assert auto.best is not None and auto.best.method == "lora"


def test_unsupported_quant_method_is_a_clear_error():
    spec = resolve_model({**LLAMA3_8B, "quantization_config": {"quant_method": "gguf"}})
    with pytest.raises(ModelSpecError, match=r"quantization_config.quant_method: memfit models gptq.*'gguf'"):
        frozen_weight_bytes(spec, "lora", "bf16")


def test_bad_plan_quantization_config_names_file_and_key():
    from memfit.engine.core.errors import PlanError

    with pytest.raises(PlanError, match=r"q.yaml: training.lora.quantization_config: quant_method: memfit models"):
        plan_from_dict({"model": LLAMA3_8B, "hardware": {"gpu_memory": 24, "host_memory": 64},
                        "training": {"lora": {"quantization_config": {"quant_method": "gguf"}}}}, "q.yaml")


def test_modules_to_save_lm_head_trains_in_full():
    plan = _gptq_plan(method="lora", modules_to_save=["lm_head"])
    spec = resolve_model(plan.model)
    lora_only = trainable_params(spec, "lora", 16, "all-linear")
    assert trainable_params(spec, "lora", 16, "all-linear", ["lm_head"]) == lora_only + 128256 * 4096
    e = estimate_memory(plan, spec, Strategy(method="lora", zero_stage=0, gradient_checkpointing=True))
    assert e.trainable_params == lora_only + 128256 * 4096
    with pytest.raises(ModelSpecError, match="modules_to_save.*'mlp'"):
        trainable_params(spec, "lora", 16, "all-linear", ["mlp"])


@pytest.mark.slow
def test_modules_to_save_count_matches_peft():
    """peft on a real (small, random) Llama: trainable parameters with modules_to_save=[embed_tokens, lm_head]."""
    pytest.importorskip("peft")
    import peft
    import transformers

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500, "tie_word_embeddings": False}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear",
                                                         modules_to_save=["embed_tokens", "lm_head"]))
    counted = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert trainable_params(resolve_model(cfg), "lora", 4, "all-linear", ["embed_tokens", "lm_head"]) == counted
