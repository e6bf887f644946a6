"""Run CLI cases in a child process under an address-space limit and a time bound per case.

Used by tests/test_hostile.py and bench/fuzz.py. The child sets RLIMIT_AS (3 GiB by default), then
runs each case through `memfit.cli.main.main(argv)` (the real CLI, in-process so that the ~0.3 s
start-up is paid once) with SIGALRM as the per-case time bound, and prints one JSON result per case:
exit code (or "timeout"), seconds, stderr tail, and the child's peak RSS so far.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

AS_LIMIT = 3 << 30

_CHILD = r"""
import contextlib, io, json, resource, signal, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from memfit.cli.main import main

class Timeout(BaseException):  # not an Exception: main() maps those to exit 70
    pass

def on_alarm(*_):
    raise Timeout()

signal.signal(signal.SIGALRM, on_alarm)
for line in sys.stdin:
    case = json.loads(line)
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, case["limit_s"])
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(case["argv"])
    except Timeout:
        code = "timeout"
    except MemoryError:
        code = "MemoryError"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result = {"name": case["name"], "code": code, "seconds": round(time.perf_counter() - start, 3),
              "stderr": err.getvalue()[-3000:], "stdout_chars": len(out.getvalue()),
              "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    sys.__stdout__.write(json.dumps(result) + "\n")
    sys.__stdout__.flush()
"""


def run_cases(cases: list[dict], as_limit: int = AS_LIMIT, cwd: str | None = None) -> dict[str, dict]:
    """Run cases ({"name", "argv", "limit_s"}) in one limited child; returns name -> result.

    A case the child could not finish (a hang SIGALRM cannot interrupt, a crash) is missing from the
    result; the caller treats a missing case as a failure.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MEMFIT_DEBUG", None)
    total = sum(c["limit_s"] for c in cases) + 30
    stdin = "".join(json.dumps(c) + "\n" for c in cases)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(as_limit)], input=stdin, capture_output=True,
                              text=True, timeout=total, env=env, cwd=cwd)
        lines = proc.stdout.splitlines()
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        lines = (out.decode() if isinstance(out, bytes) else out).splitlines()
    results = {}
    for line in lines:
        if line.startswith("{"):
            r = json.loads(line)
            results[r["name"]] = r
    return results
