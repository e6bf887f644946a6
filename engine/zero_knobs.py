"""DeepSpeed ZeRO knob values memfit writes, in one place: the memory model sizes its buffer terms
from the same numbers that go into the emitted DeepSpeed JSON (engine/dsconfig.py).
"""
from __future__ import annotations

from dataclasses import dataclass

# DeepSpeed defaults (deepspeed/runtime/zero/config.py): sub_group_size 1e9, max_live 1e9,
# max_reuse_distance 1e9. We keep them except where noted.
_DS_DEFAULT = 1_000_000_000
# Offload buffer counts (DeepSpeed's defaults in runtime/zero/offload_config.py).
OPTIMIZER_NVME_BUFFER_COUNT = 4
PARAM_NVME_BUFFER_COUNT = 5
PARAM_NVME_BUFFER_SIZE = 100_000_000  # elements per param swap buffer (DeepSpeed default 1e8)


@dataclass(frozen=True)
class ZeroKnobs:
    reduce_bucket_size: int            # elements per gradient reduction bucket
    allgather_bucket_size: int         # elements per ZeRO-1/2 allgather bucket
    stage3_prefetch_bucket_size: int   # elements prefetched ahead of use under ZeRO-3
    stage3_param_persistence_threshold: int  # params smaller than this stay unpartitioned
    stage3_max_live_parameters: int
    stage3_max_reuse_distance: int
    sub_group_size: int                # elements per optimizer sub-group (step temporaries, NVMe swaps)


def zero_knobs(hidden_size: int) -> ZeroKnobs:
    """Bucket sizes scaled to the model, as the HF DeepSpeed integration fills "auto":
    reduce bucket h^2, prefetch 0.9*h^2, persistence threshold 10*h (transformers
    integrations/deepspeed.py, `trainer_config_finalize`). Capped at DeepSpeed's 5e8 bucket default.
    """
    h2 = hidden_size * hidden_size
    bucket = min(h2, 500_000_000)
    return ZeroKnobs(
        reduce_bucket_size=bucket,
        allgather_bucket_size=bucket,
        stage3_prefetch_bucket_size=int(0.9 * bucket),
        stage3_param_persistence_threshold=10 * hidden_size,
        stage3_max_live_parameters=_DS_DEFAULT,
        stage3_max_reuse_distance=_DS_DEFAULT,
        sub_group_size=_DS_DEFAULT,
    )
