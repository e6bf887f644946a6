"""Probe-fitted decoder layers (engine/memory/arch_terms.json, bench/arch_terms.py).

The probe (engine/probe/) is the oracle for activations: it traces a real transformers layer on fake
tensors. The shipped terms of a model type are solved from traces at the bench's shapes; these tests
check them against fresh traces at a shape, micro-batch and adapter list the fit never saw.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from memfit.engine.memory.activations import layer_bytes
from memfit.engine.memory.arch_terms import _terms, fitted_types, layer_per_token
from memfit.engine.model.spec import resolve_model

BENCH = Path(__file__).resolve().parent.parent / "bench"
# The families the closed form was written for and is checked on to 1 % (tests/test_activations.py).
CLOSED_FORM = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "bloom")
# The bar for the activation formula against the probe.
TOLERANCE = 0.03


def _bench():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("arch_terms")


def test_closed_form_families_keep_the_closed_form():
    assert not set(CLOSED_FORM) & fitted_types()
    assert all(layer_per_token(t, m, "sdpa", {}) is None for t in CLOSED_FORM for m in ("full", "lora"))


def test_every_fitted_type_has_both_methods_and_attentions():
    for model_type, row in _terms().items():
        assert set(row) == {"full", "lora", "dropout_keys"}, model_type
        for method in (row["full"], row["lora"]):
            assert {"sdpa", "eager", "attention_dropout"} <= set(method), model_type
            # Eager keeps every head's score matrix: a term in heads x tokens; SDPA keeps none.
            assert method["eager"].get("as", 0) > 0 and "as" not in method["sdpa"], model_type


def test_qlora_and_flash_take_lora_and_sdpa_terms():
    widths = {"h": 1024, "q": 1024, "kv": 1024, "kv_eager": 1024, "I": 4096, "a": 16, "1": 1.0, "as": 16 * 512}
    assert layer_per_token("gpt_neox", "qlora", "sdpa", widths) == layer_per_token("gpt_neox", "lora", "sdpa", widths)
    assert layer_per_token("opt", "full", "flash_attention_2", widths) == layer_per_token("opt", "full", "sdpa", widths)


# An unseen shape: hidden 640 (no bench shape has it), intermediate 2.5h, 10 heads, 320 tokens, two
# sequences; the GQA-capable types get 5 kv heads (neither 1 nor all heads: repeat_kv copies under eager).
UNSEEN = {"h": 640, "inter": 1600, "heads": 10, "kv": 5, "tokens": 320, "batch": 2}
# Target lists the fit never saw (it traces all-linear): the attention projections, with dropout.
ATTENTION_ONLY = {"gpt_neox": ["query_key_value"], "opt": ["q_proj", "v_proj"], "gpt_bigcode": ["c_attn"],
                  "starcoder2": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "phi": ["q_proj", "v_proj"],
                  "stablelm": ["q_proj", "v_proj"], "olmo": ["q_proj", "k_proj", "v_proj", "o_proj"],
                  "gemma": ["q_proj", "v_proj"]}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(ATTENTION_ONLY))
@pytest.mark.parametrize("method,targets,dropout,attention", [
    ("full", None, 0.0, "sdpa"), ("lora", "attention", 0.05, "sdpa"), ("lora", "all-linear", 0.0, "sdpa"),
    ("full", None, 0.0, "eager"), ("lora", "attention", 0.0, "eager")])
def test_the_terms_match_a_fresh_trace(model_type, method, targets, dropout, attention):
    from memfit.engine.probe.probe import probe

    u = UNSEEN
    cfg = _bench().config(model_type, u["h"], u["inter"], u["heads"], kv=u["kv"])
    facts = resolve_model(cfg)
    lora_targets = ATTENTION_ONLY[model_type] if targets == "attention" else "all-linear"
    traced = probe(facts.config, seq_len=u["tokens"], micro_batch=u["batch"], method=method, attention=attention,
                   lora_targets=lora_targets, lora_dropout=dropout).activation_bytes_per_layer
    formula = layer_bytes(facts, u["tokens"], u["batch"], attention, method=method, lora_targets=lora_targets,
                          lora_dropout=dropout)
    # gpt_neox's and gpt_bigcode's eager attention keep a mask tensor that does not grow in proportion
    # to the micro-batch (traced 2026-12-03: bytes(b) - b x bytes(1) is not linear in b), which a
    # per-token term cannot follow: the terms, fitted at one sequence, are off at two by -6.4 % (full)
    # and +8.5 % (LoRA) for gpt_neox, +7.4 % and -7.3 % for gpt_bigcode. SDPA, every model type's
    # default, has no such term.
    tolerance = 0.09 if attention == "eager" and model_type in ("gpt_neox", "gpt_bigcode") else TOLERANCE
    assert formula == pytest.approx(traced, rel=tolerance)


@pytest.mark.slow
def test_shipped_terms_are_the_fit_of_fresh_traces():
    bench = _bench()
    coef, residual = bench.fit(bench.traced_per_token("gpt_neox", "lora", "sdpa"), "sdpa")
    assert coef == _terms()["gpt_neox"]["lora"]["sdpa"]
    assert residual < bench.MAX_RESIDUAL


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["gpt2", "opt", "gpt_bigcode", "gpt_neox"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_dropout_terms_match_a_fresh_eager_trace(model_type, method):
    # Every dropout of the type at 0.2 (the fit traced 0.1: a mask's size does not depend on the
    # rate) at the unseen shape, eager attention, where the probe's cpu trace keeps what CUDA keeps.
    # SDPA with dropout cannot be checked here: on cpu it falls back to the math kernel, which keeps
    # the probabilities that CUDA's kernels drop inside the kernel.
    from memfit.engine.probe.probe import probe

    bench, u = _bench(), UNSEEN
    cfg = bench.config(model_type, u["h"], u["inter"], u["heads"])
    cfg.update({k: 0.2 for k in sum(bench.DROPOUT_KEYS[model_type], [])})
    facts = resolve_model(cfg)
    traced = probe(facts.config, seq_len=u["tokens"], micro_batch=1, method=method,
                   attention="eager").activation_bytes_per_layer
    formula = layer_bytes(facts, u["tokens"], 1, "eager", method=method)
    assert formula == pytest.approx(traced, rel=TOLERANCE)


def test_a_config_without_dropout_keys_takes_the_class_defaults():
    # GPT-2's config class defaults attn_pdrop and resid_pdrop to 0.1 (transformers GPT2Config): a
    # config.json that leaves them out keeps 3 bytes per head and key (eager) and 2 per hidden unit more.
    from memfit.engine.memory.arch_terms import dropout_per_token

    widths = {"h": 768, "I": 3072, "a": 12, "as": 12 * 1024, "1": 1.0}
    assert dropout_per_token("gpt2", "full", "eager", {}, widths) == 3 * 12 * 1024 + 2 * 768
    assert dropout_per_token("gpt2", "full", "sdpa", {}, widths) == 2 * 768
    assert dropout_per_token("gpt2", "full", "eager", {"attn_pdrop": 0.0, "resid_pdrop": 0.0}, widths) == 0
