"""The argument names each tool accepts, for one version of it: checked against what memfit writes.

Stored as engine/integrations/keys/<tool>-<version>.txt (one name a line, `#` comments), generated from
the tool's own source in its PyPI distribution by `python -m memfit.engine.integrations.keylists TOOL DIR`:
- llamafactory: the dataclass fields of src/llamafactory/hparams/*.py, plus the fields of the installed
  transformers' Seq2SeqTrainingArguments (LLaMA-Factory's TrainingArguments inherits them);
- axolotl: the pydantic fields and their aliases of src/axolotl/utils/schemas/*.py, and of its bundled
  plugins' src/axolotl/integrations/*/args.py (a plugin's keys apply when `plugins:` lists it);
- torchtune: the top-level keys its recipes read (`cfg.x`, `cfg.get("x")`, `cfg["x"]` in recipes/*.py).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Iterable

VERSIONS = {"llamafactory": "0.9.5", "axolotl": "0.19.0", "torchtune": "0.6.1"}
# llamafactory 0.9.5 pyproject.toml: "transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0". The stored list
# holds the TrainingArguments fields of the transformers it was generated with (its `# transformers`
# line), which may be newer: a name missing there may still exist in a transformers LLaMA-Factory runs.
LLAMAFACTORY_TRANSFORMERS_PIN = "transformers<=5.6.0"


@dataclass(frozen=True)
class KeyList:
    """Accepted argument names of one tool version."""

    tool: str
    version: str
    names: frozenset[str]
    note: str = ""  # e.g. the transformers version whose TrainingArguments the list includes

    @property
    def rules(self) -> str:
        return f"{self.tool} {self.version} argument names"


@lru_cache(maxsize=None)
def key_list(tool: str) -> KeyList:
    """The stored key list of `tool` (llamafactory, axolotl, torchtune)."""
    version = VERSIONS[tool]
    text = files("memfit.engine.integrations.keys").joinpath(f"{tool}-{version}.txt").read_text(encoding="utf-8")
    names = frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    note = next((line[2:].strip() for line in text.splitlines() if line.startswith("# transformers ")), "")
    return KeyList(tool, version, names, note)


def unknown_names(tool: str, names: Iterable[str]) -> list[str]:
    """The names in `names` that `tool`'s stored version does not accept."""
    known = key_list(tool).names
    return sorted(n for n in names if n not in known)


def _aliases(value: ast.expr | None) -> set[str]:
    """String aliases in `Field(alias="x")` / `validation_alias="x"` (pydantic populate_by_name)."""
    if not isinstance(value, ast.Call):
        return set()
    return {k.value.value for k in value.keywords if k.arg in ("alias", "validation_alias")
            and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}


def _class_fields(paths: Iterable[str | Path]) -> set[str]:
    names: set[str] = set()
    aliases: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        names.add(stmt.target.id)
                        aliases |= _aliases(stmt.value)
    # pydantic's `model_config` class attribute holds the model's settings, not a field
    return {n for n in (names - {"model_config"}) | aliases if not n.startswith("_")}


def generate(tool: str, root: Path) -> list[str]:
    """Names read from an unpacked distribution of `tool` at `root`."""
    if tool == "llamafactory":
        from transformers import Seq2SeqTrainingArguments
        import dataclasses

        names = _class_fields(sorted((root / "src/llamafactory/hparams").glob("*_args.py")))
        return sorted(names | {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)})
    if tool == "axolotl":  # the schema, plus the arguments of its bundled plugins (integrations/*/args.py)
        paths = [*sorted((root / "src/axolotl/utils/schemas").glob("*.py")),
                 *sorted((root / "src/axolotl/integrations").glob("*/args.py"))]
        return sorted(_class_fields(paths))
    pattern = re.compile(r"""cfg\.get\(\s*["'](\w+)["']|cfg\[["'](\w+)["']\]|cfg\.(\w+)""")
    names = set()
    for path in sorted((root / "recipes").glob("*.py")):
        for m in pattern.finditer(path.read_text(encoding="utf-8")):
            names.add(next(g for g in m.groups() if g))
    return sorted(names - {"get", "pop", "items", "keys"})


if __name__ == "__main__":
    import sys

    tool, root = sys.argv[1], Path(sys.argv[2])
    target = Path(__file__).resolve().parent / "keys" / f"{tool}-{VERSIONS[tool]}.txt"
    header = (f"# {tool} {VERSIONS[tool]} argument names, generated by memfit.engine.integrations.keylists from\n"
              f"# the {tool} {VERSIONS[tool]} PyPI distribution (see that module's docstring).\n")
    if tool == "llamafactory":
        from importlib.metadata import version

        header += f"# transformers {version('transformers')} Seq2SeqTrainingArguments fields included\n"
    target.write_text(header + "\n".join(generate(tool, root)) + "\n", encoding="utf-8")
    print(f"wrote {target}")
