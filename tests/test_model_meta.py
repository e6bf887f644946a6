"""Any architecture transformers knows: meta-device counts, their disk cache, multimodal and MoE/MLA facts.

Oracles, named in each test:
- published parameter counts (model cards and the Hugging Face Hub's safetensors totals, quoted with the
  digits they were published with; the tolerance is half a unit of the last published digit);
- `meta_device_count` (engine/model/meta.py), which sums `model.parameters()` of the model transformers
  builds and reads nothing else, and peft's own LoRA wrapping on the meta device (slow);
- first-principles sums written out in the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memfit.engine.core.errors import ModelSpecError
from memfit.engine.model import cache
from memfit.engine.model import spec as mf

# (id, published total, the digits' unit, where it was published). Multimodal totals include the tower.
PUBLISHED = [
    ("Qwen/Qwen2-7B", 7.62e9, 1e7, "Hub safetensors total, 7.62B"),
    ("Qwen/Qwen1.5-7B", 7.72e9, 1e7, "Hub safetensors total, 7.72B"),
    ("google/gemma-7b", 8.54e9, 1e7, "Hub safetensors total, 8.54B"),
    ("huggyllama/llama-30b", 32.5e9, 1e8, "LLaMA paper (Touvron et al. 2023) Table 2, 32.5B"),
    ("Qwen/Qwen3-30B-A3B", 30.5e9, 1e8, "model card: 30.5B in total, 3.3B activated"),
    ("deepseek-ai/DeepSeek-V2-Lite", 15.7e9, 1e8, "Hub safetensors total, 15.7B"),
    ("allenai/OLMo-2-1124-7B", 7.3e9, 1e8, "Hub safetensors total, 7.3B"),
    ("tiiuae/falcon-7b", 7e9, 1e9, "model card: a 7B parameters causal decoder-only model"),
    ("EleutherAI/pythia-6.9b", 6_857_302_016, 1, "Pythia README model table, 6,857,302,016 total params"),
    ("EleutherAI/pythia-1b", 1_011_781_632, 1, "Pythia README model table, 1,011,781,632 total params"),
    ("openai-community/gpt2", 124_439_808, 1, "the well-known GPT-2 small count (124M), exact in HF docs"),
    ("THUDM/GLM-4-9B-0414", 9.4e9, 1e8, "Hub safetensors total, 9.4B"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", 8.29e9, 1e7, "Hub safetensors total, 8.29B (text + vision)"),
    ("google/gemma-3-4b-it", 4.3e9, 1e8, "Hub safetensors total, 4.3B (text + SigLIP tower)"),
    ("google/gemma-3-1b-it", 1.0e9, 1e8, "model card: 1B"),
    ("microsoft/Phi-3.5-MoE-instruct", 41.9e9, 1e8, "Hub safetensors total, 41.9B; model card: 6.6B active"),
]
NEW_IDS = [p[0] for p in PUBLISHED]
# Active parameters on the model cards (one decimal; whether the card rounds or truncates is not said,
# so within one unit of the last digit: 3,353,032,704 is "3.3B" truncated).
PUBLISHED_ACTIVE = [("Qwen/Qwen3-30B-A3B", 3.3e9, 1e8), ("microsoft/Phi-3.5-MoE-instruct", 6.6e9, 1e8)]


@pytest.mark.parametrize("model_id, total, unit, where", PUBLISHED, ids=NEW_IDS)
def test_catalogue_count_matches_published(model_id, total, unit, where):
    f = mf.resolve_model(model_id)
    assert abs(f.total_params + f.frozen_extra_params - total) <= unit / 2, where


@pytest.mark.parametrize("model_id, active, unit", PUBLISHED_ACTIVE)
def test_moe_active_matches_published(model_id, active, unit):
    assert abs(mf.resolve_model(model_id).active_params - active) < unit


def test_new_catalogue_models_resolve_without_torch():
    """The bundled counts keep the cold path free of torch and transformers (subprocess sys.modules)."""
    code = ("import sys, json; from memfit.engine.model.spec import resolve_model; "
            f"ids = {NEW_IDS!r}; specs = [resolve_model(i) for i in ids]; "
            "print(json.dumps([sorted(m for m in ('torch', 'transformers') if m in sys.modules), "
            "sorted({s.counted_by for s in specs})]))")
    env = {**os.environ, "MEMFIT_CACHE_DIR": "/nonexistent/memfit-cache"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout) == [[], ["closed-form", "meta-device"]]


def test_multimodal_tower_is_frozen_extra():
    """Qwen2.5-VL's text model is Qwen2-7B's (same config fields): the tower is counted apart."""
    vl, text = mf.resolve_model("Qwen/Qwen2.5-VL-7B-Instruct"), mf.resolve_model("Qwen/Qwen2-7B")
    assert vl.total_params == text.total_params
    assert vl.frozen_extra_params > 0
    assert vl.lora_trainable_params(16) == text.lora_trainable_params(16)


def test_multimodal_frozen_tower_in_weights_bytes():
    """memory/states.py: the tower is frozen 16-bit weights under every method (2 B per parameter)."""
    from memfit.engine.memory.states import frozen_weight_bytes

    vl, text = mf.resolve_model("Qwen/Qwen2.5-VL-7B-Instruct"), mf.resolve_model("Qwen/Qwen2-7B")
    assert frozen_weight_bytes(vl, "full", "bf16") == 2 * vl.frozen_extra_params
    for method in ("lora", "qlora"):
        diff = frozen_weight_bytes(vl, method, "bf16") - frozen_weight_bytes(text, method, "bf16")
        assert diff == 2 * vl.frozen_extra_params


def test_deepseek_v2_lite_moe_and_mla_facts_first_principles():
    f = mf.resolve_model("deepseek-ai/DeepSeek-V2-Lite")
    # config: 27 layers, first_k_dense_replace 1; 6 of 64 routed experts of 1408 plus 2 shared of 1408.
    assert (f.num_layers, f.num_moe_layers, f.num_experts, f.experts_per_token) == (27, 26, 64, 6)
    assert (f.moe_intermediate_size, f.num_shared_experts, f.shared_expert_intermediate_size) == (1408, 2, 2816)
    assert f.mlp_width_per_token == (26 * (6 * 1408 + 2 * 1408) + 1 * 10944) / 27
    # MLA: q/k per head 128 + 64, v 128, 16 heads; latent 512 + rope 64, no q latent (q_lora_rank null).
    assert (f.head_dim, f.v_head_dim, f.kv_lora_rank, f.q_lora_rank) == (192, 128, 512, 0)
    assert f.mla_activation_width == 2 * 16 * 192 + 2 * 16 * 128 + 512 + 64


def test_qwen3_moe_all_linear_lora_written_out():
    """peft 0.21 wraps qwen3_moe's router and each expert (gate_up at 2r), as it does Mixtral's."""
    f = mf.resolve_model("Qwen/Qwen3-30B-A3B")
    h, q, kv, L, E, i = 2048, 32 * 128, 4 * 128, 48, 128, 768
    r = 8
    attention = (h + q) + 2 * (h + kv) + (q + h)  # q_proj h->q, k/v_proj h->kv, o_proj q->h: r * (in + out)
    experts = E * (2 * (h + 2 * i) + (i + h))    # gate_up h->2i at rank 2r, down i->h at r
    router = h + E
    assert f.lora_trainable_params(r) == L * r * (attention + experts + router)


# --- the disk cache ------------------------------------------------------------------------------

TINY_OLMO2 = {"model_type": "olmo2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}
STORED = {"format": cache.FORMAT, **{k: 1 for k in cache.REQUIRED if k != "format"}, "linear_layers": []}


def test_cache_roundtrip_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    path = cache.write_cached(TINY_OLMO2, STORED)
    assert path is not None and path.parent == tmp_path / "models"
    assert cache.read_cached(TINY_OLMO2)["total_params"] == 1
    assert cache.read_cached({**TINY_OLMO2, "hidden_size": 128}) is None  # another config, another key
    assert cache.read_cached({**TINY_OLMO2, "_name_or_path": "x"}) is not None  # "_" keys do not count
    assert list((tmp_path / "models").glob("*.tmp")) == []  # written under a temporary name, then renamed


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({**STORED, "format": 0}),
                                     json.dumps({k: v for k, v in STORED.items() if k != "total_params"}),
                                     "\udcff"], ids=["garbage", "list", "old format", "missing key", "bad bytes"])
def test_corrupt_cache_file_is_a_miss(tmp_path, monkeypatch, content):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    path = cache.cache_path(TINY_OLMO2)
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert cache.read_cached(TINY_OLMO2) is None


def test_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path / "file"))  # a file where the folder should be
    assert cache.write_cached(TINY_OLMO2, STORED) is None


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMFIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "memfit" / "models"


# --- slow: a real meta-device build ----------------------------------------------------------------

def _resolve_in_subprocess(cfg, cache_dir):
    code = ("import sys, json; from memfit.engine.model.spec import resolve_model; "
            f"s = resolve_model(json.loads({json.dumps(json.dumps(cfg))})); "
            "print(json.dumps([s.total_params, s.counted_by, 'torch' in sys.modules]))")
    env = {**os.environ, "MEMFIT_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_second_run_hits_the_cache_without_torch(tmp_path):
    first = _resolve_in_subprocess(TINY_OLMO2, tmp_path)
    second = _resolve_in_subprocess(TINY_OLMO2, tmp_path)
    oracle = mf.meta_device_count(TINY_OLMO2)["total_params"]
    assert first == [oracle, "meta-device", True]
    assert second == [oracle, "meta-device", False]


@pytest.mark.slow
def test_corrupt_cache_file_is_recounted_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    path = cache.cache_path(TINY_OLMO2)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "total_params": 5')
    assert mf.resolve_model(dict(TINY_OLMO2)).total_params == mf.meta_device_count(TINY_OLMO2)["total_params"]
    assert cache.read_cached(TINY_OLMO2) is not None


@pytest.mark.slow
def test_unknown_model_type_names_file_and_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_OLMO2, "model_type": "no_such_arch"}))
    with pytest.raises(ModelSpecError, match=rf"^{tmp_path}/config.json: model_type: 'no_such_arch' is not a model "
                                             r"type transformers [\d.]+ knows; check the spelling"):
        mf.resolve_model(str(tmp_path / "config.json"))


@pytest.mark.slow
def test_unknown_model_type_cli_exit_2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_OLMO2, "model_type": "no_such_arch"}))
    plan = (tmp_path / "plan.yaml")
    plan.write_text("model: ./config.json\nhardware: {gpu: RTX-4090-24GB, gpus_per_node: 1, host_memory: 64GB}\n"
                    "training: {method: lora, seq_len: 512, micro_batch_size: 1, global_batch_size: 8}\n")
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "advise"), str(plan)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"{plan}: model: {tmp_path}/config.json: model_type: 'no_such_arch' is not a model type" in out.stderr


@pytest.mark.slow
def test_bundled_counts_are_a_fresh_meta_count():
    """catalogue/counts.json equals what count_on_meta gives now (bench/model_counts.py --check)."""
    from memfit.engine.model.counting import refresh_bundled

    fresh = refresh_bundled(mf._catalogue()["models"])["counts"]
    stored = json.loads((cache.resources.files("memfit.engine.model.catalogue") / "counts.json").read_text())["counts"]
    strip = lambda d: {k: {f: v for f, v in e.items() if f != "transformers_version"} for k, e in d.items()}  # noqa: E731
    assert strip(stored) == strip(fresh)


@pytest.mark.slow
@pytest.mark.parametrize("model_id", [i for i in NEW_IDS if "VL" not in i and "gemma-3-4b" not in i])
def test_meta_count_matches_the_oracle(model_id):
    f = mf.resolve_model(model_id)
    oracle = mf.meta_device_count(f.config)
    assert (f.total_params, f.largest_layer_params) == (oracle["total_params"], oracle["largest_layer_params"])


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["Qwen/Qwen2.5-VL-7B-Instruct", "google/gemma-3-4b-it"])
def test_multimodal_total_matches_whole_model_on_meta(model_id):
    """text + frozen tower == every parameter of the ForConditionalGeneration model built on meta."""
    import torch
    import transformers

    f = mf.resolve_model(model_id)
    fields = {k: v for k, v in f.config.items() if not k.startswith("_") and k != "model_type"}
    cfg = transformers.AutoConfig.for_model(f.model_type, **fields)
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(cfg)
    assert f.total_params + f.frozen_extra_params == sum(p.numel() for p in model.parameters())


# --- slow: tiny configs of each family, against the oracle and peft ---------------------------------

T = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "vocab_size": 256}
TINY = {
    "olmo2": {"model_type": "olmo2", **T},
    "gemma": {"model_type": "gemma", **T, "head_dim": 16},
    "gemma3_text": {"model_type": "gemma3_text", **T, "head_dim": 16},
    "glm4": {"model_type": "glm4", **T, "head_dim": 16, "pad_token_id": 0},
    "falcon": {"model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "vocab_size": 256, "multi_query": True},
    "gpt_neox": {"model_type": "gpt_neox", **T},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256, "n_positions": 64},
    "phimoe": {"model_type": "phimoe", **T, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"model_type": "qwen2_moe", **T, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
                  "num_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"model_type": "qwen3_moe", **T, "head_dim": 16, "moe_intermediate_size": 32, "num_experts": 4,
                  "num_experts_per_tok": 2, "mlp_only_layers": [0]},
    "deepseek_v2": {"model_type": "deepseek_v2", **T, "num_key_value_heads": 4, "moe_intermediate_size": 32,
                    "n_routed_experts": 4, "n_shared_experts": 2, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
                    "q_lora_rank": None, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
                    "v_head_dim": 16, "n_group": 1, "topk_group": 1},
    "deepseek_v3": {"model_type": "deepseek_v3", **T, "num_key_value_heads": 4, "moe_intermediate_size": 32,
                    "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
                    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
                    "v_head_dim": 16, "n_group": 1, "topk_group": 1},
}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 28, "patch_size": 14}
WRAPPERS = {
    "llava": {"model_type": "llava", "text_config": {"model_type": "llama", **T},
              "vision_config": {"model_type": "clip_vision_model", **VISION, "projection_dim": 32}},
    "llama4": {"model_type": "llama4", "text_config": {**T, "head_dim": 16, "intermediate_size_mlp": 128,
                                                       "num_local_experts": 4, "num_experts_per_tok": 1,
                                                       "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
               "vision_config": {**VISION, "vision_output_dim": 64, "projector_input_dim": 64,
                                 "projector_output_dim": 64}},
    "mllama": {"model_type": "mllama", "text_config": {**T, "cross_attention_layers": [1], "pad_token_id": 0,
                                                       "bos_token_id": 1, "eos_token_id": 2},
               "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                 "num_global_layers": 1, "attention_heads": 4, "image_size": 28, "patch_size": 14,
                                 "vision_output_dim": 64}},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_family_total_and_lora_match_the_oracle(family, tmp_path, monkeypatch):
    """Total and largest module vs meta_device_count; LoRA all-linear (and o_proj alone for DeepSeek's
    MLA, whose q/k/v projections are split differently) vs peft on the meta model."""
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    cfg = TINY[family]
    f = mf.resolve_model(dict(cfg))
    for targets in ["all-linear"] + ([["o_proj"]] if "deepseek" in family else []):
        oracle = mf.meta_device_count(cfg, lora_rank=4, lora_targets=targets)
        assert (f.total_params, f.largest_layer_params) == (oracle["total_params"], oracle["largest_layer_params"])
        assert f.lora_trainable_params(4, targets) == oracle["lora_trainable_params"], targets


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(WRAPPERS))
def test_tiny_wrapper_text_plus_tower_is_the_whole_model(family, tmp_path, monkeypatch):
    import torch
    import transformers

    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    cfg = WRAPPERS[family]
    f = mf.resolve_model(dict(cfg))
    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(
            transformers.AutoConfig.for_model(cfg["model_type"], **fields))
    assert f.total_params + f.frozen_extra_params == sum(p.numel() for p in model.parameters())
    assert f.frozen_extra_params > 0
    # The decoder (with its lm_head: llama4's get_decoder is a whole *ForCausalLM) is what trains.
    text = {id(p): p.numel() for p in [*model.get_decoder().parameters(), *model.get_output_embeddings().parameters()]}
    assert f.total_params == sum(text.values())


@pytest.mark.slow
def test_dense_first_layers_counted(tmp_path, monkeypatch):
    """qwen3_moe mlp_only_layers [0] and deepseek first_k_dense_replace 1: one dense layer of two."""
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    for family in ("qwen3_moe", "deepseek_v2"):
        f = mf.resolve_model(dict(TINY[family]))
        assert (f.num_layers, f.num_moe_layers) == (2, 1), family


@pytest.mark.parametrize("method", ["full", "lora"])
def test_vision_tower_adds_frozen_16bit_weights_to_the_estimate(method):
    """Qwen2.5-VL-7B vs Qwen2-7B (the same text model): GPU weights differ by exactly 2 B per tower param."""
    from memfit.engine.core.units import GIB
    from memfit.engine.memory.estimate import estimate_memory
    from memfit.engine.plan.load import plan_from_dict
    from memfit.engine.plan.strategy import Strategy

    vl, text = mf.resolve_model("Qwen/Qwen2.5-VL-7B-Instruct"), mf.resolve_model("Qwen/Qwen2-7B")
    p = plan_from_dict({"model": "Qwen/Qwen2-7B", "hardware": {"gpu_memory": 80, "host_memory": 1024},
                        "training": {"seq_len": 1024}}, "t.yaml")
    s = Strategy(method=method, zero_stage=0, gradient_checkpointing=True)
    gap = estimate_memory(p, vl, s).gpu.weights_gib - estimate_memory(p, text, s).gpu.weights_gib
    assert gap == pytest.approx(2 * vl.frozen_extra_params / GIB)
    assert estimate_memory(p, vl, s).trainable_params == estimate_memory(p, text, s).trainable_params


@pytest.mark.slow
@pytest.mark.parametrize("cfg, message", [
    ({**WRAPPERS["mllama"], "text_config": {**T, "pad_token_id": 10_000}}, r"transformers cannot build 'mllama'"),
    ({**TINY_OLMO2, "vocab_size": None}, r"transformers rejects this 'olmo2' config \(.*vocab_size"),
], ids=["padding index outside the vocabulary", "null vocab_size"])
def test_config_transformers_cannot_build_is_a_clear_error(cfg, message, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelSpecError, match=rf"^inline config: (model_type: )?({message})"):
        mf.resolve_model(dict(cfg))
