"""What a torch.compile'd training step keeps for backward, traced on fake tensors without a GPU.

torch.compile trains through AOTAutograd: the forward and backward are traced into one joint graph,
and a partitioner decides which forward values the backward graph receives (the saved tensors) and
which it recomputes. Inductor's partitioner (min_cut_rematerialization_partition, compiler="inductor")
recomputes cheap pointwise ops (casts, RMSNorm's scaling, SiLU) from a few saved inputs instead of
keeping their outputs, which is why a compiled layer keeps less than the eager one the probe counts.

This module runs that same step: the model built as the probe builds it (build.py), traced by
aot_function with inductor's decompositions and partitioner on FakeTensorMode tensors, and sums the
storage of the forward graph's saved outputs (graph inputs, i.e. parameters and the token ids, not
counted). Codegen never runs, so nothing needs a compiler or a GPU. With the eager partitioner
(`partition="eager"`, no decompositions) the same count equals the probe's eager trace, which is how
tests/test_compile_terms.py checks the counter itself. torch is imported inside functions only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .build import LoraTargets, build_model, materialise
from .trace import cuda_like_dropout, unpacked_sequences

if TYPE_CHECKING:
    import torch

# aten ops whose output shares its input's storage: a saved view costs nothing beyond its base.
_VIEWS = frozenset({"view", "_unsafe_view", "t", "transpose", "unsqueeze", "squeeze", "detach", "expand",
                    "permute", "alias", "slice", "select", "reshape", "as_strided", "split", "unbind"})


@dataclass(frozen=True)
class CompiledSaved:
    """Bytes the forward graph saves for backward, per token (one step, micro-batch x tokens)."""

    per_layer: float      # one decoder layer (the difference of two layer counts)
    outside: float        # everything else: embeddings, final norm, output head and loss


def saved_per_token(config: Mapping[str, Any], seq_len: int, *, method: str = "full", attention: str = "sdpa",
                    lora_rank: int = 16, lora_targets: LoraTargets = "all-linear", lora_dropout: float = 0.0,
                    partition: str = "inductor") -> CompiledSaved:
    """Saved bytes per token of a step at one and at two decoder layers (micro-batch 1)."""
    one, two = (_saved(config, layers, seq_len, method, attention, lora_rank, lora_targets, lora_dropout, partition)
                for layers in (1, 2))
    per_layer = (two - one) / seq_len
    return CompiledSaved(per_layer=per_layer, outside=one / seq_len - per_layer)


def _saved(config: Mapping[str, Any], layers: int, seq_len: int, method: str, attention: str, lora_rank: int,
           lora_targets: LoraTargets, lora_dropout: float, partition: str) -> float:
    import torch
    from torch._functorch.aot_autograd import aot_function
    from torch._functorch.partitioners import default_partition, min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = build_model(config, layers, attention, torch.bfloat16, method, lora_rank, lora_targets, lora_dropout)
    found: list[float] = []
    with FakeTensorMode(allow_non_fake_inputs=False), unpacked_sequences(), cuda_like_dropout():
        materialise(model, bool(dict(config).get("tie_word_embeddings", False)))
        model.train()
        # Every parameter and buffer is an input of the traced function: AOTAutograd refuses fake
        # constants, and inputs are what the count leaves out (they are not activations).
        named = list(model.named_parameters()) + list(model.named_buffers())
        names = [n for n, _ in named]

        def step(ids: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, dict(zip(names, tensors)), (),
                                              {"input_ids": ids, "labels": ids}).loss

        def forward_graph(gm: torch.fx.GraphModule, _inputs: Any) -> torch.fx.GraphModule:
            found.append(_saved_bytes(gm))
            return gm

        if partition == "inductor":
            part = functools.partial(min_cut_rematerialization_partition, compiler="inductor")
            decompositions = select_decomp_table()
        else:
            part, decompositions = default_partition, {}
        compiled = aot_function(step, fw_compiler=forward_graph, bw_compiler=lambda gm, _i: gm,
                                partition_fn=part, decompositions=decompositions)
        compiled(torch.zeros((1, seq_len), dtype=torch.long), *(t for _, t in named))
    return found[0]


def _saved_bytes(gm: torch.fx.GraphModule) -> float:
    """Storage bytes of the forward graph's saved outputs: its outputs after the loss, each traced back
    through views to the tensor that owns the storage, each storage once, graph inputs left out."""
    import torch

    output = next(n for n in gm.graph.nodes if n.op == "output")
    owners: dict[torch.fx.Node, int] = {}
    for node in output.args[0][1:]:
        if not isinstance(node, torch.fx.Node):
            continue  # a saved shape (SymInt)
        while node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in _VIEWS:
            node = node.args[0]
        value = node.meta.get("val")
        if node.op != "placeholder" and isinstance(value, torch.Tensor):
            owners[node] = value.untyped_storage().nbytes()
    return float(sum(owners.values()))
