"""The facts the rules see: one flat, typed record per candidate.

`CandidateFacts` is the vocabulary of the rule base: rule files may name only these fields, and the
rule loader checks every name and every compared value's type against it. Facts mix estimates (the
memory model), the plan, and measured evidence (logs of real runs).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CandidateFacts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The strategy
    method: str = Field(description="full | lora | qlora")
    zero_stage: int = Field(description="DeepSpeed ZeRO stage 0-3")
    offload_optimizer: str = Field(description="none | cpu | nvme")
    offload_param: str = Field(description="none | cpu | nvme")
    gradient_checkpointing: bool = Field(description="full activation checkpointing of every layer")
    micro_batch_size: int = Field(description="sequences per GPU per micro-step")
    pin_memory: bool = Field(description="page-locked host buffers for offload")
    gather_16bit_on_save: bool = Field(description="ZeRO-3: gather 16-bit weights on rank 0 at save")
    accumulation_steps: int = Field(description="micro-steps per optimizer step")
    # The plan
    precision: str = Field(description="bf16 | fp16 | fp32 | pure_bf16")
    optimizer: str = Field(description="adamw | adamw_fused | adamw_8bit | paged_adamw | paged_adamw_8bit | lion | lion_8bit | adafactor | sgd")
    optimizer_paged: bool = Field(False, description="bitsandbytes paged optimizer: states in CUDA unified memory, paged to host RAM under GPU pressure")
    paged_optimizer_gib: float = Field(0.0, description="GPU peak's optimizer states held in unified memory (paged optimizers; else 0)")
    seq_len: int = Field(description="tokens per sequence")
    world_size: int = Field(description="GPUs in total")
    nodes: int = Field(description="nodes")
    gpus_per_node: int = Field(description="GPUs per node")
    gpu_bf16: bool = Field(description="the GPU supports bf16")
    require_full_finetune: bool = Field(description="policy: only full fine-tuning is acceptable")
    method_pinned: bool = Field(description="the plan pins the method")
    nvme_path_set: bool = Field(description="the plan names an NVMe path")
    # The model
    total_params_b: float = Field(description="parameters of the model that trains, billions")
    trainable_params_b: float = Field(description="parameters receiving gradients, billions")
    base_quantization: str = Field("", description="the checkpoint's own quantisation (config.json quantization_config), e.g. gptq-4bit-g128; '' for a 16-bit checkpoint")
    modules_to_save_b: float = Field(0.0, description="parameters of training.lora.modules_to_save trained in full, billions")
    # The estimate against capacity and policy
    gpu_peak_gib: float = Field(description="estimated peak GPU memory per device")
    gpu_capacity_gib: float = Field(description="GPU memory per device")
    gpu_usage: float = Field(description="gpu_peak_gib / gpu_capacity_gib")
    gpu_peak_phase: str = Field("forward/backward", description="the moment of the GPU peak: forward/backward | optimizer step | initialisation (ZeRO-3 on a model built whole) | end of backward (FSDP; ZeRO-1's gradients that bypass the bucket)")
    gpu_peak_upper_gib: float = Field(description="gpu_peak_gib x the upper conformal residual ratio of the strategy's family at policy.band_quantile (engine/memory/band.json, bench/band.py)")
    gpu_usage_upper: float = Field(description="gpu_peak_upper_gib / gpu_capacity_gib (above 1.0: the band's upper end exceeds the card)")
    gpu_headroom: float = Field(description="policy: fraction of GPU memory kept free")
    gpu_budget: float = Field(description="1 - gpu_headroom: usable fraction of GPU memory")
    gpu_margin: float = Field(description="gpu_budget - gpu_usage (negative: over budget)")
    gpu_budget_gib: float = Field(description="gpu_capacity_gib x gpu_budget")
    gpu_excess_gib: float = Field(description="gpu_peak_gib - gpu_budget_gib (positive: over budget by this much)")
    host_peak_gib: float = Field(description="estimated peak host RAM per node")
    host_capacity_gib: float = Field(description="host RAM per node")
    host_usage: float = Field(description="host_peak_gib / host_capacity_gib")
    host_headroom: float = Field(description="policy: fraction of host RAM kept free")
    host_budget: float = Field(description="1 - host_headroom")
    host_margin: float = Field(description="host_budget - host_usage")
    host_budget_gib: float = Field(description="host_capacity_gib x host_budget")
    host_excess_gib: float = Field(description="host_peak_gib - host_budget_gib (positive: over budget by this much)")
    nvme_needed_gib: float = Field(description="NVMe space the offload needs per node")
    nvme_capacity_gib: float = Field(description="free NVMe per node")
    activation_share: float = Field(description="activations + logits as a fraction of the GPU peak")
    # Neighbours in the search space (same strategy with one choice changed), judged by the reject rules.
    # Relational: computed from a first pass of the reject rules without these facts (engine/search/feasibility.py).
    feasible_without_checkpointing: bool = Field(
        description="the same strategy without checkpointing passes every reject rule")
    feasible_without_offload: bool = Field(
        description="the same ZeRO stage without any offload passes every reject rule")
    feasible_pinned: bool = Field(description="the same strategy with pinned memory passes every reject rule")
    lower_stage_feasible: bool = Field(
        description="a lower ZeRO stage, same method, no offload, passes every reject rule")
    lora_feasible: bool = Field(description="some LoRA candidate of this plan passes every reject rule")
    # Measured evidence (logs of real runs)
    measured: bool = Field(description="measured facts apply to this plan")
    measured_oom: bool = Field(description="a measured OOM rules this candidate out")
    measured_oom_source: str = Field(description="FILE:LINE of the OOM evidence, or ''")
    measured_ratio: float = Field(description="measured / estimated peak for this plan family (0: none)")
    measured_ratio_source: str = Field("", description="where that measured peak was read: FILE:LINE of a log, or a store record; '' if none")
    fragmentation_seen: bool = Field(description="a measured OOM showed large reserved-but-unallocated memory")
    # Data pipeline
    dataset_gib: float = Field(description="tokenised data set size")
    dataset_host_share: float = Field(description="private data-pipeline bytes per node (data set copies, dataloader workers, batches in flight) / host RAM")
    streaming: str = Field(description="plan's data.streaming: auto | true | false")
    data_format: str = Field("in_memory", description="resolved data.format: arrow_mmap | in_memory | python_objects | streaming")
    dataloader_workers: int = Field(0, description="plan's data.dataloader_workers per rank")
    dataset_private_gib: float = Field(0.0, description="private copies of the data set per node (what the OOM killer counts)")
    dataset_page_cache_gib: float = Field(0.0, description="memory-mapped data set in the page cache per node (shared, reclaimable)")
    host_free_gib: float = Field(0.0, description="host_capacity_gib - host_peak_gib: room left for the page cache")
    # Sharding engine (rules/sharding.yaml): DeepSpeed ZeRO or PyTorch FSDP
    sharding: str = Field("deepspeed", description="sharding engine: deepspeed | fsdp")
    fsdp_version: int = Field(0, description="FSDP 1 (flat parameters) or 2 (fully_shard, DTensor); 0 for DeepSpeed")
    fsdp_sharding: str = Field("", description="FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD; '' for DeepSpeed")
    engines_compared: bool = Field(False, description="the search holds both engines (training.sharding: any)")
    zero_init: bool = Field(True, description="ZeRO-3 builds the model partitioned (deepspeed.zero.Init; training.zero_init or the framework's default); false: the whole model lands on every GPU before the partitioning")
    deepspeed_feasible: bool = Field(False, description="some DeepSpeed candidate passes every reject rule")
    fsdp_feasible: bool = Field(False, description="some FSDP candidate passes every reject rule")


FACT_TYPES: dict[str, type] = {
    name: field.annotation for name, field in CandidateFacts.model_fields.items()  # type: ignore[misc]
}


def to_message(facts: CandidateFacts) -> dict[str, Any]:
    """The plain mapping handed to an evaluator."""
    return facts.model_dump()


def facts_reference_markdown() -> str:
    """docs/reference/facts.md, generated from the field descriptions (tests keep the page in sync)."""
    lines = ["# Facts vocabulary", "",
             "The facts a rule may name (`memfit.engine.policy.vocabulary.CandidateFacts`), one record per candidate.",
             "Generated by `memfit.engine.policy.vocabulary.facts_reference_markdown()`; tests/test_docs.py fails when",
             "this page is stale.", "", "| fact | type | meaning |", "|---|---|---|"]
    for name, field in CandidateFacts.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {FACT_TYPES[name].__name__} | {meaning} |")
    return "\n".join(lines) + "\n"
