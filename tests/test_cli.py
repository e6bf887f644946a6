"""The CLI end to end: exit codes, messages naming file and key, no tracebacks, atomic outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memfit.cli.main import main

from conftest import EXAMPLES, ROOT

EXAMPLE = str(EXAMPLES / "qwen32b-one-h100.yaml")


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_table(capsys):
    code, out, err = run([EXAMPLE], capsys)
    assert code == 0, err
    assert "Recommended:" in out and "Rejected (closest first):" in out


def test_json_is_valid_against_schema(capsys):
    import jsonschema

    code, out, _ = run([EXAMPLE, "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    schema = json.loads((ROOT / "schemas" / "advice.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert data["model"]["total_params"] == 32_763_876_352  # sources.md §4 meta-device count


BAD = [
    ("hardware:\n  gpu_memory: -8\n  host_memry: 3\nmodel: x\n",
     ["plan.yaml: hardware.gpu_memory: must be > 0 (got -8)", "hardware.host_memry: unknown key; did you mean 'host_memory'?"]),
    ("model: [unclosed\n", ["plan.yaml: not valid YAML"]),
    ("model: not/a-model\nhardware: {gpu_memory: 80, host_memory: 100}\n", ["not/a-model", "catalogue"]),
    ("model: {hidden_size: 8}\nhardware: {gpu_memory: 80, host_memory: 100}\n", ["model: an inline model mapping needs model_type"]),
]


@pytest.mark.parametrize("text, messages", BAD)
def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys, text, messages):
    f = tmp_path / "plan.yaml"
    f.write_text(text)
    code, out, err = run([str(f)], capsys)
    assert code == 2
    assert "Traceback" not in err and out == ""
    for m in messages:
        assert m in err
    assert all(line.startswith("ERROR ") for line in err.strip().splitlines())


def test_missing_plan_file(capsys, tmp_path):
    code, _, err = run([str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and "absent.yaml: cannot read the plan" in err


def test_estimate_needs_a_pinned_strategy(capsys):
    code, _, err = run(["estimate", EXAMPLE], capsys)
    assert code == 2
    assert "training.method: is 'auto'" in err and "training.zero_stage: is 'auto'" in err


def test_out_dir_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = run([EXAMPLE, "--out", str(out_dir)], capsys)
    assert code == 0, err
    cfg = json.loads((out_dir / "ds_config.json").read_text())
    assert "auto" not in json.dumps(cfg)  # concrete flavor, for plain `deepspeed`
    assert '"auto"' in (out_dir / "ds_config.hf.json").read_text()  # HF flavor: the Trainer fills these
    before = (out_dir / "advice.json").read_text()
    code, _, err = run([EXAMPLE, "--out", str(out_dir)], capsys)
    assert code == 2 and "exists; use --force" in err
    assert (out_dir / "advice.json").read_text() == before  # nothing half-written
    assert run([EXAMPLE, "--out", str(out_dir), "--force"], capsys)[0] == 0
    # no temporary files or staging folders left; the manifest lists what memfit wrote
    assert [p.name for p in out_dir.rglob(".*") if p.is_file()] == [".memfit-files.json"]
    assert not list(out_dir.parent.glob(".out.staging-*"))


def test_console_script_entry_point():
    # The installed `advise` entry point, in a fresh process (as a user runs it).
    proc = subprocess.run([sys.executable, "-m", "memfit.cli", EXAMPLE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Recommended:" in proc.stdout


def test_cold_path_does_not_import_heavy_frameworks():
    code = ("import sys; from memfit.cli.main import main; main([%r]); "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules))" % EXAMPLE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
