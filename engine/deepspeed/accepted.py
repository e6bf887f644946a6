"""The DeepSpeed config keys a given DeepSpeed version accepts, generated from DeepSpeed itself.

Two kinds of keys (read in deepspeed 0.19.8, `runtime/config.py` and `runtime/config_utils.py`):
- pydantic sections (`zero_optimization`, `fp16`, `bf16`, `compile`, ...): `DeepSpeedConfigModel` has
  `populate_by_name=True, extra="forbid"`, so a field's name AND its alias are accepted
  (`max_live_parameters` and `stage3_max_live_parameters`) and anything else is refused;
- keys read by hand (`param_dict.get(...)`): unknown ones are ignored without a word.
The hand-read keys are found by constructing `DeepSpeedConfig` on a dict that records every key looked
up; the pydantic ones by walking the models' fields. Keys DeepSpeed removed (`_REMOVED_*_CONFIG_KEYS`,
which it refuses) are kept apart with DeepSpeed's own message.

Generating needs `import deepspeed` (~4 s), so the result for a version is stored in
schemas/deepspeed-keys-<version>.json (`python -m memfit.engine.deepspeed.accepted` writes it) and read
from there when the installed version matches.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from importlib.resources import files
from typing import Any, Collection, Iterator

# Pydantic sections: dotted path in the JSON -> "module:Class" in deepspeed (0.19.8 layout).
PYDANTIC_SECTIONS = {
    "zero_optimization": "deepspeed.runtime.zero.config:DeepSpeedZeroConfig",
    "fp16": "deepspeed.runtime.precision_config:DeepSpeedFP16Config",
    "bf16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",
    "bfloat16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",
    "comms_logger": "deepspeed.comm.config:CommsLoggerConfig",
    "tensorboard": "deepspeed.monitor.config:TensorBoardConfig",
    "wandb": "deepspeed.monitor.config:WandbConfig",
    "csv_monitor": "deepspeed.monitor.config:CSVConfig",
    "comet": "deepspeed.monitor.config:CometConfig",
    "hybrid_engine": "deepspeed.runtime.config:HybridEngineConfig",
    "compile": "deepspeed.compile.config:CompileConfig",
    "tensor_parallel": "deepspeed.runtime.tensor_parallel.config:TPTrainingConfig",
    "weight_quantization": "deepspeed.inference.config:WeightQuantConfig",
    "timers.throughput": "deepspeed.utils.config:DeepSpeedThroughputTimerConfig",
}
# Hand-read sections whose every key DeepSpeed reads when the section is present (recorded below):
# unknown keys there are typos DeepSpeed swallows. Others (optimizer.params, scheduler.params,
# pipeline, ...) are free-form and stay open.
CLOSED_HAND_SECTIONS = ("activation_checkpointing", "aio", "flops_profiler", "torch_autocast", "data_types",
                        "checkpoint", "autotuning")


def installed_version() -> str | None:
    """The installed DeepSpeed version (from package metadata: no import), or None."""
    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        return None


class _Recorder(dict[str, Any]):
    """A dict that notes every key looked up in it (get, [], in, keys())."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self.seen.add(key)
        return super().__contains__(key)

    def keys(self) -> Any:  # DeepSpeed writes `KEY in param_dict.keys()`
        recorder = self

        class _Keys:
            def __contains__(self, key: Any) -> bool:
                return recorder.__contains__(key)

            def __iter__(self) -> Iterator[str]:
                return iter(dict.keys(recorder))

        return _Keys()


def _read_keys(section: str | None = None) -> set[str]:
    """Keys DeepSpeedConfig looks up at the top level, or inside `section` when given."""
    from deepspeed.runtime.config import DeepSpeedConfig

    inner = _Recorder()
    top = _Recorder({"train_micro_batch_size_per_gpu": 1, **({section: inner} if section else {})})
    try:
        DeepSpeedConfig(top)
    except Exception:  # a section that is not a mapping breaks later arithmetic; its lookups are recorded
        pass
    return inner.seen if section else top.seen


def _model_keys(model: Any, path: str, out: dict[str, dict[str, str]]) -> None:
    """Field names and aliases of a pydantic model, recursing into nested models; out[path] = {key: field}."""
    import typing

    from pydantic import BaseModel

    keys = out.setdefault(path, {})
    for name, field in model.model_fields.items():
        keys[name] = name
        if field.alias:
            keys[field.alias] = name
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                for key in {name, field.alias} - {None}:
                    _model_keys(arg, f"{path}.{key}", out)


def _types(model: Any, path: str, out: dict[str, dict[str, str]]) -> None:
    """JSON type names ('boolean', 'integer', 'number', 'string') of plain fields, by dotted key."""
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    for name, field in model.model_fields.items():
        kind = simple.get(field.annotation)
        if kind:
            for key in {name, field.alias} - {None}:
                out.setdefault(path, {})[key] = kind


def generate() -> dict[str, Any]:
    """Read the accepted key set from the installed DeepSpeed (imports it: seconds).

    Returns:
        {"deepspeed_version", "top_level", "sections": {path: {key: field name}}, "types": {path: {key: type}},
         "removed": {dotted key: DeepSpeed's message}}.
    Raises:
        ImportError: DeepSpeed is not installed.
    """
    import importlib

    import deepspeed
    from deepspeed.runtime import config as ds_config

    removed = {k: v for k, v in getattr(ds_config, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}).items()}
    removed.update({f"zero_optimization.{k}": v
                    for k, v in getattr(ds_config, "_REMOVED_ZERO_CONFIG_KEYS", {}).items()})
    sections: dict[str, dict[str, str]] = {}
    types: dict[str, dict[str, str]] = {}
    for path, ref in PYDANTIC_SECTIONS.items():
        module, cls = ref.split(":")
        model = getattr(importlib.import_module(module), cls)
        _model_keys(model, path, sections)
        _types(model, path, types)
    top = (_read_keys() | {p.split(".")[0] for p in PYDANTIC_SECTIONS}) - set(removed)
    for name in CLOSED_HAND_SECTIONS:
        seen = _read_keys(name)
        if seen:
            sections[name] = {k: k for k in sorted(seen)}
    return {"deepspeed_version": deepspeed.__version__, "top_level": sorted(top),
            "sections": {p: dict(sorted(k.items())) for p, k in sorted(sections.items())},
            "types": types, "removed": removed}


def _stored(version: str) -> dict[str, Any] | None:
    path = files("memfit.schemas").joinpath(f"deepspeed-keys-{version}.json")
    stored: dict[str, Any] | None = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return stored


def _newest_stored() -> dict[str, Any]:
    names = sorted((p.name for p in files("memfit.schemas").iterdir() if p.name.startswith("deepspeed-keys-")),
                   key=lambda n: [int(x) if x.isdigit() else 0 for x in n[15:-5].split(".")])
    stored: dict[str, Any] = json.loads(files("memfit.schemas").joinpath(names[-1]).read_text(encoding="utf-8"))
    return stored


@lru_cache(maxsize=1)
def accepted_keys() -> dict[str, Any]:
    """The accepted key set for the installed DeepSpeed: stored file, else generated, else the newest stored.

    Returns:
        `generate()`'s mapping plus "rules": a sentence naming the version whose rules apply and how.
    """
    version = installed_version()
    data = _stored(version) if version else None
    how = f"deepspeed {version}'s config models (stored)"
    if data is None and version:
        try:
            data, how = generate(), f"deepspeed {version}'s config models (read now)"
        except Exception:  # a DeepSpeed that does not import here: fall back to what is stored
            data = None
    if data is None:
        data = _newest_stored()
        how = (f"deepspeed {data['deepspeed_version']}'s config models (stored; installed: "
               f"{version or 'none'})")
    return {**data, "rules": f"accepted keys from {how}"}


# Sections other tools write into DeepSpeed JSONs that no DeepSpeed version reads (LLaMA-Factory's
# ds_z3_fp8_config.json): not typos, but without effect; the real keys are named in the warning.
NOT_READ = {"comms_config": "the comms logger is configured by top-level comms_logger",
            "monitor_config": "monitors are configured by top-level tensorboard, wandb, csv_monitor, comet"}
_COMMENT: dict[str, dict[str, Any]] = {"^_": {}}  # "_comment" and the like: JSON has no comments, people write these


def _node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = node.setdefault("properties", {}).setdefault(part, {"type": "object"})
    return node


def _merge_section(node: dict[str, Any], keys: dict[str, str], types: dict[str, str]) -> None:
    """Close `node` to exactly `keys`; a name and its alias share the hand schema's type, else DeepSpeed's."""
    props = node.setdefault("properties", {})
    for key, field in keys.items():
        if key in props:
            continue
        twin = next((props[k] for k, f in keys.items() if f == field and k in props), None)
        kind = types.get(key)
        props[key] = twin if twin is not None else (
            {"anyOf": [{"type": kind}, {"const": "auto"}]} if kind else {})
    for key in [k for k in props if k not in keys]:
        props.pop(key)  # not accepted by this DeepSpeed version
    node.update(additionalProperties=False, patternProperties=_COMMENT)


@lru_cache(maxsize=1)
def deepspeed_schema() -> dict[str, Any]:
    """The strict DeepSpeed schema: memfit's types and combinations, the installed DeepSpeed's key sets."""
    schema: dict[str, Any] = json.loads(files("memfit.schemas").joinpath("deepspeed.schema.json").read_text(encoding="utf-8"))
    accepted = accepted_keys()
    top = schema.setdefault("properties", {})
    for key in list(top):
        if key in accepted["removed"]:
            top.pop(key)
    for key in accepted["top_level"]:
        top.setdefault(key, {})
    schema["patternProperties"] = _COMMENT
    for path, keys in accepted["sections"].items():
        _merge_section(_node(schema, path), keys, accepted["types"].get(path, {}))
    return schema


def without(cfg: dict[str, Any], dotted_keys: Collection[str]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in dotted_keys}
    for dotted in dotted_keys:
        parent, _, key = dotted.rpartition(".")
        if parent and isinstance(out.get(parent), dict):
            out[parent] = {k: v for k, v in out[parent].items() if k != key}
    return out


if __name__ == "__main__":  # regenerate schemas/deepspeed-keys-<version>.json for the installed DeepSpeed
    import sys
    from pathlib import Path

    result = generate()
    target = Path(__file__).resolve().parents[2] / "schemas" / f"deepspeed-keys-{result['deepspeed_version']}.json"
    target.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
