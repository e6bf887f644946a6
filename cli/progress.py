"""Progress of long commands (probe, review, verify) on stderr, each step named.

On a terminal: a rich progress bar (rich imported here only). Elsewhere (CI logs, pipes): one plain
line per step, so a 100 s `advise verify` is never silent. Library functions take a
`progress(done, total, label)` callback; this module supplies it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Optional

Callback = Callable[[int, int, str], None]


@contextmanager
def steps(title: str, enabled: bool = True, stream: Optional[IO[str]] = None) -> Iterator[Callback]:
    """A progress callback for `title` ('verify', 'review', 'probe') for the duration of a block.

    Args:
        title: the command's name, shown before each step.
        enabled: False gives a callback that prints nothing (--json, --quiet).
        stream: where progress goes (default stderr).
    """
    stream = stream or sys.stderr
    if not enabled:
        yield lambda done, total, label: None
    elif hasattr(stream, "isatty") and stream.isatty():
        with _rich_steps(title, stream) as callback:
            yield callback
    else:
        yield _plain_steps(title, stream)


def _plain_steps(title: str, stream: IO[str]) -> Callback:
    def callback(done: int, total: int, label: str) -> None:
        if label != "done":
            stream.write(f"{title} [{done + 1}/{total}] {label}\n" if done < total else f"{title}: {label}\n")
            stream.flush()
    return callback


@contextmanager
def _rich_steps(title: str, stream: IO[str]) -> Iterator[Callback]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]{task.fields[title]}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task("", total=None, title=title)

        def callback(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)
        yield callback
