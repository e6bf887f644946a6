"""The probe: trace one real training step on fake tensors and measure its memory, without a GPU.

The actual transformers architecture (`AutoModelForCausalLM.from_config`) runs forward, loss,
backward and one optimizer step on FakeTensorMode tensors of the cpu device (fake *cuda* tensors
abort a CPU-only torch build; sources.md §3). A small TorchDispatchMode counts live tensor storage
bytes (one count per untyped storage, released by a weakref finalizer) and records the peak of each
phase with what was live at that moment, split into parameters, gradients, optimizer states and
activations (everything else). No tensor holds data, so a 7B step costs seconds and < 1 GB of RAM.

Large models are traced with a few decoder layers at two layer counts; every measured quantity is
linear in the layer count, so the difference gives the per-layer term and extrapolates to the real
count (`ProbeResult.extrapolated_from_layers` says so). The probe is the oracle for
engine/memory/activations.py. torch, transformers and peft are imported inside functions only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..core.errors import ProbeError
from .build import LoraTargets, build_model, make_optimizer, materialise
from .trace import StorageTracker, Tracker, cuda_like_dropout, enable_checkpointing, unpacked_sequences

if TYPE_CHECKING:  # torch is not analysed (follow_imports = skip): its types read as Any
    import torch

    from ..plan.schema import Plan
    from ..plan.strategy import Strategy

Progress = Callable[[int, int, str], None]
PHASES = ("setup", "forward", "backward", "optimizer")
_CATEGORIES = ("params", "grads", "optimizer", "activations")
_DTYPES = {"bf16": "bfloat16", "pure_bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class ProbeResult:
    """Measured memory of one training step (bytes; extrapolated to the full layer count).

    by_phase maps forward/backward/optimizer to {"peak": total at that phase's peak, the
    params/grads/optimizer/activations bytes live at that moment, and "activation_peak": the
    phase's largest bytes other than parameters and gradients, which may come at another moment}.
    """

    peak_bytes: float
    peak_phase: str
    activation_bytes_per_layer: float   # stored for backward by one decoder layer (end of forward)
    logits_loss_bytes: float            # stored at the end of forward outside the layers
    stored_activation_bytes: float      # all activations live at the end of forward
    activation_peak_bytes: float        # largest bytes other than params and grads in fwd/bwd
    params_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    by_phase: dict[str, dict[str, float]]
    seconds: float
    extrapolated_from_layers: tuple[int, int] | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _trace_step(model_args: tuple[Mapping[str, Any], int, str, torch.dtype, str, int, LoraTargets, float, bool], *, seq_len: int, micro_batch: int, gradient_checkpointing: bool,
                optimizer: str, fake: bool, notes: list[str], tick: Callable[[str], None],
                checkpoint_policy: str = "full") -> dict[str, Any]:
    """Run one step with `layers` decoder layers under the tracker; return its measurements."""
    import contextlib
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = model_args[0]
    model = build_model(*model_args)
    tie = bool(dict(config).get("tie_word_embeddings", False))
    fake_mode = FakeTensorMode(allow_non_fake_inputs=False) if fake else contextlib.nullcontext()
    tracker: StorageTracker = Tracker()
    with fake_mode, tracker, unpacked_sequences(), cuda_like_dropout():
        materialise(model, tie)
        if gradient_checkpointing:
            enable_checkpointing(model, checkpoint_policy)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        tracker.mark(model.parameters())
        for p in params:  # a gradient stops being an activation once it lands in .grad
            p.register_post_accumulate_grad_hook(lambda q: tracker.mark([q.grad]))
        opt = make_optimizer(optimizer, params, notes)
        ids = torch.zeros((micro_batch, seq_len), dtype=torch.long)
        tracker.phase = "forward"
        loss = model(input_ids=ids, labels=ids).loss
        stored = tracker.current
        tick("forward")
        tracker.phase = "backward"
        loss.backward()
        del loss
        tick("backward")
        tracker.phase = "optimizer"
        opt.step()
        states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        cats = {"params": tracker.serials(model.parameters()),
                "grads": tracker.serials(p.grad for p in params), "states": tracker.serials(states)}
        sizes = {c: float(sum(tracker.live[k] for k in ks)) for c, ks in cats.items()}
        opt.zero_grad(set_to_none=True)
        tick("optimizer")
    return _summarise(tracker, cats, sizes, stored)


def _summarise(tracker: StorageTracker, cats: dict[str, set[int]], sizes: dict[str, float],
               stored_total: int) -> dict[str, Any]:
    """Split each phase's peak snapshot into params, grads, optimizer states and activations.

    "activations" is everything else: saved tensors and temporaries (the optimizer step's foreach
    temporaries land there too).
    """
    out: dict[str, Any] = dict(sizes)
    # Everything live at the end of forward but parameters is stored activation (no grads yet).
    out["stored"] = float(stored_total) - out["params"]
    for phase in PHASES[1:]:
        total, snap = tracker.peaks.get(phase, (0, {}))
        row = {"peak": float(total)}
        for c, name in (("params", "params"), ("grads", "grads"), ("states", "optimizer")):
            row[name] = float(sum(n for k, n in snap.items() if k in cats[c]))
        row["activations"] = row["peak"] - row["params"] - row["grads"] - row["optimizer"]
        row["activation_peak"] = float(tracker.act_peaks.get(phase, 0))
        out[phase] = row
    return out


def _layer_counts(num_layers: int, layers_traced: int | None) -> tuple[int, int]:
    big = min(num_layers, layers_traced or 4)
    if big < 1:
        raise ProbeError(f"probe: layers_traced must be >= 1 (got {layers_traced})")
    # Two counts a multiple of 2 apart where possible, so alternating layer types (Gemma2's
    # sliding/global) enter the per-layer difference in their real proportion.
    return (big // 2 if big > 1 else 0), big


def _extrapolate(lo: dict[str, Any], hi: dict[str, Any], n_lo: int, n_hi: int, n: int) -> dict[str, Any]:
    """Linear in the layer count: m(n) = m(hi) + (n - hi) * slope."""
    def ext(a: Any, b: Any) -> Any:  # a float, or a mapping of them (a phase row)
        if isinstance(b, dict):
            return {k: ext(a[k], b[k]) for k in b}
        return b + (n - n_hi) * (b - a) / (n_hi - n_lo)
    out = {k: ext(lo[k], hi[k]) for k in hi}
    out["per_layer"] = (hi["stored"] - lo["stored"]) / (n_hi - n_lo)
    out["non_layer"] = hi["stored"] - n_hi * out["per_layer"]
    return out


def probe(config: Mapping[str, Any], *, seq_len: int, micro_batch: int, method: str = "full",
          gradient_checkpointing: bool = False, attention: str = "sdpa", precision: str = "bf16",
          optimizer: str = "adamw", lora_rank: int = 16, lora_targets: LoraTargets = "all-linear",
          layers_traced: int | None = None, progress: Progress | None = None,
          lora_dropout: float = 0.0, checkpoint_policy: str = "full", dora: bool = False,
          _fake: bool = True) -> ProbeResult:
    """Trace one training step of the real architecture on fake tensors and measure its memory.

    Args:
        config: the raw HF config.json mapping (needs model_type).
        seq_len, micro_batch: tokens per sequence and sequences per step.
        method: full | lora | qlora (qlora is traced as LoRA on bf16 weights: no bitsandbytes here).
        gradient_checkpointing: non-reentrant checkpointing of every decoder layer.
        checkpoint_policy: full | selective_op (trace.selective_op_context: torchtitan's per-op rule).
        attention: sdpa | eager | flash_attention_2 (traced as sdpa: flash kernels need CUDA).
        precision: bf16 | pure_bf16 | fp16 | fp32, the dtype weights and activations are traced in.
        optimizer: adamw | sgd | adafactor (others traced as AdamW, with a note).
        lora_rank, lora_targets, lora_dropout, dora: the peft LoraConfig for method lora/qlora (dora:
            use_dora).
        layers_traced: decoder layers in the larger trace (default min(num_layers, 4)).
        progress: called with (done, total, label) after each traced phase.
    Returns:
        ProbeResult, extrapolated to the config's layer count.
    Raises:
        ProbeError: the config cannot be built or an op cannot run on fake tensors.
    """
    import torch

    start = time.perf_counter()
    notes = [f"traced on {'fake' if _fake else 'real'} cpu tensors in {precision}; parameters, "
             "gradients and optimizer states are sized as traced (AdamW states in the weights' "
             "dtype); the probe is the oracle for activations"]
    attn = attention
    if attention == "flash_attention_2":
        attn = "sdpa"
        notes.append("flash_attention_2 needs CUDA: traced sdpa (same O(s) memory)")
    if method == "qlora":
        notes.append("qlora traced as LoRA on bf16 weights (bitsandbytes is not installed)")
    n = int(dict(config).get("num_hidden_layers") or dict(config).get("n_layer") or 0)
    counts = _layer_counts(n, layers_traced)
    done, total = 0, 3 * len(counts)

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    runs: dict[int, dict[str, Any]] = {}
    dtype = getattr(torch, _DTYPES.get(precision, "bfloat16"))
    for layers in counts:
        args = (config, layers, attn, dtype, method, lora_rank, lora_targets, lora_dropout, dora)
        try:
            runs[layers] = _trace_step(args, seq_len=seq_len, micro_batch=micro_batch,
                                       gradient_checkpointing=gradient_checkpointing,
                                       checkpoint_policy=checkpoint_policy, optimizer=optimizer, fake=_fake, notes=notes,
                                       tick=lambda ph: tick(f"{layers} layers: {ph}"))  # called during this step only
        except (RuntimeError, NotImplementedError, TypeError, AssertionError, ValueError) as exc:
            raise ProbeError(f"probe: tracing {dict(config).get('model_type')} with {layers} "
                             f"layers failed: {type(exc).__name__}: {exc}") from None
    m = _extrapolate(runs[counts[0]], runs[counts[1]], counts[0], counts[1], n)
    by_phase = {ph: m[ph] for ph in PHASES[1:]}
    peak_phase = max(by_phase, key=lambda ph: by_phase[ph]["peak"])
    return ProbeResult(
        peak_bytes=by_phase[peak_phase]["peak"], peak_phase=peak_phase,
        activation_bytes_per_layer=m["per_layer"], logits_loss_bytes=m["non_layer"],
        stored_activation_bytes=m["stored"],
        activation_peak_bytes=max(by_phase[ph]["activation_peak"] for ph in ("forward", "backward")),
        params_bytes=m["params"], grads_bytes=m["grads"], optimizer_bytes=m["states"],
        by_phase=by_phase, seconds=time.perf_counter() - start,
        extrapolated_from_layers=counts if counts[1] != n else None, notes=tuple(dict.fromkeys(notes)))


def probe_plan(plan: Plan, strategy: Strategy | None = None, progress: Progress | None = None) -> ProbeResult:
    """Probe the model and training settings of a memfit Plan ('auto' choices: full, no
    checkpointing, micro-batch 1, unless a Strategy pins them).

    Args:
        plan: a checked memfit Plan.
        strategy: an optional Strategy whose method, checkpointing and micro-batch win.
        progress: called with (done, total, label) after each traced phase.
    Returns:
        ProbeResult for the plan's model, extrapolated to its layer count.
    Raises:
        ModelNotFoundError, ModelSpecError: the plan's model cannot be resolved.
        ProbeError: the architecture cannot be traced.
    """
    from ..model.spec import plan_model

    t = plan.training

    def pick(name: str, auto: Any) -> Any:
        value = getattr(strategy, name) if strategy is not None else getattr(t, name)
        return auto if value == "auto" else value

    facts = plan_model(plan)
    return probe(facts.config, seq_len=t.seq_len, micro_batch=pick("micro_batch_size", 1),
                 method=pick("method", "full"), gradient_checkpointing=pick("gradient_checkpointing", False),
                 attention=t.attention, precision=t.precision, optimizer=t.optimizer,
                 lora_rank=t.lora.rank, lora_targets=t.lora.target_modules, lora_dropout=t.lora.dropout,
                 checkpoint_policy=t.checkpoint_policy, dora=t.lora.use_dora, progress=progress)
