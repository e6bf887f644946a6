"""The allocation events of training steps, traced on fake tensors: what a caching allocator is asked.

Every new tensor storage is an allocation of its byte size, and it is freed when its last reference
goes (a weakref finalizer on the storage, as the probe's tracker counts them). The order of these
events, step after step at the batch shapes given, is what the CUDA caching allocator serves; the
sizes and lifetimes come from the real ops, which do not depend on the device. bench/allocator_sim.py
replays them through a model of that allocator to measure reserved memory over allocated memory.
torch, transformers and peft are imported inside functions only.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..core.errors import ProbeError
from .build import LoraTargets, build_model, make_optimizer, materialise
from .trace import cuda_like_dropout, enable_checkpointing, unpacked_sequences


@dataclass(frozen=True)
class Event:
    """One allocation ("alloc", with its bytes) or release ("free") of storage `serial`."""

    kind: str
    serial: int
    nbytes: int
    step: int


def _recorder() -> Any:
    """A TorchDispatchMode that appends an Event for every new storage and for its release."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    import torch

    class Recorder(TorchDispatchMode):  # type: ignore[misc]  # torch is not analysed: Any
        def __init__(self) -> None:
            super().__init__()
            self.events: list[Event] = []
            self.seen: set[int] = set()
            self.serial = 0
            self.step = -1  # -1: model and optimizer set-up

        def record(self, t: Any) -> None:
            st = t.untyped_storage()
            key = st._cdata  # one StorageImpl, shared by every view of it
            if key in self.seen:
                return
            self.seen.add(key)
            self.serial += 1
            n = int(st.nbytes())
            self.events.append(Event("alloc", self.serial, n, self.step))
            weakref.finalize(st, self._free, key, self.serial, n)

        def _free(self, key: int, serial: int, n: int) -> None:
            self.seen.discard(key)
            self.events.append(Event("free", serial, n, self.step))

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.record(t)
            return out

    return Recorder()


def allocation_events(config: Mapping[str, Any], shapes: Sequence[tuple[int, int]], *, layers: int,
                      method: str = "full", gradient_checkpointing: bool = True, precision: str = "bf16",
                      optimizer: str = "adamw", lora_rank: int = 16,
                      lora_targets: LoraTargets = "all-linear") -> list[Event]:
    """Allocation events of set-up plus one training step (forward, backward, optimizer step,
    zero_grad) per (micro_batch, seq_len) in `shapes`, in order, on fake cpu tensors.

    Args:
        config: the raw HF config.json mapping (needs model_type).
        shapes: (micro_batch, seq_len) of each step: equal for padded or packed data, varying for
            batches padded to their longest sequence.
        layers: decoder layers to build (the events of a layer repeat per layer).
        method, gradient_checkpointing, precision, optimizer, lora_rank, lora_targets: as the probe's.
    Returns:
        Events in program order; Event.step is -1 for set-up (model, optimizer).
    Raises:
        ProbeError: the config cannot be built or an op cannot run on fake tensors.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)
    model = build_model(config, layers, "sdpa", dtype, method, lora_rank, lora_targets, 0.0)
    tie = bool(dict(config).get("tie_word_embeddings", False))
    rec = _recorder()
    try:
        with FakeTensorMode(allow_non_fake_inputs=False), rec, unpacked_sequences(), cuda_like_dropout():
            materialise(model, tie)
            if gradient_checkpointing:
                enable_checkpointing(model)
            model.train()
            opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], [])
            for step, (micro_batch, seq_len) in enumerate(shapes):
                rec.step = step
                ids = torch.zeros((micro_batch, seq_len), dtype=torch.long)
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                del loss, ids
                opt.step()
                opt.zero_grad(set_to_none=True)
    except (RuntimeError, NotImplementedError, TypeError, AssertionError, ValueError) as exc:
        raise ProbeError(f"allocation trace of {dict(config).get('model_type')} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    # a copy while the model is alive: its weights' finalizers run when this frame ends
    events: list[Event] = list(rec.events)
    del model
    return events
