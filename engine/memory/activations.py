"""Activation, logits and loss memory per GPU, from config fields (no torch).

Every term was read off a probe trace (engine/probe/probe.py: one real HF training step on fake tensors,
transformers 5, bf16, Llama/Qwen2 decoder layers) and is checked against it in
tests/test_activations.py; docs/explanation/activations.md lists each term, where it comes from, and
the measured formula-vs-probe table. Units: bytes; s = seq_len, b = micro-batch, h = hidden,
a = heads, kv = KV heads, I = intermediate, V = vocab, r = LoRA rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .arch_terms import dropout_per_token, layer_per_token
from .compiled import layer_per_token as compiled_layer_per_token
from .loss import loss_bytes, standard_loss_bytes

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.stack import Stack

# Input width of each linear layer of a Llama-style decoder layer, as a function of (h, a*head_dim, I).
_LINEAR_IN = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "attn", "gate_proj": "h",
              "up_proj": "h", "down_proj": "I"}


@dataclass(frozen=True)
class ActivationBytes:
    """Activation memory of one forward/backward, per GPU, in bytes."""

    stored_bytes: float        # kept for backward: all layers + the final norm (end of forward)
    working_bytes: float       # one layer's backward working set (its recompute under checkpointing)
    logits_loss_bytes: float   # logits/loss tensors live at the start of backward
    offloaded_bytes: float = 0.0  # activation offloading: layer inputs held in pinned host memory

    @property
    def peak_bytes(self) -> float:
        """The loss peak (start of backward) and a layer's backward peak happen at different times."""
        return self.stored_bytes + max(self.working_bytes, self.logits_loss_bytes)

    def peak_split(self) -> tuple[float, float]:
        """peak_bytes as (activations, logits and loss): the larger of the working set and the loss
        peak goes to its own term, the other is 0, so a breakdown names what sets the peak."""
        if self.working_bytes >= self.logits_loss_bytes:
            return self.stored_bytes + self.working_bytes, 0.0
        return self.stored_bytes, self.logits_loss_bytes


def _head_widths(facts: ModelSpec) -> tuple[int, int]:
    """(query width a*head_dim, key/value width kv*head_dim): qwen3 and gemma2 set head_dim apart
    from h/a, so a*head_dim need not equal h."""
    a = facts.num_attention_heads
    hd = getattr(facts, "head_dim", None) or facts.hidden_size // a
    return a * hd, facts.num_kv_heads * hd


def _lora_widths(facts: ModelSpec, lora_targets: str | Sequence[str]) -> list[float]:
    """Input widths of the adapted linear layers of one decoder layer (_lora_linears)."""
    return [width for _, width in _lora_linears(facts, lora_targets)]


def _lora_linears(facts: ModelSpec, lora_targets: str | Sequence[str]) -> list[tuple[str, float]]:
    """(name, input width) of the adapted linear layers of one decoder layer (_adapted)."""
    return [(name, d_in) for name, d_in, _ in _adapted(facts, lora_targets)]


def _adapted(facts: ModelSpec, lora_targets: str | Sequence[str]) -> list[tuple[str, float, float]]:
    """(name, input width, output width) of the adapted linear layers of one decoder layer.

    From the model's own Linear layers (ModelSpec.linear_layers: phi3's fused qkv_proj and
    gate_up_proj are one adapter each, not three and two), else Llama's seven projections.
    """
    linears = [x for x in getattr(facts, "linear_layers", ()) if x.kind == "linear"]
    if linears:
        if lora_targets in (None, "all-linear"):
            return [(x.name, x.in_features, x.out_features) for x in linears]
        targets = [lora_targets] if isinstance(lora_targets, str) else list(lora_targets)
        return [(x.name, x.in_features, x.out_features) for x in linears
                if any(x.name == t or x.name.endswith("." + t) for t in targets)]
    h, inter = facts.hidden_size, _mlp_width(facts)
    qw, kvw = _head_widths(facts)
    width = {"h": h, "attn": qw, "I": inter}
    out = {"q_proj": qw, "k_proj": kvw, "v_proj": kvw, "o_proj": h, "gate_proj": inter, "up_proj": inter, "down_proj": h}
    names = list(_LINEAR_IN) if lora_targets in (None, "all-linear") else list(lora_targets)
    return [(n, width[_LINEAR_IN[n]], out[n]) for n in names if n in _LINEAR_IN]


def dora_per_token(facts: ModelSpec, lora_targets: str | Sequence[str], lora_dropout: float,
                   dtype_bytes: float = 2.0) -> float:
    """What DoRA's forward keeps per token beyond LoRA's, per decoder layer (peft tuners/lora/dora.py
    DoraLinearLayer.forward, peft >= 0.14): `(m/||W+BA|| - 1) * base + m/||W+BA|| * lora_B(lora_A(x))`
    saves the base result (the layer's 16-bit output, 2 bytes per output element) and the fp32
    adapter result (4). With dropout > 0 the base result is recomputed from the dropped-out fp32
    input in fp32 (4 instead of 2: 8 per output element), as it is under fp32 activations.
    Probe-checked (tests/test_dora.py)."""
    per_out = 4.0 + (4.0 if lora_dropout > 0 else dtype_bytes)
    return sum(per_out * d_out for _, _, d_out in _adapted(facts, lora_targets))


def dora_layer_bytes(facts: ModelSpec, lora_targets: str | Sequence[str], lora_dropout: float) -> float:
    """Bytes a decoder layer's DoRA adapters keep whatever the batch: three fp32 vectors per adapted
    Linear (the weight norm, m/||W+BA|| and m/||W+BA|| - 1 that the products save: 12 bytes per output
    feature), and with dropout > 0 the fp32 copy of the frozen weight that the recomputed base result's
    F.linear keeps for the input gradient (4 bytes per weight element; without dropout peft reuses the
    base layer's output). Every layer is counted; without checkpointing the first layer's input needs
    no gradient and keeps no copy, so this is high by one layer's copies there."""
    shapes = _adapted(facts, lora_targets)
    copies = sum(4.0 * d_in * d_out for _, d_in, d_out in shapes) if lora_dropout > 0 else 0.0
    return copies + sum(12.0 * d_out for _, _, d_out in shapes)


def dora_transient_bytes(facts: ModelSpec, lora_targets: str | Sequence[str]) -> float:
    """The peak of DoRA's weight-norm temporaries inside one adapted Linear's forward (peft
    DoraLinearLayer.get_lora_weight and get_weight_norm): the fp32 identity of the input width that
    BA is computed from (lora_B(lora_A(eye)), kept by lora_A's graph while BA lives: 4*d_in^2), and
    four fp32 matrices of the weight's shape (BA, the fp32 copy of W, s*BA and W + s*BA: 16*d_in*d_out).
    The largest adapted Linear sets it; it is live during that module's forward, and during its
    recompute under checkpointing. Probe-checked (tests/test_dora.py)."""
    shapes = [4.0 * d_in * d_in + 16.0 * d_in * d_out for _, d_in, d_out in _adapted(facts, lora_targets)]
    return max(shapes) if shapes else 0.0


def dora_params(facts: ModelSpec, lora_targets: str | Sequence[str]) -> int:
    """DoRA's trained magnitude vectors: one value per output feature of each adapted Linear."""
    return int(facts.num_layers * sum(d_out for _, _, d_out in _adapted(facts, lora_targets)))


def _family_bytes(facts: ModelSpec, attention: str, trains_weights: bool, seq_len: int) -> float:
    # trains_weights: full fine-tuning (norm and projection weights train), False under LoRA.
    """Per-token bytes a family stores beyond the Llama layer (read off saved-tensor traces of one
    transformers 5 decoder layer, checked against the probe in tests/test_activations.py).

    qwen3 (modeling_qwen3.py Qwen3Attention: q_norm/k_norm, RMSNorm over head_dim per head): each
    norm keeps its fp32 input (4 per element) and an fp32 rsqrt per head row (4), plus the bf16
    normalised tensor (2) when the norm weight trains; the norm output feeds RoPE, which saves only
    cos/sin. phi3 (modeling_phi3.py Phi3Attention: one qkv_proj sliced into q, k, v): v stays a view
    of the fused output, so SDPA's saved v keeps the whole q+k+v storage alive (2*(q + kv) more than
    v alone), and the attention output, no longer laid out as o_proj reads it, is copied (2*q) and
    saved by a trained o_proj (not under LoRA). Eager repeats v into a new tensor (repeat_kv) when
    kv < a, which frees the fused storage. phi3's fused
    gate_up_proj stores as much as gate and up apart (two views of one 4I storage).
    """
    qw, kvw = _head_widths(facts)
    a, kv = facts.num_attention_heads, facts.num_kv_heads
    mtype = getattr(facts, "model_type", "llama")
    if mtype == "qwen3":
        per_elem = 6 if trains_weights else 4
        return per_elem * (qw + kvw) + 4 * (a + kv)
    if mtype == "gemma2":
        # Gemma2RMSNorm (modeling_gemma2.py) computes in fp32: x.float() (4h) and the fp32
        # normalised tensor times (1 + weight) (4h more when the weight trains), then casts; four
        # norms per layer (input, post_attention, pre_feedforward, post_feedforward) where Llama
        # has two, the two feeding a Linear also leave its bf16 input (2h each, as Llama's do).
        # Full: 4 x (8h + 4) + 4h against Llama's 2 x (8h + 4); LoRA: 4 x (4h + 4) against 2 x (4h + 4).
        h = facts.hidden_size
        extra = 20 * h + 8 if trains_weights else 8 * h + 8
        # Eager attention with attn_logit_softcapping (Gemma2Config default 50.0): tanh saves its
        # bf16 output, one s x s score per head (2*a*s per token); flash applies it in the kernel.
        softcap = dict(getattr(facts, "config", None) or {}).get("attn_logit_softcapping", 50.0)
        return extra + (2 * a * seq_len if attention == "eager" and softcap else 0)
    if mtype == "phi3":
        fused = 2.0 * (qw + kvw)
        if attention == "eager":  # repeat_kv copies v unless every head has its own (kv == a)
            return fused if kv == a else 0.0
        return fused + (2 * qw if trains_weights else 0.0)  # a frozen o_proj saves no input
    return 0.0


def _mlp_width(facts: ModelSpec) -> float:
    # MoE: each token's activations go through experts_per_token experts' MLPs, plus shared experts, and
    # dense layers keep intermediate_size (ModelSpec.mlp_width_per_token; not probe-checked).
    width = getattr(facts, "mlp_width_per_token", None)
    if width is not None:
        return float(width)
    if getattr(facts, "num_experts", 0):
        return facts.intermediate_size * max(1, getattr(facts, "experts_per_token", 1) or 1)
    return facts.intermediate_size


def adapter_bytes_per_token(facts: ModelSpec, lora_rank: int, lora_targets: str | Sequence[str],
                            lora_dropout: float) -> float:
    """What peft's adapters of one decoder layer keep per token: each adapted Linear of input width d
    keeps its input cast to the fp32 adapter dtype (4d) and lora_A's fp32 rank-r output (4r); dropout
    > 0 adds its 1-byte mask (d). Probe-checked on every family (tests/test_activations.py,
    tests/test_arch_terms.py)."""
    return sum(4 * d + 4 * lora_rank + (d if lora_dropout > 0 else 0) for d in _lora_widths(facts, lora_targets))


def layer_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, dtype_bytes: float = 2.0, *,
                method: str = "full", lora_rank: int = 16, lora_targets: str | Sequence[str] = "all-linear",
                lora_dropout: float = 0.0, liger: bool = False, residual_bytes: float = 2.0,
                compiled: bool = False, dora: bool = False) -> float:
    """Bytes one decoder layer stores for backward without checkpointing: the LoRA or full layer
    (_layer_bytes), plus DoRA's tensors (dora_per_token, dora_layer_bytes) when the adapters are DoRA.
    DoRA layers are counted eagerly: the compiled terms were traced on plain LoRA adapters."""
    dora = dora and method in ("lora", "qlora")
    base = _layer_bytes(facts, seq_len, micro_batch, attention, dtype_bytes, method=method, lora_rank=lora_rank,
                        lora_targets=lora_targets, lora_dropout=lora_dropout, liger=liger,
                        residual_bytes=residual_bytes, compiled=compiled and not dora)
    if not dora:
        return base
    return (base + seq_len * micro_batch * dora_per_token(facts, lora_targets, lora_dropout, dtype_bytes)
            + dora_layer_bytes(facts, lora_targets, lora_dropout))


def _layer_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, dtype_bytes: float = 2.0, *,
                 method: str = "full", lora_rank: int = 16, lora_targets: str | Sequence[str] = "all-linear",
                 lora_dropout: float = 0.0, liger: bool = False, residual_bytes: float = 2.0,
                 compiled: bool = False) -> float:
    """Bytes one decoder layer stores for backward without checkpointing (LoRA as peft's plain adapters).

    Full fine-tuning, SDPA: s*b*[16*h + 4*q + 4*kv + 8*I + 4*a + 8] with q = a*head_dim and kv =
    kv_heads*head_dim (Llama: q = h, so (20 + 4*kv/a)*h + ...): two RMSNorms keep an fp32 input
    copy (4h), the bf16 normalised tensor (2h) and their output (2h) each; q and attention output
    (2q each), k and v (2kv each); family terms on top (_family_bytes: qwen3's q/k norms, phi3's
    fused qkv); SDPA's fp32 logsumexp (4a); two fp32 rsqrt (8); the MLP keeps
    gate, silu(gate), up and their product (2I each). Eager attention repeats k/v to all heads (+2h
    each instead of 2h*kv/a), drops the logsumexp, and keeps the fp32 softmax and its bf16 copy
    (6*a*s per token).
    LoRA/QLoRA (peft, frozen base): norms keep only the fp32 copy (4h each), the MLP 6I, attention
    (4 + 4*kv/a)*h, and each adapted linear of input width d adds its fp32 input copy (4d) and the
    fp32 rank-r output of lora_A (4r); dropout > 0 adds a 1-byte mask per adapter input element;
    under eager the attention output is not saved (2q less: only a trained o_proj would save it).
    gemma2 and bloom have their own norm and layer terms (_family_bytes, _bloom_per_token). Model types
    built unlike Llama (gpt_neox, opt, gpt2, phi, gemma...) take the probe-fitted terms of their frozen
    or trained layer and their dropout (arch_terms.py) plus the same adapters. Scaled by dtype_bytes/2
    for fp32 activations (not probe-checked).

    Args:
        facts: ModelSpec-like (hidden_size, num_attention_heads, num_kv_heads, intermediate_size...).
        seq_len, micro_batch: tokens per sequence and sequences per GPU.
        attention: sdpa | flash_attention_2 | eager.
        dtype_bytes: bytes per activation element (2 for bf16/fp16).
        method, lora_rank, lora_targets, lora_dropout: full | lora | qlora and the adapter settings.
        liger: Liger's RMSNorm and SwiGLU kernels replace transformers' modules (_liger_saving).
        residual_bytes: bytes per element of the residual stream (4 under QLoRA's k-bit upcast).
        compiled: torch.compile'd layers keep what inductor's partitioner saves (compiled.py), for the
            model types and attentions with compiled terms; the model's own dropout as eager.
    Returns:
        Bytes per decoder layer.
    """
    s, b = seq_len, micro_batch
    h, a, inter = facts.hidden_size, facts.num_attention_heads, _mlp_width(facts)
    qw, kvw = _head_widths(facts)
    lora = method in ("lora", "qlora")
    adapters = adapter_bytes_per_token(facts, lora_rank, lora_targets, lora_dropout) if lora else 0.0
    mtype = getattr(facts, "model_type", "llama")
    widths = {"h": h, "q": qw, "kv": kvw, "I": inter, "a": a, "1": 1.0, "as": a * s, "s": s,
              "kv_eager": qw if 1 < facts.num_kv_heads < a else kvw}
    if compiled:
        kept = compiled_layer_per_token(mtype, method, attention, widths, _lora_linears(facts, lora_targets)
                                        if lora else (), lora_rank, lora_dropout)
        if kept is not None:
            dropout = dropout_per_token(mtype, method, attention, getattr(facts, "config", None) or {}, widths)
            return s * b * (kept + dropout) * dtype_bytes / 2.0
    fitted = layer_per_token(mtype, method, attention, widths)
    if fitted is not None:
        dropout = dropout_per_token(mtype, method, attention, getattr(facts, "config", None) or {}, widths)
        return s * b * (fitted + dropout + adapters) * dtype_bytes / 2.0
    eager = attention == "eager"
    kv_width = qw if eager else kvw              # eager's repeat_kv keeps full-head copies
    lse = 0.0 if eager else 4 * a                # SDPA/flash keep an fp32 logsumexp per head
    attn = 4 * qw + 4 * kv_width + lse           # q, attention output; k, v (2 bytes each)
    mla = getattr(facts, "mla_activation_width", 0)  # deepseek MLA: q/k/v/out and latent widths differ from h
    if mla:
        attn = 2 * mla + lse
    attn += _family_bytes(facts, attention, trains_weights=not lora, seq_len=s)
    if eager and lora and not mla:
        # Eager's attention output is a plain matmul result that only o_proj would save; a frozen
        # o_proj saves none (its adapter keeps an fp32 copy, counted below). SDPA saves its output.
        attn -= 2 * qw
    if lora:
        per_token = 8 * h + attn + 6 * inter + 8 + adapters
    else:
        per_token = 16 * h + attn + 8 * inter + 8
    if liger and _liger_patches(facts):
        per_token -= _liger_saving(h, inter, lora, residual_bytes)
    if getattr(facts, "model_type", "llama") == "bloom":
        per_token, eager = _bloom_per_token(facts, lora, adapters), True
    total = s * b * per_token * dtype_bytes / 2.0
    if eager:
        total += 6 * a * s * s * b * dtype_bytes / 2.0
    return total


# Model types whose decoder layers Liger patches with its RMSNorm and SwiGLU (liger_kernel/transformers/
# monkey_patch.py apply_liger_kernel_to_*) and whose layer memfit counts with Llama's two-norm formula.
# Gemma's four norms and GeGLU, phi3's fused gate_up and the rest keep transformers' count.
LIGER_LAYERS = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "granite"})


def _liger_patches(facts: ModelSpec) -> bool:
    return getattr(facts, "model_type", "llama") in LIGER_LAYERS


def _liger_saving(h: int, inter: float, lora: bool, residual_bytes: float) -> float:
    """Bytes per token one decoder layer's Liger kernels save against transformers' modules.

    LigerRMSNormFunction (liger_kernel/ops/rms_norm.py) saves its input X in its own dtype, the weight
    and an fp32 rstd per row, where LlamaRMSNorm keeps an fp32 copy of X (4h) and, when the weight
    trains, the normalised 16-bit tensor the weight multiplies (2h): 4h saved per norm (full), 2h
    (LoRA), nothing when the residual stream is already fp32 (QLoRA's k-bit upcast), two norms a layer.
    LigerSiLUMulFunction (ops/swiglu.py) saves gate and up only and writes its gradients into them,
    where transformers keeps silu(gate) too (2I). LigerRopeFunction (ops/rope.py) saves cos and sin,
    as transformers' rotation does: no change.
    """
    return 2 * _liger_norm_saving(lora, residual_bytes) * h + 2 * inter


def _liger_norm_saving(lora: bool, residual_bytes: float) -> float:
    """Bytes per element of h one RMSNorm saves under Liger (_liger_saving): transformers' fp32 copy and,
    when the weight trains, its normalised 16-bit tensor, less the input Liger keeps in its own dtype."""
    return max((4 + (0 if lora else 2)) - residual_bytes, 0.0)


def _bloom_per_token(facts: ModelSpec, lora: bool, adapters: float) -> float:
    """Bytes per token a BloomBlock (modeling_bloom.py) stores, besides the eager softmax.

    Bloom has no SDPA path (transformers 5 refuses it): always eager, with ALiBi added to the scores
    (no RoPE). Each LayerNorm saves its bf16 input and per-row mean and rstd (2 + 2 bytes on the probe's
    cpu trace; fp32 on CUDA, 8 more per token, not counted); the fused query_key_value output stays
    whole (6h: q, k and v are views of it that the score and context matmuls save); the GeLU saves
    its input (2I). Full fine-tuning adds the bf16 inputs of the four Linears (2h + 2h + 2h + 2I).
    LoRA (frozen base): the Linears save nothing, their adapters their fp32 inputs (`adapters`).
    """
    h, inter = facts.hidden_size, _mlp_width(facts)
    norms = 2 * (2 * h + 4)
    base = norms + 6 * h + 2 * inter
    return base + adapters if lora else base + 6 * h + 2 * inter


def _backward_transient(facts: ModelSpec, s: int, b: int, attention: str, method: str,
                        liger: bool = False) -> float:
    """Fitted to the probe: tensors a layer's backward allocates on top of what it stored.

    The largest of: gradients through the MLP (3h + 4I per token), the fp32 gradients through the
    down_proj adapter for LoRA (8I), the fp32 softmax gradient of eager attention (4*a*s). Liger's
    SwiGLU backward writes the gate and up gradients into the tensors it saved (ops/swiglu.py
    swiglu_backward returns a and b): 2I less through the MLP.
    """
    h, a, inter = facts.hidden_size, facts.num_attention_heads, _mlp_width(facts)
    terms = [3 * h + (2 if liger and _liger_patches(facts) else 4) * inter]
    if method in ("lora", "qlora"):
        terms.append(8 * inter)
    if attention == "eager":
        terms.append(4 * a * s)
    return s * b * max(terms)


def stored_layer_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, method: str,
                       gradient_checkpointing: bool, precision: str, *, lora_rank: int = 16,
                       lora_targets: str | Sequence[str] = "all-linear", lora_dropout: float = 0.0,
                       kbit_upcast: bool = True, checkpoint_policy: str = "full", dora: bool = False) -> float:
    """Bytes one decoder layer keeps for backward at the end of forward (a probe's per-layer term).

    Args: as activation_bytes; kbit_upcast: QLoRA's non-quantised parameters are fp32 (Stack.kbit_upcast);
        checkpoint_policy: full | selective_op (Stack.checkpoint_policy, _selective_op_bytes).
    Returns:
        With checkpointing, the layer's saved input (s*b*h, fp32 for QLoRA with the k-bit upcast: see
        activation_bytes), and under selective_op what the policy saves; without, everything layer_bytes
        counts.
    """
    dtype_bytes = 4.0 if precision == "fp32" else 2.0
    if gradient_checkpointing:
        input_bytes = 4.0 if (method == "qlora" and kbit_upcast) else dtype_bytes
        saved = _selective_op_bytes(facts, dtype_bytes) if checkpoint_policy == "selective_op" else 0.0
        return seq_len * micro_batch * (facts.hidden_size * input_bytes + saved)
    return layer_bytes(facts, seq_len, micro_batch, attention, dtype_bytes, method=method, lora_rank=lora_rank,
                       lora_targets=lora_targets, lora_dropout=lora_dropout, dora=dora)


def _selective_op_bytes(facts: ModelSpec, dtype_bytes: float) -> float:
    """Bytes per token a layer under per-op selective checkpointing keeps besides its input.

    torchtitan's SelectiveAC (torchtitan/distributed/activation_checkpoint.py, its default AC mode) runs
    each decoder layer under torch.utils.checkpoint with a policy that must-saves the outputs of the
    attention kernels and of the compute-intensive ops, except every second plain matmul of the layer
    (aten.mm; a count per layer and per forward, so wq, wv, w1 and w2 of a Llama layer are kept and
    wk, wo and w3 recomputed). A Linear with a bias runs addmm, which is kept and not counted.
    Counted here: the Linears of the layer in the order its module registers them
    (ModelSpec.linear_layers: Llama's q, k, v, o, gate, up, down is also the order they run), each kept
    one keeping its output (out_features wide), and SDPA's output (the query width) with its fp32
    logsumexp per head. LoRA adapters' own matmuls, which also count, are not modelled.
    """
    linears = [(float(x.out_features), bool(x.bias)) for x in getattr(facts, "linear_layers", ())
               if x.kind == "linear"]
    if not linears:  # Llama's seven bias-free projections when the model's Linears are not known
        qw, kvw = _head_widths(facts)
        h, inter = facts.hidden_size, _mlp_width(facts)
        linears = [(w, False) for w in (qw, kvw, kvw, h, inter, inter, h)]
    kept, plain = 0.0, 0
    for width, bias in linears:
        if not bias:
            plain += 1
        if bias or plain % 2 == 1:
            kept += width
    qw = _head_widths(facts)[0]
    return dtype_bytes * (kept + qw) + 4 * facts.num_attention_heads


def activation_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, method: str,
                     gradient_checkpointing: bool, precision: str, *, lora_rank: int = 16,
                     lora_targets: str | Sequence[str] = "all-linear", lora_dropout: float = 0.0,
                     stack: Stack | None = None, dora: bool = False) -> ActivationBytes:
    """Activation memory per GPU for one micro-batch (activations are never sharded by ZeRO).

    Args:
        facts: ModelSpec (hidden_size, num_layers, heads, kv heads, intermediate_size, vocab_size).
        seq_len, micro_batch: tokens per sequence and sequences per GPU.
        attention: sdpa | flash_attention_2 | eager.
        method: full | lora | qlora (qlora modelled as lora: bitsandbytes could not be traced).
        gradient_checkpointing: full (non-reentrant) checkpointing of every decoder layer.
        precision: bf16 | fp16 | pure_bf16 | fp32 (fp32 doubles every activation).
        lora_rank, lora_targets, lora_dropout: adapter settings for lora/qlora.
        dora: the adapters are peft's DoRA (layer_bytes; its weight-norm temporaries join the working set).
        stack: the resolved training stack (loss implementation, activation offloading, k-bit upcast);
            None: HF Trainer + peft (standard fp32 loss, no offloading, QLoRA upcast).
    Returns:
        ActivationBytes; its peak_bytes is the number to add to weights, grads and optimizer states.
    """
    s, b, h = seq_len, micro_batch, facts.hidden_size
    dtype_bytes = 4.0 if precision == "fp32" else 2.0
    residual = 4.0 if method == "qlora" and (stack.kbit_upcast if stack else True) else 2.0
    liger = bool(stack and stack.liger_kernels)
    compiled = bool(stack and stack.compile)
    one_layer = layer_bytes(facts, s, b, attention, dtype_bytes, method=method, lora_rank=lora_rank,
                            lora_targets=lora_targets, lora_dropout=lora_dropout, liger=liger, residual_bytes=residual,
                            compiled=compiled, dora=dora)
    transient = _backward_transient(facts, s, b, attention, method, liger)
    # DoRA's weight norm (dora_transient_bytes) peaks inside a module's forward: on top of every stored
    # layer at the last one, or of the recomputed layer under checkpointing.
    dora_norm = dora_transient_bytes(facts, lora_targets) if dora and method in ("lora", "qlora") else 0.0
    # Final RMSNorm: fp32 copy (4h), plus the bf16 normalised tensor and output (4h) when it trains;
    # Liger's keeps its input instead (_liger_norm_saving).
    lora = method in ("lora", "qlora")
    saved = _liger_norm_saving(lora, residual) if liger and _liger_patches(facts) else 0.0
    final_norm = s * b * ((4 if lora else 8) - saved) * h * dtype_bytes / 2.0
    n = facts.num_layers
    if gradient_checkpointing:
        # Each layer keeps only its input; backward recomputes one layer at a time (the final
        # norm's tensors are gone by then, so it counts once, in stored). QLoRA: peft's
        # prepare_model_for_kbit_training casts the norms to fp32, and an fp32 norm weight times a
        # bf16 tensor is fp32, so the residual stream (each layer's saved input) is fp32.
        per_layer = stored_layer_bytes(facts, s, b, attention, method, True, precision,
                                       kbit_upcast=stack.kbit_upcast if stack else True,
                                       checkpoint_policy=stack.checkpoint_policy if stack else "full")
        working = max(one_layer + transient, one_layer + dora_norm) - final_norm
    else:
        per_layer, working = one_layer, max(transient, dora_norm)
    kept, offloaded = _offload(n, per_layer, bool(stack and stack.activation_offloading))
    logits = loss_bytes(facts, s, b, stack, head_trains=method == "full")
    return ActivationBytes(kept + final_norm, working, logits, offloaded)


def _offload(layers: int, per_layer: float, offloading: bool) -> tuple[float, float]:
    """(bytes kept on the GPU, bytes in host memory) of the layers' saved tensors.

    Activation offloading (torchtune training/_activation_offloading.py OffloadActivations, which TRL's
    and axolotl's `activation_offloading` reuse; unsloth's offloaded checkpointing) copies every saved
    tensor of the decoder layers to host memory during forward and brings it back in backward. With
    its streams a layer's tensors stay on the GPU until their copy is done, and backward prefetches
    the next layer's while it runs the current one: two layers on the GPU; the host holds all of them
    (pinned: use_pin_memory=True). The output head is never offloaded.
    """
    if not offloading:
        return layers * per_layer, 0.0
    return min(layers, 2) * per_layer, layers * per_layer


def logits_loss_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, precision: str) -> float:
    """Logits and loss at the start of backward: 12*s*b*V bytes, whatever the precision.

    transformers upcasts the logits to fp32 for cross-entropy; log-softmax keeps its fp32 output
    (4sbV) for backward, and backward opens with two more fp32 s*b*V tensors, the gradients of
    nll_loss and of log_softmax (8sbV). The bf16 logits (2sbV) are freed before backward; the
    forward's own loss peak (2 + 4 + 4 = 10sbV) is lower.
    """
    return standard_loss_bytes(seq_len * micro_batch, facts.vocab_size, 4.0)
