"""One entry point for any training config: recognise its format by its keys, read it, advise, write it back.

Formats: a memfit plan, a LLaMA-Factory training YAML, an axolotl YAML, a torchtune config; DeepSpeed
JSONs come with them (`deepspeed:` or --deepspeed); an accelerate config is recognised and refused
with the FSDP message until FSDP is supported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import PlanError
from ..plan.schema import Plan
from ..plan.load import plan_from_dict
from ..plan.strategy import Strategy
from . import axolotl, llamafactory, llamafactory_write, torchtune
from .common import ForeignRead, fsdp_message, read_hardware, read_mapping
from .writeback import absolute, choose, json_text, launch_script, tool_deepspeed_config

if TYPE_CHECKING:
    from ..advice.results import Advice

_PLAN_KEYS = {"model", "hardware", "training", "policy", "data", "rules", "measured"}
_READERS = {"llamafactory": llamafactory.read_llamafactory, "axolotl": axolotl.read_axolotl,
            "torchtune": torchtune.read_torchtune}


def detect_format(path: str | Path) -> str:
    """"memfit", "llamafactory", "axolotl" or "torchtune", from the file's keys.

    Raises:
        PlanError: a DeepSpeed JSON, an accelerate config, LLaMA-Factory's v1 format, or nothing recognised.
    """
    p = Path(path)
    if p.suffix == ".json":
        raise PlanError(f"{p}: a DeepSpeed config has no model or data: review it with `advise check {p} "
                        "[--plan PLAN]`, or give it with --deepspeed next to a training config")
    try:
        data = read_mapping(p)
    except PlanError:
        return "memfit"  # load_plan reports an unreadable plan in its own words
    if "distributed_type" in data or "compute_environment" in data:
        raise PlanError(fsdp_message(p) if "fsdp_config" in data or data.get("distributed_type") == "FSDP"
                        else f"{p}: an accelerate launch config, not a training config: give the training "
                             "config, with --deepspeed for the DeepSpeed JSON it names")
    if llamafactory.is_llamafactory_v1(data):
        raise PlanError(f"{p}: LLaMA-Factory's v1 config format (USE_V1=1: model, model_class, peft_config, "
                        "dist_config) is not supported; memfit reads the classic format (model_name_or_path)")
    for name, test in (("torchtune", torchtune.is_torchtune), ("axolotl", axolotl.is_axolotl),
                       ("llamafactory", llamafactory.is_llamafactory)):
        if test(data):
            return name
    if set(data) & _PLAN_KEYS:
        return "memfit"  # the plan check names any misspelt key
    raise PlanError(f"{p}: not a config memfit recognises: a memfit plan has model/hardware/training, "
                    "LLaMA-Factory model_name_or_path, axolotl base_model, torchtune model._component_")


def read_foreign(path: str | Path, hardware: str | Path | dict[str, Any] | None, deepspeed: str | Path | None = None,
                 cwd: str | Path | None = None) -> ForeignRead:
    """Read a LLaMA-Factory, axolotl or torchtune config as a memfit plan.

    Args:
        path: the config file.
        hardware: --hardware: a YAML file with a hardware mapping (or a plan), "detect", or a mapping.
        deepspeed: --deepspeed: a DeepSpeed JSON replacing the config's own `deepspeed:`.
        cwd: where the tool would run (relative paths in the config); default: the current directory.
    Raises:
        PlanError: unrecognised file, bad keys, no hardware. ModelNotFoundError: torchtune builder unknown.
    """
    kind = detect_format(path)
    if kind == "memfit":
        read_mapping(path)  # an unreadable file is reported as what it is, not as a plan
        raise PlanError(f"{path}: a memfit plan: read it with load_plan")
    if deepspeed and Path(deepspeed).suffix in (".yaml", ".yml"):
        raise PlanError(fsdp_message(deepspeed))
    return _READERS[kind](path, read_hardware(hardware, str(path)), deepspeed=deepspeed, cwd=cwd)


def plan_of(read: ForeignRead, cwd: str | Path | None = None) -> Plan:
    """The checked memfit Plan of a ForeignRead (model paths resolve from the tool's working directory)."""
    return plan_from_dict(read.plan, str(read.source), Path(cwd or Path.cwd()))


def own_strategy(read: ForeignRead) -> Strategy:
    """The strategy the user's config itself amounts to."""
    return Strategy(**read.pinned)


@dataclass
class OwnVerdict:
    """What the user's own strategy needs, judged with the plan's headroom like memfit's candidates."""

    key: str
    gpu_peak_gib: float
    host_peak_gib: float
    gpu_budget_gib: float
    host_budget_gib: float
    fits: bool


def own_verdict(read: ForeignRead, plan: Plan) -> OwnVerdict:
    """Estimate the config as written (its ZeRO stage, offloads, micro-batch, checkpointing)."""
    from ..memory.estimate import estimate_memory
    from ..model.spec import resolve_model
    from ..search.judge import strategy_verdict

    strategy = own_strategy(read)
    model = resolve_model(plan.model, plan.base_dir)
    e = estimate_memory(plan, model, strategy)
    return OwnVerdict(strategy.key, e.gpu_peak_gib, e.host_peak_gib,
                      e.gpu_capacity_gib * (1 - plan.policy.gpu_headroom),
                      e.host_capacity_gib * (1 - plan.policy.host_headroom),
                      not strategy_verdict(plan, model, strategy))


@dataclass
class WriteBack:
    """Files written in the user's format, the launch line, and notes on the choice."""

    files: dict[str, str]
    launch: str | None
    strategy_key: str | None
    notes: list[str] = field(default_factory=list)


def _refusal(kind: str, read: ForeignRead, plan: Plan) -> Callable[[Strategy], str | None]:
    world = plan.hardware.world_size
    if kind == "llamafactory":
        return lambda s: llamafactory_write.refusal(read.data, s, world)
    if kind == "torchtune":
        recipe = torchtune.recipe_of(read.source, read.data)
        return lambda s: torchtune.refusal(read.data, s, recipe)
    return lambda s: axolotl.refusal(read.data, s, world)


def write_back(read: ForeignRead, plan: Plan, advice: Advice, out_dir: str | Path) -> WriteBack:
    """The user's config with memfit's best plan the tool accepts, its DeepSpeed JSON and launch.sh.

    Returns:
        The files; none of them (and launch None) when nothing fits or the tool refuses every plan that fits.
    Raises:
        ValueError: memfit wrote a key the tool's version does not have (a memfit bug).
    """
    kind = detect_format(read.source)
    chosen = choose(advice, _refusal(kind, read, plan))
    notes = [f"skipped (refused by the tool): {line}" for line in chosen.skipped]
    if chosen.candidate is None:
        if chosen.skipped:
            notes.append(f"no plan that fits is accepted by {read.tool.split()[0]}: nothing written")
        return WriteBack({}, None, None, notes)
    c, strategy = chosen.candidate, chosen.candidate.to_strategy()
    if strategy.offload_optimizer != "none" and kind != "torchtune":
        notes.append("optimizer offload with the tool's own optimizer (no optimizer block): DeepSpeed steps it "
                     "on CPU tensors (zero_force_ds_cpu_optimizer: false), slower than its CPU Adam; "
                     "8-bit (bitsandbytes) optimizers need GPU tensors and fail")
    name = read.source.name
    files: dict[str, Any] = {}
    if kind == "torchtune":
        launch = torchtune.launch_line(read, plan, strategy, str(read.source.resolve()))
        files["tune_overrides.txt"] = " ".join(torchtune.overrides(read, plan, strategy)) + "\n"
    else:
        ds_path = None
        if strategy.zero_stage > 0:
            files["ds_config.json"] = json_text(tool_deepspeed_config(c, plan))
            ds_path = absolute(out_dir, "ds_config.json")
        writer = llamafactory_write if kind == "llamafactory" else axolotl
        write = llamafactory_write.llamafactory_yaml if kind == "llamafactory" else axolotl.axolotl_yaml
        files[name] = write(read, plan, strategy, ds_path)
        launch = writer.launch_line(absolute(out_dir, name), plan, ds_path is not None)
    files["launch.sh"] = launch_script([launch], sorted(files))
    return WriteBack(files, launch, c.key, notes)


def launch_preview(read: ForeignRead) -> str:
    """The command that runs the user's config as written (no --out)."""
    kind = detect_format(read.source)
    if kind == "torchtune":
        return f"tune run {torchtune.recipe_of(read.source, read.data)} --config {read.source}"
    if kind == "axolotl":
        return f"axolotl train {read.source}"
    force = "FORCE_TORCHRUN=1 " if read.deepspeed_path or read.data.get("deepspeed") else ""
    return f"{force}llamafactory-cli train {read.source}"
