"""One entry for every count: the closed form where arch.py has one, else a stored or fresh meta count.

Order for a model_type without a closed form: the bundled counts (catalogue models), the user cache,
then a meta-device build (torch and transformers imported here, only then), written to the user cache.
Returns the ModelSpec fields as a dict; spec.py turns it into a ModelSpec.
"""
from __future__ import annotations

from typing import Any, Mapping

from . import arch, cache
from .arch import LinearLayer
from ..core.errors import ModelSpecError


def _closed_form(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    try:
        c = arch.count(cfg)
    except ValueError as exc:
        raise ModelSpecError([f"{name}: {line}" for line in str(exc).splitlines()]) from None
    s = c.shape
    moe = s.num_experts > 0  # mixtral: every layer has experts of intermediate_size, no shared expert
    return {"num_layers": s.num_layers, "hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size,
            "num_attention_heads": s.num_attention_heads, "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim,
            "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_word_embeddings, "num_experts": s.num_experts,
            "experts_per_token": s.experts_per_token, "total_params": c.total_params,
            "active_params": c.active_params, "largest_layer_params": c.largest_layer_params,
            "embedding_params": c.embedding_params, "lm_head_params": c.lm_head_params,
            "linear_layers": c.linear_layers, "moe_intermediate_size": s.intermediate_size if moe else 0,
            "num_moe_layers": s.num_layers if moe else 0, "counted_by": "closed-form"}


def _from_stored(data: Mapping[str, Any]) -> dict[str, Any]:
    """ModelSpec fields of a meta count (as meta.count_on_meta returns it or cache.py stored it)."""
    keys = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_kv_heads", "head_dim",
            "vocab_size", "tie_word_embeddings", "total_params", "active_params", "largest_layer_params",
            "embedding_params", "lm_head_params", "frozen_extra_params")
    out: dict[str, Any] = {k: data[k] for k in keys}
    for k in ("num_experts", "experts_per_token", "moe_intermediate_size", "num_shared_experts",
              "shared_expert_intermediate_size", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
              "qk_rope_head_dim", "v_head_dim"):
        out[k] = int(data.get(k) or 0)
    out["num_moe_layers"] = data["num_layers"] - data.get("num_dense_layers", data["num_layers"]) if out["num_experts"] else 0
    out["linear_layers"] = tuple(LinearLayer(r["name"], r["in_features"], r["out_features"], r["count"], r["bias"],
                                             r["kind"], tuple(r.get("aliases", ())), r.get("lora_rank_factor", 1),
                                             r.get("all_linear", True)) for r in data["linear_layers"])
    out["counted_by"] = "meta-device"
    return out


def _meta(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    stored = cache.read_cached(cfg)
    if stored is not None:
        return stored
    from . import meta  # imports torch and transformers when called: only on a miss

    try:
        counts = meta.count_on_meta(cfg)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(
            f"{name}: model_type: {cfg.get('model_type')!r} has no closed form here, and counting it on "
            f"the meta device needs torch and transformers ({exc.name} is not installed: pip install "
            f"'memfit[full]')") from None
    except ModelSpecError as exc:
        raise ModelSpecError(f"{name}: model_type: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as exc:
        # A config transformers accepts but whose fields do not read as sizes (e.g. a null hidden_size).
        raise ModelSpecError(f"{name}: cannot read the sizes of this {cfg.get('model_type')!r} config "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    cache.write_cached(cfg, counts)
    return counts


def count_config(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """ModelSpec fields (all but name, model_type, source, config) of a config mapping.

    Args:
        cfg: config.json fields with a model_type.
        name: what to call the model in messages.
    Returns:
        The count fields as a dict.
    Raises:
        ModelSpecError: bad counting keys (closed form), a model_type transformers does not know, or a
            config it cannot build.
    """
    if cfg["model_type"] in arch.SUPPORTED_TYPES:
        return _closed_form(cfg, name)
    return _from_stored(_meta(cfg, name))


def refresh_bundled(catalogue: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Meta-count every catalogue model without a closed form: the content of catalogue/counts.json.

    Args:
        catalogue: model id -> config fields (the catalogue's "models").
    Returns:
        {"_about": ..., "counts": {config hash: count}}; imports torch and transformers.
    """
    from . import meta

    out: dict[str, Any] = {}
    for model_id, cfg in sorted(catalogue.items()):
        if cfg["model_type"] not in arch.SUPPORTED_TYPES:
            key, entry = cache.bundled_entry(cfg, meta.count_on_meta(cfg), model_id)
            out[key] = entry
    return {"_about": "meta-device counts of the catalogue models without a closed form (engine/model/meta.py), "
                      "keyed by engine/model/cache.config_hash; regenerate with bench/model_counts.py",
            "counts": out}

