"""peft's DoRA adapters (training.lora.use_dora; engine/memory/activations.py dora_*).

The oracle for the activation terms is the probe: it builds the architecture with peft's
LoraConfig(use_dora=True) and counts live storage on fake tensors (engine/probe/probe.py). The
magnitude-vector count is first principles: peft's DoraLinearLayer holds one trained value per output
feature of each adapted Linear. The readers' use_dora keys are tested with the readers
(tests/test_llamafactory.py, tests/test_axolotl_torchtune.py).
"""
from __future__ import annotations

import pytest

from memfit.engine.memory.activations import (activation_bytes, dora_params, dora_transient_bytes,
                                             stored_layer_bytes)
from memfit.engine.memory.estimate import estimate_memory as estimate
from memfit.engine.memory.states import trainable_params
from memfit.engine.model.spec import resolve_model, spec_from_config
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy

# A Llama layer whose widths differ from each other (h, I, q, kv), so a term read off the wrong
# width fails; none of the fitted configs elsewhere in the tests has this shape.
CONFIG = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
          "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 2048, "tie_word_embeddings": False}
SEQ, BATCH = 128, 2


def test_magnitude_vectors_are_one_per_output_feature():
    # Llama-3-8B, all seven projections: q 4096, k 1024, v 1024, o 4096, gate 14336, up 14336, down 4096
    # outputs per layer, 32 layers (the model's config.json).
    facts = resolve_model("meta-llama/Meta-Llama-3-8B")
    per_layer = 4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096
    assert dora_params(facts, "all-linear") == 32 * per_layer
    assert dora_params(facts, ["q_proj", "v_proj"]) == 32 * (4096 + 1024)
    lora = trainable_params(facts, "lora", 16, "all-linear")
    assert trainable_params(facts, "lora", 16, "all-linear", dora=True) - lora == 32 * per_layer
    assert trainable_params(facts, "full", 16, "all-linear", dora=True) == facts.total_params


def test_transient_is_set_by_the_widest_input():
    # Llama-3-8B: down_proj (14336 in, 4096 out) has the largest d_in^2 + 4 d_in d_out.
    facts = resolve_model("meta-llama/Meta-Llama-3-8B")
    assert dora_transient_bytes(facts, "all-linear") == 4.0 * 14336 ** 2 + 16.0 * 14336 * 4096
    assert dora_transient_bytes(facts, ["q_proj"]) == 4.0 * 4096 ** 2 + 16.0 * 4096 * 4096


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_stored_layer_terms_match_the_probe(targets, dropout):
    # What DoRA adds to a layer's saved tensors, traced (probe with and without use_dora) against the
    # formula's difference; dropout switches peft to the recomputed fp32 base result and weight copy.
    from memfit.engine.probe.probe import probe

    facts = spec_from_config(CONFIG, name="dora-test", source="inline")
    traced = {d: probe(CONFIG, seq_len=SEQ, micro_batch=BATCH, method="lora", lora_targets=targets,
                       lora_dropout=dropout, dora=d, layers_traced=4).activation_bytes_per_layer
              for d in (False, True)}
    formula = {d: stored_layer_bytes(facts, SEQ, BATCH, "sdpa", "lora", False, "bf16", lora_targets=targets,
                                     lora_dropout=dropout, dora=d) for d in (False, True)}
    added = traced[True] - traced[False]
    assert added > 0
    assert formula[True] - formula[False] == pytest.approx(added, rel=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_peak_with_every_linear_adapted_matches_the_probe(checkpointing):
    # The weight-norm temporaries of the widest adapter (down_proj) on top of the stored layers, or of
    # the recomputed layer under checkpointing: the whole activation peak within the 5% of the
    # traced one (the stored terms alone are exact, above).
    from memfit.engine.probe.probe import probe

    facts = spec_from_config(CONFIG, name="dora-test", source="inline")
    traced = probe(CONFIG, seq_len=SEQ, micro_batch=BATCH, method="lora", lora_dropout=0.0, dora=True,
                   gradient_checkpointing=checkpointing, layers_traced=4).activation_peak_bytes
    formula = activation_bytes(facts, SEQ, BATCH, "sdpa", "lora", checkpointing, "bf16", dora=True).peak_bytes
    assert formula == pytest.approx(traced, rel=0.05)


def _plan(use_dora: bool, dropout: float = 0.0) -> dict:
    return {"model": "meta-llama/Meta-Llama-3-8B",
            "hardware": {"gpu": "H100-SXM-80GB", "gpus_per_node": 1, "host_memory": 256},
            "training": {"method": "lora", "seq_len": 2048, "micro_batch_size": 2, "global_batch_size": 2,
                         "precision": "bf16", "gradient_checkpointing": False, "zero_stage": 0,
                         "lora": {"rank": 16, "dropout": dropout, "use_dora": use_dora}}}


def test_the_estimate_adds_the_dora_terms():
    # Llama-3-8B LoRA on all linears, 2 x 2048 tokens, no checkpointing: DoRA keeps 6 bytes per
    # output feature per token (no dropout), 32 layers x 43008 outputs x 4096 tokens = 22.5 GB, besides
    # its magnitude vectors' states; the difference in the estimate is at least that.
    strategy = Strategy(method="lora", zero_stage=0, micro_batch_size=2, gradient_checkpointing=False)
    facts = resolve_model("meta-llama/Meta-Llama-3-8B")
    lora = estimate(plan_from_dict(_plan(False)), facts, strategy)
    dora = estimate(plan_from_dict(_plan(True)), facts, strategy)
    stored = 6.0 * 43008 * 32 * 4096 / 2 ** 30
    assert dora.gpu.activations_gib + dora.gpu.logits_loss_gib - lora.gpu.activations_gib - lora.gpu.logits_loss_gib \
        >= stored
    assert dora.trainable_params - lora.trainable_params == 32 * 43008


def test_use_dora_defaults_off_and_is_a_boolean():
    assert plan_from_dict(_plan(False)).training.lora.use_dora is False
    assert plan_from_dict(_plan(True)).training.lora.use_dora is True
