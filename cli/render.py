"""Plain-text renderers for the terminal. Pure functions: result in, text out."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .bars import BAND, FULL, MARK, Gauge, Line, bar, gauge_of, plain

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.advice.results import Advice, CandidateResult, EstimateResult, HardwareSummary
    from engine.core.findings import CheckResult
    from engine.evidence.record import LogRecord
    from engine.integrations.common import ForeignRead
    from engine.integrations.foreign import OwnVerdict
    from engine.probe.report import ProbeReport
    from engine.review.run import ReviewReport


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table (used by `advise history`)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _num(gib: float) -> str:
    """GiB with one decimal below 100, none above (the precision an estimate can honestly claim)."""
    return f"{gib:.1f}" if gib < 100 else f"{gib:.0f}"


def _gauge_cells(g: Gauge, width: int) -> Line:
    cells = bar(g, width)
    return cells + [(f" {_num(g.used_gib):>5}", "ok" if g.fits else "over")]


def _header(advice: Advice) -> list[Line]:
    m, hw = advice.model, advice.hardware
    extra = f" + {m.frozen_extra_params / 1e9:.2f}B frozen (vision tower)" if m.frozen_extra_params else ""
    lines = [f"model     {m.name}: {m.total_params / 1e9:.2f}B params{extra} ({m.model_type}, {m.num_layers} layers, "
             f"largest module {m.largest_layer_params / 1e6:.0f}M)",
             f"hardware  {hw.nodes} node(s) x {hw.gpus_per_node} GPU(s) of {hw.gpu_memory_gib:.1f} GiB, "
             f"host {hw.host_memory_gib:.1f} GiB per node" + (f", NVMe {hw.nvme_gib:.0f} GiB" if hw.nvme_gib else ""),
             "          " + "; ".join(hw.readings),
             f"rules     {advice.rules_loaded} rules, evaluated by {advice.evaluator}"]
    lines += [f"measured  {line}" for line in advice.measured]
    return [[(t, "dim")] for t in lines] + [[]]


def _legend(hw: HardwareSummary, width: int) -> list[Line]:
    return [[(f"bars: GPU per device of {_num(hw.gpu_memory_gib)} GiB, host per node of "
              f"{_num(hw.host_memory_gib)} GiB; {FULL} estimate, {BAND} error band, {MARK} budget "
              f"(capacity minus the policy's {hw.gpu_headroom:.0%} / {hw.host_headroom:.0%} headroom)", "dim")]]


def _plan_lines(c: CandidateResult, hw: HardwareSummary, key_width: int, width: int = 20) -> list[Line]:
    """One feasible or closest plan: its table row (rank, key, batch, score, GPU bar, host bar).

    Further per-plan lines (e.g. settings) are appended to the returned list, indented under the key.
    """
    batch = f"{c.micro_batch_size}x{c.gradient_accumulation_steps}"
    row: Line = [(f"{c.rank if c.feasible else '-':>3}  ", ""), (c.key.ljust(key_width), "key" if c.rank == 1 else ""),
                 (f"  {batch:>8}  {c.score:>+5g}   ", "")]
    row += _gauge_cells(gauge_of(c, "gpu", hw), width) + [("   ", "")]
    row += _gauge_cells(gauge_of(c, "host", hw), width)
    return [row]


def _ranked(feasible: Sequence[CandidateResult], hw: HardwareSummary, title: str = "Fits (best first):") -> list[Line]:
    key_width = max(len("strategy"), *(len(c.key) for c in feasible))
    width = 20
    head = (f"{'#':>3}  {'strategy'.ljust(key_width)}  {'mb x acc':>8}  {'score':>5}   "
            f"{'GPU GiB'.ljust(width + 6)}   host GiB")
    lines: list[Line] = [[(title, "head")], [(head, "dim")]]
    for c in feasible:
        lines += _plan_lines(c, hw, key_width, width)
    return lines + _legend(hw, width)



def _terms(part: Mapping[str, float]) -> str:
    # A term that prints as 0.0 tells the reader nothing (a few MiB of dataloader pages, empty ZeRO
    # buffers): shown only from 0.05 GiB; --json keeps every term.
    return ", ".join(f"{k.removesuffix('_gib')} {v:.1f}" for k, v in part.items() if round(v, 1))

def _why(c: CandidateResult) -> list[Line]:
    lines: list[Line] = [[(f"Why #{c.rank} ({c.key}):", "head")]]
    for e in c.explanation:
        sign = f"{e.score:+g}" if e.score else e.effect
        style = "good" if e.score > 0 else "warn" if e.score < 0 else ""
        lines.append([("  ", ""), (f"[{sign}]", style), (f" {e.rule}: {e.message}", "")])
        if e.advice:
            lines.append([(f"        advice: {e.advice}", "")])
    b = c.memory.breakdown
    lines.append([("  GPU breakdown (GiB): " + _terms(b["gpu"]), "")])
    lines.append([("  host breakdown (GiB): " + _terms(b["host"]), "")])
    if "allocator" in b:  # reserved (what ends a run) vs allocated (what torch.cuda.max_memory_allocated shows)
        a = b["allocator"]
        lines.append([(f"  GPU allocator (GiB): allocated {a['allocated_gib']:.1f}, reserved {a['reserved_gib']:.1f}", "")])
    return lines + [[(f"  note: {n}", "dim")] for n in c.notes]


def _shape(c: CandidateResult) -> tuple[str, int, str, str, bool]:
    return (c.method, c.zero_stage, c.offload_optimizer, c.offload_param, c.gradient_checkpointing)


def rejected_lines(rejected: Iterable[CandidateResult], feasible: Iterable[CandidateResult] = (),
                   limit: int = 12) -> list[Line]:
    """One line per rejected strategy (method, ZeRO stage, offload, checkpointing) and why not.

    Each strategy is shown by its closest variant; one that fits at another micro-batch or pinning is
    not a rejected strategy and is left out.
    """
    seen = {_shape(c) for c in feasible}
    lines: list[Line] = []
    for c in rejected:
        if _shape(c) in seen:
            continue
        seen.add(_shape(c))
        reasons = c.rejected_because or ["rejected by the policy"]
        more = f" (+{len(reasons) - 1} more: --explain {c.key})" if len(reasons) > 1 else ""
        lines.append([("  x ", "bad"), (c.key, "key"), (f": {reasons[0]}{more}", "")])
    shown = lines[:limit]
    if len(lines) > limit:
        shown.append([(f"  ... {len(lines) - limit} more rejected strategies (--json lists every candidate)", "dim")])
    return shown


def _settings(shown: Sequence[CandidateResult]) -> list[Line]:
    """The knobs the rules set, per plan shown, with where each acts (memfit.engine.policy.knobs)."""
    from memfit.engine.policy.knobs import describe

    lines = [[(f"  #{c.rank} {c.key}: {describe(k, v)}", "")] for c in shown for k, v in c.settings.items()]
    return [[("Settings the rules set:", "head")], *lines, []] if lines else []


def _launch_line(c: CandidateResult) -> str:
    return c.launch.get("deepspeed") or c.launch.get("accelerate", "")


def advice_lines(advice: Advice, launch: str | None = None, tool_optimizer: bool = False) -> list[Line]:
    """The answer as styled lines: header, summary, ranked table with bars, reasons, rejections.

    `launch` replaces the top plan's launch line (a foreign config's own tool); `tool_optimizer`: the
    DeepSpeed JSON written has no optimizer block (the tool builds its own), so notes about DeepSpeed's
    own optimizer do not apply.
    """
    feasible = [c for c in advice.candidates if c.feasible][:8]
    rejected = [c for c in advice.candidates if not c.feasible]
    lines = _header(advice) + [[(advice.summary, "head")], []]
    if feasible:
        why = [line for line in _why(feasible[0])
               if not (tool_optimizer and any("DeepSpeed swaps AdamW" in text for text, _ in line))]
        lines += _ranked(feasible, advice.hardware) + [[]] + _settings(feasible) + why
    elif rejected:
        lines += _ranked(rejected[:3], advice.hardware, "Closest (none fits):")
    if rejected:
        lines += [[], [("Rejected (closest first):", "head")]] + rejected_lines(rejected, [c for c in advice.candidates if c.feasible])
    if advice.what_it_would_take:
        lines += [[], [("What it would take:", "head")]] + [[(f"  {t}", "")] for t in advice.what_it_would_take]
    if launch:
        lines += [[], [("Launch:", "head")], [(f"  {launch}", "")]]
    elif feasible and feasible[0].launch:
        lines += [[], [("Launch:", "head")], [(f"  {_launch_line(feasible[0])}", "")]]
    return lines


def advice_text(advice: Advice, launch: str | None = None, tool_optimizer: bool = False) -> str:
    """The ranked table with bars, the top plan's reasons and one line per rejected strategy."""
    return plain(advice_lines(advice, launch, tool_optimizer))


def estimate_text(r: EstimateResult) -> str:
    s = r.strategy
    lines = [f"model     {r.model.name}: {r.model.total_params / 1e9:.2f}B params, "
             f"{r.model.trainable_params / 1e9:.3f}B trainable",
             f"strategy  {s['method']} ZeRO-{s['zero_stage']} offload opt={s['offload_optimizer']} "
             f"param={s['offload_param']} ckpt={_yn(s['gradient_checkpointing'])} micro-batch {s['micro_batch_size']}",
             f"GPU       {r.gpu_peak_gib:.2f} GiB peak ({r.gpu_peak_phase}) of {r.gpu_capacity_gib:.1f}: "
             f"{'fits' if r.gpu_fits else 'DOES NOT FIT'}",
             f"host      {r.host_peak_gib:.1f} GiB peak per node ({r.host_peak_phase}) of {r.host_capacity_gib:.1f}: "
             f"{'fits' if r.host_fits else 'DOES NOT FIT'}"]
    if r.gpu_band:
        b = r.gpu_band
        lines.insert(3, f"          error band {b.low:.2f} to {b.high:.2f} GiB (10th-90th percentile of "
                        f"{b.n} calibration cases, pool {b.pool})")
    if r.nvme_gib:
        lines.append(f"NVMe      {r.nvme_gib:.0f} GiB per node: {'fits' if r.nvme_fits else 'DOES NOT FIT'}")
    for side in ("gpu", "host"):
        lines.append(f"  {side}: " + ", ".join(f"{k.removesuffix('_gib')} {v:.2f}" for k, v in r.breakdown[side].items() if v))
    if "allocator" in r.breakdown:
        a = r.breakdown["allocator"]
        lines.append(f"  allocator: allocated {a['allocated_gib']:.2f}, reserved {a['reserved_gib']:.2f} (the fit uses reserved)")
    lines.append(f"largest micro-batch no reject rule forbids: {r.max_micro_batch_size or 'none'}; "
                 f"longest sequence: {r.max_seq_len or 'none'}")
    if r.deepspeed_estimate:
        d = r.deepspeed_estimate
        lines.append(f"DeepSpeed's estimator (model states only): GPU {d['gpu_gib']:.2f} GiB, host {d['host_gib']:.1f} GiB")
    return "\n".join(lines)


def facts_text(per_file: Mapping[str, Sequence[LogRecord]]) -> str:
    """One line per piece of evidence, grouped by file; 'no memory evidence' for empty files."""
    lines = []
    for path, facts in per_file.items():
        if not facts:
            lines.append(f"{path}: no memory evidence")
            continue
        for f in facts:
            numbers = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in f.model_dump(exclude_none=True).items()
                                if k not in ("kind", "source", "line"))
            lines.append(f"{f.source}: {f.kind}: {numbers}")
    return "\n".join(lines)


def check_text(r: CheckResult) -> str:
    """Findings of `advise check`, errors first, then the fit verdict when a plan was given."""
    lines = [f"{f['severity'].upper():7} {f['key']}: {f['message']}" for f in r.findings] or ["no findings"]
    if r.rules:
        lines.append(f"rules   {r.rules}")
    if r.strategy:
        lines += [f"assumed {a}" for a in r.assumptions]
        lines.append(f"strategy {r.strategy}: GPU {r.gpu_peak_gib:.1f} GiB of a {r.gpu_budget_gib:.1f} GiB budget "
                     f"({'fits' if r.gpu_fits else 'DOES NOT FIT'}), host {r.host_peak_gib:.0f} GiB of "
                     f"{r.host_budget_gib:.0f} per node ({'fits' if r.host_fits else 'DOES NOT FIT'}); budgets are "
                     "capacity minus the plan's headroom")
        lines.append(f"verdict rejected by {', '.join(r.rejected_by)}" if r.rejected_by
                     else "verdict passes every reject rule of the plan's rule base")
    return "\n".join(lines)


def probe_text(report: ProbeReport) -> str:
    """Probe peaks by phase and category, in GiB, with the analytic per-layer term beside the traced one.

    The summary line is the peak phase's own row (what was live at that moment), so it always agrees
    with the table below it; the model states' sizes after the step are a separate line.
    """
    gib, r = 2**30, report.result
    at_peak = r.by_phase[r.peak_phase]
    ckpt = "with" if report.gradient_checkpointing else "without"
    lines = [f"traced one {report.method} step of {report.model} (seq {report.seq_len}, micro-batch "
             f"{report.micro_batch}, {ckpt} checkpointing) in {r.seconds:.1f} s",
             f"peak {r.peak_bytes / gib:.2f} GiB at {r.peak_phase}: " + _phase_parts(at_peak),
             f"model states after the step: params {r.params_bytes / gib:.2f}, grads {r.grads_bytes / gib:.2f}, "
             f"optimizer {r.optimizer_bytes / gib:.2f} GiB",
             f"activations stored per layer: traced {r.activation_bytes_per_layer / 2**20:.1f} MiB, "
             f"formula {report.formula_layer_bytes / 2**20:.1f} MiB (both {ckpt} checkpointing)",
             f"logits and loss {r.logits_loss_bytes / gib:.2f} GiB; activation peak {r.activation_peak_bytes / gib:.2f} GiB"]
    if report.compiled_traced_layer_bytes is not None and report.compiled_formula_layer_bytes is not None:
        lines.append(f"compiled (training.compile, inductor's partition): stored per layer traced "
                     f"{report.compiled_traced_layer_bytes / 2**20:.1f} MiB, formula "
                     f"{report.compiled_formula_layer_bytes / 2**20:.1f} MiB; the step above is traced eager")
    lines.append("by phase, live at each phase's peak (GiB):")
    for phase, values in r.by_phase.items():
        lines.append(f"  {phase}: peak {values['peak'] / gib:.2f} = " + _phase_parts(values))
    if r.extrapolated_from_layers:
        a, b = r.extrapolated_from_layers
        lines.append(f"traced {a} and {b} layers and extrapolated to {report.num_layers} by layer count")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def _phase_parts(row: Mapping[str, float]) -> str:
    gib = 2**30
    return ", ".join(f"{k} {row[k] / gib:.2f}" for k in ("params", "grads", "optimizer", "activations"))


def review_text(r: ReviewReport) -> str:
    """One line per property, then each violation with its rules and counterexample files."""
    lines = [f"{r.rules_loaded} rules, evaluated by {r.evaluator}; examples {r.examples.passed} passed, "
             f"{r.examples.failed} failed ({r.seconds:.1f} s)"]
    for p in r.properties:
        lines.append(f"{'PASS' if p.passed else 'FAIL'}  {p.name} ({p.examples} examples)")
        lines += [f"  info: {n}" for n in p.notes]
    for v in r.violations:
        lines.append(f"  violation [{v.property}] {v.message}" + (f" (rules: {', '.join(v.rules)})" if v.rules else ""))
        lines += [f"      counterexample: {f}" for f in v.files]
    lines.append("review passed" if r.passed else f"review FAILED: {len(r.violations)} violation(s); plans under {r.out_dir}")
    return "\n".join(lines)


def foreign_text(read: ForeignRead, own: OwnVerdict) -> str:
    """What a foreign config was read as, every assumption, every warning, and its own verdict."""
    article = "an" if read.tool[0].lower() in "aeiou" else "a"
    lines = [f"read      {read.source} as {article} {read.tool} (rules: {read.rules})"]
    lines += [f"  - {note}" for note in read.notes]
    lines += [f"warning   {w}" for w in read.warnings]
    verdict = "fits" if own.fits else "DOES NOT FIT"
    lines.append(f"your config  {own.key}: GPU {own.gpu_peak_gib:.1f} GiB (budget {own.gpu_budget_gib:.1f}), "
                 f"host {own.host_peak_gib:.0f} GiB (budget {own.host_budget_gib:.0f}) after the plan's "
                 f"headroom: {verdict}")
    return "\n".join(lines) + "\n"
