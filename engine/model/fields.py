"""Shape facts of a text decoder read from its config fields: sizes, attention, MoE and MLA (no torch).

The names differ between families; each fallback below is the field that family's transformers 5.x
`configuration_<type>.py` defines:
- experts per layer: `num_local_experts` (mixtral, phimoe), `num_experts` (qwen2_moe, qwen3_moe),
  `n_routed_experts` (deepseek_v2/v3), `num_local_experts` (llama4);
- expert width: `moe_intermediate_size` (qwen*_moe, deepseek), else `intermediate_size` (mixtral,
  phimoe, llama4: each expert is a full-width MLP);
- shared experts: deepseek's `n_shared_experts` experts of width `moe_intermediate_size`; qwen2_moe's
  one shared expert of `shared_expert_intermediate_size`; llama4's one shared expert of
  `intermediate_size`;
- MLA (deepseek_v2/v3): `q_lora_rank` (None: a plain q_proj), `kv_lora_rank`, `qk_nope_head_dim`,
  `qk_rope_head_dim`, `v_head_dim`; the q/k width per head is qk_nope + qk_rope;
- KV heads: `num_key_value_heads`; falcon's `multi_query` (one KV head unless
  `new_decoder_architecture`, modeling_falcon.FalconAttention) and `num_kv_heads`.
"""
from __future__ import annotations

from typing import Any, Callable

Getter = Callable[[str], Any]


def _first(get: Getter, *keys: str) -> Any:
    for key in keys:
        value = get(key)
        if value is not None:
            return value
    return None


def _kv_heads(get: Getter, heads: int) -> int:
    kv = get("num_key_value_heads")
    if kv is None and get("multi_query") and not get("new_decoder_architecture"):
        return 1
    return int(kv or get("num_kv_heads") or heads)


def _moe(get: Getter, mtype: str, intermediate: int) -> dict[str, int]:
    experts = int(_first(get, "n_routed_experts", "num_local_experts", "num_experts") or 0)
    if experts <= 1:  # some dense configs carry num_experts = 0 or 1
        return {"num_experts": 0, "experts_per_token": 0, "moe_intermediate_size": 0, "num_shared_experts": 0,
                "shared_expert_intermediate_size": 0}
    width = int(get("moe_intermediate_size") or intermediate)
    shared_n = int(get("n_shared_experts") or 0)
    shared_width = shared_n * width
    if get("shared_expert_intermediate_size"):
        shared_n, shared_width = 1, int(get("shared_expert_intermediate_size"))
    elif mtype.startswith("llama4"):
        shared_n, shared_width = 1, intermediate  # Llama4TextMoe.shared_expert: a Llama4TextMLP
    return {"num_experts": experts, "experts_per_token": int(_first(get, "num_experts_per_tok", "moe_topk") or 1),
            "moe_intermediate_size": width, "num_shared_experts": shared_n,
            "shared_expert_intermediate_size": shared_width}


def _mla(get: Getter) -> dict[str, int]:
    if get("kv_lora_rank") is None:
        return {"q_lora_rank": 0, "kv_lora_rank": 0, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0}
    return {"q_lora_rank": int(get("q_lora_rank") or 0), "kv_lora_rank": int(get("kv_lora_rank")),
            "qk_nope_head_dim": int(get("qk_nope_head_dim") or 0), "qk_rope_head_dim": int(get("qk_rope_head_dim") or 0),
            "v_head_dim": int(get("v_head_dim") or 0)}


def text_facts(get: Getter, model_type: str) -> dict[str, Any]:
    """The shape facts of a text decoder config.

    Args:
        get: returns a config field's value, or None when absent (a dict's .get, or getattr on a
            transformers config object, which also resolves its attribute_map aliases).
        model_type: the config's model_type (the wrapper's, for a multimodal config).
    Returns:
        A dict: model_type, num_layers, hidden_size, intermediate_size, num_attention_heads, num_kv_heads,
        head_dim, vocab_size, the MoE keys of `_moe` and the MLA keys of `_mla`.
    """
    hidden = int(_first(get, "hidden_size", "n_embd", "n_embed", "d_model"))
    heads = int(_first(get, "num_attention_heads", "n_head"))
    # GPT-2 n_inner None and falcon ffn_hidden_size None mean 4 x hidden (GPT2MLP, FalconMLP).
    intermediate = int(_first(get, "intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim") or 4 * hidden)
    mla = _mla(get)
    head_dim = (mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"] if mla["kv_lora_rank"]
                else int(get("head_dim") or hidden // heads))
    return {"model_type": model_type, "num_layers": int(_first(get, "num_hidden_layers", "n_layer", "num_layers")),
            "hidden_size": hidden, "intermediate_size": intermediate, "num_attention_heads": heads,
            "num_kv_heads": heads if mla["kv_lora_rank"] else _kv_heads(get, heads), "head_dim": head_dim,
            "vocab_size": int(_first(get, "vocab_size", "padded_vocab_size")),
            **_moe(get, model_type, intermediate), **mla}
