"""Activation terms of torch.compile'd decoder layers (engine/memory/compile_terms.json).

    .venv/bin/python bench/compile_terms.py            # rewrite engine/memory/compile_terms.json
    .venv/bin/python bench/compile_terms.py --check    # exit 1 when the shipped file is stale

A compiled step keeps what inductor's partitioner saves (engine/probe/compiled.py traces it on fake
tensors): fewer tensors than the eager layer, because casts, norms' scaling and activations are
recomputed in backward from a few saved inputs. What it keeps is still a sum of tensors whose widths
are h, the query and key/value widths, I and the heads, so, as bench/arch_terms.py does for the eager
probe, each model type's coefficients are solved from traces at several shapes, under SDPA and under
eager attention (whose score matrices add terms in heads x tokens; gemma2 runs eager only). LoRA (r 16): the frozen layer, traced
with one adapter on its first Linear and that adapter's rank-r output taken off; the plan's adapters
are added by the rule engine/memory/compiled.py states. tests/test_compile_terms.py checks the terms
and the rule against fresh traces at a shape and target lists the fit never saw.

The loss is not fitted: the same trace shows that a compiled transformers loss saves the 16-bit logits
(2 bytes per token and vocabulary entry, not log-softmax's fp32 output), which memory/loss.py uses.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import arch_terms  # noqa: E402  (the shapes, the configs of the fitted types and the least-squares fit)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "engine" / "memory" / "compile_terms.json"
METHODS = ("full", "lora")
# memfit's closed-form (Llama-structured) types and the types with eager probe-fitted terms.
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2")
MODEL_TYPES = LLAMA_TYPES + arch_terms.MODEL_TYPES
# The attentions each type is traced with: transformers 5.24 runs gemma2 eager only.
EAGER_ONLY = frozenset({"gemma2"})
KV_HEADS = arch_terms.KV_HEADS | set(LLAMA_TYPES)
HEAD_DIM = arch_terms.HEAD_DIM | {"llama", "mistral", "qwen3", "gemma2"}
SHAPES = arch_terms.SHAPES
VARIANTS = ({"kv": 2}, {"head_dim": 32})
VARIANT_SHAPES = 2  # the variants are traced at the first two shapes (the fit has at most 6 unknowns)


def config(model_type: str, h: int, inter: int, heads: int, kv: int | None = None, head_dim: int | None = None) -> dict:
    """A small two-layer config of the model type with the given shape, dropout off."""
    if model_type not in LLAMA_TYPES:
        return arch_terms.config(model_type, h, inter, heads, kv, head_dim)
    out = {"model_type": model_type, "vocab_size": 1024, "hidden_size": h, "intermediate_size": inter,
           "num_attention_heads": heads, "num_key_value_heads": kv or heads, "num_hidden_layers": 2,
           "max_position_embeddings": 2048, "pad_token_id": 0}  # phi3's default pad id (32000) is past the vocab
    if model_type in HEAD_DIM:
        out["head_dim"] = head_dim or h // heads
    return out


def _configs(model_type: str) -> list[tuple[dict, int]]:
    out = []
    for i, (h, inter, heads, tokens) in enumerate(SHAPES):
        out.append((config(model_type, h, inter, heads), tokens))
        if i >= VARIANT_SHAPES:
            continue
        for v in VARIANTS:
            kv, hd = v.get("kv"), v.get("head_dim")
            if (kv is not None and (model_type not in KV_HEADS or heads % kv)) or (hd is not None and model_type not in HEAD_DIM):
                continue
            out.append((config(model_type, h, inter, heads, kv=kv, head_dim=hd), tokens))
    return out


def traced_per_token(model_type: str, method: str, attention: str = "sdpa") -> list[tuple[dict[str, float], float]]:
    """(widths, compiled bytes per token of one layer) at every shape. LoRA: the frozen layer, traced
    with one adapter on the first Linear (its rank-r output taken off): engine/memory/compiled.py adds
    the plan's adapters by the rule the traces show."""
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.probe.compiled import saved_per_token

    rows = []
    for cfg, tokens in _configs(model_type):
        facts = resolve_model(cfg)
        if method == "full":
            value = saved_per_token(facts.config, tokens, method="full", attention=attention).per_layer
        else:
            first = next(x.name for x in facts.linear_layers if x.kind == "linear")
            value = saved_per_token(facts.config, tokens, method="lora", attention=attention, lora_targets=[first],
                                    lora_rank=arch_terms.LORA_RANK).per_layer - 4 * arch_terms.LORA_RANK
        rows.append((arch_terms._widths(facts, tokens), value))
    return rows


def _fit_type(model_type: str) -> tuple[str, dict, float]:
    """One model type's terms and its largest relative residual."""
    row: dict[str, dict] = {}
    worst = 0.0
    for m in METHODS:
        row[m] = {}
        for attention in ("eager",) if model_type in EAGER_ONLY else ("sdpa", "eager"):
            coef, residual = arch_terms.fit(traced_per_token(model_type, m, attention), attention)
            if residual > arch_terms.MAX_RESIDUAL and attention == "eager":
                # The partitioner weighs tensor sizes, so with s x s score matrices in the graph its cut
                # can move with the shape: no linear terms then, and the type keeps its eager count.
                print(f"{model_type} {m} eager: the linear terms leave {residual:.2%} of a trace "
                      "unexplained: not shipped", flush=True)
                continue
            if residual > arch_terms.MAX_RESIDUAL:
                raise SystemExit(f"{model_type} {m} {attention}: the linear terms leave {residual:.2%} of a "
                                 "trace unexplained")
            row[m][attention] = coef
            worst = max(worst, residual)
    print(model_type, row, flush=True)
    return model_type, row, worst


def table() -> dict:
    import multiprocessing

    import torch
    import transformers

    # Each trace runs AOTAutograd's partitioner (seconds): the types are traced in parallel, one per core.
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        fitted = pool.map(_fit_type, MODEL_TYPES)
    return {"shapes": [list(s) for s in SHAPES], "variants": list(VARIANTS), "lora_rank": arch_terms.LORA_RANK,
            "partitioner": "min_cut_rematerialization_partition (compiler=inductor)",
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "max_residual": round(max(w for _, _, w in fitted), 6), "terms": {t: row for t, row, _ in fitted}}


def main(argv=None) -> int:
    return arch_terms.write_or_check(OUT, table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
