"""Probe-calibrated activations for decoder layers unlike Llama's (engine/memory/arch_scale.json).

    .venv/bin/python bench/arch_scale.py            # rewrite engine/memory/arch_scale.json
    .venv/bin/python bench/arch_scale.py --check    # exit 1 when the shipped file is stale

memfit's closed form for a decoder layer (engine/memory/activations.py layer_bytes) is Llama's:
two RMSNorms that keep fp32 copies, separate q/k/v projections and a gated MLP (gate, up, their
product). It is checked against the probe to 1 % for llama, qwen2, qwen3, phi3, gemma2 and bloom
(tests/test_activations.py). Other transformers architectures store less or more: LayerNorm keeps
its 16-bit input and two statistics per row, a plain MLP (fc1, activation, fc2) keeps 2 tensors of
the intermediate width where a gated one keeps 4, a fused qkv projection keeps one output, and a
parallel residual drops a norm. For each model type here the probe (engine/probe/, the oracle for
activations) traces one reference layer and the ratio traced / formula is shipped; layer_bytes
scales its closed form by it. The ratio is measured at one shape (REFERENCE: hidden 1024,
intermediate 2816, 16 heads, 256 tokens, SDPA, no dropout) for full fine-tuning and for LoRA
(all-linear, r 16); tests/test_arch_scale.py checks how it carries to another shape.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "engine" / "memory" / "arch_scale.json"
REFERENCE = {"hidden": 1024, "intermediate": 2816, "heads": 16, "seq_len": 256}
METHODS = ("full", "lora")


def config(model_type: str, h: int, inter: int, heads: int) -> dict:
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
    return {"model_type": model_type, **common, **shapes[model_type]}


MODEL_TYPES = ("gpt_neox", "opt", "gpt_bigcode", "starcoder2", "gpt2", "phi", "stablelm", "olmo", "gemma")


def ratio(model_type: str, method: str, h: int, inter: int, heads: int, seq_len: int) -> float:
    """Probe-traced bytes one decoder layer stores / memfit's unscaled closed form (SDPA, no checkpointing)."""
    from memfit.engine.memory.activations import layer_bytes
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.probe.probe import probe

    facts = resolve_model(config(model_type, h, inter, heads))
    traced = probe(facts.config, seq_len=seq_len, micro_batch=1, method=method).activation_bytes_per_layer
    return traced / layer_bytes(facts, seq_len, 1, "sdpa", method=method, arch_scaled=False)


def table() -> dict:
    r = REFERENCE
    scales = {t: {m: round(ratio(t, m, r["hidden"], r["intermediate"], r["heads"], r["seq_len"]), 4) for m in METHODS}
              for t in MODEL_TYPES}
    import torch
    import transformers
    return {"reference": r, "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "scales": scales}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when engine/memory/arch_scale.json is stale")
    args = ap.parse_args(argv)
    text = json.dumps(table(), indent=1, sort_keys=True) + "\n"
    if args.check:
        stale = not OUT.exists() or json.loads(OUT.read_text())["scales"] != json.loads(text)["scales"]
        print(f"{OUT.relative_to(ROOT)} is {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
