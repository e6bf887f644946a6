"""Parameter facts of the model that trains (*ForCausalLM, lm_head included unless tied), offline.

A model spec is resolved, in order, as: an inline mapping of config.json fields; an id of the bundled
catalogue (engine/model/catalogue/models.json); a path to a config.json or its folder; a Hugging Face id in
the local HF cache. Counts are closed forms (engine/model/arch.py: no torch, a few milliseconds) where
one exists, else a meta-device count of the module tree (engine/model/meta.py) stored on disk by config
hash (engine/model/cache.py), so torch is imported only on the first use of a new config
(engine/model/counting.py). `meta_device_count` is the independent, slow oracle.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import arch, counting
from .meta import meta_device_count
from ..core.errors import ModelSpecError, ModelNotFoundError, about
from ..core.inputs import CONFIG_MAX_BYTES, load_json, read_text

if TYPE_CHECKING:
    from ..plan.schema import Plan


@dataclass(frozen=True)
class ModelSpec:
    """Parameter facts of one *ForCausalLM model. Counts are parameter elements, not bytes."""

    name: str
    model_type: str
    source: str  # "catalogue" | "path" | "inline" | "hf-cache"
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    num_experts: int
    experts_per_token: int
    total_params: int
    active_params: int
    largest_layer_params: int
    embedding_params: int
    lm_head_params: int
    linear_layers: tuple[arch.LinearLayer, ...]
    config: Mapping[str, Any] = field(repr=False, compare=False)
    # Parameters outside the text model (a multimodal wrapper's vision tower and projector): held in
    # memory as frozen weights, never trained or targeted by LoRA here.
    frozen_extra_params: int = 0
    # MoE (0 for dense models): expert width, shared experts (their total width), layers with experts.
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    num_moe_layers: int = 0
    # Multi-head latent attention (deepseek_v2/v3; 0 otherwise). head_dim is then qk_nope + qk_rope.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    counted_by: str = "closed-form"  # | "meta-device" (engine/model/meta.py, cached by engine/model/cache.py)

    @property
    def mlp_width_per_token(self) -> float:
        """MLP intermediate width one token passes through, averaged over the decoder layers.

        Dense: intermediate_size. MoE: experts_per_token routed experts of moe_intermediate_size plus
        the shared experts in each MoE layer, intermediate_size in the dense layers (DeepSeek's
        first_k_dense_replace, Qwen-MoE's mlp_only_layers / decoder_sparse_step).
        """
        if not self.num_experts:
            return float(self.intermediate_size)
        moe = self.experts_per_token * (self.moe_intermediate_size or self.intermediate_size)
        moe += self.shared_expert_intermediate_size
        dense = self.num_layers - self.num_moe_layers
        return (self.num_moe_layers * moe + dense * self.intermediate_size) / max(self.num_layers, 1)

    @property
    def mla_activation_width(self) -> int:
        """Per-token widths of the attention tensors MLA keeps (0 when not MLA).

        q and k at heads x (qk_nope + qk_rope), v and the attention output at heads x v_head_dim, the
        compressed KV latent plus the shared rope key (kv_lora_rank + qk_rope), and the q latent
        (q_lora_rank) when q is factorised (modeling_deepseek_v2.DeepseekV2Attention.forward).
        """
        if not self.kv_lora_rank:
            return 0
        a = self.num_attention_heads
        return (2 * a * self.head_dim + 2 * a * self.v_head_dim + self.kv_lora_rank + self.qk_rope_head_dim
                + self.q_lora_rank)

    def lora_trainable_params(self, rank: int, target_modules: str | Sequence[str] = "all-linear") -> int:
        """LoRA adapter parameters (A: r x in, B: out x r per targeted weight), as peft 0.21 counts them.

        Args:
            rank: LoRA rank r (> 0).
            target_modules: "all-linear" (every Linear in the decoder layers, never lm_head, as peft
                does; for MoE also the router and fused experts) or names matched as peft does:
                equal to, or a dotted suffix of, the module path ("q_proj", "self_attn.q_proj",
                "query_key_value"), or a transformers-4 name peft converts (Mixtral w1/w2/w3/gate);
                "lm_head" adapts the output layer (hidden x vocabulary).
        Returns:
            Trainable parameter count.
        Raises:
            ModelSpecError: rank not positive, a target that names no Linear of this model, or
                one half of a fused pair (peft refuses w1 without w3).
        """
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ModelSpecError(f"{self.name}: LoRA rank must be a positive integer (got {rank!r})")
        return sum(rank * x.lora_rank_factor * (x.in_features + x.out_features) * x.count
                   for x in self._targeted(target_modules))

    def quantizable_params(self) -> int:
        """Weights that QLoRA stores in 4 bit: Linear weights inside the decoder layers, experts included.

        Embeddings, lm_head, norms, biases and MoE routers stay in 16 bit. Expert weights count as
        quantised: transformers 4.x builds each expert from nn.Linear, which bitsandbytes replaces, and
        a published Mixtral QLoRA run peaked at 43.2 GiB on one A100 (fms-acceleration benchmark,
        bench/cases/published_extra.yaml), which only a 4-bit expert store explains. transformers 5
        fuses experts into 3-D parameters; whether bitsandbytes quantises those is version-dependent.
        """
        return sum(x.weight_params for x in self.linear_layers if x.kind in ("linear", "expert"))

    def _targeted(self, target_modules: str | Sequence[str]) -> list[arch.LinearLayer]:
        if target_modules == "all-linear":
            return [x for x in self.linear_layers if x.all_linear]
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        # The output layer is a Linear too: peft adapts it when named ("lm_head"), never under "all-linear".
        # The input embedding takes peft's lora.Embedding when named ("embed_tokens"): lora_embedding_A
        # is r x vocab and lora_embedding_B hidden x r, so it counts as a vocab-in, hidden-out layer
        # (its adapter output, tokens x r, is too small to store as an activation term).
        layers = [*self.linear_layers,
                  arch.LinearLayer(name="lm_head", in_features=self.hidden_size, out_features=self.vocab_size,
                                   count=1, all_linear=False),
                  arch.LinearLayer(name="embed_tokens", in_features=self.vocab_size,
                                   out_features=self.hidden_size, count=1, kind="embedding", all_linear=False)]

        def hit(x: arch.LinearLayer, t: str) -> bool:
            return x.name == t or x.name.endswith("." + t) or t in x.aliases

        missing = [t for t in targets if not any(hit(x, t) for x in layers)]
        if missing:
            names = ", ".join(x.name.rsplit(".", 1)[-1] for x in layers)
            raise ModelSpecError(f"{self.name}: LoRA target_modules {missing} match no Linear layer "
                                  f"of this {self.model_type} model; its Linear layers are: {names}")
        chosen = [x for x in layers if any(hit(x, t) for t in targets)]
        for x in chosen:
            named = [a for a in x.aliases if a in targets]
            if len(x.aliases) > 1 and named and len(named) < len(x.aliases):
                raise ModelSpecError(f"{self.name}: LoRA target {named} is fused with "
                                      f"{sorted(set(x.aliases) - set(named))} into {x.name}; target all of them")
        return chosen


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, Any]:
    text = resources.files("memfit.engine.model.catalogue").joinpath("models.json").read_text(encoding="utf-8")
    catalogue: dict[str, Any] = json.loads(text)
    return catalogue


def catalogue_ids() -> list[str]:
    """Every id the bundled catalogue answers, aliases included, sorted."""
    cat = _catalogue()
    return sorted([*cat["models"], *cat["aliases"]])


def _catalogue_config(model_id: str) -> dict[str, Any] | None:
    cat = _catalogue()
    if model_id in cat["models"]:
        return dict(cat["models"][model_id])
    alias = cat["aliases"].get(model_id)
    if alias is None:
        return None
    return {**cat["models"][alias["same_as"]], **alias.get("overrides", {}), "_source": alias["_source"]}


def _hf_hub_dirs() -> list[Path]:
    """Where huggingface_hub keeps its cache, in its own order of precedence."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return [Path(env["HF_HUB_CACHE"]).expanduser()]
    if env.get("HUGGINGFACE_HUB_CACHE"):  # the older name, still honoured by huggingface_hub
        return [Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()]
    if env.get("HF_HOME"):
        return [Path(env["HF_HOME"]).expanduser() / "hub"]
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [Path(xdg).expanduser() / "huggingface" / "hub"]


def _hf_cache_config(model_id: str) -> Path | None:
    if model_id.count("/") != 1:
        return None
    for hub in _hf_hub_dirs():
        repo = hub / ("models--" + model_id.replace("/", "--"))
        ref = repo / "refs" / "main"
        if ref.is_file():  # the snapshot `main` points at, as huggingface_hub resolves it
            pinned = repo / "snapshots" / ref.read_text(encoding="utf-8").strip() / "config.json"
            if pinned.is_file():
                return pinned
        found = sorted(repo.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def _read_config_file(path: Path) -> dict[str, Any]:
    data = load_json(read_text(path, "the model config", ModelSpecError, CONFIG_MAX_BYTES), str(path), ModelSpecError)
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: expected a JSON object of config fields")
    return data


def _local_path(spec: str, base_dir: str | Path) -> Path | None:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ModelNotFoundError(f"{path.parent}: folder has no config.json")
    return path if path.is_file() else None


def _not_found(spec: str) -> ModelNotFoundError:
    close = difflib.get_close_matches(spec, catalogue_ids(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelNotFoundError(
        f"model {spec!r}: not in the bundled catalogue, not a local config.json or folder, and not in "
        f"the local Hugging Face cache ({', '.join(str(d) for d in _hf_hub_dirs())}).{hint} Give a path to "
        f"the model's config.json, or its fields inline under `model:` (model_type, hidden_size, ...).")


def resolve_model(spec: str | Mapping[str, Any], base_dir: str | Path = ".") -> ModelSpec:
    """Resolve a model spec to its parameter facts, offline and without importing torch.

    Args:
        spec: a catalogue id ("Qwen/Qwen2.5-32B-Instruct"), a path to a config.json or its folder,
            a Hugging Face id present in the local HF cache, or a mapping of config.json fields
            (must include model_type).
        base_dir: folder that relative paths are read from (the plan file's folder).
    Returns:
        ModelSpec of the *ForCausalLM model.
    Raises:
        ModelNotFoundError: spec names nothing that can be found (with close catalogue ids).
        ModelSpecError: the config lacks model_type or counting keys, or its model_type has no
            closed form here.
    """
    if isinstance(spec, Mapping):
        return spec_from_config(spec, name=str(spec.get("_name_or_path") or "inline config"), source="inline")
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotFoundError(f"model: expected a model id, a path or a mapping of config fields (got {spec!r})")
    spec = spec.strip()
    cfg = _catalogue_config(spec)
    if cfg is not None:
        return spec_from_config(cfg, name=spec, source="catalogue")
    path = _local_path(spec, base_dir)
    if path is not None:
        return spec_from_config(_read_config_file(path), name=str(path), source="path")
    cached = _hf_cache_config(spec)
    if cached is not None:
        return spec_from_config(_read_config_file(cached), name=spec, source="hf-cache")
    raise _not_found(spec)


def spec_from_config(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    """Count a config mapping: closed form, else a bundled, cached or fresh meta-device count.

    Args:
        cfg: config.json fields.
        name: what to call the model in facts and messages (the file, for a config read from disk).
        source: where the config came from ("catalogue", "path", "inline", "hf-cache").
    Returns:
        ModelSpec.
    Raises:
        ModelSpecError: no model_type, bad counting keys, or a model_type transformers does not know or
            cannot build (engine/model/counting.py).
    """
    mtype = cfg.get("model_type")
    if not mtype or not isinstance(mtype, str):
        raise ModelSpecError(f"{name}: model_type: missing; add it (a transformers model type such as "
                             f"{', '.join(arch.SUPPORTED_TYPES[:4])}, ...)")
    counts = counting.count_config(cfg, name)
    return ModelSpec(name=name, model_type=mtype, source=source, config=dict(cfg), **counts)


def plan_model(plan: Plan) -> ModelSpec:
    """`resolve_model` for a plan's `model:` key; each problem starts "PLAN_FILE: model: ".

    Raises:
        ModelNotFoundError, ModelSpecError: as resolve_model, prefixed with the plan file and key.
    """
    with about(f"{plan.source}: model"):
        return resolve_model(plan.model, plan.base_dir)
