"""DeepSpeed's default knob values and the sizes derived from them.

They sit in the bottom layer because two layers read them: the config writer (engine/deepspeed/config.py)
emits them and the memory model (engine/memory/estimate.py) sizes its buffer terms from the same numbers,
so a config memfit writes and the estimate of that config cannot drift apart.
"""
from __future__ import annotations

import math

# DeepSpeed's own defaults (deepspeed/runtime/zero/config.py, 0.19): used when the model size is unknown.
DS_REDUCE_BUCKET = 500_000_000
DS_PREFETCH_BUCKET = 50_000_000
DS_PERSISTENCE = 100_000
# Bounds on model-derived bucket sizes: the HF rule h^2 gives 67M elements for h=8192; DeepSpeed's
# default 5e8 is the ceiling. The floor keeps tiny test models from using absurdly small buckets.
BUCKET_MIN = 1 << 20
BUCKET_MAX = DS_REDUCE_BUCKET
# HF TrainingArguments defaults (transformers/training_args.py): concrete configs use them so that a
# concrete config and an HF config filled from default TrainingArguments agree.
HF_DEFAULT_LR = 5e-5
HF_DEFAULT_BETAS = (0.9, 0.999)
HF_DEFAULT_EPS = 1e-8
HF_DEFAULT_WEIGHT_DECAY = 0.0
# DeepSpeed's offload defaults (deepspeed/runtime/zero/offload_config.py).
OPT_NVME_BUFFERS = 4
PARAM_NVME_BUFFERS = 5
PARAM_NVME_BUFFER_SIZE = 100_000_000
# DeepSpeed's defaults (runtime/zero/config.py), kept: the memory model sizes its terms from these too.
SUB_GROUP_SIZE = 1_000_000_000
MAX_LIVE_PARAMETERS = 1_000_000_000
MAX_REUSE_DISTANCE = 1_000_000_000
AIO = {"block_size": 1_048_576, "queue_depth": 8, "intra_op_parallelism": 1,
       "single_submit": False, "overlap_events": True}


def accumulation_steps(global_batch: int | None, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation that reaches the global batch (rounded up), else 1.

    Returns:
        ceil(global / (micro x world)), at least 1; 1 when no global batch is set.
    """
    if global_batch is None:
        return 1
    return max(1, math.ceil(global_batch / (micro_batch * world_size)))


def _clamp(n: int) -> int:
    return int(min(BUCKET_MAX, max(BUCKET_MIN, n)))


def bucket_sizes(hidden_size: int | None) -> dict[str, int]:
    """Bucket sizes from the hidden size h, following the HF integration's "auto" rule.

    transformers/integrations/deepspeed.py (`HfTrainerDeepSpeedConfig.trainer_config_finalize`) fills
    reduce_bucket_size = h*h, stage3_prefetch_bucket_size = int(0.9*h*h),
    stage3_param_persistence_threshold = 10*h. memfit clamps the two bucket sizes to [2^20, 5e8].

    Returns:
        reduce, allgather, prefetch, persistence (elements); DeepSpeed's defaults when h is unknown.
    """
    if hidden_size is None:
        return {"reduce": DS_REDUCE_BUCKET, "allgather": DS_REDUCE_BUCKET,
                "prefetch": DS_PREFETCH_BUCKET, "persistence": DS_PERSISTENCE}
    reduce = _clamp(hidden_size * hidden_size)
    return {"reduce": reduce, "allgather": reduce, "prefetch": _clamp(int(0.9 * hidden_size * hidden_size)),
            "persistence": 10 * hidden_size}


def zero_knobs(hidden_size: int | None) -> dict[str, int | bool]:
    """Every ZeRO knob that sizes a buffer, as memfit writes them into its DeepSpeed JSON.

    The bucket sizes follow `bucket_sizes`; the others are DeepSpeed's defaults, which memfit keeps
    (engine/deepspeed/config.py writes the same constants). overlap_comm and contiguous_gradients are
    on in memfit's configs (DeepSpeed's own default for overlap_comm is on for stage 3 only).

    Returns:
        reduce_bucket_size, prefetch_bucket_size, param_persistence_threshold, max_live_parameters,
        max_reuse_distance, sub_group_size (elements), overlap_comm, contiguous_gradients, and
        grad_accum_fp32 (memfit never sets data_types.grad_accum_dtype: False).
    """
    b = bucket_sizes(hidden_size)
    return {"reduce_bucket_size": b["reduce"], "prefetch_bucket_size": b["prefetch"],
            "param_persistence_threshold": b["persistence"], "max_live_parameters": MAX_LIVE_PARAMETERS,
            "max_reuse_distance": MAX_REUSE_DISTANCE, "sub_group_size": SUB_GROUP_SIZE,
            "overlap_comm": True, "contiguous_gradients": True, "grad_accum_fp32": False}
