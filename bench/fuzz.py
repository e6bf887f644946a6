"""A longer fuzz run than the suite's: generated plans, logs, sizes and YAML/JSON texts.

The strategies are tests/fuzzing.py's (plans derived from schemas/plan.schema.json). An input
"fails" when it raises anything but a MemfitError / ValueError (sizes), or takes longer than its
bound (5 s a plan, 10 s a log, 0.5 s a size: wall clock on a shared machine, where the backtracking
it guards against took 22 s; 2 s a YAML/JSON text). Each failing input is written to
--out as a file a person can re-run (`advise FILE`, `advise facts FILE`); the run prints a summary
and exits 1 when anything failed. Usage:

    .venv/bin/python bench/fuzz.py [--examples 2000] [--seed 0] [--out bench/fuzz-failures]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzzing import log_texts, plan_documents, size_values  # noqa: E402
from memfit.engine import advise  # noqa: E402
from memfit.engine.core.errors import MemfitError, PlanError  # noqa: E402
from memfit.engine.core.inputs import load_json, load_yaml  # noqa: E402
from memfit.engine.core.units import parse_size_gib  # noqa: E402
from memfit.engine.evidence.logs import parse_log  # noqa: E402
from memfit.engine.plan.load import plan_from_dict  # noqa: E402


class Recorder:
    def __init__(self, out: Path):
        self.out, self.failures, self.counts, self.slowest = out, [], {}, {}

    def check(self, target: str, bound_s: float, call, save) -> None:
        self.counts[target] = self.counts.get(target, 0) + 1
        start = time.perf_counter()
        problem = None
        try:
            call()
        except (MemfitError, ValueError):
            pass
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
            problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        took = time.perf_counter() - start
        self.slowest[target] = max(self.slowest.get(target, 0.0), took)
        if problem is None and took > bound_s:
            problem = f"took {took:.2f} s (bound {bound_s} s)"
        if problem:
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / f"{target}-{len(self.failures):04d}"
            save(path)
            self.failures.append((target, str(path), problem))


def _plan_call(data):
    def call():
        advise(plan_from_dict(data, "fuzz.yaml"), backend="python")
    return call


def _log_call(data: bytes):
    def call():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "f.log").write_bytes(data)
            parse_log(Path(tmp) / "f.log")
    return call


def _size_call(value):
    def call():
        size = parse_size_gib(value)
        if not (math.isfinite(size) and size >= 0):
            raise AssertionError(f"parse_size_gib({value!r}) = {size}")
    return call


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/fuzz-failures"))
    args = ap.parse_args(argv)
    rec = Recorder(args.out)
    opts = settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck),
                    database=None)

    @seed(args.seed)
    @opts
    @given(plan_documents())
    def plans(data):
        rec.check("plan", 5.0, _plan_call(data),
                  lambda p: p.with_suffix(".json").write_text(json.dumps(data, default=repr)))

    @seed(args.seed)
    @opts
    @given(log_texts())
    def logs(data):
        rec.check("log", 10.0, _log_call(data), lambda p: p.with_suffix(".log").write_bytes(data))

    @seed(args.seed)
    @opts
    @given(size_values())
    def sizes(value):
        rec.check("size", 0.5, _size_call(value), lambda p: p.with_suffix(".txt").write_text(repr(value)))

    @seed(args.seed)
    @opts
    @given(st.text(max_size=400))
    def texts(text):
        rec.check("yaml", 2.0, lambda: load_yaml(text, "fuzz.yaml", PlanError),
                  lambda p: p.with_suffix(".yaml").write_text(text))
        rec.check("json", 2.0, lambda: load_json(text, "fuzz.json", PlanError),
                  lambda p: p.with_suffix(".json").write_text(text))

    for run in (plans, logs, sizes, texts):
        run()
    for target, n in rec.counts.items():
        print(f"{target:5s} {n:6d} inputs, slowest {rec.slowest[target]:.3f} s")
    for target, path, problem in rec.failures:
        print(f"FAIL {target} {path}: {problem}")
    print(f"{len(rec.failures)} failure(s)")
    return 1 if rec.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
