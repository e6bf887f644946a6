"""Ground truth on a real GPU: train a few steps per case and record measured memory beside memfit's.

Each case builds a model from its config with random weights (no download), runs `--steps` real
training steps (forward, loss, backward, optimizer) and records torch.cuda.max_memory_allocated /
max_memory_reserved, NVML used memory (CUDA context included), host RSS, step time, and memfit's
own estimate for the same plan (`estimate: null` where memfit's estimate is unavailable). OOM is a
result, not a crash. `--device cpu --tiny` runs the same code on tiny configs in seconds, so the
script is exercised by tests/test_gpu_calibration.py.

    python bench/gpu_calibration.py --device cuda --out results.json          # H100: ~6 min
    python bench/gpu_calibration.py --device cpu --tiny --out /tmp/tiny.json  # smoke run
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CONFIGS = {
    "tiny-llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "vocab_size": 512, "max_position_embeddings": 1024},
    "tiny-qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 176,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "vocab_size": 512, "max_position_embeddings": 1024, "tie_word_embeddings": True},
}


@dataclass(frozen=True)
class Case:
    model: str              # catalogue id or a TINY_CONFIGS key
    method: str = "full"    # full | lora | qlora
    seq_len: int = 2048
    micro_batch: int = 1
    checkpointing: bool = False
    attention: str = "sdpa"
    deepspeed: str = ""     # "" | "z2-offload-opt" | "z3-offload-all"

    @property
    def name(self) -> str:
        parts = [self.model.split("/")[-1], self.method, f"s{self.seq_len}", f"b{self.micro_batch}",
                 "gc" if self.checkpointing else "nogc", self.attention]
        return "/".join(parts + ([self.deepspeed] if self.deepspeed else []))


def gpu_matrix() -> list[Case]:
    """~24 cases sized to finish in < 8 min on one H100 (see estimate_seconds)."""
    q = "Qwen/Qwen2.5-"
    cases = [Case(q + "0.5B", seq_len=s) for s in (512, 2048, 8192)]
    cases += [Case(q + "0.5B", seq_len=2048, micro_batch=b) for b in (4, 8)]
    cases += [Case(q + "0.5B", seq_len=2048, attention="eager"), Case(q + "0.5B", seq_len=8192, checkpointing=True)]
    cases += [Case(q + "1.5B", seq_len=2048), Case(q + "1.5B", seq_len=2048, checkpointing=True),
              Case(q + "1.5B", method="lora", seq_len=2048), Case(q + "1.5B", method="lora", seq_len=4096, checkpointing=True)]
    cases += [Case("meta-llama/Llama-3.2-1B", seq_len=2048), Case("meta-llama/Llama-3.2-1B", method="lora", seq_len=2048),
              Case("meta-llama/Llama-3.2-3B", seq_len=2048, checkpointing=True),
              Case("meta-llama/Llama-3.2-3B", method="lora", seq_len=2048)]
    cases += [Case(q + "3B", seq_len=2048, checkpointing=True), Case(q + "3B", method="lora", seq_len=2048, micro_batch=2)]
    cases += [Case(q + "7B", method="lora", seq_len=2048), Case(q + "7B", method="lora", seq_len=2048, checkpointing=True),
              Case(q + "7B", seq_len=1024, checkpointing=True)]  # full 7B: ~61 GiB of model states, may OOM
    cases += [Case(q + "7B", method="qlora", seq_len=2048, checkpointing=True)]
    cases += [Case(q + "1.5B", seq_len=2048, checkpointing=True, deepspeed=d) for d in ("z2-offload-opt", "z3-offload-all")]
    return cases


def tiny_matrix() -> list[Case]:
    return [Case("tiny-llama", seq_len=128, micro_batch=2), Case("tiny-llama", seq_len=128, checkpointing=True),
            Case("tiny-llama", method="lora", seq_len=128), Case("tiny-qwen2", seq_len=64, attention="eager")]


def model_config(model: str) -> dict:
    """A tiny inline config, or the catalogue's config.json fields for a model id."""
    if model in TINY_CONFIGS:
        return dict(TINY_CONFIGS[model])
    from memfit.engine.model.spec import resolve_model
    return dict(resolve_model(model).config)


def estimate_seconds(case: Case, params: float) -> float:
    """Rough wall time: build (~1.5 s per 1e9 params) + steps at ~35 % of an H100's 990 TFLOP/s bf16."""
    flops = 6 * params * case.seq_len * case.micro_batch * (4 / 3 if case.checkpointing else 1)
    return 3 + 1.5 * params / 1e9 + 3 * flops / (0.35 * 990e12) + (60 if case.deepspeed else 0)


def case_plan(case: Case, cfg: dict, gpu_gib: float) -> dict:
    """The memfit plan of a case (stored in each row, so bench/accuracy.py can re-estimate it later)."""
    zero, opt_off, par_off = {"": (0, "none", "none"), "z2-offload-opt": (2, "cpu", "none"),
                              "z3-offload-all": (3, "cpu", "cpu")}[case.deepspeed]
    return {"model": case.model if case.model not in TINY_CONFIGS else cfg,
            "hardware": {"gpu_memory": max(gpu_gib, 1.0), "host_memory": 256},
            "training": {"method": case.method, "seq_len": case.seq_len, "micro_batch_size": case.micro_batch,
                         "precision": "pure_bf16", "gradient_checkpointing": case.checkpointing,
                         "attention": case.attention, "zero_stage": zero, "offload_optimizer": opt_off,
                         "offload_param": par_off}}


def memfit_estimate(case: Case, cfg: dict, gpu_gib: float):
    """memfit's own estimate for the same plan; None when memfit cannot estimate it."""
    try:
        from memfit.engine.advice.advise import estimate
        from memfit.engine.plan.load import plan_from_dict
    except ImportError:
        return None
    try:
        result = estimate(plan_from_dict(case_plan(case, cfg, gpu_gib), "gpu_calibration"))
    except Exception as exc:  # memfit's estimate is optional here: record why it is missing
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"gpu_peak_gib": result.gpu_peak_gib, "host_peak_gib": result.host_peak_gib,
            "gpu_peak_phase": result.gpu_peak_phase, "breakdown": result.breakdown}


def build(case: Case, cfg: dict, device: str):
    """Random-weight model on the device in bf16 (+ peft LoRA), and its optimizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in cfg.items() if k not in ("torch_dtype", "dtype", "architectures")}
    hf = AutoConfig.for_model(fields.pop("model_type"), **fields)
    hf.use_cache = False
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16, attn_implementation=case.attention)
    if case.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    if case.checkpointing:  # transformers 5 renamed gradient_checkpointing_enable
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-5)


def _deepspeed_engine(model, case: Case, device: str):
    """Wrap the model in a one-process DeepSpeed engine (gloo on cpu, nccl on cuda)."""
    import deepspeed
    import torch.distributed as dist

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"),
                       ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    offload = {"device": "cpu", "pin_memory": device == "cuda"}
    zero = {"stage": 2, "offload_optimizer": offload}
    if case.deepspeed == "z3-offload-all":
        zero = {"stage": 3, "offload_optimizer": offload, "offload_param": offload}
    conf = {"train_micro_batch_size_per_gpu": case.micro_batch, "gradient_accumulation_steps": 1,
            "bf16": {"enabled": True}, "zero_optimization": zero,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}}
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=conf)
    return engine


def _steps(model, opt, case: Case, device: str, steps: int, engine=None) -> list[float]:
    import torch

    ids = torch.randint(0, model.config.vocab_size, (case.micro_batch, case.seq_len), device=device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        if engine is not None:
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            engine.step()
        else:
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _nvml_used() -> int | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:  # no NVML (cpu run, driver missing): the field stays null
        return None


def _rss() -> int | None:
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return None


def _skip_reason(case: Case) -> str | None:
    import importlib.util
    if case.method == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed"
        return "not implemented: from_config cannot 4-bit quantise random weights here"
    if case.deepspeed and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed"
    return None


def run_case(case: Case, device: str, steps: int, gpu_gib: float) -> dict:
    """One row: measured memory and time, or OOM / skipped / error, with memfit's estimate."""
    import torch

    cfg = model_config(case.model)
    row = {"case": case.name, **asdict(case), "status": "ok", "max_memory_allocated": None,
           "max_memory_reserved": None, "nvml_used_bytes": None, "host_rss_bytes": None,
           "step_seconds": None, "error": None, "estimate": memfit_estimate(case, cfg, gpu_gib),
           "plan": case_plan(case, cfg, gpu_gib)}
    reason = _skip_reason(case)
    if reason:
        return {**row, "status": "skipped", "error": reason}
    model = opt = engine = None
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        model, opt = build(case, cfg, device)
        engine = _deepspeed_engine(model, case, device) if case.deepspeed else None
        times = _steps(model, opt, case, device, steps, engine)
        row["step_seconds"] = statistics.median(times[1:] or times)  # the first step warms kernels up
        if device == "cuda":
            row["max_memory_allocated"] = torch.cuda.max_memory_allocated()
            row["max_memory_reserved"] = torch.cuda.max_memory_reserved()
            row["nvml_used_bytes"] = _nvml_used()
    except torch.OutOfMemoryError as exc:
        row.update(status="oom", error=str(exc).splitlines()[0])
        if device == "cuda":
            row["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    except Exception as exc:  # record and continue: one broken case must not lose the others
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        row["host_rss_bytes"] = _rss()
        del model, opt, engine
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def _environment(device: str) -> dict:
    import torch
    import transformers
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": sys.version.split()[0]}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, gpu_memory_bytes=props.total_memory)
    else:
        import platform
        env["device_name"] = platform.processor() or platform.machine()
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and write the results JSON. Returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny inline configs (seconds, any device)")
    ap.add_argument("--out", default="gpu_calibration.json")
    ap.add_argument("--cases", default="", help="only cases whose name contains this substring")
    ap.add_argument("--max-seconds", type=float, default=420.0, help="start no case after this")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ERROR --device cuda: no CUDA device (use --device cpu --tiny for a smoke run)", file=sys.stderr)
        return 2
    cases = [c for c in (tiny_matrix() if args.tiny else gpu_matrix()) if args.cases in c.name]
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if args.device == "cuda" else 80.0
    planned = 0.0
    for c in cases:
        params = 7e9 * float(c.model.split("-")[-1].rstrip("B")) / 7 if "B" in c.model.split("-")[-1] else 1e6
        planned += estimate_seconds(c, params)
        print(f"plan  {c.name}")
    print(f"plan  {len(cases)} cases, about {planned:.0f} s (stops starting cases after {args.max_seconds:.0f} s)")
    if args.dry_run:
        return 0
    start, rows = time.perf_counter(), []
    for c in cases:
        if time.perf_counter() - start > args.max_seconds:
            rows.append({"case": c.name, **asdict(c), "status": "skipped", "error": "--max-seconds reached"})
            continue
        row = run_case(c, args.device, args.steps, gpu_gib)
        rows.append(row)
        print(f"{row['status']:7s} {c.name}  alloc={row['max_memory_allocated']}  t={row['step_seconds']}", flush=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump({**_environment(args.device), "rows": rows}, fh, indent=1, default=str)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
