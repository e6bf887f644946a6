"""The terminal answer and the outputs for scripts: bars, colour rules, --explain, --quiet, --out
(every feasible plan; the closest ones marked when nothing fits), progress lines, --version and shell
completion."""
from __future__ import annotations

import io
import json
import math
import os
import pty
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from memfit.cli.main import main

from conftest import EXAMPLES

EXAMPLE = str(EXAMPLES / "qwen32b-one-h100.yaml")
# Llama-3.1-405B on one 24 GiB card with 64 GB of RAM: its bf16 weights alone (~756 GiB) are 30x the GPU.
NOTHING_FITS = ("model: meta-llama/Llama-3.1-405B\nhardware: {gpu: RTX-4090-24GB, gpus_per_node: 1, host_memory: 64GB}\n"
                "training: {seq_len: 2048, global_batch_size: 8}\n")


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def advice_json(capsys, plan=EXAMPLE):
    code, out, _ = run([plan, "--json"], capsys)
    assert code == 0
    return json.loads(out)


def test_table_draws_each_plan_against_capacity(capsys):
    data = advice_json(capsys)
    _, out, _ = run([EXAMPLE], capsys)
    best = data["candidates"][0]
    row = next(line for line in out.splitlines() if line.lstrip().startswith("1  " + best["key"]))
    gpu_bar, host_bar = re.findall(r"[█▏▎▍▌▋▊▉░·│▶]{20}", row)
    # 20 cells span the 96 GiB card: the estimate fills floor(peak / 96 * 20) whole cells; the budget
    # mark belongs at 80% of the card, cell round(0.8 * 20) = 16, unless the error band (drawn over the
    # free cells) reaches past it.
    cap = data["hardware"]["gpu_memory_gib"]
    cells = 20 * best["memory"]["gpu_peak_gib"] / cap
    band_end = 20 * best["memory"]["gpu_band"]["high"] / cap
    assert gpu_bar.count("█") == math.floor(cells)
    assert gpu_bar[16] == ("░" if band_end > 16 else "│"), (gpu_bar, band_end)
    assert host_bar.index("│") == 15  # 75% of 20 cells
    assert f"Why #1 ({best['key']}):" in out


def test_one_line_per_rejected_strategy(capsys):
    data = advice_json(capsys)
    _, out, _ = run([EXAMPLE], capsys)
    section = out.split("Rejected (closest first):")[1].split("\n\n")[0].splitlines()[1:]
    keys = [line.split(": ")[0].removeprefix("  x ") for line in section if line.startswith("  x ")]
    shape = lambda c: (c["method"], c["zero_stage"], c["offload_optimizer"], c["offload_param"],  # noqa: E731
                       c["gradient_checkpointing"])
    by_key = {c["key"]: c for c in data["candidates"]}
    assert keys and len({shape(by_key[k]) for k in keys}) == len(keys)  # one line per strategy
    fits = {shape(c) for c in data["candidates"] if c["feasible"]}
    assert all(not by_key[k]["feasible"] and shape(by_key[k]) not in fits for k in keys)


def test_no_escape_codes_off_a_terminal_and_no_rich_import():
    code = ("import sys; from memfit.cli.main import main; main([%r]); "
            "print('rich' in sys.modules)" % EXAMPLE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "\x1b[" not in proc.stdout and proc.stdout.strip().splitlines()[-1] == "False"


def _on_a_tty(env_extra) -> str:
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", **env_extra}
    env.pop("NO_COLOR", None) if "NO_COLOR" not in env_extra else None
    proc = subprocess.Popen([sys.executable, "-m", "memfit.cli", EXAMPLE], stdout=slave, stderr=subprocess.PIPE,
                            env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    from memfit.cli.bars import echo

    lines = [[("fits", "good"), (" plain", "")]]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    tty, pipe = _Terminal(), io.StringIO()
    echo(lines, tty)
    echo(lines, pipe)
    assert "\x1b[" in tty.getvalue() and pipe.getvalue() == "fits plain\n"
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Terminal()
    echo(lines, tty)
    assert tty.getvalue() == "fits plain\n"


@pytest.mark.slow
def test_colour_on_a_real_terminal_unless_no_color():
    assert "\x1b[" in _on_a_tty({})
    assert "\x1b[" not in _on_a_tty({"NO_COLOR": "1"})


def test_explain_prints_every_fired_rule_with_source(capsys):
    data = advice_json(capsys)
    c = next(c for c in data["candidates"] if not c["feasible"])
    code, out, _ = run([EXAMPLE, "--explain", c["key"]], capsys)
    assert code == 0 and out.startswith(f"{c['key']}: REJECTED")
    assert f"{len(c['explanation'])} rule(s) fired" in out
    for e in c["explanation"]:
        assert e["rule"] in out and e["message"] in out and f"source: {e['source']}" in out
    assert f"{c['memory']['host_peak_gib']:.1f} GiB per node" in out


def test_explain_unknown_key_suggests(capsys):
    # The same strategy with the micro-batch the search chose is the closest key there is.
    (chosen,) = [c["key"] for c in advice_json(capsys)["candidates"] if c["key"].startswith("lora/z0/gc/")]
    code, out, err = run([EXAMPLE, "--explain", "lora/z0/gc/mb9"], capsys)
    assert code == 2 and out == ""
    assert "--explain: no candidate strategy 'lora/z0/gc/mb9'" in err and f"did you mean '{chosen}'" in err


def test_quiet_prints_the_key_or_exits_1(tmp_path, capsys):
    code, out, _ = run([EXAMPLE, "--quiet"], capsys)
    assert code == 0 and out == advice_json(capsys)["candidates"][0]["key"] + "\n"
    plan = tmp_path / "p.yaml"
    plan.write_text(NOTHING_FITS)
    assert run([plan, "-q"], capsys)[:2] == (1, "")


def test_out_writes_every_feasible_plan_or_max_plans(tmp_path, capsys):
    feasible = [c for c in advice_json(capsys)["candidates"] if c["feasible"]]
    assert run([EXAMPLE, "--out", tmp_path / "all"], capsys)[0] == 0
    written = sorted(p.parent.name for p in (tmp_path / "all" / "plans").glob("*/ds_config.json"))
    assert len(written) == len(feasible) > 2  # more than --max-plans 2 below, so the cap is what limits
    assert written[0] == "01-" + feasible[0]["key"].replace("/", "-")
    assert run([EXAMPLE, "--out", tmp_path / "two", "--max-plans", "2"], capsys)[0] == 0
    assert len(list((tmp_path / "two" / "plans").glob("*/ds_config.json"))) == 2


def test_out_when_nothing_fits_writes_the_closest_marked_and_exits_1(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(NOTHING_FITS)
    out_dir = tmp_path / "out"
    code, _, err = run([plan, "--out", out_dir], capsys)
    assert code == 1 and "ERROR nothing fits" in err and "closest" in err
    assert not (out_dir / "ds_config.json").exists() and (out_dir / "advice.json").exists()
    readme = (out_dir / "closest" / "README.md").read_text()
    folders = sorted(p.parent.name for p in (out_dir / "closest").glob("*/ds_config.json"))
    assert len(folders) == 3 and readme.startswith("# These plans do NOT fit")
    assert all(f in readme for f in folders) and readme.count("DOES NOT FIT") == 3


def test_version_and_completion(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"advise (memfit) {version('memfit')}"
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef advise"), ("fish", "complete --no-files")):
        code, out, _ = run(["--completion", shell], capsys)
        assert code == 0 and marker in out and "_ADVISE_COMPLETE" in out, shell


def test_completion_completes_commands_and_options():
    env = {**os.environ, "_ADVISE_COMPLETE": "bash_complete", "COMP_WORDS": "advise plan x.yaml --ex", "COMP_CWORD": "3"}
    proc = subprocess.run([sys.executable, "-m", "memfit.cli"], env=env, capture_output=True, text=True)
    assert "plain,--explain" in proc.stdout


def test_progress_names_each_step_off_a_terminal(tmp_path):
    import io

    from memfit.cli.progress import steps
    from memfit.engine import load_plan
    from memfit.engine.deepspeed.verify import verify
    from memfit.engine.plan.strategy import Strategy

    plan = tmp_path / "p.yaml"
    plan.write_text("model: Qwen/Qwen2.5-0.5B\nhardware: {gpu_memory: 24, host_memory: 64}\n"
                    "training: {precision: fp16, seq_len: 256, global_batch_size: 8}\n")
    strategies = [Strategy(method="full", zero_stage=z, offload_optimizer="none", offload_param="none",
                           gradient_checkpointing=False, micro_batch_size=1) for z in (1, 2)]
    stream = io.StringIO()
    with steps("verify", stream=stream) as progress:  # fp16 is skipped on CPU: no DeepSpeed run here
        verify(load_plan(plan), strategies, {"model_type": "qwen2"}, progress=progress)
    assert stream.getvalue().splitlines() == [f"verify [1/2] {strategies[0].key}", f"verify [2/2] {strategies[1].key}"]


def _probe(tmp_path, capsys, training: str) -> tuple[str, str]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"model: Qwen/Qwen2.5-0.5B\nhardware: {{gpu_memory: 24, host_memory: 64}}\ntraining: {training}\n")
    code, out, err = run(["probe", plan], capsys)
    assert code == 0, err
    return out, err


@pytest.mark.slow
def test_probe_summary_is_its_peak_phases_own_row(tmp_path, capsys):
    # LoRA without checkpointing peaks in backward, before the full model states exist: the case where
    # the summary once quoted the after-step sizes (grads, optimizer) beside a row that had none.
    out, err = _probe(tmp_path, capsys, "{method: lora, seq_len: 1024, micro_batch_size: 2, gradient_checkpointing: false}")
    assert "probe [6/6] traced 4 layers: optimizer" in err  # each step named on stderr
    summary = re.search(r"^peak ([\d.]+) GiB at (\w+): (.*)$", out, re.M)
    assert summary.group(2) == "backward"
    row = re.search(rf"^  {summary.group(2)}: peak ([\d.]+) = (.*)$", out, re.M)
    assert (summary.group(1), summary.group(3)) == row.groups()


@pytest.mark.slow
def test_probe_compares_checkpointed_trace_with_checkpointed_formula(tmp_path, capsys):
    out, _ = _probe(tmp_path, capsys, "{method: full, seq_len: 256, micro_batch_size: 2, gradient_checkpointing: true}")
    traced, formula = map(float, re.search(r"traced ([\d.]+) MiB, formula ([\d.]+) MiB \(both with checkpointing\)",
                                           out).groups())
    # Checkpointing keeps each layer's bf16 input only: s * b * h * 2 bytes = 256 * 2 * 896 * 2 = 0.875 MiB.
    expected = 256 * 2 * 896 * 2 / 2**20
    assert traced == pytest.approx(expected, abs=0.05) and formula == pytest.approx(expected, abs=0.05)


def test_terminal_bar_draws_the_error_band_and_the_budget():
    from memfit.cli.bars import Gauge, bar

    # 50 GiB of 100 in 20 cells: 10 full cells; a 45-60 GiB band covers cells 9-11 (9 is already
    # used), so cells 10 and 11 are band; the 80 GiB budget mark is cell 16.
    cells = "".join(t for t, _ in bar(Gauge(50, 100, 80, 45, 60), 20))
    assert cells == "█" * 10 + "░░" + "····" + "│" + "···"
    assert "░" not in "".join(t for t, _ in bar(Gauge(50, 100, 80), 20))
