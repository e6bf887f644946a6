"""`advise`: the command line. Parses arguments, calls memfit.engine, renders, maps errors to exit codes.

`advise plan.yaml` is shorthand for `advise plan plan.yaml`. Every MemfitError becomes `ERROR ...` lines
on stderr and exit code 2; bad input never shows a traceback.
"""
from __future__ import annotations

import json
import math
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import click

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.plan.schema import Plan

# Set before anything can import transformers: the hub is often unreachable, and an unknown id would
# otherwise spend ~25 s on retries (sources.md §4).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# advise loads no pydantic plugins, and pydantic looks for them in every installed distribution's entry
# points when it builds its first model (pydantic/plugin/_loader.py get_plugins): 0.1-0.2 s of CPU in
# an environment that also holds torch, transformers and deepspeed, on a cold path timed against 0.5 s.
# A value the user set (an empty one turns plugins back on) is kept.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


class _DefaultToPlan(click.Group):
    """Routes `advise FILE ...` to the `plan` command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["plan", *args]
        return super().parse_args(ctx, args)


def _finite_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A positive, finite number of seconds (click's FloatRange lets NaN through: NaN < 0 is False)."""
    if not (isinstance(value, float) and math.isfinite(value) and 0 < value <= 86_400):
        raise click.BadParameter(f"must be a number of seconds > 0 and <= 86400 (got {value})")
    return value


def _dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _print_completion(ctx: click.Context, _param: click.Parameter, shell: str | None) -> None:
    """--completion SHELL: print the script that makes SHELL complete `advise` (click's own)."""
    if not shell or ctx.resilient_parsing:
        return
    from click.shell_completion import get_completion_class

    # The same script `_ADVISE_COMPLETE=<shell>_source advise` prints.
    completion_class = get_completion_class(shell)
    if completion_class is None:  # unreachable through the Choice below; click returns None for unknown shells
        raise click.BadParameter(f"no completion for shell {shell!r}", ctx=ctx, param=_param)
    comp = completion_class(ctx.command, {}, "advise", "_ADVISE_COMPLETE")
    click.echo(comp.source())
    ctx.exit(0)


@click.group(cls=_DefaultToPlan, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", "-V", message="advise (memfit) %(version)s",
                      package_name="memfit", prog_name="advise", help="Print the version and exit.")
@click.option("--completion", type=click.Choice(["bash", "zsh", "fish"]), callback=_print_completion,
              expose_value=False, is_eager=True, metavar="SHELL",
              help="Print the shell completion script for bash, zsh or fish and exit.")
def cli() -> None:
    """memfit: which fine-tuning strategy fits your hardware, with what margin, and what to run.

    \b
    advise plan.yaml [--json] [--out DIR]    rank every strategy, explain each verdict
    advise estimate plan.yaml [--json]       memory of the strategy the plan pins
    advise review [--rules DIR] [--json]     property-test the rule base
    advise record FILE... [--plan PLAN]      add measured runs to the store
    advise history [--json] [--export FILE]  list the measured runs in the store
    """


@cli.command("plan")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--hardware", "hardware", help="HW.yaml with a hardware: mapping (or a plan), or 'detect'; for "
              "configs that do not describe the machine (LLaMA-Factory, axolotl, torchtune).")
@click.option("--deepspeed", "deepspeed", type=click.Path(dir_okay=False),
              help="DeepSpeed JSON to use instead of the one the config names.")
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON (schemas/advice.schema.json).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the top plan's key; exit 1 when nothing fits.")
@click.option("--explain", "explain_key", metavar="KEY", help="Print every rule that fired for the plan KEY, with its numbers and source.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write ds_config.json etc. into DIR (nothing fits: the closest plans under DIR/closest/, exit 1).")
@click.option("--max-plans", type=click.IntRange(min=1), metavar="N", help="Write only the first N feasible plans under DIR/plans/ (default: every one).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), help="Write a self-contained HTML report (charts, explanations, configs) to FILE.")
@click.option("--force", is_flag=True, help="Overwrite existing files in --out and the --report file.")
@click.option("--rules", "rules_dirs", multiple=True, type=click.Path(file_okay=False), help="Extra rule directory (repeatable).")
@click.option("--measured", multiple=True, type=click.Path(dir_okay=False), help="Log of a real run (repeatable).")
@click.option("--backend", type=click.Choice(["auto", "durable", "python"]), default="auto", show_default=True,
              help="Rule evaluator: durable-rules, the plain-Python oracle, or durable-rules where it runs.")
@click.option("--no-history", is_flag=True, help="Ignore the store of recorded runs (MEMFIT_STORE).")
def plan_cmd(plan_file: str, hardware: str | None, deepspeed: str | None, as_json: bool, quiet: bool,
             explain_key: str | None, out_dir: str | None, max_plans: int | None, report_file: str | None,
             force: bool, rules_dirs: tuple[str, ...], measured: tuple[str, ...], backend: str,
             no_history: bool) -> None:
    """Rank candidate strategies for PLAN_FILE: a memfit plan, LLaMA-Factory, axolotl or torchtune config."""
    from memfit.engine import advise
    from memfit.engine.integrations.foreign import detect_format

    if detect_format(plan_file) != "memfit":
        _foreign(plan_file, hardware, deepspeed, as_json, out_dir, force,
                 {"rules_dirs": rules_dirs, "measured": measured, "backend": backend,
                  "history": not no_history})
        return
    if deepspeed:
        raise click.UsageError("--deepspeed goes with a LLaMA-Factory/axolotl config; for a memfit plan use "
                               "`advise check DS.json --plan PLAN`")
    plan = _memfit_plan(plan_file, hardware)
    advice = advise(plan, rules_dirs=rules_dirs, measured=measured, backend=backend, history=not no_history)
    from .outputs import echo_lines, write_out, write_report

    if report_file:
        write_report(report_file, advice, force)
    if as_json:
        click.echo(json.dumps(advice.model_dump(mode="json"), indent=2))
    elif quiet:
        if advice.best:
            click.echo(advice.best.key)
    elif explain_key:
        from .explain import explain_lines

        echo_lines(explain_lines(advice, explain_key))
    else:
        from .render import advice_lines

        echo_lines(advice_lines(advice))
    if out_dir:
        write_out(out_dir, advice, plan, max_plans, force, loud=not (as_json or quiet))
    if quiet and not advice.best:
        raise SystemExit(1)


def _memfit_plan(plan_file: str, hardware: str | None) -> Plan:
    """A memfit plan; --hardware fills (or replaces) its hardware section."""
    from pathlib import Path

    from memfit.engine import load_plan, plan_from_dict
    from memfit.engine.integrations.common import read_hardware, read_mapping

    plan: Plan  # memfit.engine's functions read as Any to mypy (see the note above the TYPE_CHECKING block)
    if hardware is None:
        plan = load_plan(plan_file)
        return plan
    data = read_mapping(plan_file)
    data["hardware"] = read_hardware(hardware, str(plan_file))
    plan = plan_from_dict(data, str(plan_file), Path(plan_file).parent)
    return plan


def _foreign(path: str, hardware: str | None, deepspeed: str | None, as_json: bool, out_dir: str | None, force: bool,
             advise_kw: dict[str, Any]) -> None:
    """Read a foreign config, advise, print what was read and assumed, write it back in its own format."""
    from memfit.engine import advise
    from memfit.engine.advice.files import write_files
    from memfit.engine.integrations import foreign

    from .render import advice_text, foreign_text

    read = foreign.read_foreign(path, hardware, deepspeed)
    plan = foreign.plan_of(read)
    advice = advise(plan, **advise_kw)
    own = foreign.own_verdict(read, plan)
    back = foreign.write_back(read, plan, advice, out_dir or "DIR")
    if out_dir and back.files:
        write_files(out_dir, back.files, force=force)
    if as_json:
        _dump({"format": read.tool, "rules": read.rules, "notes": read.notes, "warnings": read.warnings,
               "your_config": own.__dict__, "written": sorted(back.files) if out_dir else [],
               "launch": back.launch, "write_notes": back.notes, "advice": advice.model_dump(mode="json")})
        return
    click.echo(foreign_text(read, own))
    launch = back.launch if out_dir or not back.launch else f"{back.launch}   (after --out DIR)"
    click.echo(advice_text(advice, launch=launch or foreign.launch_preview(read), tool_optimizer=True))
    for note in back.notes:
        click.echo(f"note: {note}")
    if out_dir and back.files:
        click.echo(f"\nwrote {', '.join(sorted(back.files))} under {out_dir}")


@cli.command("estimate")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
@click.option("--rules", "rules_dirs", multiple=True, type=click.Path(file_okay=False), help="Extra rule directory (repeatable).")
def estimate_cmd(plan_file: str, as_json: bool, rules_dirs: tuple[str, ...]) -> None:
    """Memory of exactly the strategy PLAN_FILE pins (no search)."""
    from memfit.engine import estimate

    from .render import estimate_text

    result = estimate(plan_file, rules_dirs=rules_dirs)
    click.echo(json.dumps(result.model_dump(mode="json"), indent=2) if as_json else estimate_text(result))


@cli.command("review")
@click.option("--rules", "rules_dirs", multiple=True, type=click.Path(file_okay=False), help="Extra rule directory (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-examples", default=25, show_default=True, type=click.IntRange(1, 100_000),
              help="Generated plans per property.")
@click.option("--seed", default=0, show_default=True, help="hypothesis seed: the same seed, rules and memfit give the same report from the command line (as a library, hypothesis also draws constants from the local modules loaded).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where counterexample plans are written.")
def review_cmd(rules_dirs: tuple[str, ...], as_json: bool, max_examples: int, seed: int, out_dir: str | None) -> None:
    """Property-test the rule base: examples, then properties over generated plans; exit 1 on any violation."""
    from memfit.engine.review.run import review

    from .progress import steps
    from .render import review_text

    with steps("review", enabled=not as_json) as progress:
        report = review(rules_dirs, max_examples=max_examples, seed=seed, out_dir=out_dir, progress=progress)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else review_text(report))
    if not report.passed:
        raise SystemExit(1)


@cli.command("facts")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
def facts_cmd(logs: tuple[str, ...], as_json: bool) -> None:
    """Memory evidence in training LOGS (OOMs, DeepSpeed memory lines, nvidia-smi traces), in GiB."""
    from memfit.engine.evidence.logs import parse_log

    from .render import facts_text

    per_file = {path: parse_log(path) for path in logs}
    if as_json:
        _dump({"facts": [f.model_dump(mode="json", exclude_none=True) for fs in per_file.values() for f in fs]})
    else:
        click.echo(facts_text(per_file))


@cli.command("detect")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
@click.option("--nvme-path", type=click.Path(file_okay=False), help="Report free space on this NVMe mount.")
@click.option("--hostfile", type=click.Path(dir_okay=False), help="DeepSpeed hostfile: nodes and slots.")
def detect_cmd(as_json: bool, nvme_path: str | None, hostfile: str | None) -> None:
    """This machine's GPUs, host RAM, cores and NVMe space, as a plan's hardware: section."""
    import yaml

    from memfit.engine.machine.detect import detect_hardware

    found = detect_hardware(nvme_path=nvme_path, hostfile=hostfile)
    if as_json:
        _dump(found.model_dump(mode="json"))
        return
    for note in found.notes:
        click.echo(f"# {note}")
    click.echo(yaml.safe_dump({"hardware": found.to_hardware_dict()}, sort_keys=False).rstrip())


@cli.command("probe")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
def probe_cmd(plan_file: str, as_json: bool) -> None:
    """Trace one real training step on fake tensors (no GPU, no weights) and report its peaks."""
    from memfit.engine import load_plan
    from memfit.engine.probe.report import probe_report

    from .progress import steps
    from .render import probe_text

    plan = load_plan(plan_file)
    with steps("probe", enabled=not as_json) as progress:
        seen = {"total": 1}

        def traced(done: int, total: int, label: str) -> None:
            # The probe reports after each traced phase: shown as the step just finished.
            seen["total"] = total
            progress(done - 1, total, f"traced {label}")

        report = probe_report(plan, progress=traced)
        progress(seen["total"], seen["total"], "done")
    if as_json:
        _dump({**{k: v for k, v in report.result.__dict__.items()},
               "formula_layer_bytes": report.formula_layer_bytes,
               "formula_gradient_checkpointing": report.gradient_checkpointing,
               "compiled_traced_layer_bytes": report.compiled_traced_layer_bytes,
               "compiled_formula_layer_bytes": report.compiled_formula_layer_bytes})
        return
    click.echo(probe_text(report))


@cli.command("check")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="Also check it fits this plan's hardware.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
def check_cmd(config: str, plan_file: str | None, as_json: bool) -> None:
    """Review an existing DeepSpeed CONFIG (JSON) or accelerate FSDP config (YAML): typos, impossible
    combinations, batch arithmetic, fit."""
    from memfit.engine.deepspeed.check import check
    from memfit.engine.fsdp.check import check_accelerate, is_accelerate_yaml

    from .render import check_text

    if is_accelerate_yaml(config):
        result = check_accelerate(config, plan_file)
    elif plan_file:
        from memfit.engine.advice.check_plan import check_against_plan

        result = check_against_plan(config, plan_file)
    else:
        result = check(config)
    click.echo(json.dumps(result.model_dump(), indent=2) if as_json else check_text(result))
    if not result.ok:
        raise SystemExit(1)


@cli.command("verify")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 100), help="How many feasible plans to run.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, callback=_finite_seconds,
              help="Seconds per config (> 0, at most a day).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
def verify_cmd(plan_file: str, top: int, timeout_s: float, as_json: bool) -> None:
    """Run the top plans' DeepSpeed configs for two real steps on a tiny model (CPU, gloo)."""
    from memfit.engine.advice.verify import verify_plan

    from .progress import steps

    with steps("verify", enabled=not as_json) as progress:
        _, results = verify_plan(plan_file, top=top, timeout_s=timeout_s, progress=progress)
    if as_json:
        _dump({"results": [r.model_dump() for r in results]})
    else:
        for r in results:
            state = "SKIP" if r.skipped else ("PASS" if r.passed else "FAIL")
            detail = r.skipped or (f"losses {', '.join(f'{x:.3f}' for x in r.losses)} in {r.seconds:.1f} s"
                                   if r.passed else (r.error or ""))
            click.echo(f"{state}  {r.key}: {detail}")
    if any(not r.passed and not r.skipped for r in results):
        raise SystemExit(1)


@cli.command("llamafactory")
@click.argument("lf_yaml", type=click.Path(dir_okay=False))
@click.option("--hardware", "hardware", required=True, help="A YAML file with a hardware: mapping (or a plan), or 'detect'.")
@click.option("--deepspeed", "deepspeed", type=click.Path(dir_okay=False), help="DeepSpeed JSON to use instead.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write the corrected YAML, ds_config.json, launch.sh.")
@click.option("--force", is_flag=True, help="Overwrite existing files in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
def llamafactory_cmd(lf_yaml: str, hardware: str, deepspeed: str | None, out_dir: str | None, force: bool,
                     as_json: bool) -> None:
    """Same as `advise LF_YAML --hardware HW` (kept for earlier scripts)."""
    _foreign(lf_yaml, hardware, deepspeed, as_json, out_dir, force, {})


@cli.command("record")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="The plan of the run the logs came from.")
@click.option("--json", "as_json", is_flag=True, help="Print what was recorded as JSON.")
def record_cmd(files: tuple[str, ...], plan_file: str | None, as_json: bool) -> None:
    """Add measured runs to the store: record JSON / JSON lines, bench results, or logs (with --plan)."""
    from memfit.engine import load_plan
    from memfit.engine.store.ingest import records_from_file
    from memfit.engine.store.open import open_store

    from .store_render import recorded_text

    plan = load_plan(plan_file) if plan_file else None
    found = [(path, rec) for path in files for rec in records_from_file(path, plan)]  # all checked first
    with open_store() as store:
        results = [(path, rec, store.add(rec)) for path, rec in found]
        url = store.url
    if as_json:
        _dump({"store": url, "records": [{"id": rid, "added": new, "file": path, "strategy_key": rec.strategy_key,
                                          "status": rec.status} for path, rec, (rid, new) in results]})
    else:
        click.echo(recorded_text(results, url))


@cli.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N records.")
@click.option("--export", "export_file", type=click.Path(dir_okay=False),
              help="Write the records as JSON lines to FILE ('-': stdout); `advise record FILE` imports them.")
def history_cmd(as_json: bool, limit: int | None, export_file: str | None) -> None:
    """List the measured runs in the store (MEMFIT_STORE, else the user's data directory)."""
    from memfit.engine.store.open import open_store, store_url

    from .store_render import history_rows, history_text

    store = open_store(create=False)
    stored, url = ([], store_url()) if store is None else (store.records(limit=limit), store.url)
    if store is not None:
        store.close()
    if export_file:
        lines = "".join(json.dumps(s.record.model_dump(mode="json"), sort_keys=True) + "\n" for s in reversed(stored))
        if export_file == "-":
            click.echo(lines, nl=False)
        else:
            with open(export_file, "w", encoding="utf-8") as fh:
                fh.write(lines)
            click.echo(f"wrote {len(stored)} record(s) to {export_file}", err=True)
    elif as_json:
        _dump({"store": url, "records": history_rows(stored)})
    else:
        click.echo(history_text(stored, url))


@contextmanager
def _errors_to_exit_codes() -> Iterator[None]:
    from memfit.engine.core.errors import MemfitError

    try:
        yield
    except MemfitError as exc:
        for line in exc.problems:
            click.echo(f"ERROR {line}", err=True)
        raise SystemExit(exc.exit_code) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (testable without a subprocess)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _errors_to_exit_codes():
            cli.main(args=args, prog_name="advise", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("ERROR interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except KeyboardInterrupt:
        click.echo("ERROR interrupted", err=True)
        return 130
    except Exception as exc:  # a bug of memfit's, not bad input: say so in one line, no traceback
        if os.environ.get("MEMFIT_DEBUG"):
            raise
        click.echo(f"ERROR internal error: {type(exc).__name__}: {exc} (please report it; MEMFIT_DEBUG=1 shows "
                   "the traceback)", err=True)
        return 70
    return 0


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
