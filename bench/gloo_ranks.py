"""What bench/zero_cpu.py and bench/fsdp_cpu.py share: spawning 1 or 2 gloo ranks on 127.0.0.1 and
collecting what each puts on its queue, and the command line that runs named cases."""
from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any, Callable


def spawn_ranks(name: str, target: Callable[..., None], world: int, extra: tuple, timeout: float) -> list[dict]:
    """Run target(rank, world, port, *extra, queue) in `world` spawned processes; their results.

    Raises:
        RuntimeError: a rank failed (its exit code is named).
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, port, *extra, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = [q.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=120)
        if p.exitcode not in (0, None):
            raise RuntimeError(f"{name}: a rank exited with {p.exitcode}")
    return results


def cases_main(doc: str, models: dict, runs: dict, run_case: Callable[[str, str], dict],
               render: Callable[[list[dict]], str], argv: Any = None) -> int:
    """`--model`, `--runs`, `--json`: run each named case, print the table, optionally write the rows."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", choices=sorted(models), default="small")
    ap.add_argument("--runs", nargs="*", default=list(runs))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = []
    for name in args.runs:
        rows.append(run_case(name, args.model))
        print(f"done {name}: losses {rows[-1]['losses']}", file=sys.stderr, flush=True)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
