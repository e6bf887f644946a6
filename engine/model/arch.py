"""Closed-form parameter counts per architecture, from config.json fields alone (no torch).

Each rule mirrors the module tree that transformers 5.x builds for `<Arch>ForCausalLM` (read in
`transformers/models/<type>/modeling_<type>.py`); every count is tested against a meta-device build
(tests/test_model_facts.py), which is the oracle. Traps the rules encode:
- qwen2 hard-codes bias on q/k/v (not o) while config.attention_bias is absent;
- qwen3 adds q_norm/k_norm (head_dim each) per layer, bias only if attention_bias;
- gemma2 has four RMSNorms per layer and ties embeddings by default;
- phi3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`;
- mixtral (transformers >= 5) stores the experts as two 3-D parameters in one module (not nn.Linear,
  so peft "all-linear" reaches them only through its v4->v5 conversion and bitsandbytes skips them)
  plus a router weight (experts x hidden);
- bloom fuses `query_key_value`, every Linear and LayerNorm has a bias, there is a LayerNorm right
  after the word embeddings, ALiBi has no parameters, and embeddings are tied by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Config keys some architectures spell differently (BloomConfig.attribute_map, its n_embed kwarg).
_KEY_ALIASES = {
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "hidden_size": ("hidden_size", "n_embed"),
}


@dataclass(frozen=True)
class LinearLayer:
    """One Linear-like weight inside the decoder layers, counted over the whole model.

    `name` is the module path inside one decoder layer ("self_attn.q_proj"). `kind` is "linear" for
    an nn.Linear (bitsandbytes quantises these), "router" for an MoE router weight, "expert" for a
    fused 3-D MoE expert weight (per-expert in/out, count = layers x experts). peft >= 0.18 wraps
    routers and experts as parameters when given transformers-4 names (`aliases`, e.g. Mixtral's
    w1/w2/w3/gate) or "all-linear"; a weight fused from several v4 weights gets rank x
    `lora_rank_factor` (peft's transformers_weight_conversion: w1 + w3 -> gate_up_proj at 2r).
    """

    name: str
    in_features: int
    out_features: int
    count: int
    bias: bool = False
    kind: str = "linear"
    aliases: tuple[str, ...] = ()
    lora_rank_factor: int = 1
    all_linear: bool = True  # peft "all-linear" reaches it (meta.py: not fused experts outside peft's MoE map)

    @property
    def weight_params(self) -> int:
        """Weight elements over all `count` instances."""
        return self.in_features * self.out_features * self.count

    @property
    def params(self) -> int:
        """Weight plus bias elements over all instances."""
        return self.weight_params + (self.out_features * self.count if self.bias else 0)


@dataclass(frozen=True)
class Shape:
    """The config fields that fix the parameter count, with each architecture's defaults applied."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    num_experts: int
    experts_per_token: int


@dataclass(frozen=True)
class Counts:
    """Closed-form counts of the *ForCausalLM model."""

    shape: Shape
    total_params: int
    active_params: int
    largest_layer_params: int
    embedding_params: int
    lm_head_params: int
    linear_layers: tuple[LinearLayer, ...]


# Per-architecture defaults, read from transformers 5.x configuration_<type>.py. "heads" means
# "same as num_attention_heads"; head_dim None means hidden_size // num_attention_heads.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"kv": "heads", "head_dim": None, "tie": False},
    "mistral": {"kv": 8, "head_dim": None, "tie": False},
    "qwen2": {"kv": 32, "head_dim": None, "tie": False},
    "qwen3": {"kv": 32, "head_dim": 128, "tie": False},
    "mixtral": {"kv": 8, "head_dim": None, "tie": False},
    "gemma2": {"kv": 4, "head_dim": 256, "tie": True},
    "phi3": {"kv": "heads", "head_dim": None, "tie": False},
    "bloom": {"kv": "heads", "head_dim": None, "tie": True},
    # GemmaConfig: 16 KV heads, head_dim 256, tied embeddings; GemmaRMSNorm holds one h-vector, as Llama's.
    "gemma": {"kv": 16, "head_dim": 256, "tie": True},
}
SUPPORTED_TYPES = tuple(sorted(_DEFAULTS))


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    for name in _KEY_ALIASES.get(key, (key,)):
        if cfg.get(name) is not None:
            return cfg[name]
    return None


# Largest value accepted for any size or count field: far beyond real models (hidden sizes < 2**15,
# vocabularies < 2**18), small enough that products of a few of them stay exact in a float.
MAX_DIM = 2**24
# Experts per MoE layer: published models have <= 256; beyond this a count is a typo.
MAX_EXPERTS = 4096


def _int_in(value: Any, key: str, high: int, problems: list[str]) -> bool:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        shown = "missing" if value is None else f"got {str(value)[:40]!r}" if isinstance(value, str) else f"got {str(value)[:40]}"
        problems.append(f"{key}: must be a positive integer ({shown})")
        return False
    if value > high:
        problems.append(f"{key}: must be at most {high:,} (got {str(value)[:40]})")
        return False
    return True


def _required_int(cfg: Mapping[str, Any], key: str, problems: list[str]) -> int:
    value = _get(cfg, key)
    return value if _int_in(value, key, MAX_DIM, problems) else 1


def _flag(cfg: Mapping[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    """A boolean field: JSON true/false only ("false" as a string would read as True)."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        problems.append(f"{key}: must be true or false (got {str(value)[:40]!r})")
        return default
    return value


def _experts(cfg: Mapping[str, Any], problems: list[str]) -> tuple[int, int]:
    """(experts per layer, experts per token) of a Mixtral config, validated before any counting."""
    n, k = cfg.get("num_local_experts", 8), cfg.get("num_experts_per_tok", 2)
    ok = _int_in(n, "num_local_experts", MAX_EXPERTS, problems)
    if _int_in(k, "num_experts_per_tok", MAX_EXPERTS, problems) and ok and k > n:
        problems.append(f"num_experts_per_tok: {k} is more than num_local_experts {n}")
    return (n, k) if not problems else (1, 1)


def read_shape(cfg: Mapping[str, Any]) -> tuple[Shape, list[str]]:
    """Read the counting fields of a config mapping.

    Args:
        cfg: config.json fields; `model_type` must be one of SUPPORTED_TYPES.
    Returns:
        (shape, problems): problems lists every missing or invalid key, one line each.
    """
    mtype = cfg["model_type"]
    dflt = _DEFAULTS[mtype]
    problems: list[str] = []
    hidden = _required_int(cfg, "hidden_size", problems)
    heads = _required_int(cfg, "num_attention_heads", problems)
    layers = _required_int(cfg, "num_hidden_layers", problems)
    vocab = _required_int(cfg, "vocab_size", problems)
    # BloomMLP is always 4 x hidden (n_inner is ignored by the modelling code).
    inter = 4 * hidden if mtype == "bloom" else _required_int(cfg, "intermediate_size", problems)
    kv = cfg.get("num_key_value_heads", dflt["kv"])
    kv = heads if kv in (None, "heads") else kv
    head_dim = cfg.get("head_dim") or dflt["head_dim"] or hidden // heads
    for key, value in (("num_key_value_heads", kv), ("head_dim", head_dim)):
        if not _int_in(value, key, MAX_DIM, problems):
            kv, head_dim = (1, head_dim) if key == "num_key_value_heads" else (kv, 1)
    tie = _flag(cfg, "tie_word_embeddings", dflt["tie"], problems)
    attention_bias, mlp_bias = _flag(cfg, "attention_bias", False, problems), _flag(cfg, "mlp_bias", False, problems)
    experts, per_token = _experts(cfg, problems) if mtype == "mixtral" else (0, 0)
    shape = Shape(
        model_type=mtype, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_attention_heads=heads, num_kv_heads=int(kv), head_dim=int(head_dim), vocab_size=vocab,
        tie_word_embeddings=tie, attention_bias=attention_bias, mlp_bias=mlp_bias,
        num_experts=experts, experts_per_token=per_token,
    )
    if not problems and heads % shape.num_kv_heads:  # only once heads itself is valid
        problems.append(f"num_key_value_heads: {shape.num_kv_heads} must divide num_attention_heads {heads}")
    return shape, problems


def _attention(s: Shape) -> list[tuple[str, int, int, bool]]:
    h, q, kv = s.hidden_size, s.num_attention_heads * s.head_dim, s.num_kv_heads * s.head_dim
    if s.model_type == "bloom":
        return [("self_attention.query_key_value", h, 3 * h, True), ("self_attention.dense", h, h, True)]
    if s.model_type == "phi3":
        return [("self_attn.qkv_proj", h, q + 2 * kv, False), ("self_attn.o_proj", q, h, False)]
    qkv_bias = o_bias = s.attention_bias
    if s.model_type == "qwen2":
        qkv_bias, o_bias = True, False  # hard-coded in modeling_qwen2.py, whatever the config says
    elif s.model_type in ("mistral", "mixtral"):
        qkv_bias = o_bias = False
    return [("self_attn.q_proj", h, q, qkv_bias), ("self_attn.k_proj", h, kv, qkv_bias),
            ("self_attn.v_proj", h, kv, qkv_bias), ("self_attn.o_proj", q, h, o_bias)]


def _mlp(s: Shape) -> list[tuple[str, int, int, bool]]:
    h, i = s.hidden_size, s.intermediate_size
    if s.model_type == "bloom":
        return [("mlp.dense_h_to_4h", h, i, True), ("mlp.dense_4h_to_h", i, h, True)]
    if s.model_type == "phi3":
        return [("mlp.gate_up_proj", h, 2 * i, False), ("mlp.down_proj", i, h, False)]
    if s.model_type == "mixtral":
        return []  # router and experts, see _moe
    b = s.mlp_bias if s.model_type == "llama" else False
    return [("mlp.gate_proj", h, i, b), ("mlp.up_proj", h, i, b), ("mlp.down_proj", i, h, b)]


def _moe(s: Shape) -> list[LinearLayer]:
    if not s.num_experts:
        return []
    L, n = s.num_layers, s.num_layers * s.num_experts
    h, i = s.hidden_size, s.intermediate_size
    # MixtralTopKRouter.weight is experts x hidden; MixtralExperts holds gate_up (E, 2I, h), down (E, h, I).
    return [LinearLayer("mlp.gate", h, s.num_experts, L, kind="router", aliases=("gate",)),
            LinearLayer("mlp.experts.gate_up_proj", h, 2 * i, n, kind="expert", aliases=("w1", "w3"),
                        lora_rank_factor=2),
            LinearLayer("mlp.experts.down_proj", i, h, n, kind="expert", aliases=("w2",))]


def _norm_params_per_layer(s: Shape) -> int:
    h = s.hidden_size
    if s.model_type == "bloom":
        return 2 * 2 * h  # two LayerNorms, weight + bias
    if s.model_type == "gemma2":
        return 4 * h  # input, post_attention, pre_feedforward, post_feedforward
    if s.model_type == "qwen3":
        return 2 * h + 2 * s.head_dim  # plus q_norm and k_norm over head_dim
    return 2 * h


def count(cfg: Mapping[str, Any]) -> Counts:
    """Count the parameters of `cfg`'s *ForCausalLM in closed form.

    Args:
        cfg: config.json fields with a supported `model_type` (see SUPPORTED_TYPES).
    Returns:
        Counts: total, active (MoE), largest single module, embedding, lm_head, Linear layers.
    Raises:
        ValueError: one line per missing or invalid key (model_facts turns it into a MemfitError).
    """
    s, problems = read_shape(cfg)
    if problems:
        raise ValueError("\n".join(problems))
    L = s.num_layers
    linears = [LinearLayer(n, i, o, L, b) for n, i, o, b in _attention(s) + _mlp(s)] + _moe(s)
    embedding = s.vocab_size * s.hidden_size
    lm_head = 0 if s.tie_word_embeddings else embedding
    final_norm = 2 * s.hidden_size if s.model_type == "bloom" else s.hidden_size
    embed_norm = 2 * s.hidden_size if s.model_type == "bloom" else 0  # word_embeddings_layernorm
    total = (embedding + lm_head + final_norm + embed_norm + sum(x.params for x in linears)
             + L * _norm_params_per_layer(s))
    per_expert = sum(x.weight_params for x in linears if x.kind == "expert") // max(L * s.num_experts, 1)
    active = total - L * (s.num_experts - s.experts_per_token) * per_expert if s.num_experts else total
    # Largest module holding parameters directly: the embedding (lm_head shares it when tied), one
    # Linear or router, or one layer's fused experts module (all experts' gate_up + down).
    candidates = [embedding] + [x.params // x.count for x in linears if x.kind != "expert"]
    if s.num_experts:
        candidates.append(per_expert * s.num_experts)
    return Counts(shape=s, total_params=total, active_params=active, largest_layer_params=max(candidates),
                  embedding_params=embedding, lm_head_params=lm_head, linear_layers=tuple(linears))
