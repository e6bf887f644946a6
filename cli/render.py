"""Plain-text renderers for the terminal. Pure functions: result in, text out."""
from __future__ import annotations

from typing import Sequence


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _offload(c) -> str:
    parts = []
    if c.offload_optimizer != "none":
        parts.append(f"opt:{c.offload_optimizer}")
    if c.offload_param != "none":
        parts.append(f"param:{c.offload_param}")
    if parts and not c.pin_memory:
        parts.append("unpinned")
    if c.zero_stage == 3 and not c.gather_16bit_on_save:
        parts.append("no-16bit-save")
    return ",".join(parts) or "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def advice_text(advice, show: int = 8, show_rejected: int = 6, launch: str | None = None,
                tool_optimizer: bool = False) -> str:
    """The ranked table with the reason for every choice and rejection.

    `launch` replaces the deepspeed line; `tool_optimizer`: the DeepSpeed JSON written has no optimizer
    block (the tool builds its own), so notes about DeepSpeed's own optimizer do not apply.
    """
    m, hw = advice.model, advice.hardware
    head = [f"model     {m.name}: {m.total_params / 1e9:.2f}B params ({m.model_type}, {m.num_layers} layers, "
            f"largest module {m.largest_layer_params / 1e6:.0f}M)",
            f"hardware  {hw.nodes} node(s) x {hw.gpus_per_node} GPU(s) of {hw.gpu_memory_gib:.1f} GiB, "
            f"host {hw.host_memory_gib:.1f} GiB per node" + (f", NVMe {hw.nvme_gib:.0f} GiB" if hw.nvme_gib else ""),
            "          " + "; ".join(hw.readings),
            f"rules     {advice.rules_loaded} rules, evaluated by {advice.evaluator}"]
    head += [f"measured  {line}" for line in advice.measured] + [""]
    feasible = [c for c in advice.candidates if c.feasible][:show]
    rejected = [c for c in advice.candidates if not c.feasible][:show_rejected]
    headers = ["#", "method", "zero", "offload", "ckpt", "micro", "accum", "GPU GiB", "host GiB", "score"]

    def row(c):
        return [str(c.rank), c.method, str(c.zero_stage), _offload(c), _yn(c.gradient_checkpointing),
                str(c.micro_batch_size), str(c.gradient_accumulation_steps), f"{c.memory.gpu_peak_gib:.1f}",
                f"{c.memory.host_peak_gib:.0f}", f"{c.score:+g}"]

    body = [advice.summary, ""]
    if feasible:
        body += ["Fits (best first):", _table(headers, [row(c) for c in feasible]), ""]
        body += _settings(feasible)
        body += [line for line in _why(feasible[0])
                 if not (tool_optimizer and "DeepSpeed swaps AdamW" in line)]
    if rejected:
        body += ["", "Rejected (closest first):"]
        for c in rejected:
            body.append(f"  {c.key}: GPU {c.memory.gpu_peak_gib:.1f} GiB, host {c.memory.host_peak_gib:.0f} GiB")
            body += [f"      - {reason}" for reason in c.rejected_because]
    if advice.what_it_would_take:
        body += ["", "What it would take:"] + [f"  {line}" for line in advice.what_it_would_take]
    if launch:
        body += ["", "Launch:", f"  {launch}"]
    elif feasible and feasible[0].launch:
        body += ["", "Launch:", f"  {feasible[0].launch.get('deepspeed', '')}"]
    return "\n".join(head + body)


def _settings(shown) -> list[str]:
    """The knobs the rules set, per plan shown, with where each acts (memfit.engine.policy.knobs)."""
    from memfit.engine.policy.knobs import describe

    lines = [f"  #{c.rank} {c.key}: {describe(k, v)}" for c in shown for k, v in c.settings.items()]
    return ["Settings the rules set:", *lines, ""] if lines else []


def _why(c) -> list[str]:
    lines = [f"Why #{c.rank} ({c.key}):"]
    for e in c.explanation:
        sign = f"{e.score:+g}" if e.score else e.effect
        lines.append(f"  [{sign}] {e.rule}: {e.message}")
        if e.advice:
            lines.append(f"        advice: {e.advice}")
    b = c.memory.breakdown
    lines.append("  GPU breakdown (GiB): " + ", ".join(f"{k.removesuffix('_gib')} {v:.1f}" for k, v in b["gpu"].items() if v))
    lines.append("  host breakdown (GiB): " + ", ".join(f"{k.removesuffix('_gib')} {v:.1f}" for k, v in b["host"].items() if v))
    lines += [f"  note: {n}" for n in c.notes]
    return lines


def estimate_text(r) -> str:
    s = r.strategy
    lines = [f"model     {r.model.name}: {r.model.total_params / 1e9:.2f}B params, "
             f"{r.model.trainable_params / 1e9:.3f}B trainable",
             f"strategy  {s['method']} ZeRO-{s['zero_stage']} offload opt={s['offload_optimizer']} "
             f"param={s['offload_param']} ckpt={_yn(s['gradient_checkpointing'])} micro-batch {s['micro_batch_size']}",
             f"GPU       {r.gpu_peak_gib:.2f} GiB peak ({r.gpu_peak_phase}) of {r.gpu_capacity_gib:.1f}: "
             f"{'fits' if r.gpu_fits else 'DOES NOT FIT'}",
             f"host      {r.host_peak_gib:.1f} GiB peak per node ({r.host_peak_phase}) of {r.host_capacity_gib:.1f}: "
             f"{'fits' if r.host_fits else 'DOES NOT FIT'}"]
    if r.nvme_gib:
        lines.append(f"NVMe      {r.nvme_gib:.0f} GiB per node: {'fits' if r.nvme_fits else 'DOES NOT FIT'}")
    for side in ("gpu", "host"):
        lines.append(f"  {side}: " + ", ".join(f"{k.removesuffix('_gib')} {v:.2f}" for k, v in r.breakdown[side].items() if v))
    lines.append(f"largest micro-batch no reject rule forbids: {r.max_micro_batch_size or 'none'}; "
                 f"longest sequence: {r.max_seq_len or 'none'}")
    if r.deepspeed_estimate:
        d = r.deepspeed_estimate
        lines.append(f"DeepSpeed's estimator (model states only): GPU {d['gpu_gib']:.2f} GiB, host {d['host_gib']:.1f} GiB")
    return "\n".join(lines)


def facts_text(per_file) -> str:
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


def check_text(r) -> str:
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


def probe_text(report) -> str:
    """Probe peaks by phase and category, in GiB, with the analytic per-layer term beside the traced one."""
    gib, r = 2**30, report.result
    lines = [f"traced one {report.method} step of {report.model} (seq {report.seq_len}, micro-batch "
             f"{report.micro_batch}) in {r.seconds:.1f} s",
             f"peak {r.peak_bytes / gib:.2f} GiB at {r.peak_phase}: params {r.params_bytes / gib:.2f}, "
             f"grads {r.grads_bytes / gib:.2f}, optimizer {r.optimizer_bytes / gib:.2f} (traced in bf16)",
             f"activations per layer: traced {r.activation_bytes_per_layer / 2**20:.1f} MiB, "
             f"formula {report.formula_layer_bytes / 2**20:.1f} MiB (no checkpointing)",
             f"logits and loss {r.logits_loss_bytes / gib:.2f} GiB; activation peak {r.activation_peak_bytes / gib:.2f} GiB"]
    for phase, values in r.by_phase.items():
        lines.append(f"  {phase}: " + ", ".join(f"{k} {v / gib:.2f}" for k, v in values.items()))
    if r.extrapolated_from_layers:
        a, b = r.extrapolated_from_layers
        lines.append(f"traced {a} and {b} layers and extrapolated to {report.num_layers} by layer count")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def review_text(r) -> str:
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


def foreign_text(read, own) -> str:
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
