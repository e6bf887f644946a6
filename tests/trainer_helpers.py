"""A real HF Trainer on a tiny random-weight Llama on the CPU, for the callback tests (and their child
process): 2 layers, hidden 64, vocabulary 512, a few steps over a data set made here."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEQ = 32


def tiny_trainer(output_dir: str, callbacks: list, steps: int = 3):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 512, (16, SEQ), generator=g).tolist()]
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=2, max_steps=steps, use_cpu=True,
                             report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
