"""Per-op selective activation checkpointing (training.checkpoint_policy: selective_op).

torchtitan's default AC mode keeps, inside each checkpointed decoder layer, the outputs of the
attention kernels and of every odd-numbered matmul (torchtitan/distributed/activation_checkpoint.py
SelectiveAC). The expected numbers come from two independent places: a probe trace of a real
transformers layer under torch's selective-checkpoint machinery with that rule
(engine/probe/trace.py selective_op_context), and the rule applied by hand to Llama-3-8B's shapes.
"""
from __future__ import annotations

import pytest

from memfit.engine.memory.activations import stored_layer_bytes
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.stack import resolve_stack

SMALL = {"llama": {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1792, "num_attention_heads": 8,
                   "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 1024,
                   "max_position_embeddings": 4096},
         # qwen2's q/k/v carry biases: the matmul's output is kept, not the bias add's.
         "qwen2": {"model_type": "qwen2", "hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6,
                   "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 1024,
                   "max_position_embeddings": 4096}}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(SMALL))
@pytest.mark.parametrize("policy", ["full", "selective_op"])
def test_formula_matches_a_probe_trace(model_type, policy):
    from memfit.engine.probe.probe import probe

    facts = resolve_model(SMALL[model_type])
    traced = probe(facts.config, seq_len=256, micro_batch=2, method="full", gradient_checkpointing=True,
                   checkpoint_policy=policy).activation_bytes_per_layer
    formula = stored_layer_bytes(facts, 256, 2, "sdpa", "full", True, "bf16", checkpoint_policy=policy)
    assert formula == pytest.approx(traced, rel=0.01)


def test_llama3_8b_by_hand():
    # Per token and layer, bf16: wq (4096), wv (1024), w1 (14336) and w2 (4096) outputs, SDPA's output
    # (4096) at 2 bytes, its fp32 logsumexp (32 heads x 4): 55,424 bytes over full checkpointing's input.
    facts = resolve_model("meta-llama/Meta-Llama-3-8B")
    s, b = 8192, 1
    full = stored_layer_bytes(facts, s, b, "sdpa", "full", True, "bf16")
    selective = stored_layer_bytes(facts, s, b, "sdpa", "full", True, "bf16", checkpoint_policy="selective_op")
    assert full == s * b * 2 * 4096
    assert selective - full == s * b * (2 * (4096 + 1024 + 14336 + 4096 + 4096) + 4 * 32)


def test_plan_key_reaches_the_stack_and_defaults_to_full():
    base = {"model": "meta-llama/Meta-Llama-3-8B", "hardware": {"gpu_memory": 80, "host_memory": 512}}
    assert resolve_stack(plan_from_dict(base)).checkpoint_policy == "full"
    plan = plan_from_dict({**base, "training": {"gradient_checkpointing": True, "checkpoint_policy": "selective_op"}})
    assert resolve_stack(plan).checkpoint_policy == "selective_op"
