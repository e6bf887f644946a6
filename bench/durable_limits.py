"""Where durable-rules 2.0.28 stops being usable: measured, each probe in a child process with a timeout.

Run: `.venv/bin/python bench/durable_limits.py [--timeout S]` (default 20 s per probe). Each probe
builds a ruleset straight through durable-rules (no memfit code between), times create_ruleset and one
assert_fact, and prints the outcome: seconds, "TIMEOUT" (create_ruleset spins at 100% CPU and ignores
SIGINT, so the child is killed), or the error durable-rules raised. docs/reference/limits.md quotes
these numbers; engine/policy/limits.py sets the fallback thresholds below them.
Prints, does not assert.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

_CHILD = r"""
import json, sys, time
from durable import engine
class H(engine.Host):
    def _run(self):
        pass
spec = json.loads(sys.argv[1])
kind, n = spec["kind"], spec["n"]
if kind == "in_list":      # one rule: fact in [n string literals]
    rules = {"r": {"all": [{"m": {"$or": [{"x": f"v{i}"} for i in range(n)]}}]}}
    fact = {"x": f"v{n - 1}"}
elif kind == "in_list_num":
    rules = {"r": {"all": [{"m": {"$or": [{"x": i} for i in range(n)]}}]}}
    fact = {"x": n - 1}
elif kind == "rules":      # n rules, one comparison each, none sharing a literal
    rules = {f"r{i}": {"all": [{"m": {"$gt": {"x": i}}}]} for i in range(n)}
    fact = {"x": -1}
elif kind == "firing":     # n rules that all fire on the same fact
    rules = {f"r{i}": {"all": [{"m": {"$gte": {"x": i}}}]} for i in range(n)}
    fact = {"x": n}
elif kind == "leaves3":    # n rules of three comparisons each (3n leaves)
    rules = {f"r{i}": {"all": [{"m": {"$and": [{"$gt": {"x": i}}, {"$gt": {"y": i}}, {"$gt": {"z": i}}]}}]}
             for i in range(n)}
    fact = {"x": -1, "y": -1, "z": -1}
elif kind == "firing_wide":  # n firing rules, and a fact of 50 fields as memfit sends
    rules = {f"r{i}": {"all": [{"m": {"$gte": {f"f{i % 50}": i}}}]} for i in range(n)}
    fact = {f"f{j}": n for j in range(50)}
elif kind == "not_in":     # one rule: fact not in [n literals] ($and of n $neq)
    rules = {"r": {"all": [{"m": {"$and": [{"$neq": {"x": i}} for i in range(n)]}}]}}
    fact = {"x": -1}
elif kind == "or_pair":    # all of two in-lists of n literals each: n*n terms in disjunctive normal form
    rules = {"r": {"all": [{"m": {"$and": [{"$or": [{"x": i} for i in range(n)]},
                                            {"$or": [{"y": i} for i in range(n)]}]}}]}}
    fact = {"x": 0, "y": 0}
elif kind == "dnf":        # all of n pairs any(a, b): 2**n terms in disjunctive normal form
    rules = {"r": {"all": [{"m": {"$and": [{"$or": [{f"a{i}": 1}, {f"b{i}": 1}]} for i in range(n)]}}]}}
    fact = {f"a{i}": 1 for i in range(n)}
elif kind == "exponent":   # a literal whose JSON has an exponent and no fraction
    rules = {"r": {"all": [{"m": {"$gt": {"x": float(spec["lit"])}}}]}}
    fact = {"x": 1.0}
elif kind == "exponent_fact":
    rules = {"r": {"all": [{"m": {"$gt": {"x": 0.5}}}]}}
    fact = {"x": float(spec["lit"])}
fired = []
for name in rules:
    rules[name]["run"] = (lambda rule: lambda c: fired.append(rule))(name)  # one argument: a sync action
h = H()
t0 = time.perf_counter()
h.register_rulesets({"rs": rules})
t1 = time.perf_counter()
try:
    h.assert_fact("rs", {**fact, "sid": "1"})
    err = ""
except Exception as exc:
    err = f"{type(exc).__name__}: {exc}"
t2 = time.perf_counter()
st = h.get_state("rs", "1") if not err else {}
print(json.dumps({"create_s": round(t1 - t0, 4), "assert_s": round(t2 - t1, 4), "fired": len(fired),
                  "error": err or st.get("exception", "")}))
"""

PROBES = ([("in_list", n) for n in (100, 400, 500, 510, 512, 520, 550, 600, 1000)]
          + [("in_list_num", n) for n in (500, 511, 512, 513, 600)]
          + [("rules", n) for n in (100, 400, 500, 510, 511, 512, 513, 520, 600)]
          + [("leaves3", n) for n in (150, 170, 171)]
          + [("not_in", n) for n in (500, 511, 512, 600, 2000)]
          + [("or_pair", n) for n in (16, 22, 23, 32, 64, 200)]
          + [("firing", n) for n in (10, 48, 49, 64, 65, 70, 72, 75, 80, 100)]
          + [("firing_wide", n) for n in (40, 48, 49, 64, 100)]
          + [("dnf", n) for n in (4, 6, 8, 9, 10, 12)])
EXPONENTS = ("1e-05", "1.5e-05", "1e+17", "3e-300", "5e-324")


def probe(spec: dict, timeout: float) -> str:
    """Run one probe in a child process; its outcome as one line."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"TIMEOUT after {timeout:g} s"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"child exit {done.returncode} ({time.perf_counter() - t0:.1f} s): {tail[:160]}"
    return done.stdout.strip()


def main(argv: list[str]) -> None:
    timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 20.0
    for kind, n in PROBES:
        print(f"{kind:<12} n={n:<5} {probe({'kind': kind, 'n': n}, timeout)}", flush=True)
    for lit in EXPONENTS:
        for kind in ("exponent", "exponent_fact"):
            print(f"{kind:<12} {lit:<7} {probe({'kind': kind, 'n': 0, 'lit': lit}, timeout)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
