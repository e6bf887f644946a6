"""What `advise plan` writes besides its answer: the HTML report and the --out folder."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, Sequence

import click

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.advice.results import Advice
    from engine.plan.schema import Plan

    from .bars import Line


def echo_lines(lines: Sequence[Line]) -> None:
    """Styled lines to stdout (colour only on a terminal)."""
    from .bars import echo

    echo(lines, sys.stdout)


def write_report(report_file: str, advice: Advice, force: bool) -> None:
    """--report FILE: the HTML page, written atomically; refuses to overwrite without force."""
    from pathlib import Path

    from memfit.engine.advice.files import write_files

    from .report import report_html

    path = Path(report_file)
    write_files(path.parent, {path.name: report_html(advice)}, force=force)
    click.echo(f"wrote report {path}", err=True)


def write_out(out_dir: str, advice: Advice, plan: Plan, max_plans: Optional[int], force: bool, loud: bool) -> None:
    """--out: every feasible plan's files, or (nothing fits) the closest ones marked, and exit 1."""
    from memfit.engine.advice.files import advice_files, write_files

    written = write_files(out_dir, advice_files(advice, plan, max_plans=max_plans), force=force)
    if not advice.best:
        closest = sum(1 for p in written if p.name == "ds_config.json")
        click.echo(f"ERROR nothing fits: wrote advice.json and the {closest} closest plans under "
                   f"{out_dir}/closest/ (marked as NOT fitting); no ds_config.json", err=True)
        raise SystemExit(1)
    if loud:
        click.echo(f"\nwrote {len(written)} file(s) under {out_dir}")
