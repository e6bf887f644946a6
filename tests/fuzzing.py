"""Hypothesis strategies for fuzzing memfit's input boundaries (tests/test_fuzz.py, bench/fuzz.py).

`plan_documents()` is derived from schemas/plan.schema.json (our own small translator, covering the
keywords that schema uses: $ref, anyOf, const, enum, type, properties, required, items, minimum,
maximum, maxLength): mostly schema-valid values, with some sizes as unit strings, mixed with hostile
values (NaN, infinities, 10^400, booleans for numbers, strings for booleans, deep lists, control
characters, unknown keys) at any key. `log_texts()` mixes real evidence lines with junk;
`size_values()` the size parser's inputs.
"""
from __future__ import annotations

import json
from importlib.resources import files

from hypothesis import strategies as st

_HOSTILE = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")), st.just(10**400), st.just(-(10**30)),
    st.booleans(), st.none(), st.just("false"), st.just(""), st.just("-5GB"), st.just("1" + " " * 2000 + "!"),
    st.just([]), st.just({}), st.just([[[[[]]]]]), st.text(max_size=30), st.integers(), st.floats(),
    st.just("\x00\x01\x1b[31m"), st.just("x" * 5000),
)
_SIZES = st.one_of(
    st.floats(min_value=0.5, max_value=2048, allow_nan=False),
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 4096), st.sampled_from(["GB", "GiB", " GB", "TB", "MiB", "g", ""])),
)


def plan_schema() -> dict:
    return json.loads(files("memfit.schemas").joinpath("plan.schema.json").read_text(encoding="utf-8"))


def _from(node: dict, defs: dict, depth: int = 0) -> st.SearchStrategy:
    if "$ref" in node:
        return _from(defs[node["$ref"].rsplit("/", 1)[-1]], defs, depth + 1)
    if "anyOf" in node:
        return st.one_of(*[_from(n, defs, depth) for n in node["anyOf"]])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        required = set(node.get("required", ()))
        props = {k: _from(v, defs, depth + 1) for k, v in node["properties"].items()}
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "object":
        return st.dictionaries(st.sampled_from(["model_type", "hidden_size", "num_hidden_layers", "vocab_size"]),
                               st.one_of(st.integers(1, 4096), st.sampled_from(["llama", "qwen2", "mixtral"])), max_size=4)
    if kind == "array":
        return st.lists(_from(node.get("items", {"type": "string"}), defs, depth + 1), max_size=3)
    if kind == "integer":
        return st.integers(node.get("minimum", -10), min(node.get("maximum", 10**6), 10**6))
    if kind == "number":
        return st.one_of(_SIZES, st.floats(node.get("minimum", -1e3), node.get("maximum", 1e6),
                                           exclude_max="exclusiveMaximum" in node))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.one_of(_SIZES.filter(lambda s: isinstance(s, str)), st.text(max_size=12))
    return _HOSTILE


def _hostile_everywhere(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Replace some values by hostile ones, and add unknown keys."""
    def mutate(draw_value, junk):
        if isinstance(draw_value, dict):
            return {**{k: (junk if i == len(k) % 3 else v) for i, (k, v) in enumerate(draw_value.items())}}
        return draw_value

    return st.one_of(valid, st.builds(mutate, valid, _HOSTILE),
                     st.builds(lambda d, k, v: {**d, k: v}, valid, st.text(min_size=1, max_size=10), _HOSTILE))


def plan_documents() -> st.SearchStrategy:
    """Plan mappings from the schema, a third of them with hostile values or keys."""
    schema = plan_schema()
    defs = schema.get("$defs", {})
    props = {k: _hostile_everywhere(_from(v, defs)) if k in ("hardware", "training", "policy", "data")
             else _from(v, defs) for k, v in schema["properties"].items() if k not in ("rules", "measured")}
    model = st.sampled_from(["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B"])
    props["model"] = model
    top = st.fixed_dictionaries({"model": model, "hardware": props["hardware"]},
                                optional={k: v for k, v in props.items() if k not in ("model", "hardware")})
    return st.one_of(top, _hostile_everywhere(top))


_EVIDENCE = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
    "79.15 GiB of which 1.00 GiB is free. Including non-PyTorch memory, this process has 78.00 GiB memory in use. "
    "Of the allocated memory 70.00 GiB is allocated by PyTorch, and 6.00 GiB is reserved by PyTorch but unallocated.",
    "[1234.5] Out of memory: Killed process 4242 (python) total-vm:1000kB, anon-rss:2097152kB, file-rss:0kB",
    "[INFO] [utils.py:782:see_memory_usage] MA 1.51 GB         Max_MA 3.27 GB         CA 3.32 GB         Max_CA 3 GB",
    "CPU Virtual Memory:  used = 98.6 GB, percent = 13.3%",
    "index, memory.used [MiB], memory.total [MiB]", "0, 40000 MiB, 81920 MiB", "max memory allocated: 12.5 GB",
    "|       GPU reserved memory   |  12 GiB   |  20 GiB   |", "exitcode  : -9 (pid: 77)", "Killed",
    "zero_config .... stage=3 offload_param=X(device='cpu'", "train_micro_batch_size_per_gpu ... 4",
]


def log_texts() -> st.SearchStrategy:
    """Logs: real evidence lines, cut and spliced, mixed with junk, spaces, \\r and bad bytes."""
    line = st.one_of(st.sampled_from(_EVIDENCE), st.text(max_size=80),
                     st.builds(lambda s, n: s[:n], st.sampled_from(_EVIDENCE), st.integers(0, 200)),
                     st.builds(lambda s, k: s + " " * k, st.sampled_from(_EVIDENCE), st.integers(0, 20_000)),
                     st.just("\r" * 50), st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
    return st.lists(line, max_size=30).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogateescape"))


def size_values() -> st.SearchStrategy:
    """Inputs of parse_size_gib: well-formed sizes, near misses and junk."""
    return st.one_of(_SIZES, _HOSTILE, st.text(max_size=40),
                     st.from_regex(r"\s*-?[0-9]{0,5}(\.[0-9]{0,3})?\s{0,500}[a-zA-Z]{0,4}\s{0,500}[!x]?", fullmatch=True))
