"""DeepSpeed's own model-states estimators, reproduced exactly, for side-by-side comparison.

Re-derived from deepspeed/runtime/zero/stage3.py `estimate_zero3_model_states_mem_needs` and
stage_1_and_2.py `estimate_zero2_model_states_mem_needs` (deepspeed 0.19). They count model states
only (Adam assumed), with a blanket 1.5 buffer on host RAM, and print GiB under the label "GB".
tests/test_ds_parity.py checks these against DeepSpeed's functions themselves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..core.units import GIB

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from ..plan.strategy import Strategy

BUFFER_FACTOR = 1.5  # DeepSpeed's `additional_buffer_factor` default


class DsEstimate(BaseModel):
    model_config = ConfigDict(frozen=True)
    gpu_gib: float
    host_gib: float  # per node


def zero3_estimate(total_params: int, largest_layer_params: int, gpus_per_node: int = 1, nodes: int = 1,
                   offload_optimizer: bool = True, offload_param: bool = True,
                   zero_init: bool = True) -> DsEstimate:
    """DeepSpeed's ZeRO-3 estimate (GPU per device, host per node), in GiB."""
    total_gpus = gpus_per_node * nodes
    per_node = 1 / nodes
    gpu = 4 * largest_layer_params
    p = total_params
    if offload_optimizer and offload_param:
        host = p * 18 * per_node if zero_init else p * max(4 * gpus_per_node, 18 * per_node)
    elif offload_optimizer:
        gpu += int(2 * p / total_gpus)
        host = p * 16 * per_node if zero_init else p * max(4 * gpus_per_node, 16 * per_node)
    else:
        gpu += int(18 * p / total_gpus)
        host = largest_layer_params * 4 * gpus_per_node if zero_init else p * 4 * gpus_per_node
    return DsEstimate(gpu_gib=gpu / GIB, host_gib=int(host * BUFFER_FACTOR) / GIB)


def zero2_estimate(total_params: int, gpus_per_node: int = 1, nodes: int = 1,
                   offload_optimizer: bool = True) -> DsEstimate:
    """DeepSpeed's ZeRO-2 estimate (GPU per device, host per node), in GiB."""
    total_gpus = gpus_per_node * nodes
    p = total_params
    if offload_optimizer:
        gpu = 2 * p
        host = p * max(4 * total_gpus, 16) * BUFFER_FACTOR
    else:
        gpu = 2 * p + int(18 * p / total_gpus)
        host = p * 4 * gpus_per_node * BUFFER_FACTOR
    return DsEstimate(gpu_gib=gpu / GIB, host_gib=int(host) / GIB)


def deepspeed_estimate(facts: ModelSpec, strategy: Strategy, plan: Plan) -> DsEstimate | None:
    """DeepSpeed's estimate for a strategy it covers (full fine-tuning, ZeRO-2/3), else None.

    Uses the base-model count DeepSpeed users feed it? No: memfit passes the count of the model that
    trains, so the comparison isolates the formula, not the counting mistake.
    """
    if strategy.method != "full" or strategy.zero_stage not in (2, 3):
        return None
    hw = plan.hardware
    if strategy.zero_stage == 3:
        return zero3_estimate(facts.total_params, facts.largest_layer_params, hw.gpus_per_node, hw.nodes,
                              strategy.offload_optimizer != "none", strategy.offload_param != "none")
    return zero2_estimate(facts.total_params, hw.gpus_per_node, hw.nodes, strategy.offload_optimizer != "none")
