"""The plan file's typed model, `Plan`: the contract (v1, documented in docs/reference/plan-format.md);
schemas/plan.schema.json is generated from it. Reading a file and reporting its problems is load.py.
"""
from __future__ import annotations

import difflib
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..core.errors import ModelSpecError
from ..machine.gpus import find_gpu, GPUS
from ..core.units import parse_size_gib
from .quantization import parse_quantization
from .strategy import Method, Offload  # one definition of the strategy's choices

Auto = Literal["auto"]
Size = Union[float, str]


class _Strict(BaseModel):
    # strict: a YAML `true` is never read as 1 GiB, nor "false" as True; no NaN or infinities.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Plausible ranges (docs/reference/limits.md): beyond them a value is a typo, and a huge one would
# cost time or memory (a hostfile line per node, a search over micro-batch sizes).
MAX_GPUS_PER_NODE = 1024
MAX_NODES = 100_000
MAX_GPU_MEMORY_GIB = 4096.0          # per device; the largest shipping GPUs have < 300 GiB
MAX_HOST_MEMORY_GIB = 2.0**20        # 1 PiB per node
MAX_STORAGE_GIB = 2.0**30            # 1 EiB: NVMe per node, data set size
MAX_PATH_CHARS = 4096                # PATH_MAX on Linux
MAX_LIST_ENTRIES = 256               # rules:, measured:, target_modules
MAX_UNKNOWN_KEY_HINTS = 20           # did-you-mean suggestions computed per plan (difflib is O(n*m))


def _size_in(value: object, low: float, high: float, gb_means_gib: bool = False, low_ok: bool = False) -> None:
    """Raise ValueError unless low < size <= high (low <= size with low_ok)."""
    negative = isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0
    size = low - 1 if negative else parse_size_gib(value, gb_means_gib=gb_means_gib)
    if size < low or (size == low and not low_ok):
        raise ValueError(f"must be {'>=' if low_ok else '>'} {low:g}")
    if size > high:
        raise ValueError(f"must be at most {high:g} GiB (a plausible size)")


class Hardware(_Strict):
    gpu: str | None = Field(None, description="GPU catalogue name that fills gpu_memory, e.g. H100-SXM-80GB")
    gpu_memory: Size | None = Field(None, description="per GPU: a number (GiB) or a string with a unit; GPU 'GB' means GiB")
    gpus_per_node: int = Field(1, ge=1, le=MAX_GPUS_PER_NODE)
    nodes: int = Field(1, ge=1, le=MAX_NODES)
    host_memory: Size = Field(..., description="host RAM per node; a number is GiB, '744GB' is SI")
    nvme: Size = Field(0.0, description="free NVMe per node for ZeRO-Infinity")
    nvme_path: str | None = Field(None, max_length=MAX_PATH_CHARS, description="mount point of the NVMe used for offload")
    bf16: bool | None = Field(None, description="whether the GPU supports bf16; default from the catalogue, else true")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str | None) -> str | None:
        if v is not None and find_gpu(v) is None:
            close = difflib.get_close_matches(v.lower(), list(GPUS), n=1)
            hint = f"; did you mean '{GPUS[close[0]].name}'?" if close else ""
            raise ValueError(f"unknown GPU '{v}'{hint} (or give gpu_memory instead)")
        return v

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_size(cls, v: Size | None) -> Size | None:
        if v is not None:
            _size_in(v, 0, MAX_GPU_MEMORY_GIB, gb_means_gib=True)
        return v

    @field_validator("host_memory")
    @classmethod
    def _host_size(cls, v: Size) -> Size:
        _size_in(v, 0, MAX_HOST_MEMORY_GIB)
        return v

    @field_validator("nvme")
    @classmethod
    def _nvme_size(cls, v: Size) -> Size:
        _size_in(v, 0, MAX_STORAGE_GIB, low_ok=True)
        return v

    @model_validator(mode="after")
    def _memory_known(self) -> "Hardware":
        if self.gpu is None and self.gpu_memory is None:
            raise ValueError("give gpu_memory (per GPU) or a catalogue gpu name")
        return self

    @property
    def gpu_memory_gib(self) -> float:
        if self.gpu_memory is not None:
            return parse_size_gib(self.gpu_memory, gb_means_gib=True)
        spec = find_gpu(self.gpu or "")
        assert spec is not None  # checked by the validators
        return spec.memory_gib

    @property
    def host_memory_gib(self) -> float:
        return parse_size_gib(self.host_memory)

    @property
    def nvme_gib(self) -> float:
        return parse_size_gib(self.nvme)

    @property
    def supports_bf16(self) -> bool:
        if self.bf16 is not None:
            return self.bf16
        spec = find_gpu(self.gpu) if self.gpu else None
        return spec.bf16 if spec else True

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


class Lora(_Strict):
    rank: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32, gt=0, le=1e6)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Union[str, list[str]] = Field(  # an empty list would train nothing: refused
        "all-linear", description="'all-linear' (every Linear in the decoder layers), one module name, or a list")

    @field_validator("target_modules")
    @classmethod
    def _one_name_is_a_list(cls, v: str | list[str]) -> str | list[str]:
        # peft accepts one module name as a string; memfit counts it as a one-element list.
        names = [v] if isinstance(v, str) else v
        if not names:
            raise ValueError("must name at least one module, or be 'all-linear' (an empty list trains nothing)")
        if len(names) > MAX_LIST_ENTRIES or any(not n.strip() or len(n) > 200 for n in names):
            raise ValueError(f"at most {MAX_LIST_ENTRIES} non-empty module names of up to 200 characters")
        return v if v == "all-linear" or isinstance(v, list) else [v]

    use_dora: bool = Field(
        False, description="peft's DoRA (LoraConfig use_dora): a trained magnitude vector per adapted Linear and "
                           "the extra tensors its forward keeps (docs/explanation/activations.md)")
    modules_to_save: list[str] = Field(
        default_factory=list, max_length=MAX_LIST_ENTRIES,
        description="peft modules_to_save: modules trained in full besides the adapters (embed_tokens, lm_head)")
    quantization_config: dict[str, Any] | None = Field(
        None, description="the frozen base's quantisation for method qlora, in transformers' quantization_config "
                          "keys (quant_method bitsandbytes + load_in_8bit, gptq + bits/group_size, ...); default "
                          "bitsandbytes NF4 with double quantisation. A checkpoint's own quantization_config wins")

    @field_validator("quantization_config")
    @classmethod
    def _known_quantization(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            try:
                parse_quantization(v, "")
            except ModelSpecError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("modules_to_save")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        if any(not n.strip() or len(n) > 200 for n in v):
            raise ValueError("each module name is non-empty, at most 200 characters")
        return v


class Loss(_Strict):
    """Cross-entropy options; a key left out takes training.framework's default (engine/plan/frameworks.yaml)."""

    implementation: Literal["standard", "chunked", "fused_linear"] | None = Field(
        None, description="standard: full fp32 logits (transformers ForCausalLMLoss); chunked: token chunks "
                          "(torchtune CEWithChunkedOutputLoss); fused_linear: lm_head + loss fused (Liger, cut-cross-entropy)")
    chunks: int | None = Field(None, ge=1, le=1024, description="token chunks of the chunked loss (torchtune: 8)")
    logits_dtype: Literal["fp32", "bf16"] | None = Field(None, description="fp32: the loss upcasts the logits; bf16: it does not")
    softcapping: Union[bool, Auto] = Field("auto", description="final-logit softcapping; auto: from the model config")


class DeepSpeedKnobs(_Strict):
    """The zero_optimization knobs a run sets itself, in DeepSpeed's own key names; a key left out takes
    the value memfit writes (engine/core/ds_defaults.py zero_knobs: hidden-size buckets, overlap_comm
    and contiguous_gradients on). memfit estimates with them and writes them into its JSON."""

    reduce_bucket_size: float | None = Field(None, ge=1, le=2.0**40, description="elements (2e8, 5e8 ...)")
    overlap_comm: bool | None = None
    contiguous_gradients: bool | None = None
    stage3_prefetch_bucket_size: float | None = Field(None, ge=0, le=2.0**40)
    stage3_param_persistence_threshold: float | None = Field(None, ge=0, le=2.0**40)
    stage3_max_live_parameters: float | None = Field(None, ge=0, le=2.0**40)
    stage3_max_reuse_distance: float | None = Field(None, ge=0, le=2.0**40)
    sub_group_size: float | None = Field(None, ge=1, le=2.0**40)

    @field_validator("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                     "stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size", mode="before")
    @classmethod
    def _whole_elements(cls, v: object) -> object:
        # YAML reads 2e8 as a float; a count of elements must still be whole. Booleans are not counts.
        if isinstance(v, bool) or (isinstance(v, float) and v != int(v)):
            raise ValueError("must be a whole number of elements")
        return float(v) if isinstance(v, int) else v

    def given(self) -> dict[str, int | bool]:
        """The keys the plan sets, as DeepSpeed reads them: counts as whole ints, switches as bools."""
        return {k: v if isinstance(v, bool) else int(v) for k, v in self.model_dump().items() if v is not None}


class Training(_Strict):
    method: Union[Method, Auto] = "auto"
    seq_len: int = Field(2048, ge=1, le=2**24)
    micro_batch_size: Union[int, Auto] = "auto"
    global_batch_size: int | None = Field(None, ge=1, le=2**24)
    precision: Literal["auto", "bf16", "fp16", "fp32", "pure_bf16"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp16 with loss scaling")
    load_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the base weights are loaded and kept in (from_pretrained's dtype; litgpt's "
                            "bf16-mixed: fp32); auto: fp32 under precision fp32, else 16-bit. fp32 with a 16-bit "
                            "precision means autocast over fp32 weights (LoRA/QLoRA frozen base, FSDP shards); "
                            "DeepSpeed from ZeRO-1 on casts the model and ignores it")
    optimizer: Literal["adamw", "adamw_fused", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "lion", "lion_8bit",
                       "adafactor", "sgd"] = Field(
        "adamw", description="adamw: torch AdamW (foreach); adamw_fused: fused=True; *_8bit and paged_*: "
                             "bitsandbytes (paged: states in CUDA unified memory)")
    gradient_checkpointing: Union[bool, Auto] = "auto"
    attention: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    lora: Lora = Lora()
    zero_stage: Union[Literal[0, 1, 2, 3], Auto] = "auto"
    offload_optimizer: Union[Offload, Auto] = "auto"
    offload_param: Union[Offload, Auto] = "auto"
    framework: Literal["hf-trainer", "trl", "axolotl", "llamafactory", "torchtune", "unsloth"] = Field(
        "hf-trainer", description="training stack whose defaults apply (engine/plan/frameworks.yaml)")
    loss: Loss = Loss()
    kernels: Literal["none", "liger"] = Field(
        "none", description="liger: Liger's RMSNorm, SwiGLU and RoPE kernels in the decoder layers (HF Trainer "
                            "use_liger_kernel, axolotl's LigerPlugin, LLaMA-Factory enable_liger_kernel); they save "
                            "less for backward than transformers' modules. Liger's loss is training.loss")
    activation_offloading: bool | None = Field(None, description="checkpointed layer inputs in pinned host memory; "
                                                                 "default: the framework's")
    kbit_upcast: bool | None = Field(None, description="QLoRA: non-quantised parameters upcast to fp32 (peft "
                                                       "prepare_model_for_kbit_training); default: the framework's")
    expandable_segments: bool = Field(False, description="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    deepspeed: DeepSpeedKnobs = Field(
        default_factory=DeepSpeedKnobs, description="zero_optimization knobs the run sets itself (DeepSpeed's "
                                                    "names: reduce_bucket_size, overlap_comm, stage3_...)")
    checkpoint_policy: Literal["full", "selective_op"] = Field(
        "full", description="what a checkpointed decoder layer keeps for backward: full = only its input (HF "
                            "gradient_checkpointing, torchtune, torchtitan's 'full'); selective_op = also the "
                            "outputs of attention and of every other matmul (torchtitan's per-op selective AC, "
                            "its default); only with gradient checkpointing on")
    compile: bool = Field(
        False, description="torch.compile of the model and its loss (HF Trainer torch_compile, torchtune and "
                           "torchtitan compile, axolotl torch_compile): layers and the standard or chunked loss "
                           "keep what inductor's partitioner saves (engine/memory/compiled.py)")
    sync_each_batch: bool | None = Field(
        None, description="FSDP with gradient accumulation: true = gradients reduce-scattered after every "
                          "micro-batch (accelerate's gradient_accumulation_kwargs sync_each_batch, torchtune); "
                          "false = no_sync, the unsharded gradients kept until the last micro-batch (HF "
                          "Trainer's default); default: the framework's")
    zero_init: bool | None = Field(
        None, description="ZeRO-3: the model is built inside deepspeed.zero.Init, each rank creating only its "
                          "partition (the HF Trainer when TrainingArguments carry the DeepSpeed config before "
                          "from_pretrained; accelerate's zero3_init_flag); false = built whole, so DeepSpeed "
                          "moves the whole 16-bit model onto every GPU before partitioning it (a loop calling "
                          "deepspeed.initialize on a plain from_pretrained model); default: the framework's")
    fsdp_lora_wrap: Literal["separate", "layer"] = Field(
        "separate", description="FSDP1 LoRA: separate = the adapters in units of their own (peft's "
                                "fsdp_auto_wrap_policy, which transformers' Trainer applies); layer = inside each "
                                "decoder layer's FlatParameter (use_orig_params, wrap by layer class only: litgpt, "
                                "custom loops), whose gradient then covers the frozen weights too")
    fsdp_limit_all_gathers: bool = Field(
        True, description="FSDP1's rate limiter (FullyShardedDataParallel limit_all_gathers, default true since "
                          "torch 2.1 and in accelerate); false lets the CPU issue every all-gather ahead of the GPU, "
                          "so up to the whole unsharded model is held (FSDP1 only)")
    sharding: Literal["auto", "deepspeed", "fsdp", "fsdp1", "fsdp2", "any", "none"] = Field(
        "auto", description="sharding engine: auto = deepspeed; fsdp = PyTorch FSDP (either version), fsdp1 | fsdp2 "
                            "pin the version; any = both engines, ranked by the rules; none = no sharding (ZeRO-0)")

    @model_validator(mode="after")
    def _load_dtype_agrees(self) -> "Training":
        # pure_bf16 means bf16 weights with no autocast, fp32 means fp32 weights: a load dtype that
        # says otherwise describes a different run.
        if self.load_dtype == "fp32" and self.precision == "pure_bf16":
            raise ValueError("load_dtype: fp32 contradicts precision: pure_bf16 (bf16 weights); for fp32 "
                             "weights under bf16 autocast use precision: bf16")
        if self.load_dtype in ("bf16", "fp16") and self.precision == "fp32":
            raise ValueError(f"load_dtype: {self.load_dtype} contradicts precision: fp32 (fp32 weights)")
        return self

    @field_validator("micro_batch_size")
    @classmethod
    def _positive_batch(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 2**16:
            raise ValueError("must be between 1 and 65536, or 'auto'")
        return v


# The levels engine/memory/band.json holds (bench/band.py LEVELS).
BAND_LEVELS = (0.8, 0.9)


class Policy(_Strict):
    require_full_finetune: bool = False
    gpu_headroom: float = Field(0.2, ge=0, lt=1, description="fraction of GPU capacity kept free")
    host_headroom: float = Field(0.25, ge=0, lt=1, description="fraction of host RAM kept free")
    max_micro_batch_size: int = Field(64, ge=1, le=2**16, description="upper end of the micro-batch search")
    # A float with a validator, not Literal[0.8, 0.9]: type checkers refuse float literals.
    # 0.9 since tag freeze-s6: on the 316 calibration verdicts of sets 1-9 it leaves 6 runs that ran out
    # of memory called "fits" against 0.8's 9 (bench/band.py --verdicts); fewest unsafe fits first.
    band_quantile: float = Field(
        0.9, json_schema_extra={"enum": list(BAND_LEVELS)},
        description="coverage of the error band's upper end, which rule gpu-upper-over-capacity compares "
                    "with the card: 0.8 or 0.9 (split-conformal quantiles of out-of-sample residuals)")

    @field_validator("band_quantile")
    @classmethod
    def _band_level(cls, v: float) -> float:
        if v not in BAND_LEVELS:
            raise ValueError(f"must be one of {', '.join(map(str, BAND_LEVELS))}, the levels the error band is shipped at")
        return v


class Data(_Strict):
    dataset_size: Size = Field(0.0, description="tokenised data set size on disk/in memory")
    dataloader_workers: int = Field(2, ge=0, le=4096)
    preprocessing_workers: int = Field(1, ge=1, le=4096, description="tokenisation processes (datasets map num_proc)")
    streaming: Union[bool, Auto] = "auto"
    packing: bool | None = Field(None, description="sequences packed to seq_len; default: the framework's")
    padding: Literal["auto", "longest", "max_length"] = Field(
        "auto", description="longest: each batch padded to its longest sequence (DataCollatorWithPadding's "
                            "default: variable shapes); max_length: every batch padded to seq_len; auto: not "
                            "known, the allocator rate memfit is calibrated with (as max_length)")
    format: Literal["auto", "arrow_mmap", "in_memory", "python_objects", "streaming"] = Field(
        "auto", description="how each rank holds the data set: arrow_mmap (datasets' memory-mapped cache, page "
                            "cache), in_memory (a private copy per rank), python_objects (a list of Python "
                            "samples: a copy per rank and per dataloader worker), streaming; auto: streaming "
                            "if streaming is true, else in_memory")
    prefetch_factor: int | None = Field(None, ge=1, le=4096, description="batches each dataloader worker "
                                        "prefetches; default 2 with workers (torch DataLoader)")
    pin_memory: bool = Field(True, description="page-locked batch copies "
                                               "(HF Trainer dataloader_pin_memory, default true)")

    @field_validator("dataset_size")
    @classmethod
    def _data_size(cls, v: Size) -> Size:
        _size_in(v, 0, MAX_STORAGE_GIB, low_ok=True)
        return v

    @property
    def dataset_gib(self) -> float:
        return parse_size_gib(self.dataset_size)

    @property
    def effective_prefetch_factor(self) -> int:
        """prefetch_factor, or torch DataLoader's default of 2 when there are workers (0 without)."""
        if self.prefetch_factor is not None:
            return self.prefetch_factor
        return 2 if self.dataloader_workers > 0 else 0

    @model_validator(mode="after")
    def _streaming_agrees(self) -> "Data":
        if self.streaming is True and self.format not in ("auto", "streaming"):
            raise ValueError(f"streaming: true contradicts format: {self.format}")
        if self.prefetch_factor is not None and self.dataloader_workers == 0:
            raise ValueError("prefetch_factor needs dataloader_workers > 0 (torch DataLoader refuses it)")
        return self


class Plan(_Strict):
    model: Union[str, dict[str, Any]] = Field(
        ..., description="HF id | path to config.json or its folder | inline mapping of config.json fields")
    hardware: Hardware
    training: Training = Training()
    policy: Policy = Policy()
    data: Data = Data()
    rules: list[str] = Field(default_factory=list, max_length=MAX_LIST_ENTRIES, description="extra rule directories, relative to the plan")
    measured: list[str] = Field(default_factory=list, max_length=MAX_LIST_ENTRIES, description="logs of real runs, relative to the plan")
    # Folder that relative paths (model, rules, measured) are read from; set by load_plan. Private: not
    # a plan key, not in the schema.
    _base_dir: str = PrivateAttr(".")
    _source: str = PrivateAttr("<plan>")

    @property
    def base_dir(self) -> str:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    @field_validator("rules", "measured")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        if any(not 0 < len(p) <= MAX_PATH_CHARS for p in v):
            raise ValueError(f"each path has 1 to {MAX_PATH_CHARS} characters")
        return v

    @field_validator("model")
    @classmethod
    def _inline_needs_type(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(v, str) and not 0 < len(v) <= MAX_PATH_CHARS:
            raise ValueError(f"a model id or path has 1 to {MAX_PATH_CHARS} characters (got {len(v):,})")
        if isinstance(v, dict) and "model_type" not in v:
            raise ValueError("an inline model mapping needs model_type (e.g. llama, qwen2)")
        return v
