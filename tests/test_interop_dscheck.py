"""`advise check` on the DeepSpeed JSONs LLaMA-Factory 0.9.5 and axolotl 0.19.0 ship, and `--plan` verdicts.

The accepted key set is DeepSpeed's own (schemas/deepspeed-keys-<version>.json, generated from the
installed DeepSpeed's config models); the slow tests check it against DeepSpeed itself.
"""
from __future__ import annotations

import json

import pytest

from memfit.cli.main import main
from memfit.engine.deepspeed.accepted import accepted_keys, generate, installed_version
from memfit.engine.deepspeed.check import check_config, load_config

from conftest import EXAMPLES
from upstream import FIXTURES, upstream

SHIPPED = sorted([*(FIXTURES / "llamafactory").glob("*.json"), *(FIXTURES / "axolotl").glob("*.json")])
# axolotl's torch-compile configs set compile.disable / compile.backend, which deepspeed 0.19.8's
# CompileConfig (extra="forbid") refuses: see test_deepspeed_itself_refuses_the_compile_configs.
REFUSED_BY_DEEPSPEED = {"deepspeed_configs__zero1_torch_compile.json", "deepspeed_configs__zero2_torch_compile.json"}


def errors(cfg) -> list[str]:
    return [f"{f.key}: {f.message}" for f in check_config(cfg) if f.severity == "error"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_pass(path):
    found = errors(load_config(path))
    if path.name in REFUSED_BY_DEEPSPEED:
        assert found == [f"compile.{k}: unknown key (deepspeed 0.19.8's config model for 'compile' forbids extra "
                         "keys: DeepSpeed refuses this config)" for k in ("backend", "disable")]
    else:
        assert found == []


def test_deepspeed_field_names_aliases_and_comments_are_accepted():
    # DeepSpeedZeroConfig: max_live_parameters has the alias stage3_max_live_parameters (populate_by_name).
    for key in ("max_live_parameters", "stage3_max_live_parameters", "gather_16bit_weights_on_model_save"):
        assert errors({"zero_optimization": {"stage": 3, key: 10 if "param" in key else True}}) == []
    assert errors({"_comment": "x", "zero_optimization": {"stage": 2, "_note": "y"}}) == []
    autotp = load_config(upstream("llamafactory", "examples/deepspeed/ds_z2_autotp_config.json"))
    assert errors(autotp) == []  # "_comment" and tensor_parallel.autotp_size


def test_strict_checks_stay():
    assert errors({"zero_optimisation": {"stage": 2}}) == \
        ["zero_optimisation: unknown key; did you mean 'zero_optimization'?"]
    assert errors({"zero_optimization": {"stage": 3, "stage3_max_live_parameter": 1}}) == \
        ["zero_optimization.stage3_max_live_parameter: unknown key; did you mean 'stage3_max_live_parameters'?"]
    assert any(e.startswith("gradient_clipping:") for e in errors({"gradient_clipping": "1.0"}))  # wrong type
    removed = errors({"amp": {"enabled": True}})  # deepspeed 0.19.8 _REMOVED_TOP_LEVEL_CONFIG_KEYS
    assert removed and removed[0].startswith("amp: removed in deepspeed 0.19.8, which refuses it:")


def test_sections_deepspeed_does_not_read_are_warned_not_refused():
    found = check_config(load_config(upstream("llamafactory", "examples/deepspeed/ds_z3_fp8_config.json")))
    assert not [f for f in found if f.severity == "error"]
    assert {f.key for f in found if f.severity == "warning"} == {"comms_config", "monitor_config"}


@pytest.mark.slow
def test_stored_key_set_is_what_the_installed_deepspeed_accepts():
    stored = accepted_keys()
    assert stored["deepspeed_version"] == installed_version()
    fresh = generate()  # read from DeepSpeed's models and DeepSpeedConfig now
    assert {k: v for k, v in stored.items() if k != "rules"} == fresh


@pytest.mark.slow
def test_deepspeed_itself_refuses_the_compile_configs():
    from deepspeed.compile.config import CompileConfig
    from pydantic import ValidationError

    for name in sorted(REFUSED_BY_DEEPSPEED):
        block = json.loads((FIXTURES / "axolotl" / name).read_text())["compile"]
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            CompileConfig(**block)


def test_memfits_own_recommended_config_fits_with_its_assumptions_stated(tmp_path, capsys):
    # issue 11: this used to come back as "full/z0/nogc/mb2: 611 GiB DOES NOT FIT".
    plan = EXAMPLES / "qwen32b-one-h100.yaml"
    assert main([str(plan), "--out", str(tmp_path / "out")]) == 0
    best = capsys.readouterr().out.split("Recommended: ")[1].split(" ")[0]
    assert main(["check", str(tmp_path / "out" / "ds_config.json"), "--plan", str(plan)]) == 0
    out = capsys.readouterr().out
    assert f"strategy {best}:" in out and "(fits)" in out and "DOES NOT FIT" not in out
    assert f"assumed method: not in a DeepSpeed config and 'auto' in the plan; taken from memfit's best plan " \
           f"with this ZeRO stage and offload ({best}): {best.split('/')[0]}" in out
    assert "assumed gradient checkpointing:" in out


def test_plan_verdict_uses_the_headroom(tmp_path, capsys):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}}))
    plan = tmp_path / "plan.yaml"

    def verdict(gpu_gib: float) -> tuple[int, dict]:
        plan.write_text(f"model: Qwen/Qwen2.5-0.5B\nhardware: {{gpu_memory: {gpu_gib}, host_memory: 64}}\n"
                        "training: {method: lora, gradient_checkpointing: true, seq_len: 1024}\n"
                        "policy: {gpu_headroom: 0.2}\n")
        code = main(["check", str(cfg), "--plan", str(plan), "--json"])
        return code, json.loads(capsys.readouterr().out)

    _, big = verdict(1000)
    peak = big["gpu_peak_gib"]
    code, tight = verdict(round(peak / 0.9, 2))  # capacity above the peak, capacity x 0.8 below it
    assert tight["gpu_peak_gib"] == peak and tight["gpu_fits"] is False and code == 1
    assert tight["gpu_budget_gib"] == pytest.approx(round(peak / 0.9, 2) * 0.8, abs=0.01)
    assert tight["assumptions"] == []  # the plan pins method and checkpointing; the config the micro-batch


def test_fsdp_configs_get_the_fsdp_message(tmp_path, capsys):
    acc = upstream("llamafactory", "examples/accelerate/fsdp_config.yaml")
    message = "not a DeepSpeed config: this is an accelerate config (distributed_type / fsdp_config); " \
              "review it with `advise check"
    assert main(["check", str(acc)]) == 0  # advise check reads accelerate FSDP configs (engine/fsdp/check.py)
    capsys.readouterr()
    assert main([str(acc)]) == 2
    assert message in capsys.readouterr().err
    lf = upstream("llamafactory", "examples/train_lora/qwen3_lora_sft.yaml")
    hw = tmp_path / "hw.yaml"
    hw.write_text("hardware: {gpu_memory: 80, host_memory: 512}\n")
    assert main([str(lf), "--hardware", str(hw), "--deepspeed", str(acc)]) == 2
    assert message in capsys.readouterr().err
