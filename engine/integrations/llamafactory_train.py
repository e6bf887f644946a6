"""LLaMA-Factory training with memfit's callback, in place of `llamafactory-cli train`:

    python -m memfit.engine.integrations.llamafactory_train examples/train_lora/llama3_lora_sft.yaml
    torchrun --nproc_per_node 8 -m memfit.engine.integrations.llamafactory_train config.yaml   # several GPUs

LLaMA-Factory's YAML has no callbacks key and refuses unknown keys (hparams/parser.py parses with
allow_extra_keys=False); its Python entry point takes callbacks: llamafactory.train.tuner.run_exp(args=None,
callbacks=None), which reads the YAML path from sys.argv[1] as llamafactory-cli does. The run's sequence
length is the YAML's cutoff_len (LLaMA-Factory's default 2048); MEMFIT_POLICY=raise stops a run that
does not fit, MEMFIT_STORE chooses the store.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

# LLaMA-Factory's DataArguments.cutoff_len default (src/llamafactory/hparams/data_args.py)
LLAMAFACTORY_CUTOFF_LEN = 2048


def cutoff_len(argv: list[str]) -> Optional[int]:
    """cutoff_len of the LLaMA-Factory YAML in argv[1] (a `cutoff_len=N` override after it wins)."""
    for arg in argv[2:]:
        if arg.startswith("cutoff_len="):
            return int(arg.split("=", 1)[1])
    if len(argv) > 1 and argv[1].endswith((".yaml", ".yml")):
        import yaml

        with open(argv[1], encoding="utf-8") as fh:
            return int((yaml.safe_load(fh) or {}).get("cutoff_len", LLAMAFACTORY_CUTOFF_LEN))
    return None


def main() -> None:
    """Run LLaMA-Factory's trainer on sys.argv with a MemfitCallback."""
    from llamafactory.train.tuner import run_exp

    from .transformers import MemfitCallback

    run_exp(callbacks=[MemfitCallback(os.environ.get("MEMFIT_POLICY", "warn"), seq_len=cutoff_len(sys.argv))])


if __name__ == "__main__":
    main()
