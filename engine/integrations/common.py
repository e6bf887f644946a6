"""What every foreign-config reader shares: the result type, YAML round-trip loading, hardware, DeepSpeed files.

A reader turns a tool's config into a memfit plan mapping (strategy left to the search) plus the user's
own strategy (`pinned`), and says in `notes` how it read each memory-relevant key and in `warnings`
what it could not model (never dropping a key silently). Writers use ruamel.yaml's round-trip mode so
the user's comments, key order and scalar styles survive.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.inputs import load_yaml, read_text
from ..core.errors import PlanError
from ..deepspeed.check import check_config, load_config
from ..plan.strategy import FSDP_EQUIVALENT_STAGE


@dataclass
class ForeignRead:
    """A foreign config read as a memfit plan.

    Attributes:
        tool: what the file was recognised as, e.g. "LLaMA-Factory training YAML".
        rules: whose rules were applied, e.g. "llamafactory 0.9.5 argument names and defaults".
        source: the file read.
        plan: memfit plan mapping {"model", "hardware", "training"} with the strategy left "auto".
        pinned: the user's own strategy (method, zero_stage, offloads, micro_batch_size, gradient_checkpointing).
        notes: how memory-relevant keys were read (defaults applied, inferences made).
        warnings: what memfit could not model, or modelled as something near with the difference named.
        deepspeed_path: the DeepSpeed JSON read, if any.
        data: the parsed config (plain mapping).
    """

    tool: str
    rules: str
    source: Path
    plan: dict[str, Any]
    pinned: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    deepspeed_path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (safe loading).

    Raises:
        PlanError: unreadable, invalid YAML, or not a mapping.
    """
    p = Path(path)
    # The one strict reader of user files: regular files only, size cap, UTF-8, duplicate keys,
    # NaN/inf and alias bombs refused (core/inputs.py).
    data = load_yaml(read_text(p, "the config", PlanError), str(p), PlanError)
    if not isinstance(data, dict):
        raise PlanError(f"{p}: expected a mapping of keys at the top level (got {type(data).__name__})")
    return data


def round_trip_load(path: str | Path) -> Any:
    """The YAML document as ruamel.yaml round-trip data: values plus the line of every key."""
    from ruamel.yaml import YAML

    return YAML(typ="rt").load(Path(path).read_text(encoding="utf-8"))


DELETE = object()  # marks a top-level key to remove in `edit_yaml`


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # ints stay ints (LLaMA-Factory's lora_alpha is an int field)
    text = str(value)
    return text if text and all(c.isalnum() or c in "/._-+" for c in text) else yaml.safe_dump(text).splitlines()[0]


def _block_end(lines: list[str], start: int, next_key_line: int) -> int:
    end = next_key_line
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1  # comments and blank lines before the next key belong to it
    return end


def _apply(lines: list[str], edits: dict[int, tuple[int, str | None]]) -> list[str]:
    """Lines with each edit (start line -> (end line, replacement or None)) applied."""
    out, i = [], 0
    while i < len(lines):
        if i in edits:
            end, new = edits[i]
            out += [new] if new else []
            i = end
        else:
            out.append(lines[i])
            i += 1
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    return out


def edit_yaml(path: str | Path, changes: dict[str, Any]) -> str:
    """The file's text with top-level keys set or removed and every other byte unchanged.

    ruamel.yaml's round-trip parse gives each key's line; only those lines are rewritten (a trailing
    `# comment` on a rewritten line is kept, the lines of a removed key go), new keys are appended.
    The result is parsed again and must hold exactly the requested values.

    Raises:
        ValueError: the edited text does not parse back to the requested values (a memfit bug).
    """
    text = Path(path).read_text(encoding="utf-8")
    doc = round_trip_load(path)
    lines = text.splitlines(keepends=True)
    order = sorted((doc.lc.key(k)[0], k) for k in doc)
    edits: dict[int, tuple[int, str | None]] = {}
    for i, (line, key) in enumerate(order):
        if key not in changes:
            continue
        nxt = order[i + 1][0] if i + 1 < len(order) else len(lines)
        end = _block_end(lines, line, nxt)
        if changes[key] is DELETE:
            edits[line] = (end, None)
        else:
            comment = lines[line].split(" #", 1)[1].rstrip("\n") if " #" in lines[line] and end == line + 1 else ""
            edits[line] = (end, f"{key}: {_scalar(changes[key])}" + (f"  #{comment}" if comment else "") + "\n")
    out = _apply(lines, edits)
    out += [f"{k}: {_scalar(v)}\n" for k, v in changes.items() if k not in doc and v is not DELETE]
    result = "".join(out)
    back = yaml.safe_load(result) or {}
    wrong = [k for k, v in changes.items() if (k in back) == (v is DELETE) or (v is not DELETE and back[k] != v)]
    if wrong:
        raise ValueError(f"{path}: editing did not give the requested values for {wrong}")
    return result


def read_hardware(spec: str | Path | dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The hardware mapping from `--hardware FILE` (a plan or a bare hardware mapping) or "detect".

    Raises:
        PlanError: no hardware given, unreadable file, or no mapping in it.
    """
    if isinstance(spec, dict):
        return dict(spec)
    if spec is None:
        raise PlanError(f"{source}: this config does not describe the machine; give --hardware HW.yaml "
                        "(a file with a hardware: mapping: gpu_memory, gpus_per_node, host_memory) or "
                        "--hardware detect")
    if str(spec) == "detect":
        from ..plan.load import detected_hardware

        return detected_hardware("--hardware")
    doc = load_yaml(read_text(spec, "the hardware", PlanError), f"--hardware {spec}", PlanError) or {}
    hardware = doc.get("hardware", doc) if isinstance(doc, dict) else None
    if not isinstance(hardware, dict):
        raise PlanError(f"{spec}: hardware: expected a mapping (gpu_memory, gpus_per_node, host_memory)")
    return dict(hardware)


def world_size(hardware: dict[str, Any]) -> int:
    """GPUs in all nodes of a hardware mapping."""
    return int(hardware.get("gpus_per_node", 1)) * int(hardware.get("nodes", 1))


def supports_bf16(hardware: dict[str, Any]) -> bool:
    """Whether the hardware mapping's GPU runs bf16 (memfit's catalogue; true when unknown)."""
    from ..plan.schema import Hardware

    try:
        return Hardware.model_validate(hardware).supports_bf16
    except ValueError:
        return True  # the plan check reports the bad hardware mapping itself


def zero_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """ZeRO stage and offload devices of a DeepSpeed config mapping."""
    raw_zero = cfg.get("zero_optimization")
    zero: dict[str, Any] = raw_zero if isinstance(raw_zero, dict) else {}
    stage = zero.get("stage", 0)

    def device(name: str) -> str:
        block = zero.get(name)
        return str(block.get("device", "none")) if isinstance(block, dict) else "none"

    return {"zero_stage": stage, "offload_optimizer": device("offload_optimizer"),
            "offload_param": device("offload_param") if stage == 3 else "none"}


def read_deepspeed(path: Path, source: str, key: str, out: ForeignRead) -> dict[str, Any]:
    """Read and check the DeepSpeed JSON a foreign config points at; its problems become warnings.

    Raises:
        ConfigCheckError: unreadable JSON. PlanError: an accelerate/FSDP YAML given instead.
    """
    if path.suffix in (".yaml", ".yml"):
        raise PlanError(fsdp_message(path))
    cfg = load_config(path)
    out.deepspeed_path = path
    for f in check_config(cfg, source=str(path)):
        if f.severity != "info":
            out.warnings.append(f"{path}: {f.key}: {f.message}")
    out.notes.append(f"{key}: read {path} (ZeRO stage {zero_of(cfg)['zero_stage']})")
    return cfg


def fsdp_message(path: str | Path) -> str:
    """The one message for an accelerate/FSDP config given where a DeepSpeed JSON was expected."""
    return (f"{path}: not a DeepSpeed config: this is an accelerate config (distributed_type / fsdp_config); "
            f"review it with `advise check {path} [--plan PLAN]`, or plan FSDP with training.sharding: fsdp")


def fsdp_pins(shard: str, offload: bool, version: int = 1) -> tuple[dict[str, Any], str]:
    """The config's own FSDP strategy (memfit's FSDP model, memory/fsdp.py), and a note saying how it was read.

    The sharding strategy names are torch's (torch.distributed.fsdp.ShardingStrategy, as accelerate
    spells them); HYBRID_SHARD_ZERO2 is read as SHARD_GRAD_OP, an unknown name as FULL_SHARD. CPU
    offload (CPUOffload(offload_params=True)) moves parameters, gradients and the optimizer step to
    the host together.
    """
    name = shard.upper()
    sharding = {"HYBRID_SHARD_ZERO2": "SHARD_GRAD_OP"}.get(name, name)
    sharding = sharding if sharding in FSDP_EQUIVALENT_STAGE else "FULL_SHARD"
    stage = FSDP_EQUIVALENT_STAGE[sharding]
    device = "cpu" if offload else "none"
    pins = {"sharding": "fsdp", "fsdp_version": 2 if version == 2 else 1, "fsdp_sharding": sharding,
            "zero_stage": stage, "offload_optimizer": device, "offload_param": device}
    return pins, (f"FSDP{pins['fsdp_version']} {shard}{' with CPU offload' if offload else ''}: the config's own "
                  f"strategy is estimated with memfit's FSDP model; memfit's ranked plans (and the files it "
                  "writes back) are DeepSpeed ones")
