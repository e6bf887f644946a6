"""MemfitCallback with a real HF Trainer on a tiny model on the CPU: the preflight verdict before the
first step, the measurement record at the end (host readings real, GPU readings skipped with their
reason), the record written when the run dies of an out-of-memory error, and the store's records
calibrating the preflight."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from memfit.engine.core.errors import PreflightError
from memfit.engine.store.open import open_store

from trainer_helpers import SEQ, tiny_trainer

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

from memfit.engine.integrations.transformers import MemfitCallback, MemfitWarning  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps += 1


def _records():
    with open_store() as store:
        return [s.record for s in store.records()]


def test_a_run_that_fits_leaves_one_record_with_real_host_readings(tmp_path):
    import psutil

    cb = MemfitCallback()
    trainer = tiny_trainer(str(tmp_path), [cb])
    before = psutil.Process().memory_info().rss  # model, data and trainer built: training only adds
    trainer.train()
    assert cb.result.fits, cb.result.message
    [rec] = _records()
    assert rec.status == "ok" and rec.source == "callback" and cb.record_id == 1
    # The plan the callback read: TrainingArguments' batch 2, the data set's 32 tokens, no DeepSpeed.
    assert rec.strategy_key == "full/z0/nogc/mb2" and rec.plan["training"]["seq_len"] == SEQ
    assert rec.plan["model"]["num_hidden_layers"] == 2 and rec.estimate["host_peak_gib"] > 0
    # Host RSS is real: at least the RSS before training, and at most the kernel's own peak RSS of this
    # process (ru_maxrss, KiB) give or take 5 %: Linux folds per-thread RSS counters in lazily.
    assert before * 0.95 <= rec.host_rss_bytes <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 * 1.05
    assert rec.max_memory_allocated is None and rec.nvml_used_bytes is None
    assert any("GPU peaks not recorded: torch.cuda is not available" in n for n in rec.notes)
    assert rec.versions["transformers"] and rec.versions["torch"] and rec.step_seconds > 0


def test_the_preflight_stops_a_run_that_cannot_fit_before_the_first_step(tmp_path):
    # A 0.5 GiB GPU: the CUDA context alone (0.3-2 GiB measured across cards) does not fit there.
    counter = StepCounter()
    cb = MemfitCallback("raise", hardware={"gpu_memory": "0.5GiB", "host_memory": 64})
    trainer = tiny_trainer(str(tmp_path), [counter, cb])
    with pytest.raises(PreflightError, match=r"full/z0/nogc/mb2 does NOT fit: GPU .* against 0\.40 GiB "
                                             r"\(0\.50 GiB less 20% headroom\)") as err:
        trainer.train()
    assert "policy 'raise': stopped before the first step" in str(err.value)
    assert counter.steps == 0 and trainer.state.global_step == 0
    assert _records() == []


def test_policy_warn_warns_and_trains_on(tmp_path):
    counter = StepCounter()
    cb = MemfitCallback("warn", hardware={"gpu_memory": "0.5GiB", "host_memory": 64})
    with pytest.warns(MemfitWarning, match="does NOT fit"):
        tiny_trainer(str(tmp_path), [counter, cb]).train()
    assert counter.steps == 3 and [r.status for r in _records()] == ["ok"]


def test_a_recorded_gpu_peak_calibrates_the_preflight_and_is_cited(tmp_path):
    hardware = {"gpu_memory": 2, "host_memory": 64}
    first = MemfitCallback("warn", hardware=hardware, record=False)
    tiny_trainer(str(tmp_path), [first], steps=1).train()
    assert first.result.fits and first.result.estimate.gpu_peak_gib * 4 > 2 * 0.8  # 4x would not fit
    estimated = first.result.estimate.gpu_peak_gib
    # A run of the same plan measured at 4x memfit's estimate (as a team's real card might show it)
    measured = {**json.loads(first.result.plan.model_dump_json()), "rules": [], "measured": []}
    rec = {"plan": measured, "strategy_key": first.result.strategy.key, "strategy": first.result.strategy.model_dump(),
           "nvml_used_bytes": int(4 * estimated * 2**30), "device_name": "test GPU", "source": "test"}
    from memfit.engine.store.ingest import records_from_file

    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    with open_store() as store:
        store.add(records_from_file(path)[0])
    second = MemfitCallback("warn", hardware=hardware, record=False)
    with pytest.warns(MemfitWarning, match=r"does NOT fit: GPU .*estimate x 4\.00, calibrated by store record #1"):
        tiny_trainer(str(tmp_path), [second], steps=1).train()


OOM_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
from trainer_helpers import tiny_trainer
from memfit.engine.integrations.transformers import MemfitCallback
trainer = tiny_trainer(sys.argv[1], [MemfitCallback()], steps=5)
calls = []
def hog(module, inputs):
    calls.append(1)
    if len(calls) == 2:  # the second step asks the allocator for 256 TiB: a real out-of-memory error
        torch.empty(2**48, dtype=torch.uint8)
trainer.model.register_forward_pre_hook(hog)
trainer.train()
"""


def test_a_run_that_dies_of_oom_leaves_an_oom_record(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", OOM_SCRIPT, str(tmp_path), os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "can't allocate memory" in proc.stderr
    [rec] = _records()
    assert rec.status == "oom" and "can't allocate memory" in rec.error and rec.host_rss_bytes > 0


def test_the_axolotl_plugin_hands_the_trainer_a_callback_with_the_config(tmp_path):
    # axolotl itself is not installed here: the plugin class is exercised as axolotl's PluginManager
    # calls it (add_callbacks_pre_trainer(cfg, model)), then its callback runs in a real Trainer.
    from memfit.engine.integrations.axolotl_plugin import MemfitArgs, MemfitPlugin

    plugin = MemfitPlugin()
    assert plugin.get_input_args() == "memfit.engine.integrations.axolotl_plugin.MemfitArgs"
    MemfitArgs(memfit_policy="raise")
    cfg = {"sequence_len": 64, "memfit_policy": "raise", "memfit_hardware": {"gpu_memory": "0.5GiB", "host_memory": 64}}
    [cb] = plugin.add_callbacks_pre_trainer(cfg, None)
    with pytest.raises(PreflightError, match="does NOT fit"):
        tiny_trainer(str(tmp_path), [cb]).train()
    assert cb.result.plan.training.seq_len == 64


def test_the_llamafactory_launcher_reads_cutoff_len(tmp_path):
    from memfit.engine.integrations.llamafactory_train import cutoff_len

    lf = tmp_path / "lf.yaml"
    lf.write_text("model_name_or_path: x\ncutoff_len: 4096\n")
    assert cutoff_len(["prog", str(lf)]) == 4096
    assert cutoff_len(["prog", str(lf), "cutoff_len=1024"]) == 1024
    lf.write_text("model_name_or_path: x\n")
    assert cutoff_len(["prog", str(lf)]) == 2048  # LLaMA-Factory's DataArguments default


KILLED_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from trainer_helpers import tiny_trainer
from memfit.engine.integrations.transformers import MemfitCallback
trainer = tiny_trainer(sys.argv[1], [MemfitCallback(checkpoint_seconds=0.5)], steps=10_000)
trainer.model.register_forward_pre_hook(lambda module, inputs: time.sleep(0.2))
print("training", flush=True)
trainer.train()
"""


def test_a_run_killed_by_sigkill_leaves_its_last_checkpoint(tmp_path):
    # SIGKILL (what the kernel's OOM killer sends) runs no handler: only what was committed survives.
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(tmp_path), os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    while proc.stdout.readline().strip() != "training":  # (DeepSpeed's import prints to stdout too)
        assert proc.poll() is None, "the training script died before training"
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.step_seconds for r in _records()):
        time.sleep(0.3)  # until a checkpoint after a few steps is in the store
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    [rec] = _records()
    assert rec.status == "incomplete" and "killed" in rec.error and rec.run_id
    assert rec.host_rss_bytes > 0 and rec.step_seconds >= 0.2


def test_the_plan_reads_deepspeed_and_fsdp_from_real_training_arguments():
    # Real TrainingArguments objects (transformers builds HfTrainerDeepSpeedConfig and fsdp_config itself).
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from memfit.engine.integrations.trainer_plan import plan_from_trainer

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
    hw = {"gpu_memory": 80, "host_memory": 64}
    ds = {"train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"},
          "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}
    cases = [
        (dict(deepspeed=ds, bf16=True, per_device_train_batch_size=4), (3, "cpu", "cpu", "bf16", 4)),
        (dict(fsdp=True, fsdp_config={"reshard_after_forward": True, "cpu_offload": True}), (3, "cpu", "cpu", "fp32", 8)),
        (dict(fsdp=True, fsdp_config={"reshard_after_forward": False}), (2, "none", "none", "fp32", 8)),
        (dict(), (0, "none", "none", "fp32", 8)),  # 8: TrainingArguments' default per-device batch
    ]
    for kwargs, (stage, opt, param, precision, batch) in cases:
        args = TrainingArguments(output_dir="/tmp/memfit-unused", report_to="none", use_cpu=True, **kwargs)
        t = plan_from_trainer(args, model, None, hardware=hw, seq_len=128)[0]["training"]
        assert (t["zero_stage"], t["offload_optimizer"], t["offload_param"], t["precision"],
                t["micro_batch_size"]) == (stage, opt, param, precision, batch), kwargs
        # an FSDP run's plan says so (accelerate's default FSDP version is 1), so it is estimated as FSDP
        assert t.get("sharding", "auto") == ("fsdp1" if "fsdp" in kwargs else "auto"), kwargs


def test_the_plan_reads_the_adamw_implementation_from_training_arguments():
    # optim adamw_torch_fused is torch's fused AdamW (no foreach copy of the second moments at the step);
    # adamw_torch runs the foreach path on CUDA (torch/optim/adam.py).
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from memfit.engine.integrations.trainer_plan import plan_from_trainer

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
    for optim, impl in (("adamw_torch_fused", "adamw_fused"), ("adamw_torch", "adamw")):
        args = TrainingArguments(output_dir="/tmp/memfit-unused", report_to="none", use_cpu=True, optim=optim)
        t = plan_from_trainer(args, model, None, hardware={"gpu_memory": 80, "host_memory": 64}, seq_len=128)[0]["training"]
        assert t["optimizer"] == impl
        assert "kbit_upcast" not in t  # full fine-tuning: nothing quantised


def test_the_plan_reads_an_fp32_base_under_autocast_as_load_dtype_fp32():
    # from_pretrained's default dtype is float32: with bf16=True the Trainer autocasts over fp32 frozen
    # weights (memory/autocast.py); a base cast to bf16 is the 16-bit load (load_dtype left to auto).
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from memfit.engine.integrations.trainer_plan import plan_from_trainer

    base = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    hw = {"gpu_memory": 80, "host_memory": 64}
    args = TrainingArguments(output_dir="/tmp/memfit-unused", report_to="none", use_cpu=True, bf16=True)
    plan, _, notes = plan_from_trainer(args, model, None, hardware=hw, seq_len=128)
    assert (plan["training"]["method"], plan["training"]["load_dtype"]) == ("lora", "fp32")
    assert any("load_dtype fp32" in n for n in notes)
    model.to(torch.bfloat16)
    assert "load_dtype" not in plan_from_trainer(args, model, None, hardware=hw, seq_len=128)[0]["training"]
    plain = TrainingArguments(output_dir="/tmp/memfit-unused", report_to="none", use_cpu=True)
    model.to(torch.float32)  # fp32 weights without autocast: precision fp32 says it already
    t = plan_from_trainer(plain, model, None, hardware=hw, seq_len=128)[0]["training"]
    assert (t["precision"], "load_dtype" in t) == ("fp32", False)


def test_preflight_of_an_fsdp_run_estimates_the_fsdp_strategy():
    # fsdp=True with cpu_offload: FSDP1 (accelerate's default version) FULL_SHARD with CPUOffload,
    # TrainingArguments' defaults (batch 8 per device, no checkpointing): the key names exactly that.
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from memfit.engine.integrations.preflight import preflight
    from memfit.engine.integrations.trainer_plan import plan_from_trainer

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
    args = TrainingArguments(output_dir="/tmp/memfit-unused", report_to="none", use_cpu=True, fsdp=True,
                             fsdp_config={"reshard_after_forward": True, "cpu_offload": True})
    plan = plan_from_trainer(args, model, None, hardware={"gpu_memory": 80, "host_memory": 64}, seq_len=128)[0]
    pre = preflight(plan)
    assert pre.strategy.key == "full/fsdp1-full/offload/nogc/mb8"
    assert pre.message.startswith("memfit preflight: full/fsdp1-full/offload/nogc/mb8 fits")


def test_use_liger_kernel_reads_as_liger_layer_kernels_and_the_fused_loss():
    # Trainer._apply_liger_kernel_to_instance calls Liger's _apply_liger_kernel_to_instance with its
    # defaults: RMSNorm, SwiGLU and RoPE kernels and the fused linear cross-entropy.
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from memfit.engine.integrations.trainer_plan import plan_from_trainer

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
    args = TrainingArguments(output_dir="/tmp/memfit-unused", report_to="none", use_cpu=True, use_liger_kernel=True)
    t = plan_from_trainer(args, model, None, hardware={"gpu_memory": 80, "host_memory": 64}, seq_len=128)[0]["training"]
    assert (t["kernels"], t["loss"]) == ("liger", {"implementation": "fused_linear"})
