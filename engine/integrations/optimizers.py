"""Optimizer names users write -> memfit's `training.optimizer`, shared by every foreign-config reader.

The names are HF TrainingArguments' `optim` values (transformers training_args.py OptimizerNames; the
builders are in trainer_optimizer.py), which LLaMA-Factory (`optim`) and axolotl (`optimizer`) pass on,
plus the bitsandbytes / torch classes torchtune names by `_component_`.
"""
from __future__ import annotations

# name -> (memfit optimizer, note on what differs or None)
_HF: dict[str, tuple[str, str | None]] = {
    "adamw_torch": ("adamw", None),
    "adamw_hf": ("adamw", None),
    "adamw_torch_xla": ("adamw", None),
    # trainer_optimizer.py _get_adamw_torch: `fused=True` for adamw_torch_fused: no foreach temporaries.
    "adamw_torch_fused": ("adamw_fused", None),
    "adamw_torch_npu_fused": ("adamw_fused", None),
    "adamw_apex_fused": ("adamw_fused", None),
    "adamw_anyprecision": ("adamw", "adamw_anyprecision keeps states in the dtype it is given; "
                                    "estimated as fp32 AdamW"),
    "adamw_bnb_8bit": ("adamw_8bit", None),
    "adamw_8bit": ("adamw_8bit", None),  # transformers: "just an alias for adamw_bnb_8bit"
    "adamw_torch_8bit": ("adamw_8bit", "adamw_torch_8bit is torchao's AdamW8bit (blockwise 8-bit states); "
                                       "estimated with bitsandbytes' layout"),
    "adamw_torch_4bit": ("adamw_8bit", "adamw_torch_4bit (torchao 4-bit states) is estimated as 8-bit AdamW: "
                                       "an over-estimate of about 1 byte per trainable parameter"),
    "paged_adamw_32bit": ("paged_adamw", None),
    "paged_adamw_8bit": ("paged_adamw_8bit", None),
    "lion_32bit": ("lion", None),
    "lion_8bit": ("lion_8bit", None),
    "paged_lion_32bit": ("lion", "paged_lion_32bit: Lion's states in unified memory; counted on the GPU as unpaged"),
    "paged_lion_8bit": ("lion_8bit", "paged_lion_8bit: Lion's states in unified memory; counted on the GPU as unpaged"),
    "adafactor": ("adafactor", None),
    "sgd": ("sgd", None),
}
# torchtune `_component_` classes.
_CLASSES: dict[str, str] = {
    "torch.optim.AdamW": "adamw", "torch.optim.Adam": "adamw", "torch.optim.SGD": "sgd",
    "bitsandbytes.optim.AdamW8bit": "adamw_8bit", "bitsandbytes.optim.Adam8bit": "adamw_8bit",
    "bitsandbytes.optim.PagedAdamW8bit": "paged_adamw_8bit", "bitsandbytes.optim.PagedAdamW": "paged_adamw",
    "bitsandbytes.optim.PagedAdamW32bit": "paged_adamw", "bitsandbytes.optim.Lion": "lion",
    "bitsandbytes.optim.Lion8bit": "lion_8bit", "torchao.optim.AdamW8bit": "adamw_8bit",
}


def optimizer_of(name: str, key: str = "optim") -> tuple[str, str | None]:
    """memfit's optimizer for a name a user wrote, and a warning when the estimate is approximate.

    Args:
        name: an HF `optim` value (case-insensitive), or a torchtune `_component_` class path.
        key: the config key it was read from, for the warning.
    Returns:
        (training.optimizer value, warning text or None).
    """
    if name in _CLASSES:
        return _CLASSES[name], None
    low = name.lower()
    if low in _HF:
        chosen, note = _HF[low]
        return chosen, (f"{key}: {note}" if note else None)
    if low.startswith("adafactor"):
        return "adafactor", None
    return "adamw", f"{key}: {name} is not modelled; estimated as AdamW (effect unknown)"
