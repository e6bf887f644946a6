"""Emitted configs proven by running: two real DeepSpeed steps on tiny llama / qwen2 models (CPU, gloo).

The first run in a fresh TORCH_EXTENSIONS_DIR compiles DeepSpeed's shm comm and CPU Adam ops (minutes);
set TORCH_EXTENSIONS_DIR=/work/main/build/torch_extensions to reuse the cache.
"""
from __future__ import annotations

import math

import pytest

from memfit.engine.deepspeed import verify as verify_mod
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy
from memfit.engine.deepspeed.verify import TINY, tiny_config, verify

# Field names/values as in meta-llama/Llama-2-7b-hf and Qwen/Qwen2.5-0.5B config.json (abridged).
LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "bos_token_id": 1,
         "eos_token_id": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16",
         "architectures": ["LlamaForCausalLM"]}
QWEN2 = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
         "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "bos_token_id": 151643,
         "eos_token_id": 151643, "max_window_layers": 24, "use_sliding_window": False, "rope_theta": 1000000.0,
         "tie_word_embeddings": True, "torch_dtype": "bfloat16", "layer_types": ["full_attention"] * 24}
# A random-init LM predicts ~uniformly over the vocabulary: first loss ~ ln(512) = 6.238.
LN_VOCAB = math.log(TINY["vocab_size"])


def plan(model, precision="bf16", method="full", optimizer="adamw", global_batch=None):
    training = {"precision": precision, "method": method, "optimizer": optimizer}
    if global_batch:
        training["global_batch_size"] = global_batch
    return plan_from_dict({"model": model, "training": training,
                           "hardware": {"gpu_memory": 80, "host_memory": 64, "gpus_per_node": 8}})


def S(stage, opt="none", param="none", method="full", gc=False, micro=1):
    return Strategy(method=method, zero_stage=stage, offload_optimizer=opt, offload_param=param,
                    gradient_checkpointing=gc, micro_batch_size=micro)


def test_tiny_config_keeps_the_family_and_shrinks_the_shapes():
    tiny = tiny_config(QWEN2)
    assert tiny["model_type"] == "qwen2" and tiny["rope_theta"] == 1e6 and tiny["tie_word_embeddings"] is True
    assert {k: tiny[k] for k in TINY} == TINY
    assert "layer_types" not in tiny and "torch_dtype" not in tiny  # 24-entry list would not fit 2 layers
    assert tiny["bos_token_id"] < TINY["vocab_size"]
    with pytest.raises(ValueError, match="model_type"):
        tiny_config({"hidden_size": 8})


def test_what_cannot_run_on_cpu_is_skipped_with_a_reason():
    results = verify(plan(LLAMA, "fp16"), [S(2)], LLAMA) + verify(plan(LLAMA, method="qlora"), [S(2, method="qlora")], LLAMA)
    assert [r.skipped for r in results] == ["fp16 needs a GPU (DeepSpeed refuses fp16 on CPU)",
                                            "QLoRA needs bitsandbytes and a GPU"]
    assert not any(r.passed for r in results)


def assert_ran(results):
    for r in results:
        assert r.passed, f"{r.key}: {r.error}"
        assert len(r.losses) == 2 and all(math.isfinite(x) for x in r.losses)
        assert abs(r.losses[0] - LN_VOCAB) < 0.5, r.losses


@pytest.mark.slow
def test_llama_bf16_every_stage_and_offload():
    strategies = [S(0), S(2), S(3), S(2, "cpu"), S(3, "cpu", "cpu")]  # z1: qwen2 below
    results = verify(plan(LLAMA, global_batch=16), strategies, LLAMA)  # accumulation 2 at world 8 -> capped run
    assert_ran(results)
    # Same seed, same init, same batch: ZeRO 0/2 and optimizer offload shard state, not the forward pass.
    first = {r.key: r.losses[0] for r in results}
    assert first["full/z0/nogc/mb1"] == first["full/z2/nogc/mb1"] == first["full/z2/opt=cpu/nogc/mb1"]


@pytest.mark.slow
def test_llama_fp32_and_lora_with_checkpointing():
    assert_ran(verify(plan(LLAMA, "fp32"), [S(2), S(3, "cpu", "cpu")], LLAMA))
    assert_ran(verify(plan(LLAMA, method="lora"), [S(2, method="lora", gc=True, micro=2)], LLAMA))


@pytest.mark.slow
def test_qwen2_bf16_and_fp32():
    assert_ran(verify(plan(QWEN2), [S(1), S(2, "cpu"), S(3)], QWEN2))
    assert_ran(verify(plan(QWEN2, "fp32"), [S(3, "cpu", "cpu")], QWEN2))


@pytest.mark.slow
def test_a_broken_config_fails_without_taking_the_caller_down(monkeypatch):
    real = verify_mod._run_config

    def broken(strategy, plan_, facts):
        cfg = real(strategy, plan_, facts)
        cfg["train_batch_size"] = 3  # micro 1 x accum 1 x world 1 = 1: DeepSpeed asserts at start-up
        return cfg

    monkeypatch.setattr(verify_mod, "_run_config", broken)
    [result] = verify(plan(LLAMA), [S(1)], LLAMA)
    assert not result.passed and "exit code 1" in result.error and "batch" in result.error.lower()


@pytest.mark.slow
def test_a_hang_is_cut_off_by_the_timeout():
    [result] = verify(plan(LLAMA), [S(0)], LLAMA, timeout_s=1)
    assert not result.passed and result.error.startswith("timed out after 1 s")
