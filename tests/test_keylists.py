"""The stored argument-name lists against the keys the tools' own example configs use.

Every key an upstream example sets must be an argument of that tool version, except where the list is
known to differ: the transformers 5.24 Seq2SeqTrainingArguments in the LLaMA-Factory list no longer
has `warmup_ratio` or `fsdp_transformer_layer_cls_to_wrap` (LLaMA-Factory 0.9.5 pins transformers
<= 5.6.0), and axolotl's `debug` is a command-line argument (axolotl cli/args.py), not a config field.
"""
from __future__ import annotations

import pytest
import yaml

from memfit.engine.integrations.keylists import key_list

from upstream import configs, upstream

KNOWN_GAPS = {"llamafactory": {"warmup_ratio", "fsdp_transformer_layer_cls_to_wrap"}, "axolotl": {"debug"},
              "torchtune": set()}


@pytest.mark.parametrize("tool", sorted(KNOWN_GAPS))
def test_examples_use_only_listed_arguments(tool):
    used = set()
    for path in configs(tool):
        if "/v1/" not in path:  # LLaMA-Factory's v1 format has other keys
            used |= set(yaml.safe_load(upstream(tool, path).read_text()))
    assert used - key_list(tool).names == KNOWN_GAPS[tool]


def test_lists_name_their_version():
    assert key_list("llamafactory").rules == "llamafactory 0.9.5 argument names"
    assert key_list("llamafactory").note.startswith("transformers ")
    assert {"base_model", "sequence_len", "load_in_8bit", "model_config"} <= key_list("axolotl").names
    assert {"batch_size", "enable_activation_checkpointing", "fsdp_cpu_offload"} <= key_list("torchtune").names
