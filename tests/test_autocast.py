"""Frozen fp32 weights under 16-bit autocast (memory/autocast.py, training.load_dtype).

Expected values come from two places: first principles (an fp32 base is 4 bytes per parameter; a
16-bit copy is 2) and a trace of a real peft LoRA step on CPU autocast, where torch's
saved_tensors_hooks list every tensor autograd keeps for backward.
"""
from __future__ import annotations

import pytest

from memfit.engine import plan_from_dict
from memfit.engine.core.errors import PlanError
from memfit.engine.memory.autocast import autocast_copies
from memfit.engine.memory.estimate import estimate_memory
from memfit.engine.memory.states import fp32_base, frozen_weight_bytes
from memfit.engine.model.spec import plan_model, resolve_model
from memfit.engine.plan.stack import resolve_stack
from memfit.engine.plan.strategy import Strategy

CFG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500, "tie_word_embeddings": False}
LORA = Strategy(method="lora", zero_stage=0, gradient_checkpointing=False, micro_batch_size=1)


def _plan(**training):
    return plan_from_dict({"model": "meta-llama/Llama-2-7b-hf",
                           "hardware": {"gpu_memory": 40, "host_memory": 256},
                           "training": {"method": "lora", "seq_len": 1024, "micro_batch_size": 1,
                                        "gradient_checkpointing": False, **training}})


def test_fp32_load_doubles_the_frozen_base():
    """First principles: every frozen parameter of a LoRA base loaded in fp32 takes 4 bytes, not 2."""
    plan = _plan(precision="bf16", load_dtype="fp32")
    facts = plan_model(plan)
    assert fp32_base(plan, LORA)
    fp32 = frozen_weight_bytes(facts, "lora", "bf16", base_fp32=True)
    assert fp32 == facts.total_params * 4
    assert frozen_weight_bytes(facts, "lora", "bf16") == facts.total_params * 2


def test_deepspeed_casts_the_module():
    """DeepSpeed from ZeRO-1 casts the module to bf16 (engine.py _configure_distributed_model): the
    load dtype no longer matters, and no fp32 linear remains to be copied under autocast."""
    plan = _plan(precision="bf16", load_dtype="fp32")
    z2 = Strategy(method="lora", zero_stage=2, gradient_checkpointing=False, micro_batch_size=1)
    assert not fp32_base(plan, z2)
    assert autocast_copies(plan_model(plan), plan, z2, resolve_stack(plan)) == (0.0, 0.0)
    assert fp32_base(_plan(precision="fp32"), z2)  # precision fp32 keeps fp32 weights everywhere


def test_fp32_base_adds_weights_and_copies_to_the_peak():
    """Llama 2 7B LoRA without checkpointing: the fp32 load adds 2 bytes per parameter of weights and
    each decoder layer's and the lm_head's 2-byte copies (first principles), nothing else."""
    bf16, fp32 = _plan(precision="bf16"), _plan(precision="bf16", load_dtype="fp32")
    facts = plan_model(bf16)
    a, b = estimate_memory(bf16, facts, LORA), estimate_memory(fp32, facts, LORA)
    assert b.gpu.weights_gib - a.gpu.weights_gib == pytest.approx(facts.total_params * 2 / 2**30)
    copies = 2 * (facts.total_params - facts.embedding_params)  # every weight but the embedding's
    extra = (b.gpu.activations_gib + b.gpu.logits_loss_gib) - (a.gpu.activations_gib + a.gpu.logits_loss_gib)
    # Norm weights are not linear weights: they are counted in the layer's parameters (2h per layer).
    assert extra == pytest.approx(copies / 2**30, rel=1e-3)


def test_checkpointing_keeps_one_layer_of_copies():
    """With checkpointing only the recomputed layer's copies are live (plus the lm_head's)."""
    plan = _plan(precision="bf16", load_dtype="fp32", gradient_checkpointing=True)
    facts = plan_model(plan)
    per_layer, head = autocast_copies(facts, plan, LORA, resolve_stack(plan))
    gc = Strategy(method="lora", zero_stage=0, gradient_checkpointing=True, micro_batch_size=1)
    off = _plan(precision="bf16", gradient_checkpointing=True)
    with_gc, without = estimate_memory(plan, facts, gc), estimate_memory(off, facts, gc)
    act = lambda e: e.gpu.activations_gib + e.gpu.logits_loss_gib  # noqa: E731
    assert act(with_gc) - act(without) <= (per_layer + head) / 2**30 + 1e-9
    assert act(with_gc) - act(without) >= head / 2**30 - 1e-9


@pytest.mark.parametrize("training", [{"precision": "pure_bf16", "load_dtype": "fp32"},
                                      {"precision": "fp32", "load_dtype": "bf16"}])
def test_contradicting_load_dtype_is_refused(training):
    with pytest.raises(PlanError, match="load_dtype"):
        _plan(**training)


def _saved_weight_copies(model, ids, autocast: bool) -> float:
    """Bytes of tensors autograd saves in one forward that have a frozen Linear weight's shape and are
    not that parameter's own storage: the 16-bit casts autocast made."""
    import torch

    weights = {tuple(m.weight.shape) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad}
    own = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, float] = {}

    def pack(t):
        if tuple(t.shape) in weights or tuple(t.shape[::-1]) in weights:
            if t.data_ptr() not in own and t.dtype == torch.bfloat16:
                seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=ids, labels=ids).loss
    return sum(seen.values())


@pytest.mark.slow
def test_trace_matches_the_copies_term():
    """A real peft LoRA step on CPU bf16 autocast over an fp32 Llama: autograd saves a bf16 copy of
    every frozen linear weight (q, v with adapters, the others, the lm_head), which memfit's term
    counts; without autocast it saves none."""
    pytest.importorskip("peft")
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG))
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, CFG["vocab_size"], (1, 16))
    traced = _saved_weight_copies(model, ids, autocast=True)
    frozen_linear = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    # The first layer's q, k and v read the frozen embedding's output, which needs no gradient, so
    # autograd keeps no weight for them: h*h + 2 * h*(kv*head_dim) elements.
    h, kv_width = CFG["hidden_size"], CFG["num_key_value_heads"] * CFG["hidden_size"] // CFG["num_attention_heads"]
    first_qkv = h * h + 2 * h * kv_width
    assert traced == (frozen_linear - first_qkv) * 2
    assert _saved_weight_copies(model, ids, autocast=False) == 0

    plan = plan_from_dict({"model": CFG, "hardware": {"gpu_memory": 40, "host_memory": 64},
                           "training": {"method": "lora", "precision": "bf16", "load_dtype": "fp32"}})
    facts = resolve_model(CFG)
    per_layer, head = autocast_copies(facts, plan, LORA, resolve_stack(plan, facts))
    # memfit counts every layer's parameters, the two norm weights (2 x h per layer) and the first
    # layer's q, k, v included: a small over-count (1/num_layers of the attention projections at most).
    norms = 2 * h * CFG["num_hidden_layers"] * 2
    assert per_layer * CFG["num_hidden_layers"] + head == traced + norms + first_qkv * 2


def test_fsdp_shards_an_fp32_base_in_fp32_and_gathers_it_in_16_bits():
    """First principles: FSDP LoRA over a base loaded in fp32 keeps fp32 shards (4 B / ranks) and
    MixedPrecision gathers each unit in bf16, so only the sharded weights grow; no autocast copy is
    counted (the gathered weights are already bf16)."""
    def plan(load_dtype):
        return plan_from_dict({"model": "meta-llama/Llama-2-7b-hf",
                               "hardware": {"gpu_memory": 80, "gpus_per_node": 4, "host_memory": 256},
                               "training": {"method": "lora", "seq_len": 2048, "micro_batch_size": 1,
                                            "precision": "bf16", "load_dtype": load_dtype,
                                            "gradient_checkpointing": True, "sharding": "fsdp1"}})
    fsdp = Strategy(method="lora", zero_stage=3, gradient_checkpointing=True, micro_batch_size=1, sharding="fsdp")
    auto, fp32 = plan("auto"), plan("fp32")
    facts = plan_model(auto)
    a, b = estimate_memory(auto, facts, fsdp), estimate_memory(fp32, facts, fsdp)
    assert b.gpu.weights_gib - a.gpu.weights_gib == pytest.approx(facts.total_params * 2 / 4 / 2**30)
    assert b.gpu.zero_buffers_gib == pytest.approx(a.gpu.zero_buffers_gib)  # units gathered in bf16 either way
    assert b.gpu.activations_gib == pytest.approx(a.gpu.activations_gib)


def test_a_quantised_checkpoint_base_copies_only_its_lm_head():
    """LoRA over a GPTQ checkpoint: the packed linears dequantise inside their kernels, so only the
    16-bit lm_head could be an fp32 weight under autocast. peft leaves a GPTQ model's other weights in
    16 bits (no copy); loaded in fp32 the lm_head is fp32 and its copy, 2 B x vocab x hidden, is saved."""
    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
           "tie_word_embeddings": False,
           "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}}

    def copies(**training):
        plan = plan_from_dict({"model": cfg, "hardware": {"gpu_memory": 24, "host_memory": 64},
                               "training": {"method": "lora", "precision": "bf16", **training}})
        return autocast_copies(resolve_model(cfg), plan, LORA, resolve_stack(plan))

    assert copies() == (0.0, 0.0)
    assert copies(load_dtype="fp32") == (0.0, 2.0 * 128256 * 4096)
