"""Activation formulas (engine/memory/activations.py) against the probe, which is the oracle.

The probe traces one real transformers training step on fake tensors (engine/probe/probe.py); these tests
compare the closed forms with it per decoder layer (exact up to 1 %) and for the whole activation
peak (within 5 %: the backward working set is a fitted term). The table in
docs/explanation/activations.md comes from these cases (`python tests/test_activations.py` prints it).
"""
from __future__ import annotations

import os

import pytest

from memfit.engine.memory.activations import activation_bytes, layer_bytes, logits_loss_bytes
from memfit.engine.model.spec import resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cfg(model_type="llama", h=512, inter=1408, layers=6, heads=8, kv=2, vocab=4000, **extra):
    return {"model_type": model_type, "hidden_size": h, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "vocab_size": vocab, "max_position_embeddings": 8192, **extra}


# (config, seq_len, micro_batch, probe/formula settings). Llama and Qwen2 (q/k/v bias) at three
# sizes, GQA and MHA, sdpa and eager, checkpointing on/off, LoRA (all-linear, subset, dropout).
CASES = [
    ("llama-mha", _cfg(kv=8), 512, 2, {}),
    ("llama-gqa", _cfg(), 512, 2, {}),
    ("llama-gqa-eager", _cfg(), 256, 1, {"attention": "eager"}),
    ("llama-gqa-ckpt", _cfg(vocab=256), 1024, 1, {"gradient_checkpointing": True}),
    ("qwen2-small", _cfg("qwen2", h=256, inter=704, heads=4, kv=2, vocab=1000), 1024, 1, {}),
    ("qwen2-mid", _cfg("qwen2", h=768, inter=2048, heads=12, kv=4), 384, 2, {}),
    ("qwen2-mid-ckpt", _cfg("qwen2", h=768, inter=2048, heads=12, kv=4), 384, 2,
     {"gradient_checkpointing": True}),
    ("qwen2-lora", _cfg("qwen2", h=768, inter=2048, heads=12, kv=4), 384, 2, {"method": "lora"}),
    ("llama-lora", _cfg(), 512, 2, {"method": "lora"}),
    ("llama-lora-ckpt", _cfg(vocab=256), 1024, 1, {"method": "lora", "gradient_checkpointing": True}),
    ("llama-lora-qv", _cfg(), 512, 1, {"method": "lora", "lora_targets": ["q_proj", "v_proj"]}),
    ("llama-lora-dropout", _cfg(), 512, 1, {"method": "lora", "lora_dropout": 0.1}),
    ("llama-lora-eager", _cfg(), 256, 1, {"method": "lora", "attention": "eager"}),
    ("llama-lora-eager-ckpt", _cfg(vocab=256), 512, 1,
     {"method": "lora", "attention": "eager", "gradient_checkpointing": True}),
    # qwen3: q_norm/k_norm, head_dim 128 apart from h/a = 64; phi3: fused qkv_proj and gate_up_proj
    # (pad_token_id inside the small vocabulary: phi3's default 32000 is not).
    ("qwen3", _cfg("qwen3", head_dim=128), 512, 2, {}),
    ("qwen3-lora", _cfg("qwen3", head_dim=128), 512, 2, {"method": "lora"}),
    ("qwen3-eager", _cfg("qwen3", head_dim=128), 256, 1, {"attention": "eager"}),
    ("phi3-mha", _cfg("phi3", kv=8, pad_token_id=0), 512, 2, {}),
    ("phi3-gqa", _cfg("phi3", pad_token_id=0), 512, 2, {}),
    ("phi3-lora", _cfg("phi3", kv=8, pad_token_id=0), 512, 2, {"method": "lora"}),
    ("phi3-lora-qkv", _cfg("phi3", kv=8, pad_token_id=0), 512, 2, {"method": "lora", "lora_targets": ["qkv_proj"]}),
    ("phi3-eager", _cfg("phi3", kv=8, pad_token_id=0), 256, 1, {"attention": "eager"}),
    # gemma2 and bloom have no SDPA path in transformers 5.24: eager. gemma2's head_dim 128 = 2h/a.
    ("gemma2-eager", _cfg("gemma2", head_dim=128), 256, 2, {"attention": "eager"}),
    ("gemma2-lora-eager", _cfg("gemma2", head_dim=128), 256, 1, {"attention": "eager", "method": "lora"}),
    ("bloom-eager", {"model_type": "bloom", "hidden_size": 512, "n_layer": 6, "n_head": 8, "vocab_size": 4000},
     256, 2, {"attention": "eager"}),
    ("bloom-lora-eager", {"model_type": "bloom", "hidden_size": 512, "n_layer": 6, "n_head": 8, "vocab_size": 4000},
     256, 1, {"attention": "eager", "method": "lora"}),
]
# Families added for issue 17 (probe agreement): the whole activation peak within 3 % of the probe.
# gemma2's peak is the lowest (-2.4 % full): its final_logit_softcapping keeps a bf16 tanh output of
# the logits (2*s*b*V), a loss term (logits_loss_bytes), not a decoder-layer one.
WITHIN_3_PERCENT = {c[0] for c in CASES if c[0].split("-")[0] in ("qwen3", "phi3", "gemma2", "bloom")} | {"llama-lora-eager"}


def _formula(facts, s, b, kw):
    lora = {k: kw[k] for k in ("lora_targets", "lora_dropout") if k in kw}
    method = kw.get("method", "full")
    per_layer = layer_bytes(facts, s, b, kw.get("attention", "sdpa"), method=method, **lora)
    act = activation_bytes(facts, s, b, kw.get("attention", "sdpa"), method,
                           kw.get("gradient_checkpointing", False), "bf16", **lora)
    return per_layer, act


@pytest.mark.slow
@pytest.mark.parametrize("name,cfg,s,b,kw", CASES, ids=[c[0] for c in CASES])
def test_formula_matches_probe(name, cfg, s, b, kw):
    from memfit.engine.probe.probe import probe

    facts = resolve_model(cfg)
    measured = probe(facts.config, seq_len=s, micro_batch=b, **kw)
    per_layer, act = _formula(facts, s, b, kw)
    if kw.get("gradient_checkpointing"):
        # Checkpointing keeps each layer's bf16 input only: 2*s*b*h, exactly.
        assert measured.activation_bytes_per_layer == 2 * s * b * facts.hidden_size
    else:
        assert per_layer == pytest.approx(measured.activation_bytes_per_layer, rel=0.01)
    # The backward working set is one fitted max(...) term; eager+LoRA+checkpointing overstates the
    # peak by 4.3 % (the safe side), every other case is within 5 %.
    tolerance = 0.05
    if name in WITHIN_3_PERCENT:
        tolerance = 0.03
    assert act.peak_bytes == pytest.approx(measured.activation_peak_bytes, rel=tolerance)


@pytest.mark.slow
def test_lora_stores_more_than_full_at_7b():
    """sources.md §3 measured 17.0 vs 11.7 GiB (7B, no checkpointing): LoRA stores ~1.45x more."""
    facts = resolve_model("meta-llama/Llama-2-7b-hf")
    full = layer_bytes(facts, 2048, 1, "sdpa")
    lora = layer_bytes(facts, 2048, 1, "sdpa", method="lora")
    assert lora / full == pytest.approx(17.0 / 11.7, rel=0.03)


def test_llama2_7b_layer_matches_published_probe():
    """sources.md §3: Llama-2-7B, s=2048, b=1, SDPA: 364.5 MiB per layer measured on fake tensors."""
    from types import SimpleNamespace
    facts = SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_kv_heads=32,
                            intermediate_size=11008, num_experts=0, head_dim=128)
    assert layer_bytes(facts, 2048, 1, "sdpa") / 2**20 == pytest.approx(364.5, abs=0.5)


def test_logits_loss_is_three_fp32_logit_tensors():
    """First principles: saved fp32 log-softmax + fp32 grads of nll_loss and log_softmax = 12 B/logit."""
    from types import SimpleNamespace
    facts = SimpleNamespace(vocab_size=151936)
    assert logits_loss_bytes(facts, 2048, 2, "bf16") == 3 * 4 * 2048 * 2 * 151936


def test_checkpointing_stores_one_hidden_state_per_layer():
    """2*s*b*h per layer (bf16 layer input) plus the final norm; first principles."""
    from types import SimpleNamespace
    facts = SimpleNamespace(hidden_size=1024, num_attention_heads=16, num_kv_heads=4, head_dim=64,
                            intermediate_size=2816, num_experts=0, num_layers=10, vocab_size=1000)
    act = activation_bytes(facts, 512, 4, "sdpa", "full", True, "bf16")
    assert act.stored_bytes == 10 * 2 * 512 * 4 * 1024 + 8 * 512 * 4 * 1024


def _table() -> None:
    """Print the formula-vs-probe table of docs/explanation/activations.md (MiB)."""
    from memfit.engine.probe.probe import probe

    print("| case | s x b | layer: probe | formula | peak: probe | formula | error |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg, s, b, kw in CASES:
        facts = resolve_model(cfg)
        m = probe(facts.config, seq_len=s, micro_batch=b, **kw)
        per_layer, act = _formula(facts, s, b, kw)
        if kw.get("gradient_checkpointing"):
            per_layer = 2 * s * b * facts.hidden_size
        mib = 2**20
        print(f"| {name} | {s} x {b} | {m.activation_bytes_per_layer / mib:.3f} | {per_layer / mib:.3f} "
              f"| {m.activation_peak_bytes / mib:.2f} | {act.peak_bytes / mib:.2f} "
              f"| {act.peak_bytes / m.activation_peak_bytes - 1:+.1%} |")


if __name__ == "__main__":
    _table()
