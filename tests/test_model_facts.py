"""Model facts: closed-form parameter counts, catalogue, spec resolution, errors.

Independent sources for expected numbers: sources.md §4 (meta-device counts measured there),
first-principles sums written out in each test, and (slow tests) a transformers meta-device build
plus peft's own LoRA wrapping, which are the oracle for every catalogue entry.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest

from memfit.engine.model import spec as mf
from memfit.engine.core.errors import MemfitError, ModelNotFoundError

REQUIRED_IDS = [
    "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B",
    "meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.1-405B", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.3-70B-Instruct",
    *[f"Qwen/Qwen2.5-{s}{i}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B") for i in ("", "-Instruct")],
    *[f"Qwen/Qwen3-{s}" for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")],
    "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", "mistralai/Mistral-7B-v0.3",
    "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b",
    "microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-medium-4k-instruct", "microsoft/phi-4",
    *[f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{s}" for s in ("1.5B", "7B", "14B", "32B")],
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "bigscience/bloomz-7b1",
]

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
# First principles for TINY_LLAMA: head_dim 16; per layer q 64*64 + k 64*32 + v 64*32 + o 64*64
# + MLP 3*64*128 + two RMSNorms 2*64; embedding and untied lm_head 100*64 each; final norm 64.
TINY_LLAMA_TOTAL = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 2 * 100 * 64 + 64


# --- published / measured counts (sources.md §4) -------------------------------------------

@pytest.mark.parametrize("model_id, total", [
    ("Qwen/Qwen2.5-32B-Instruct", 32_763_876_352),
    ("meta-llama/Llama-2-7b-hf", 6_738_415_616),
    ("meta-llama/Meta-Llama-3-8B", 8_030_261_248),
    ("Qwen/Qwen2.5-0.5B", 494_032_768),  # tied embeddings
])
def test_counts_measured_in_domain_notes(model_id, total):
    assert mf.resolve_model(model_id).total_params == total


def test_qwen25_32b_largest_module_and_lora_match_domain_notes():
    f = mf.resolve_model("Qwen/Qwen2.5-32B-Instruct")
    assert f.largest_layer_params == 778_567_680  # lm_head / embedding, 152064 x 5120
    assert f.lora_trainable_params(16, "all-linear") == 134_217_728
    # The base model without lm_head is what DeepSpeed's estimator was fed (sources.md §1).
    assert f.total_params - f.lm_head_params == 31_985_308_672


# --- first principles ------------------------------------------------------------------------------

def test_llama2_7b_written_out():
    h, i, L, V = 4096, 11008, 32, 32000
    per_layer = 4 * h * h + 3 * h * i + 2 * h  # q,k,v,o (MHA) + gate/up/down + two RMSNorms
    f = mf.resolve_model("meta-llama/Llama-2-7b-hf")
    assert f.total_params == L * per_layer + 2 * V * h + h
    assert f.quantizable_params() == L * (4 * h * h + 3 * h * i)
    assert f.lora_trainable_params(8, ["q_proj", "v_proj"]) == L * 2 * 8 * (h + h)
    assert (f.embedding_params, f.lm_head_params) == (V * h, V * h)


def test_bloom_written_out():
    # Linear biases everywhere, two LayerNorms (weight + bias) per layer, word_embeddings_layernorm
    # and ln_f, tied lm_head, MLP 4h (bigscience/bloom model card: 7,069,016,064 parameters).
    h, L, V = 4096, 30, 250880
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h) + 2 * 2 * h
    f = mf.resolve_model("bigscience/bloomz-7b1")
    assert f.total_params == L * per_layer + V * h + 2 * h + 2 * h == 7_069_016_064
    assert f.lm_head_params == 0 and f.tie_word_embeddings
    assert f.lora_trainable_params(8, ["query_key_value"]) == L * 8 * (h + 3 * h)


def test_qwen2_bias_and_qwen3_qk_norm_written_out():
    h, kv_dim, L = 896, 2 * 64, 24  # Qwen2.5-0.5B: 14 heads of 64, 2 KV heads
    q2 = mf.resolve_model("Qwen/Qwen2.5-0.5B")
    attn = h * h + h + 2 * (h * kv_dim + kv_dim) + h * h  # q/k/v biased, o not (modeling_qwen2.py)
    assert q2.total_params == L * (attn + 3 * h * 4864 + 2 * h) + 151936 * h + h
    h3, d, L3 = 1024, 128, 28  # Qwen3-0.6B: 16 heads x 128, 8 KV heads, q_norm + k_norm per layer
    q3 = mf.resolve_model("Qwen/Qwen3-0.6B")
    attn3 = h3 * 16 * d + 2 * h3 * 8 * d + 16 * d * h3
    assert q3.total_params == L3 * (attn3 + 3 * h3 * 3072 + 2 * h3 + 2 * d) + 151936 * h3 + h3


def test_mixtral_total_and_active_written_out():
    # 8 experts (gate_up 2I x h, down h x I each), top-2 routing; router 8 x h; GQA 8 KV heads.
    h, i, L, V, E, k = 4096, 14336, 32, 32000, 8, 2
    attn = 2 * h * h + 2 * h * 1024
    expert = 3 * h * i
    f = mf.resolve_model("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert f.total_params == L * (attn + E * expert + E * h + 2 * h) + 2 * V * h + h
    assert f.active_params == f.total_params - L * (E - k) * expert
    assert f.largest_layer_params == E * expert  # one layer's fused experts module
    assert (f.num_experts, f.experts_per_token) == (8, 2)
    # Attention and expert weights are stored in 4 bit under QLoRA; router, norms, embeddings are not
    # (a published Mixtral QLoRA run at 43.2 GiB on one A100 needs 4-bit experts; see quantizable_params).
    assert f.quantizable_params() == L * (attn + E * expert)


def test_phi3_fused_layers():
    f = mf.resolve_model("microsoft/Phi-3-mini-4k-instruct")
    names = {x.name: (x.in_features, x.out_features) for x in f.linear_layers}
    assert names == {"self_attn.qkv_proj": (3072, 3 * 3072), "self_attn.o_proj": (3072, 3072),
                     "mlp.gate_up_proj": (3072, 2 * 8192), "mlp.down_proj": (8192, 3072)}
    assert f.total_params == 3_821_079_552  # microsoft/Phi-3-mini model card: 3.8B


@pytest.mark.parametrize("ours, theirs, lora_r16", [
    ("unsloth/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", 29_884_416),
    ("unsloth/Phi-3-medium-4k-instruct", "microsoft/Phi-3-medium-4k-instruct", 65_536_000)])
def test_unsloths_llama_format_phi3_splits_the_fused_layers(ours, theirs, lora_r16):
    # Unsloth's Phi-3 uploads are Llama-format conversions: qkv_proj and gate_up_proj split into
    # Llama's projections, so the total is Phi-3's and LoRA on the seven Llama names is what Unsloth's
    # notebooks print as "Number of trainable parameters" for r 16 (bench/heldout16/README.md).
    from memfit.engine.memory.states import trainable_params

    split, fused = mf.resolve_model(ours), mf.resolve_model(theirs)
    assert (split.model_type, split.total_params) == ("llama", fused.total_params)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert trainable_params(split, "lora", 16, targets, []) == lora_r16


def test_lora_on_the_output_layer_when_named():
    # peft wraps lm_head when target_modules names it (a Linear of hidden x vocabulary): r x (h + V)
    # more adapter weights; "all-linear" never reaches it (peft's check_target_module_exists skips the
    # output layer).
    f = mf.resolve_model("mistralai/Mistral-7B-Instruct-v0.1")
    layers = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (f.lora_trainable_params(64, [*layers, "lm_head"]) - f.lora_trainable_params(64, layers)
            == 64 * (4096 + 32000))
    assert f.lora_trainable_params(64, "all-linear") == f.lora_trainable_params(64, layers)


def test_gemma2_ties_and_four_norms():
    h, L, V = 2304, 26, 256000
    f = mf.resolve_model("google/gemma-2-2b")
    attn = h * 8 * 256 + 2 * h * 4 * 256 + 8 * 256 * h  # head_dim 256 != h / heads
    assert f.total_params == L * (attn + 3 * h * 9216 + 4 * h) + V * h + h
    assert f.lm_head_params == 0


def test_dense_active_equals_total_and_lora_default_is_all_linear():
    f = mf.resolve_model(TINY_LLAMA)
    assert f.total_params == f.active_params == TINY_LLAMA_TOTAL
    per_layer = 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert f.lora_trainable_params(8) == 2 * per_layer


# --- catalogue --------------------------------------------------------------------------------------

def test_catalogue_has_required_ids():
    ids = set(mf.catalogue_ids())
    assert [i for i in REQUIRED_IDS if i not in ids] == []


def test_every_catalogue_entry_resolves_with_a_source():
    raw = json.loads((resources.files("memfit.engine.model.catalogue") / "models.json").read_text())
    for model_id, entry in raw["models"].items():
        assert entry.get("_source"), model_id
    for model_id, alias in raw["aliases"].items():
        assert alias["same_as"] in raw["models"] and alias.get("_source"), model_id
    for model_id in mf.catalogue_ids():
        f = mf.resolve_model(model_id)
        assert f.source == "catalogue" and f.total_params > 0 and f.name == model_id


def test_aliases_share_counts():
    a, b = mf.resolve_model("meta-llama/Meta-Llama-3.1-8B"), mf.resolve_model("meta-llama/Llama-3.1-8B")
    assert a.total_params == b.total_params == 8_030_261_248
    assert mf.resolve_model("Qwen/Qwen2.5-7B-Instruct").config["max_position_embeddings"] == 32768


# --- resolution ---------------------------------------------------------------------------------------

def test_inline_mapping():
    f = mf.resolve_model(TINY_LLAMA)
    assert (f.source, f.num_kv_heads, f.head_dim, f.total_params) == ("inline", 2, 16, TINY_LLAMA_TOTAL)


def test_config_file_folder_and_relative_path(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    for spec, base in ((str(folder / "config.json"), "."), (str(folder), "."), ("my-model", tmp_path),
                       ("my-model/config.json", tmp_path)):
        f = mf.resolve_model(spec, base_dir=base)
        assert (f.source, f.total_params) == ("path", TINY_LLAMA_TOTAL)


def _fake_hub(hub, model_id, cfg, revision="abc123"):
    repo = hub / ("models--" + model_id.replace("/", "--"))
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "config.json").write_text(json.dumps(cfg))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_hf_cache_lookup_honours_hf_hub_cache(tmp_path, monkeypatch):
    _fake_hub(tmp_path / "hub", "acme/tiny-llama", TINY_LLAMA)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    f = mf.resolve_model("acme/tiny-llama", base_dir=tmp_path)
    assert (f.source, f.name, f.total_params) == ("hf-cache", "acme/tiny-llama", TINY_LLAMA_TOTAL)


def test_hf_cache_lookup_honours_hf_home(tmp_path, monkeypatch):
    _fake_hub(tmp_path / "home" / "hub", "acme/tiny-llama", {**TINY_LLAMA, "tie_word_embeddings": True})
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    f = mf.resolve_model("acme/tiny-llama", base_dir=tmp_path)
    assert f.total_params == TINY_LLAMA_TOTAL - 100 * 64  # tied: lm_head shares the embedding


# --- errors ---------------------------------------------------------------------------------------------

def test_unknown_id_suggests_close_catalogue_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"Did you mean 'Qwen/Qwen2.5-32B-Instruct'"):
        mf.resolve_model("Qwen/Qwen2.5-32B-Instuct", base_dir=tmp_path)


@pytest.mark.parametrize("cfg, message", [
    ({k: v for k, v in TINY_LLAMA.items() if k != "model_type"}, r"model_type: missing; add it"),
    ({"model_type": "llama", "hidden_size": 64}, r"intermediate_size: must be a positive integer \(missing\)"),
    ({**TINY_LLAMA, "num_hidden_layers": "2"}, r"num_hidden_layers: must be a positive integer \(got '2'\)"),
    ({**TINY_LLAMA, "num_key_value_heads": 3}, r"num_key_value_heads: 3 must divide num_attention_heads 4"),
    ({**TINY_LLAMA, "num_key_value_heads": 0}, r"num_key_value_heads: must be a positive integer \(got 0\)"),
])
def test_bad_configs(cfg, message):
    with pytest.raises(mf.ModelSpecError, match=message):
        mf.resolve_model(cfg)


def test_missing_keys_are_reported_together():
    with pytest.raises(MemfitError) as info:
        mf.resolve_model({"model_type": "qwen2"})
    assert len(info.value.problems) == 5  # hidden, heads, layers, vocab, intermediate


def test_folder_without_config_and_unreadable_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="folder has no config.json"):
        mf.resolve_model(str(tmp_path / "empty"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(mf.ModelSpecError, match=r"bad.json: not valid JSON at line 1, column 2"):
        mf.resolve_model(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("rank, targets, message", [
    (8, ["query_key_value"], r"\['query_key_value'\] match no Linear layer of this llama model"),
    (0, "all-linear", "LoRA rank must be a positive integer"),
])
def test_bad_lora_requests(rank, targets, message):
    with pytest.raises(mf.ModelSpecError, match=message):
        mf.resolve_model("meta-llama/Llama-2-7b-hf").lora_trainable_params(rank, targets)


def test_lora_half_of_a_fused_pair_is_refused():
    # peft's transformers_weight_conversion refuses w1 without w3 (both fused into gate_up_proj).
    with pytest.raises(mf.ModelSpecError, match=r"\['w1'\] is fused with \['w3'\]"):
        mf.resolve_model("mistralai/Mixtral-8x7B-v0.1").lora_trainable_params(8, ["w1", "w2"])


def test_catalogue_resolution_imports_no_torch():
    code = ("import sys; from memfit.engine.model.spec import resolve_model; "
            "resolve_model('Qwen/Qwen2.5-32B-Instruct'); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the meta-device oracle (slow) -----------------------------------------------------------------

def _catalogue_models():
    # Closed-form families only; the meta-counted ones are checked in tests/test_model_meta.py.
    from memfit.engine.model.arch import SUPPORTED_TYPES

    return [k for k, v in mf._catalogue()["models"].items() if v["model_type"] in SUPPORTED_TYPES]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", _catalogue_models())
def test_closed_form_matches_meta_device(model_id):
    f = mf.resolve_model(model_id)
    meta = mf.meta_device_count(f.config)
    assert (f.total_params, f.largest_layer_params) == (meta["total_params"], meta["largest_layer_params"])


@pytest.mark.slow
@pytest.mark.parametrize("model_id, rank, targets", [
    ("Qwen/Qwen2.5-0.5B", 16, "all-linear"),
    ("meta-llama/Llama-2-7b-hf", 8, ["q_proj", "v_proj"]),
    ("bigscience/bloomz-7b1", 8, ["query_key_value"]),
    ("microsoft/Phi-3-mini-4k-instruct", 16, "all-linear"),
    ("google/gemma-2-2b", 4, "all-linear"),
    ("Qwen/Qwen3-0.6B", 8, "all-linear"),
    ("mistralai/Mixtral-8x7B-v0.1", 8, "all-linear"),  # router + fused experts at 2r (peft 0.21)
    ("mistralai/Mixtral-8x7B-v0.1", 16, ["w1", "w3", "w2"]),
    # peft's lora.Embedding on the input embedding and a Linear adapter on the output layer
    ("mistralai/Mistral-7B-v0.1", 8, ["q_proj", "v_proj", "embed_tokens", "lm_head"]),
])
def test_lora_count_matches_peft_on_meta(model_id, rank, targets):
    f = mf.resolve_model(model_id)
    meta = mf.meta_device_count(f.config, lora_rank=rank, lora_targets=targets)
    assert f.lora_trainable_params(rank, targets) == meta["lora_trainable_params"]


@pytest.mark.slow
def test_meta_device_count_of_inline_config():
    assert mf.meta_device_count(TINY_LLAMA)["total_params"] == TINY_LLAMA_TOTAL
