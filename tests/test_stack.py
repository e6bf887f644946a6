"""The training stack (training.framework, loss options, activation offloading, data shape, allocator).

Expected numbers come from first principles (bytes of tensors), from the upstream code's own worked
example (Liger's chunk size), and from a storage trace of a real loss step on CPU
(engine/probe/trace.py Tracker, the probe's counter): see test_loss_trace_matches_formula.
"""
from __future__ import annotations

import pytest

from memfit.engine import PlanError, plan_from_dict
from memfit.engine.memory.activations import activation_bytes, stored_layer_bytes
from memfit.engine.memory.allocator import fragmentation
from memfit.engine.memory.estimate import estimate_memory
from memfit.engine.memory.loss import chunked_loss_bytes, fused_linear_loss_bytes, loss_bytes, standard_loss_bytes
from memfit.engine.memory.states import QLORA_BYTES_PER_PARAM, frozen_weight_bytes
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.stack import FRAMEWORKS, framework_table, resolve_stack
from memfit.engine.plan.strategy import Strategy

BASE = {"model": {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6,
                  "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 32000},
        "hardware": {"gpu_memory": 80, "host_memory": 256}}


def _plan(training=None, data=None, model=None):
    return plan_from_dict({**BASE, "model": model or BASE["model"], "training": training or {},
                           "data": data or {}}, "p.yaml")


def _facts(plan):
    return resolve_model(plan.model, plan.base_dir)


def test_every_framework_has_every_default_and_a_source():
    keys = {"kbit_upcast", "loss", "activation_offloading", "lora_dtype", "packing", "sync_each_batch", "zero_init",
            "source"}
    table = framework_table()
    assert set(table) == set(FRAMEWORKS)
    for name, row in table.items():
        assert keys <= set(row), name
        assert row["loss"]["implementation"] in ("standard", "chunked", "fused_linear")
        assert row["source"].strip()


def test_default_framework_is_hf_trainer_with_standard_fp32_loss():
    s = resolve_stack(_plan())
    assert (s.framework, s.loss_implementation, s.logits_dtype, s.kbit_upcast, s.activation_offloading) == \
        ("hf-trainer", "standard", "fp32", True, False)


def test_framework_defaults_and_explicit_keys_override_them():
    tt = resolve_stack(_plan({"framework": "torchtune"}))
    assert (tt.loss_implementation, tt.loss_chunks, tt.kbit_upcast) == ("chunked", 8, False)
    own = resolve_stack(_plan({"framework": "torchtune", "loss": {"implementation": "standard"},
                               "kbit_upcast": True, "activation_offloading": True}, {"packing": True}))
    assert (own.loss_implementation, own.kbit_upcast, own.activation_offloading, own.packing) == \
        ("standard", True, True, True)


BAD = [
    ({"training": {"framework": "megatron"}}, r"training.framework: Input should be 'hf-trainer'"),
    ({"training": {"loss": {"implementation": "fused"}}}, r"training.loss.implementation: "),
    ({"training": {"loss": {"chunks": 0}}}, r"training.loss.chunks: .*greater than or equal to 1"),
    ({"training": {"loss": {"chunk": 8}}}, r"training.loss.chunk: unknown key; did you mean 'chunks'\?"),
    ({"data": {"padding": "longes"}}, r"data.padding: "),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_bad_stack_keys_name_the_key(change, message):
    with pytest.raises(PlanError, match=message):
        plan_from_dict({**BASE, **change}, "p.yaml")


def test_standard_loss_is_three_tensors_of_n_by_v():
    # fp32: saved log_softmax + the two gradients, 4 B each; bf16 logits without the upcast: 2 B each.
    assert standard_loss_bytes(1000, 32000, 4.0) == 12 * 1000 * 32000
    assert standard_loss_bytes(1000, 32000, 2.0) == 6 * 1000 * 32000


def test_chunked_loss_keeps_one_fp32_copy_plus_one_chunks_gradients():
    assert chunked_loss_bytes(1000, 32000, 4.0, 8) == 4 * 1000 * 32000 + 8 * 1000 * 32000 / 8


def test_fused_linear_chunk_size_is_ligers_worked_example():
    # liger_kernel ops/fused_linear_cross_entropy.py: "BT = 4096*4, V = 32000, H = 4096 ==> inc_factor = 8,
    # chunk_size = 2048": grad_input BT x H + one chunk of logits, both 16-bit; frozen head: no grad_weight.
    bt, v, h = 4096 * 4, 32000, 4096
    assert fused_linear_loss_bytes(bt, v, h, head_trains=False) == 2 * bt * h + 2 * 2048 * v
    assert fused_linear_loss_bytes(bt, v, h, head_trains=True) == 2 * bt * h + 2 * 2048 * v + 2 * v * h


def test_softcapping_auto_reads_the_config_and_adds_the_tanh_output():
    capped = {**BASE["model"], "model_type": "gemma2", "final_logit_softcapping": 30.0, "head_dim": 64}
    plan = _plan(model=capped)
    facts = _facts(plan)
    stack = resolve_stack(plan, facts)
    assert stack.softcapping
    s, b, v = 1024, 2, facts.vocab_size
    assert loss_bytes(facts, s, b, stack, head_trains=False) == (12 + 2) * s * b * v
    off = resolve_stack(_plan({"loss": {"softcapping": False}}, model=capped), facts)
    assert loss_bytes(facts, s, b, off, head_trains=False) == 12 * s * b * v


def test_activation_offloading_keeps_two_layers_on_the_gpu_and_all_on_the_host():
    plan = _plan({"activation_offloading": True})
    facts, stack = _facts(plan), resolve_stack(_plan({"activation_offloading": True}))
    plain = activation_bytes(facts, 2048, 2, "sdpa", "lora", True, "bf16")
    off = activation_bytes(facts, 2048, 2, "sdpa", "lora", True, "bf16", stack=stack)
    layer = 2048 * 2 * facts.hidden_size * 2  # a checkpointed layer's bf16 input
    assert plain.stored_bytes - off.stored_bytes == (facts.num_layers - 2) * layer
    assert off.offloaded_bytes == facts.num_layers * layer


def test_offloaded_activations_are_host_memory_per_rank():
    plan = _plan({"activation_offloading": True})
    facts = _facts(plan)
    strategy = Strategy(method="lora", zero_stage=0, gradient_checkpointing=True, micro_batch_size=2)
    est = estimate_memory(plan, facts, strategy)
    assert est.host.offloaded_activations_gib * 2**30 == pytest.approx(facts.num_layers * 2048 * 2 * 512 * 2)


def test_no_kbit_upcast_keeps_qlora_non_quantised_weights_and_residual_in_bf16():
    facts = _facts(_plan())
    q = facts.quantizable_params()
    rest = facts.total_params - q
    up, down = frozen_weight_bytes(facts, "qlora", "bf16"), frozen_weight_bytes(facts, "qlora", "bf16", kbit_upcast=False)
    assert up - down == rest * (4 - 2)
    assert down == pytest.approx(q * QLORA_BYTES_PER_PARAM + rest * 2)
    fp32_in = stored_layer_bytes(facts, 1024, 1, "sdpa", "qlora", True, "bf16")
    bf16_in = stored_layer_bytes(facts, 1024, 1, "sdpa", "qlora", True, "bf16", kbit_upcast=False)
    assert (fp32_in, bf16_in) == (1024 * 512 * 4, 1024 * 512 * 2)


def test_allocator_rate_depends_on_the_data_shape_and_the_fit_uses_reserved():
    assert fragmentation(True, False) < fragmentation(False, False)
    assert fragmentation(False, True) < fragmentation(True, False)
    strategy = Strategy(method="lora", zero_stage=0, micro_batch_size=4)
    fixed, varied = _plan(data={"padding": "max_length"}), _plan(data={"padding": "longest"})
    facts = _facts(fixed)
    a, b = estimate_memory(fixed, facts, strategy), estimate_memory(varied, facts, strategy)
    assert a.gpu_allocated_gib == pytest.approx(b.gpu_allocated_gib)
    assert b.gpu_reserved_gib > a.gpu_reserved_gib
    dynamic = b.gpu.activations_gib + b.gpu.logits_loss_gib
    assert b.gpu.allocator_slack_gib == pytest.approx(dynamic * fragmentation(False, False))
    # the peak (and so the verdict) is reserved + context, not allocated, all scaled by the centre
    assert b.gpu_peak_gib == pytest.approx(b.gpu_reserved_gib + b.gpu.cuda_context_gib * b.gpu_centre)


def test_chunked_loss_lowers_the_estimate_by_the_loss_term():
    strategy = Strategy(method="lora", zero_stage=0, gradient_checkpointing=True, micro_batch_size=4)
    std, chk = _plan(), _plan({"loss": {"implementation": "chunked", "chunks": 8}})
    facts = _facts(std)
    n, v = 2048 * 4, facts.vocab_size
    diff = estimate_memory(std, facts, strategy).gpu.logits_loss_gib - estimate_memory(chk, facts, strategy).gpu.logits_loss_gib
    assert diff * 2**30 == pytest.approx(12 * n * v - (4 * n * v + 8 * n * v / 8))


def _trace(kind: str, chunks: int = 8, cap: float | None = None, upcast: bool = True) -> float:
    """Peak live bytes of one loss step (lm_head -> loss -> backward) over N*V, traced on CPU tensors."""
    import torch
    import torch.nn.functional as F
    from transformers.loss.loss_utils import ForCausalLMLoss

    from memfit.engine.probe.trace import Tracker

    n, h, v = 512, 16, 8192
    torch.manual_seed(0)
    hidden = torch.randn(1, n, h, dtype=torch.bfloat16, requires_grad=True)
    head, labels = torch.randn(v, h, dtype=torch.bfloat16), torch.randint(0, v, (1, n))
    tracker = Tracker()
    with tracker:
        if kind == "standard":  # what a transformers *ForCausalLM forward does with labels
            logits = hidden @ head.t()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            loss = ForCausalLMLoss(logits, labels, v) if upcast else F.cross_entropy(logits.view(-1, v), labels.view(-1))
            del logits
        else:  # token chunks, one projection and one fp32 cross-entropy at a time (the torchtune mechanism)
            loss = 0.0
            for hc, lc in zip(hidden.chunk(chunks, dim=1), labels.chunk(chunks, dim=1)):
                loss = loss + F.cross_entropy((hc @ head.t()).reshape(-1, v).float(), lc.reshape(-1), reduction="sum")
        tracker.phase = "backward"
        loss.backward()
    return tracker.peaks["backward"][0] / (n * v)


@pytest.mark.slow
@pytest.mark.parametrize("kind, kwargs, expected", [
    ("standard", {}, standard_loss_bytes(1, 1, 4.0)),
    ("standard", {"upcast": False}, standard_loss_bytes(1, 1, 2.0)),
    ("standard", {"cap": 30.0}, standard_loss_bytes(1, 1, 4.0) + 2),
    ("chunked", {"chunks": 8}, chunked_loss_bytes(1, 1, 4.0, 8)),
    ("chunked", {"chunks": 4}, chunked_loss_bytes(1, 1, 4.0, 4)),
])
def test_loss_trace_matches_formula(kind, kwargs, expected):
    # The trace also holds the 16-bit gradient of the hidden states (2*N*H, 1/256 of N*V here).
    assert _trace(kind, **kwargs) == pytest.approx(expected, abs=0.1)


def test_plan_format_table_lists_every_framework_with_its_defaults():
    # frameworks.yaml is documented in docs/reference/plan-format.md: one row per framework, same values.
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs/reference/plan-format.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().split()[0].strip("`"): line for line in text.splitlines()
            if line.startswith("| `")}
    for name, row in framework_table().items():
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert cells[1] == ("yes" if row["kbit_upcast"] else "no"), name
        assert cells[2].startswith(row["loss"]["implementation"]), name
        assert cells[3] == ("yes" if row["activation_offloading"] else "no"), name
        assert cells[4] == row["lora_dtype"], name
        assert cells[5] == ("yes" if row["packing"] else "no"), name


def test_gemma2_without_the_key_is_softcapped_by_its_config_default():
    # transformers models/gemma2/configuration_gemma2.py: final_logit_softcapping = 30.0; the catalogue
    # entry leaves the key out. Llama has no softcapping.
    gemma = _plan(model="google/gemma-2-27b")
    assert resolve_stack(gemma, _facts(gemma)).softcapping
    assert not resolve_stack(_plan(), _facts(_plan())).softcapping
