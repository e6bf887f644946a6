"""The house shows its architecture: engine/ is packages by concern, and data flows one way.

Read statically from the source (ast), so the test sees lazy imports inside functions too:
- every engine module lives in a package named for its concern (only __init__.py at the top);
- a package imports only packages below it in LAYERS (and itself);
- no import cycle between modules;
- no module imports another module's private (_underscore) names.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "engine"
# Bottom to top: plan -> model -> memory -> search (policy, evidence) -> advice -> outputs of the tools.
LAYERS = ["core", "machine", "plan", "model", "memory", "evidence", "store", "policy", "search", "deepspeed", "fsdp",
          "advice", "review", "probe", "integrations"]
# Packages on one level may not import each other (review, probe and integrations are siblings; so are
# the two sharding engines' output packages, deepspeed and fsdp).
TOP_SIBLINGS = {"review", "probe", "integrations"}
ENGINE_SIBLINGS = {"deepspeed", "fsdp"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, resolved to engine-relative names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("memfit.engine"):
                mod = node.module[len("memfit.engine"):].lstrip(".")
            else:
                continue
            found.append((mod, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("memfit.engine."):
                    found.append((a.name[len("memfit.engine."):], [], node.lineno))
    return found


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_every_module_sits_in_a_package_for_its_concern():
    loose = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules at engine/ top level: {loose}"
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert sorted(packages) == sorted(LAYERS), "every package is placed in LAYERS (and nothing else exists)"


def test_no_upward_imports():
    rank = {p: i for i, p in enumerate(LAYERS)}
    problems = []
    for name, path in _modules().items():
        if not name:
            continue  # engine/__init__.py is the public face: it may re-export any layer
        here = _layer(name)
        for mod, _, line in _imports(name, path):
            there = _layer(mod) if mod else ""
            if there not in rank or there == here:
                continue
            sibling = any(here in group and there in group for group in (TOP_SIBLINGS, ENGINE_SIBLINGS))
            if rank[there] > rank[here] or sibling:
                problems.append(f"engine/{path.relative_to(ROOT)}:{line}: {here} imports {there}")
    assert problems == []


def test_no_import_cycles():
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for mod, names, _ in _imports(name, path):
            for cand in [f"{mod}.{n}" for n in names] + [mod]:
                if cand in mods and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps
    cycles = []

    def visit(node, stack, on_stack, done):
        on_stack.add(node)
        stack.append(node)
        for dep in graph[node]:
            if dep in on_stack:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set = set()
    for n in graph:
        if n not in done:
            visit(n, [], set(), done)
    assert cycles == []


def test_no_private_names_across_modules():
    problems = []
    for name, path in _modules().items():
        for mod, names, line in _imports(name, path):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                problems.append(f"engine/{path.relative_to(ROOT)}:{line}: imports {private} from {mod}")
    assert problems == []
