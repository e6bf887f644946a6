"""The training stack of a plan: `training.framework`'s defaults (frameworks.yaml) under the plan's own keys.

Data flows one way: the checked Plan -> `resolve_stack(plan)` -> a frozen `Stack` that memory/ reads
(loss implementation, logits dtype, activation offloading, the k-bit upcast, the optimizer
implementation, the data shape the allocator sees). The defaults are a data file, parsed once, so that a
framework's choices are read in one place with their sources (docs/reference/plan-format.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schema import Plan

# Model types whose transformers 5.24 config class defaults final_logit_softcapping to a number
# (models/*/configuration_*.py), for configs that leave the key out (the catalogue's do).
_SOFTCAP_BY_DEFAULT = frozenset({"gemma2", "vaultgemma", "gemma3n", "gemma3n_text", "t5gemma"})
FRAMEWORKS = ("hf-trainer", "trl", "axolotl", "llamafactory", "torchtune", "unsloth")


@dataclass(frozen=True)
class Stack:
    """What the training stack does to memory, every value resolved (framework default or plan key)."""

    framework: str
    loss_implementation: str   # standard | chunked | fused_linear
    loss_chunks: int           # token chunks of the chunked loss
    logits_dtype: str          # fp32 (the loss upcasts) | bf16 (the loss reads 16-bit logits)
    softcapping: bool          # final-logit softcapping (Gemma-2) applied before the loss
    activation_offloading: bool
    liger_kernels: bool        # Liger's RMSNorm / SwiGLU / RoPE in the decoder layers (training.kernels)
    kbit_upcast: bool          # QLoRA: non-quantised parameters (and the residual stream) in fp32
    packing: bool
    padding: str               # auto | longest | max_length
    expandable_segments: bool
    sync_each_batch: bool      # FSDP gradient accumulation: reduce-scatter every micro-batch (else no_sync)
    zero_init: bool            # ZeRO-3: the model is built partitioned (deepspeed.zero.Init), not whole
    checkpoint_policy: str = "full"  # full | selective_op: what a checkpointed layer keeps (activations.py)
    compile: bool = False            # torch.compile: layers and loss keep what inductor saves (compiled.py)

    @property
    def fixed_shapes(self) -> bool:
        """Every step allocates the same tensor sizes: packed, or padded to seq_len (auto: taken as fixed,
        the shape of the benchmark runs memfit is calibrated on)."""
        return self.packing or self.padding != "longest"


@lru_cache(maxsize=1)
def framework_table() -> dict[str, dict[str, Any]]:
    """frameworks.yaml's `frameworks` mapping (read once)."""
    import yaml

    text = files("memfit.engine.plan").joinpath("frameworks.yaml").read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the cold path is timed
    table: dict[str, dict[str, Any]] = yaml.load(text, Loader=loader)["frameworks"]
    missing = set(FRAMEWORKS) ^ set(table)
    if missing:  # a packaging or editing mistake, not a user error
        raise RuntimeError(f"frameworks.yaml and FRAMEWORKS disagree on {sorted(missing)}")
    return table


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _softcapped(facts: Any) -> bool:
    """Whether the model applies final-logit softcapping: its config's key, else its class default."""
    config = getattr(facts, "config", None) or {}
    if "final_logit_softcapping" in config:
        return bool(config["final_logit_softcapping"])
    return getattr(facts, "model_type", None) in _SOFTCAP_BY_DEFAULT


def resolve_stack(plan: Plan, facts: Any = None) -> Stack:
    """The plan's stack: each explicit key wins over `training.framework`'s default.

    Args:
        plan: the checked Plan.
        facts: the ModelSpec (its config's final_logit_softcapping for `softcapping: auto`), or None.
    Returns:
        The resolved Stack.
    """
    t, d = plan.training, plan.data
    base = framework_table()[t.framework]
    loss = base["loss"]
    opts = t.loss
    cap = opts.softcapping
    softcap = _softcapped(facts) if cap == "auto" else bool(cap)
    return Stack(
        framework=t.framework,
        loss_implementation=_given(opts.implementation, loss["implementation"]),
        loss_chunks=int(_given(opts.chunks, loss["chunks"] if opts.implementation in (None, loss["implementation"])
                               else 8)),
        logits_dtype=_given(opts.logits_dtype, loss["logits_dtype"]),
        softcapping=softcap,
        activation_offloading=bool(_given(t.activation_offloading, base["activation_offloading"])),
        liger_kernels=t.kernels == "liger",
        kbit_upcast=bool(_given(t.kbit_upcast, base["kbit_upcast"])),
        packing=bool(_given(d.packing, base["packing"])),
        padding=d.padding,
        expandable_segments=t.expandable_segments,
        sync_each_batch=bool(_given(t.sync_each_batch, base["sync_each_batch"])),
        zero_init=bool(_given(t.zero_init, base["zero_init"])),
        checkpoint_policy=t.checkpoint_policy,
        compile=t.compile,
    )
