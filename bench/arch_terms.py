"""Probe-fitted activation terms for decoder layers unlike Llama's (engine/memory/arch_terms.json).

    .venv/bin/python bench/arch_terms.py            # rewrite engine/memory/arch_terms.json
    .venv/bin/python bench/arch_terms.py --check    # exit 1 when the shipped file is stale

memfit's closed form for a decoder layer (engine/memory/activations.py layer_bytes) is Llama's: two
RMSNorms that keep fp32 copies, separate q/k/v projections and a gated MLP. It is checked against the
probe to 1 % for llama, qwen2, qwen3, phi3, gemma2 and bloom (tests/test_activations.py). Other
transformers architectures store less or more: LayerNorm keeps its 16-bit input and two statistics per
row, a plain MLP (fc1, activation, fc2) keeps fewer tensors of the intermediate width than a gated one,
a fused qkv projection keeps one output, a parallel residual drops a norm.

What a layer keeps for backward is a sum of tensors whose widths are h, the query width a*head_dim,
the key/value width, I or the number of heads (and a*s for eager attention's scores), so its bytes per
token are a linear function of those widths with coefficients fixed by the architecture. For each model
type here the probe (engine/probe/, the oracle for activations) traces one layer at several shapes and
the coefficients are solved for exactly (least squares; the largest relative residual is shipped and
must be below MAX_RESIDUAL). A width that does not vary apart from h in a model type (its code ignores
head_dim, or it has no key/value heads of its own) is folded into h.

LoRA: the traced layer carries adapters on every Linear (all-linear, r 16); what peft's adapters keep
(4*d_in + 4*r per adapted Linear of input width d_in, activations.py) is taken off before the fit, so
the terms are the frozen layer's and the adapters of any target list are added back structurally.
tests/test_arch_terms.py checks both against fresh traces at a shape and target list the fit never saw.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "engine" / "memory" / "arch_terms.json"
METHODS = ("full", "lora")
ATTENTIONS = ("sdpa", "eager")
MODEL_TYPES = ("gpt_neox", "opt", "gpt_bigcode", "starcoder2", "gpt2", "phi", "stablelm", "olmo", "gemma")
# Model types whose transformers code reads num_key_value_heads / head_dim (checked on the probe: a
# changed value changes the trace); for the others those widths are h. stablelm reads head_dim but its
# partial rotary embedding breaks when head_dim is not h / heads, so no stablelm config sets it apart.
KV_HEADS = frozenset({"starcoder2", "phi", "stablelm", "olmo", "gemma"})
HEAD_DIM = frozenset({"starcoder2", "phi", "olmo", "gemma"})
# (hidden, intermediate, heads, tokens); the variants below add key/value heads and head_dim.
SHAPES = ((512, 2048, 8, 128), (1024, 2816, 16, 256), (768, 2048, 12, 192), (512, 1536, 4, 256),
          (1024, 4096, 8, 128), (768, 3072, 6, 256))
VARIANTS = ({"kv": 2}, {"kv": 4, "head_dim": 128}, {"head_dim": 32})
# The widths a term may scale with (engine/memory/arch_terms.py): "kv_eager" is the key/value width
# eager attention keeps: a*head_dim once repeat_kv copies k and v to every head (1 < kv heads < heads);
# with one kv head the expand-and-reshape stays a view of it (the probe: same bytes as kv = heads).
COLUMNS = ("h", "q", "kv", "kv_eager", "I", "a", "1", "as", "s")
LORA_RANK = 16
MAX_RESIDUAL = 0.005
# Each type's dropout keys: on the attention probabilities (kept, with its mask, only by eager attention:
# SDPA's CUDA kernels drop inside the kernel and keep only its RNG state) and on the hidden states.
DROPOUT_KEYS = {"gpt_neox": (["attention_dropout"], ["hidden_dropout"]), "opt": (["attention_dropout"], ["dropout"]),
                "gpt_bigcode": (["attn_pdrop"], ["resid_pdrop"]), "starcoder2": (["attention_dropout"], ["residual_dropout"]),
                "gpt2": (["attn_pdrop"], ["resid_pdrop"]), "phi": (["attention_dropout"], ["resid_pdrop"]),
                "stablelm": (["attention_dropout"], ["hidden_dropout"]), "olmo": (["attention_dropout"], []),
                "gemma": (["attention_dropout"], [])}
DROPOUT_P = 0.1


def config(model_type: str, h: int, inter: int, heads: int, kv: int | None = None, head_dim: int | None = None) -> dict:
    """A small config of the model type with the given shape, dropout off, two layers."""
    common = {"vocab_size": 1024}
    shapes = {
        "gpt_neox": {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads,
                     "num_hidden_layers": 2, "max_position_embeddings": 2048},
        "opt": {"hidden_size": h, "ffn_dim": inter, "num_attention_heads": heads, "num_hidden_layers": 2,
                "max_position_embeddings": 2048, "word_embed_proj_dim": h, "dropout": 0.0, "attention_dropout": 0.0},
        "gpt_bigcode": {"n_embd": h, "n_inner": inter, "n_head": heads, "n_layer": 2, "n_positions": 2048,
                        "multi_query": True, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0},
        "starcoder2": {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads,
                       "num_key_value_heads": max(1, heads // 4), "num_hidden_layers": 2,
                       "max_position_embeddings": 2048, "residual_dropout": 0.0, "embedding_dropout": 0.0,
                       "attention_dropout": 0.0},
        "gpt2": {"n_embd": h, "n_inner": inter, "n_head": heads, "n_layer": 2, "n_positions": 2048,
                 "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0},
        "phi": {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads, "num_hidden_layers": 2,
                "max_position_embeddings": 2048, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0},
        "stablelm": {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads,
                     "num_key_value_heads": heads, "num_hidden_layers": 2, "max_position_embeddings": 2048},
        "olmo": {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads,
                 "num_key_value_heads": heads, "num_hidden_layers": 2, "max_position_embeddings": 2048},
        "gemma": {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads,
                  "num_key_value_heads": heads, "head_dim": h // heads, "num_hidden_layers": 2,
                  "max_position_embeddings": 2048},
    }
    out = {"model_type": model_type, **common, **shapes[model_type]}
    if kv is not None and model_type in KV_HEADS:
        out["num_key_value_heads"] = kv
    if head_dim is not None and model_type in HEAD_DIM:
        out["head_dim"] = head_dim
    return out


def _configs(model_type: str) -> list[tuple[dict, int]]:
    """(config, tokens) of every traced shape: SHAPES, and VARIANTS of each for the widths the type reads."""
    out = []
    for h, inter, heads, tokens in SHAPES:
        out.append((config(model_type, h, inter, heads), tokens))
        if model_type in KV_HEADS or model_type in HEAD_DIM:
            for v in VARIANTS:
                kv = v.get("kv")
                if kv is not None and heads % kv:
                    continue
                out.append((config(model_type, h, inter, heads, kv=kv, head_dim=v.get("head_dim")), tokens))
    return out


def _widths(facts, tokens: int) -> dict[str, float]:
    from memfit.engine.memory.activations import _head_widths, _mlp_width

    q, kv = _head_widths(facts)
    a = facts.num_attention_heads
    return {"h": facts.hidden_size, "q": q, "kv": kv, "kv_eager": q if 1 < facts.num_kv_heads < a else kv,
            "I": _mlp_width(facts), "a": a, "1": 1.0, "as": a * tokens, "s": tokens}


def traced_per_token(model_type: str, method: str, attention: str) -> list[tuple[dict[str, float], float]]:
    """(widths, bytes per token the probe traces in one layer, adapters taken off) at every shape."""
    from memfit.engine.memory.activations import adapter_bytes_per_token
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.probe.probe import probe

    rows = []
    for cfg, tokens in _configs(model_type):
        facts = resolve_model(cfg)
        traced = probe(facts.config, seq_len=tokens, micro_batch=1, method=method,
                       attention=attention).activation_bytes_per_layer / tokens
        if method == "lora":
            traced -= adapter_bytes_per_token(facts, LORA_RANK, "all-linear", 0.0)
        rows.append((_widths(facts, tokens), traced))
    return rows


def dropout_rows(model_type: str, method: str, kind: str) -> list[tuple[dict[str, float], float]]:
    """(widths, bytes per token that `kind` dropout at DROPOUT_P adds to one eager layer) at SHAPES."""
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.probe.probe import probe

    keys = DROPOUT_KEYS[model_type][0 if kind == "attention" else 1]
    rows = []
    for h, inter, heads, tokens in SHAPES:
        cfg = config(model_type, h, inter, heads)
        traced = []
        for p in (0.0, DROPOUT_P):
            facts = resolve_model({**cfg, **{k: p for k in keys}})
            traced.append(probe(facts.config, seq_len=tokens, micro_batch=1, method=method,
                                attention="eager").activation_bytes_per_layer / tokens)
        rows.append((_widths(facts, tokens), traced[1] - traced[0]))
    return rows


def fit_dropout(rows: list[tuple[dict[str, float], float]], kind: str) -> dict[str, float]:
    """The dropout's terms: over heads x tokens for attention dropout, over h, I and 1 for hidden dropout."""
    import numpy as np

    cols = ["as"] if kind == "attention" else ["h", "I", "1"]
    x = np.array([[w[c] for c in cols] for w, _ in rows], dtype=float)
    y = np.array([t for _, t in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    if np.max(np.abs(x @ coef - y)) > MAX_RESIDUAL * max(1.0, float(np.max(np.abs(y)))):
        raise SystemExit(f"{kind} dropout: the linear terms do not explain a trace")
    return {c: round(float(v), 4) for c, v in zip(cols, coef) if abs(v) > 1e-6}


def dropout_defaults(model_type: str) -> dict[str, float]:
    """The config class's default of each dropout key (transformers fills what a config.json leaves out)."""
    import transformers

    cfg = transformers.CONFIG_MAPPING[model_type]()
    return {k: float(getattr(cfg, k, 0.0) or 0.0) for k in sum(DROPOUT_KEYS[model_type], [])}


def fit(rows: list[tuple[dict[str, float], float]], attention: str) -> tuple[dict[str, float], float]:
    """Coefficients per width (a width equal to h at every shape is folded into h) and the largest
    relative residual."""
    import numpy as np

    eager = attention == "eager"
    cols = [c for c in COLUMNS if (c not in ("as", "s", "kv_eager") or eager) and (c != "kv" or not eager)]
    cols = [c for c in cols if c in ("h", "as", "s", "I", "a", "1") or any(w[c] != w["h"] for w, _ in rows)]
    x = np.array([[w[c] for c in cols] for w, _ in rows], dtype=float)
    y = np.array([t for _, t in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = float(np.max(np.abs(x @ coef / y - 1)))
    return {c: round(float(v), 4) for c, v in zip(cols, coef) if abs(v) > 1e-6}, residual


def table() -> dict:
    import torch
    import transformers

    terms: dict[str, dict] = {}
    worst = 0.0
    for t in MODEL_TYPES:
        terms[t] = {}
        for m in METHODS:
            terms[t][m] = {}
            for attn in ATTENTIONS:
                coef, residual = fit(traced_per_token(t, m, attn), attn)
                if residual > MAX_RESIDUAL:
                    raise SystemExit(f"{t} {m} {attn}: the linear terms leave {residual:.2%} of a trace unexplained")
                terms[t][m][attn] = coef
                worst = max(worst, residual)
            for kind, keys in zip(("attention", "hidden"), DROPOUT_KEYS[t]):
                if keys:
                    terms[t][m][f"{kind}_dropout"] = fit_dropout(dropout_rows(t, m, kind), kind)
        terms[t]["dropout_keys"] = {"attention": DROPOUT_KEYS[t][0], "hidden": DROPOUT_KEYS[t][1],
                                    "defaults": dropout_defaults(t)}
    return {"shapes": [list(s) for s in SHAPES], "variants": list(VARIANTS), "lora_rank": LORA_RANK,
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "max_residual": round(worst, 6), "terms": terms}


def write_or_check(out: Path, compute, description: str, argv=None) -> int:
    """The bench's command line, shared with bench/compile_terms.py: write the table to `out`, or with
    --check exit 1 when the shipped file's terms differ from a fresh computation."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help=f"exit 1 when {out.relative_to(ROOT)} is stale")
    args = ap.parse_args(argv)
    text = json.dumps(compute(), indent=1, sort_keys=True) + "\n"
    if args.check:
        stale = not out.exists() or json.loads(out.read_text())["terms"] != json.loads(text)["terms"]
        print(f"{out.relative_to(ROOT)} is {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def main(argv=None) -> int:
    return write_or_check(OUT, table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
