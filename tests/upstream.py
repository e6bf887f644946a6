"""The committed upstream example configs (tests/fixtures/upstream/<tool>/, see each SOURCE.md).

File names there are the paths inside the distribution with '/' written '__'; `tool_root` lays them
out again under a temporary folder, which then plays the tool's own root: LLaMA-Factory's examples
say `deepspeed: examples/deepspeed/ds_z3_config.json` and are run from the repository root.
"""
from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "upstream"
HW_8X80 = "hardware: {gpu: H100-SXM-80GB, gpus_per_node: 8, host_memory: 1024}\n"


def upstream(tool: str, path: str) -> Path:
    """The committed copy of `path` (as inside the distribution) of `tool`."""
    return FIXTURES / tool / path.replace("/", "__")


def tool_root(tool: str, where: Path) -> Path:
    """Copy every fixture of `tool` under `where` at its path inside the distribution; returns `where`."""
    for f in (FIXTURES / tool).iterdir():
        if f.name == "SOURCE.md":
            continue
        dst = where / f.name.replace("__", "/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    return where


def configs(tool: str) -> list[str]:
    """Paths (inside the distribution) of the tool's training configs among the fixtures."""
    return sorted(f.name.replace("__", "/") for f in (FIXTURES / tool).iterdir()
                  if f.suffix in (".yaml", ".yml") and not f.name.startswith("examples__accelerate__"))
