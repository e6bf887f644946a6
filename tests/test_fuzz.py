"""Bounded fuzzing in the suite: generated plans never crash the advisor, generated logs and sizes
never crash or stall their parsers. A longer run: bench/fuzz.py.

"Never crash" means: an answer, or a MemfitError (exit 2 with a message); any other exception is a
bug of memfit's (exit 70). Time bounds per input follow issue 13 (5 s a plan, 10 s a log); sizes get
0.5 s (wall clock on a shared machine).
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from fuzzing import log_texts, plan_documents, size_values
from memfit.engine import advise
from memfit.engine.core.errors import MemfitError
from memfit.engine.core.units import parse_size_gib
from memfit.engine.evidence.logs import parse_log
from memfit.engine.plan.load import plan_from_dict

_FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@_FAST
@given(plan_documents())
def test_generated_plans_get_an_answer_or_a_message(data):
    start = time.perf_counter()
    try:
        plan = plan_from_dict(data, "fuzz.yaml")
        advice = advise(plan, backend="python")
        assert advice.candidates and advice.summary
    except MemfitError as exc:
        assert exc.problems and all(isinstance(p, str) and 0 < len(p) < 2000 for p in exc.problems)
    assert time.perf_counter() - start < 5


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(log_texts())
def test_generated_logs_parse(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.log"
        path.write_bytes(data)
        start = time.perf_counter()
        facts = parse_log(path)
        assert time.perf_counter() - start < 10
    for f in facts:
        assert f.source.startswith(f"{path}:")
        assert all(math.isfinite(v) for v in f.model_dump().values() if isinstance(v, float))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(size_values())
def test_size_parser_is_total_and_fast(value):
    start = time.perf_counter()
    try:
        size = parse_size_gib(value)
        assert math.isfinite(size) and size >= 0
    except ValueError as exc:
        assert len(str(exc)) < 300
    assert time.perf_counter() - start < 0.5  # wall clock, shared machine; backtracking took 22 s
