"""Logits and cross-entropy memory per GPU, per loss implementation (no torch).

N = s*b tokens, V vocabulary, H hidden, e = bytes of the dtype the loss computes in (4 when it upcasts
the logits to fp32, 2 when it reads the 16-bit logits). Each term is what is live at the loss peak, the
start of backward; docs/explanation/memory-model.md ("Loss") gives the sources, and
tests/test_loss.py traces each implementation's step with the probe's storage tracker.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.stack import Stack

# Bytes of the 16-bit logits the lm_head writes (bf16/fp16 compute).
_LOGITS_16 = 2.0


def standard_loss_bytes(tokens: float, vocab: int, e: float) -> float:
    """transformers' ForCausalLMLoss (loss/loss_utils.py): `logits.float()` then cross_entropy.

    log_softmax saves its output (e*N*V) for backward; backward opens with the gradients of nll_loss and
    of log_softmax (2*e*N*V): 3*e*N*V, 12*N*V with the fp32 upcast (the probe's measured term).
    """
    return 3.0 * e * tokens * vocab


def chunked_loss_bytes(tokens: float, vocab: int, e: float, chunks: int) -> float:
    """torchtune's CEWithChunkedOutputLoss (modules/loss/ce_chunked_output_loss.py), run eagerly.

    The output projection and `compute_cross_entropy` (`logits.float()`, cross_entropy) run per token
    chunk, so each chunk's fp32 copy is freed at once, but every chunk's log_softmax output stays saved
    for backward (e*N*V in all); backward then works one chunk at a time, whose two e-byte gradients
    (of nll_loss and of log_softmax) are the transient: e*N*V + 2*e*N*V/chunks. The recipe deletes the
    16-bit logit chunks before backward (recipes/lora_finetune_single_device.py: `del logits`).
    """
    return e * tokens * vocab + 2.0 * e * tokens * vocab / chunks


def fused_linear_loss_bytes(tokens: int, vocab: int, hidden: int, head_trains: bool) -> float:
    """Liger's fused linear cross-entropy (ops/fused_linear_cross_entropy.py, fused_linear_cross_entropy_forward).

    The gradients are computed in the forward, chunk by chunk: grad_input (N x H, 16-bit) is kept for
    backward, grad_weight (V x H) exists from the loss on when the head trains, and one chunk of logits
    (chunk_size x V, 16-bit) is live at a time, chunk_size = next_power_of_2(ceil(N / ceil(V / H))),
    at most N (about N*H elements). cut-cross-entropy keeps less (a log-sum-exp per token); the Liger
    term bounds both.
    """
    inc = -(-vocab // hidden)
    per_chunk = -(-tokens // inc)
    chunk = min(tokens, 1 << max(0, (per_chunk - 1).bit_length()))
    head_grad = _LOGITS_16 * vocab * hidden if head_trains else 0.0
    return _LOGITS_16 * tokens * hidden + _LOGITS_16 * chunk * vocab + head_grad


def compiled_loss_bytes(tokens: float, vocab: int, chunks: int = 1) -> float:
    """The standard or chunked loss under torch.compile: 2*N*V + 2*N*V/chunks.

    With inductor's decompositions log_softmax becomes max, exp, sum and log, and the partitioner saves
    the 16-bit logits and a per-token log-sum-exp instead of the fp32 log-softmax (traced:
    engine/probe/compiled.py, 2.0 bytes per token and vocabulary entry at Llama-3's vocabulary). In
    backward, nll_loss's scatter into zeros is lowered to a pointwise kernel (inductor's
    optimize_scatter_upon_const_tensor, on by default), which fuses with the log-softmax gradient and the
    cast back: one 16-bit gradient of the logits is written (per chunk for a chunked loss).
    """
    return _LOGITS_16 * tokens * vocab + _LOGITS_16 * tokens * vocab / chunks


def loss_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, stack: Stack | None, head_trains: bool) -> float:
    """Logits and loss tensors live at the start of backward, for the stack's loss implementation.

    Args:
        facts: ModelSpec (vocab_size, hidden_size).
        seq_len, micro_batch: tokens per sequence and sequences per GPU.
        stack: the resolved Stack (loss implementation, chunks, logits dtype, softcapping); None = standard fp32.
        head_trains: the lm_head receives a gradient (full fine-tuning).
    Returns:
        Bytes.
    """
    tokens, vocab = seq_len * micro_batch, facts.vocab_size
    if stack is None:
        return standard_loss_bytes(tokens, vocab, 4.0)
    e = 4.0 if stack.logits_dtype == "fp32" else 2.0
    if stack.loss_implementation == "fused_linear":
        # Liger applies the softcap inside its kernel (softcap argument): no extra tensor.
        return fused_linear_loss_bytes(tokens, vocab, facts.hidden_size, head_trains)
    # Gemma-2 (modeling_gemma2.py Gemma2ForCausalLM.forward): logits / cap, tanh, * cap on the 16-bit
    # logits; tanh saves its output for backward: one more 16-bit N x V tensor.
    cap = _LOGITS_16 * tokens * vocab if stack.softcapping else 0.0
    if stack.compile:
        chunks = stack.loss_chunks if stack.loss_implementation == "chunked" else 1
        return compiled_loss_bytes(tokens, vocab, chunks) + cap
    if stack.loss_implementation == "chunked":
        return chunked_loss_bytes(tokens, vocab, e, stack.loss_chunks) + cap
    return standard_loss_bytes(tokens, vocab, e) + cap
