"""The tracer of bench/fsdp_cpu.py: live storage bytes by category across one FSDP training step.

A TorchDispatchMode registers the storage of every tensor an op returns (a DTensor's local tensor
for FSDP2's sharded parameters, gradients and optimizer states), with a weakref finalizer that drops
it when freed. FSDP frees and re-allocates its unsharded buffers by resizing their storage in place
(FSDP1 `_flat_param.py` `_free_storage` / `_alloc_storage`, FSDP2 `_fsdp_param.py` `free_storage` /
`alloc_storage`), which no op reports: so the live total is re-read from every registered storage's
current size after each op, not added up at allocation. At each new peak of a phase the live
storages are sorted into categories by walking FSDP's own objects at that moment.
"""
from __future__ import annotations

import weakref

CATEGORIES = ("params_sharded", "params_unsharded", "mp_shard", "grads_sharded", "grads_unsharded",
              "optimizer_states", "comm_buffers", "other")


def _local(t):
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


def _keys(tensors) -> list[int]:
    import torch

    out = []
    for t in tensors:
        if t is None:
            continue
        t = _local(t)
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            out.append(t.untyped_storage()._cdata)
    return out


def fsdp2_objects(model) -> dict[str, list]:
    """FSDP2's tensors by category (_fully_shard/_fsdp_param.py FSDPParam attributes)."""
    from torch.distributed.fsdp import FSDPModule

    cats: dict[str, list] = {c: [] for c in CATEGORIES}
    for m in model.modules():
        if not isinstance(m, FSDPModule):
            continue
        for group in m._get_fsdp_state()._fsdp_param_groups:
            for fp in group.fsdp_params:
                cats["params_sharded"] += [fp._sharded_param_data, fp.sharded_param]
                cats["grads_sharded"].append(fp.sharded_param.grad)
                cats["params_unsharded"] += list(getattr(fp, "all_gather_outputs", []) or [])
                unsharded = getattr(fp, "_unsharded_param", None)
                if unsharded is not None:
                    cats["params_unsharded"].append(unsharded)
                    cats["grads_unsharded"].append(unsharded.grad)
                cats["grads_unsharded"].append(getattr(fp, "unsharded_accumulated_grad", None))
    return cats


def fsdp1_objects(model) -> dict[str, list]:
    """FSDP1's tensors by category (_flat_param.py FlatParameter attributes, FlatParamHandle)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cats: dict[str, list] = {c: [] for c in CATEGORIES}
    for m in FSDP.fsdp_modules(model):
        h = m._handle
        if h is None:
            continue
        fp = h.flat_param
        cats["params_sharded"].append(getattr(fp, "_local_shard", None))
        cats["params_unsharded"].append(getattr(fp, "_full_param_padded", None))
        cats["mp_shard"].append(getattr(fp, "_mp_shard", None))
        cats["grads_sharded"].append(getattr(fp, "_saved_grad_shard", None))
        # flat_param.grad is the unsharded gradient during backward; after the post-backward final
        # callback (_runtime_utils.py _finalize_params -> FlatParamHandle.prepare_gradient_for_optim) it is
        # the sharded one: told
        # apart by size against the local shard.
        local = getattr(fp, "_local_shard", None)
        sharded = fp.grad is not None and local is not None and fp.grad.numel() == local.numel()
        cats["grads_sharded" if sharded else "grads_unsharded"].append(fp.grad)
        # use_orig_params: the original parameters' .grad are views of one or the other.
    return cats


def optimizer_objects(opt) -> list:
    return [v for s in opt.state.values() for v in s.values() if hasattr(v, "untyped_storage") and v.numel() > 1]


def make_tracker(objects):
    """A dispatch mode; `objects()` returns {category: [tensors]} of the structures live right now."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class FsdpTracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, weakref.ref] = {}
            self.phase = "setup"
            self.peaks: dict[str, tuple[int, dict[str, int]]] = {}
            self.buffer_peaks: dict[str, tuple[int, dict[str, int]]] = {}
            self.category_max: dict[str, dict[str, int]] = {}  # phase -> each category's own maximum
            self.ctx = "other"  # the label of storages allocated now (comm_buffers inside collectives)
            self.labels: dict[int, str] = {}

        def add(self, t) -> None:
            t = _local(t)
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                return
            st = t.untyped_storage()
            key = st._cdata
            if key in self.live and self.live[key]() is st:
                return
            self.live[key] = weakref.ref(st)
            self.labels[key] = self.ctx
            weakref.finalize(st, self._drop, key, self.live[key])

        def _drop(self, key, ref) -> None:
            if self.live.get(key) is ref:
                del self.live[key]

        def register_structures(self) -> None:
            for tensors in objects().values():
                for t in tensors:
                    if t is not None:
                        self.add(t)

        def current(self) -> int:
            return sum(st.nbytes() for r in list(self.live.values()) if (st := r()) is not None)

        def breakdown(self) -> dict[str, int]:
            # Later categories in CATEGORIES never override earlier ones: a sharded gradient that is
            # also flat_param.grad counts as sharded.
            owner: dict[int, str] = {}
            for cat, tensors in objects().items():
                for k in _keys(tensors):
                    owner.setdefault(k, cat)
            out = {c: 0 for c in CATEGORIES}
            for key, r in list(self.live.items()):
                st = r()
                if st is not None:
                    out[owner.get(key, self.labels.get(key, "other"))] += st.nbytes()
            return out

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                self.add(t)
            now, parts = self.current(), self.breakdown()
            if now > self.peaks.get(self.phase, (-1,))[0]:
                self.peaks[self.phase] = (now, parts)
            # FSDP's gradients and transient bytes at any moment, peak or not: memfit's gradients +
            # zero_buffers. With the sharded gradients, because FSDP's reduce allocates the next
            # sharded gradient (its cast back to fp32) before it is assigned to the parameter.
            buffers = sum(parts[c] for c in ("params_unsharded", "mp_shard", "grads_unsharded", "comm_buffers",
                                             "grads_sharded"))
            if buffers > self.buffer_peaks.get(self.phase, (-1,))[0]:
                self.buffer_peaks[self.phase] = (buffers, parts)
            most = self.category_max.setdefault(self.phase, dict.fromkeys(CATEGORIES, 0))
            for c, v in parts.items():
                most[c] = max(most[c], v)
            return out

    return FsdpTracker()


def label_collectives(tracker, version: int) -> None:
    """Label what FSDP's collectives allocate as comm_buffers: FSDP2's all-gather and reduce-scatter
    flat buffers (_fully_shard/_fsdp_collectives.py foreach_all_gather, foreach_reduce, called from
    _fsdp_param_group.py), FSDP1's reduce-scatter tensors (_runtime_utils.py _reduce_grad)."""
    import functools

    if version == 2:
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group as mod
        names = ("foreach_all_gather", "foreach_reduce")
    else:
        from torch.distributed.fsdp import _runtime_utils as mod
        names = ("_reduce_grad",)

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            before, tracker.ctx = tracker.ctx, "comm_buffers"
            try:
                return fn(*args, **kwargs)
            finally:
                tracker.ctx = before
        return inner

    for name in names:
        setattr(mod, name, wrap(getattr(mod, name)))
