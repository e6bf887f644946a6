"""Pieces of the probe (engine/probe/probe.py): the storage-counting dispatch mode and the patches that make a
cpu fake-tensor trace store what a CUDA run stores. torch is imported inside functions only.
"""
from __future__ import annotations

import weakref
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol

if TYPE_CHECKING:
    import torch


class StorageTracker(Protocol):
    """What the probe reads of a `Tracker` (its class is built at run time, so this names its shape)."""

    live: dict[int, int]
    current: int
    phase: str
    act_peaks: dict[str, int]
    peaks: dict[str, tuple[int, dict[int, int]]]

    def mark(self, tensors: Iterable[Optional[torch.Tensor]]) -> None: ...
    def serials(self, tensors: Iterable[Optional[torch.Tensor]]) -> set[int]: ...
    def __enter__(self) -> object: ...
    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 tb: Optional[TracebackType]) -> object: ...


class Tracker:
    """Counts live storage bytes; built lazily because TorchDispatchMode needs torch."""

    def __new__(cls) -> Any:  # an instance of the TorchDispatchMode subclass below, not of this class
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        import torch

        # torch is not analysed (follow_imports = skip): TorchDispatchMode reads as Any.
        class Tracker(TorchDispatchMode):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.ids: dict[int, int] = {}    # storage address -> serial, while live
                self.live: dict[int, int] = {}   # serial -> bytes
                self.serial = 0
                self.marked: set[int] = set()   # parameters and gradients
                self.marked_bytes = 0
                self.act_peaks: dict[str, int] = {}  # phase -> peak of unmarked bytes
                self.current = 0
                self.phase = "setup"
                self.peaks: dict[str, tuple[int, dict[int, int]]] = {}

            def track(self, t: Any) -> None:
                if not isinstance(t, torch.Tensor):
                    return
                st = t.untyped_storage()
                key = st._cdata  # one StorageImpl, shared by every view of it
                if key in self.ids:
                    return
                # Addresses are reused after a free: identify storages by a serial number.
                self.serial += 1
                self.ids[key] = self.serial
                self.live[self.serial] = st.nbytes()
                self.current += self.live[self.serial]
                weakref.finalize(st, self._free, key, self.serial)
                if self.current > self.peaks.get(self.phase, (-1,))[0]:
                    self.peaks[self.phase] = (self.current, dict(self.live))
                other = self.current - self.marked_bytes
                if other > self.act_peaks.get(self.phase, -1):
                    self.act_peaks[self.phase] = other

            def mark(self, tensors: Iterable[Optional[torch.Tensor]]) -> None:
                """Count these storages as model states (not activations) from now on."""
                for k in self.serials(tensors) - self.marked:
                    self.marked.add(k)
                    self.marked_bytes += self.live[k]

            def serials(self, tensors: Iterable[Optional[torch.Tensor]]) -> set[int]:
                keys = {t.untyped_storage()._cdata for t in tensors if t is not None}
                return {self.ids[k] for k in keys if k in self.ids}

            def _free(self, key: int, serial: int) -> None:
                self.ids.pop(key, None)
                if serial in self.marked:
                    self.marked.discard(serial)
                    self.marked_bytes -= self.live.get(serial, 0)
                self.current -= self.live.pop(serial, 0)

            def __torch_dispatch__(self, func: Callable[..., Any], types: tuple[type, ...], args: tuple[Any, ...] = (),
                                   kwargs: Optional[dict[str, Any]] = None) -> Any:
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    self.track(t)
                return out

        return Tracker()


def unpacked_sequences() -> AbstractContextManager[object]:
    """Tell transformers' mask code each row is one sequence, as the GPU run sees it.

    transformers looks for packed sequences in position_ids; on fake tensors it cannot read them,
    assumes packing, and builds an explicit s*s mask per layer, which also disables SDPA's native
    GQA (k/v get repeated to all heads). A real unpacked batch takes the is_causal path instead.
    """
    import contextlib
    from unittest import mock

    try:
        from transformers import masking_utils
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return contextlib.nullcontext()
    return mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


def cuda_like_dropout() -> AbstractContextManager[object]:
    """Route dropout to torch.native_dropout, as CUDA does.

    On the cpu device F.dropout multiplies by a noise tensor of the input's dtype and saves it
    (4 bytes per element for peft's fp32 adapter inputs); CUDA's fused kernel saves a 1-byte mask.
    """
    from unittest import mock
    import torch

    def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0.0:
            return x
        return torch.native_dropout(x, p, True)[0]

    return mock.patch.object(torch.nn.functional, "dropout", dropout)


def selective_op_context() -> Any:
    """The checkpoint contexts of per-op selective checkpointing, torchtitan's rule (its SelectiveAC in
    torchtitan/distributed/activation_checkpoint.py): inside each checkpointed layer, keep the outputs
    of the attention kernels and of the compute-intensive ops, except every second plain matmul (mm,
    counted per layer and per forward, the recompute counting apart); recompute the rest. A new
    policy, with fresh counts, per layer call."""
    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    matmuls = {aten.mm.default, aten.linear.default}  # the ones that alternate
    # Kept always: the other compute-intensive ops (a Linear with a bias runs addmm; eager attention bmm).
    kept = {aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
    attention = {getattr(aten, name).default for name in (
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math") if hasattr(aten, name)}
    counts = {False: 0, True: 0}

    def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        if func in matmuls:
            counts[ctx.is_recompute] += 1
            odd = counts[ctx.is_recompute] % 2 == 1
            return CheckpointPolicy.MUST_SAVE if odd else CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in attention or func in kept else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def enable_checkpointing(model: torch.nn.Module, policy: str = "full") -> None:
    """Non-reentrant checkpointing of every decoder layer (transformers 5 renamed the method); policy
    selective_op adds selective_op_context."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if policy == "selective_op":
        kwargs["context_fn"] = selective_op_context
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
