"""Loading a plan: YAML -> `Plan`, with every problem of a file reported at once.

Messages read `FILE: key.path: what is wrong (got X)`; unknown keys get a did-you-mean suggestion
(for the first MAX_UNKNOWN_KEY_HINTS of them). The models themselves are in schema.py.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..core.errors import PlanError
from ..core.inputs import PLAN_MAX_BYTES, escape_key, excerpt, load_yaml, read_text
from .schema import MAX_UNKNOWN_KEY_HINTS, Plan


def _key_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts union branch names into loc (e.g. 'int', "literal['auto']"): drop them.
    parts = [f"[{p}]" if isinstance(p, int) else escape_key(p) for p in loc
             if not (isinstance(p, str) and ("[" in p or p in _BRANCHES))]
    return ".".join(parts).replace(".[", "[") or "(top level)"


_BRANCHES = ("int", "float", "str", "bool", "function-after", "list", "dict", "function-plain")


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _describe(err: ErrorDetails, source: str, hint: bool = True) -> str:
    loc = err["loc"]
    path = _key_path(loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1])[:200], _fields_at(Plan, loc), n=1) if hint else []
        return f"{source}: {path}: unknown key" + (f"; did you mean '{close[0]}'?" if close else "")
    msg = err["msg"].removeprefix("Value error, ")
    got = f" (got {excerpt(err['input'])})" if err["type"] != "missing" else ""
    return f"{source}: {path}: {msg}{got}"


def _problems(errors: Sequence[ErrorDetails], source: str) -> list[str]:
    """One line per problem; did-you-mean only for the first MAX_UNKNOWN_KEY_HINTS unknown keys, and
    past that many unknown keys one line counts the rest (100k unknown keys took 124 s before)."""
    problems: dict[str, None] = {}
    unknown = 0
    for err in errors:
        if err["type"] == "extra_forbidden":
            unknown += 1
            if unknown > MAX_UNKNOWN_KEY_HINTS:
                continue
        problems.setdefault(_describe(err, source, hint=unknown <= MAX_UNKNOWN_KEY_HINTS))
    if unknown > MAX_UNKNOWN_KEY_HINTS:
        problems[f"{source}: ... and {unknown - MAX_UNKNOWN_KEY_HINTS:,} more unknown key(s)"] = None
    return list(problems)


def plan_from_dict(data: Any, source: str = "<plan>", base_dir: str | Path = ".") -> Plan:
    """Check a plan mapping and return the typed Plan.

    Raises:
        PlanError: listing every problem as `SOURCE: key.path: what is wrong (got X)`.
    """
    if not isinstance(data, dict):
        raise PlanError(f"{source}: the plan must be a mapping with model, hardware, training (got {type(data).__name__})")
    if data.get("hardware") == "detect":
        data = {**data, "hardware": detected_hardware(f"{source}: hardware")}
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(_problems(exc.errors(include_url=False), source)) from None
    if plan.training.precision == "auto":
        chosen = "bf16" if plan.hardware.supports_bf16 else "fp16"
        plan = plan.model_copy(update={"training": plan.training.model_copy(update={"precision": chosen})})
    plan._base_dir, plan._source = str(base_dir), source
    return plan


def detected_hardware(where: str) -> dict[str, Any]:
    """`hardware: detect` (or `--hardware detect`): this machine's GPUs, RAM and cores (NVML,
    torch.cuda, psutil) as a hardware mapping.

    Args:
        where: what asked for detection, for the message (e.g. "plan.yaml: hardware", "--hardware").
    Raises:
        PlanError: no GPU found (a plan needs the GPU's memory).
    """
    from ..machine.detect import detect_hardware

    found = detect_hardware()
    hw = found.to_hardware_dict()
    if "gpu_memory" not in hw:
        raise PlanError(f"{where}: detect found no GPU on this machine ({'; '.join(found.notes)}); "
                        "give the hardware mapping (gpu_memory, gpus_per_node, host_memory) instead")
    return hw


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan YAML file (safe loading only).

    Raises:
        PlanError: unreadable or oversized file, not a regular file, not UTF-8, bad YAML (duplicate
            keys, NaN, deep nesting, alias bombs), or invalid keys (all problems at once).
    """
    p = Path(path)
    data = load_yaml(read_text(p, "the plan", PlanError, PLAN_MAX_BYTES), str(p), PlanError)
    return plan_from_dict(data, str(p), p.parent)
