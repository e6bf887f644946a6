"""The probe: fake-tensor trace of one training step (engine/probe/probe.py)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 6,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000,
        "max_position_embeddings": 4096}
LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"method": "lora"}, {"gradient_checkpointing": True}],
                         ids=["full", "lora", "ckpt"])
def test_fake_trace_equals_real_tensor_trace(kw):
    """Independent route: the same step on real cpu tensors; every phase peak must agree exactly."""
    from memfit.engine.probe.probe import probe

    fake = probe(TINY, seq_len=64, micro_batch=2, layers_traced=6, **kw)
    real = probe(TINY, seq_len=64, micro_batch=2, layers_traced=6, _fake=False, **kw)
    for phase in ("forward", "backward", "optimizer"):
        assert fake.by_phase[phase]["peak"] == real.by_phase[phase]["peak"], phase
    assert fake.activation_bytes_per_layer == real.activation_bytes_per_layer


@pytest.mark.slow
def test_extrapolation_equals_full_trace():
    """Every term is linear in the layer count: 2+4 traced layers must predict the 6-layer trace."""
    from memfit.engine.probe.probe import probe

    part = probe(TINY, seq_len=128, micro_batch=1, layers_traced=4)
    full = probe(TINY, seq_len=128, micro_batch=1, layers_traced=6)
    assert part.extrapolated_from_layers == (2, 4)
    assert full.extrapolated_from_layers is None
    assert part.peak_bytes == full.peak_bytes
    assert part.by_phase == full.by_phase


@pytest.mark.slow
def test_model_states_match_meta_count():
    """params: 2 B x the meta-device count; grads the same; AdamW: exp_avg + exp_avg_sq in bf16
    plus one fp32 `step` scalar per parameter tensor (torch.optim.AdamW's state layout)."""
    from memfit.engine.model.spec import meta_device_count
    from memfit.engine.probe.probe import probe

    n = meta_device_count(TINY)["total_params"]
    r = probe(TINY, seq_len=32, micro_batch=1, layers_traced=6)
    tensors = 2 + 6 * 9 + 1  # embed, lm_head, 9 per layer (7 linears + 2 norms), final norm
    assert r.params_bytes == 2 * n
    assert r.grads_bytes == 2 * n
    assert r.optimizer_bytes == 4 * n + 4 * tensors
    assert r.peak_phase == "optimizer"


@pytest.mark.slow
def test_lora_trains_only_adapters():
    """Grads exist for the adapters only: 2 B x peft's trainable count (meta_device_count)."""
    from memfit.engine.model.spec import meta_device_count
    from memfit.engine.probe.probe import probe

    counts = meta_device_count(TINY, lora_rank=8)
    r = probe(TINY, seq_len=32, micro_batch=1, method="lora", lora_rank=8, layers_traced=6)
    # peft keeps adapters in fp32 when the base is bf16 (autocast_adapter_dtype): 4 B each.
    assert r.grads_bytes == 4 * counts["lora_trainable_params"]


@pytest.mark.slow
def test_llama2_7b_under_30_seconds_and_published_numbers():
    """Brief: a 7B plan probes in < 30 s. sources.md §3/§4: 6,738,415,616 params; 364.5 MiB/layer."""
    from memfit.engine.probe.probe import probe

    seen = []
    r = probe(LLAMA2_7B, seq_len=2048, micro_batch=1, progress=lambda *a: seen.append(a))
    assert r.seconds < 30
    assert r.params_bytes == 2 * 6_738_415_616
    assert r.activation_bytes_per_layer / 2**20 == pytest.approx(364.5, abs=0.5)
    assert r.extrapolated_from_layers == (2, 4)
    assert seen[-1][:2] == (6, 6) and [d for d, _, _ in seen] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.parametrize("cfg,match", [({"hidden_size": 8}, "model_type"),
                                       ({"model_type": "no-such-arch"}, "cannot build")])
def test_bad_config_raises_probe_error(cfg, match):
    from memfit.engine.probe.probe import ProbeError, probe

    with pytest.raises(ProbeError, match=match):
        probe({"num_hidden_layers": 2, **cfg}, seq_len=8, micro_batch=1)


@pytest.mark.slow
def test_flash_attention_is_traced_as_sdpa_with_a_note():
    from memfit.engine.probe.probe import probe

    sdpa = probe(TINY, seq_len=64, micro_batch=1)
    flash = probe(TINY, seq_len=64, micro_batch=1, attention="flash_attention_2")
    assert flash.peak_bytes == sdpa.peak_bytes
    assert any("flash_attention_2" in n for n in flash.notes)


@pytest.mark.slow
def test_probe_plan_uses_the_plans_settings():
    """probe_plan == probe with the plan's fields (the plan pins LoRA r=8, s=64, b=2)."""
    from memfit.engine.plan.load import plan_from_dict
    from memfit.engine.probe.probe import probe, probe_plan

    plan = plan_from_dict({"model": TINY, "hardware": {"gpu_memory": 24, "host_memory": 64},
                           "training": {"method": "lora", "seq_len": 64, "micro_batch_size": 2,
                                        "lora": {"rank": 8}}})
    direct = probe(TINY, seq_len=64, micro_batch=2, method="lora", lora_rank=8)
    assert probe_plan(plan).by_phase == direct.by_phase
