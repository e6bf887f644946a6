"""Foreign configs set training.framework and the stack keys from their own keys (upstream example files).

Expected values are the files' keys read with the tools' documented behaviour, cited in
engine/integrations/{axolotl,torchtune,llamafactory}.py and engine/plan/frameworks.yaml.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from memfit.engine.integrations.foreign import plan_of, read_foreign
from memfit.engine.plan.stack import resolve_stack

from upstream import upstream

HW = {"gpu": "H100-SXM-80GB", "gpus_per_node": 1, "host_memory": 512}


def test_axolotl_cut_cross_entropy_packing_and_offloaded_checkpoints(ax_root):
    # plugins: CutCrossEntropyPlugin, sample_packing: true, gradient_checkpointing: offload
    read = read_foreign("examples/qwen3/32b-qlora.yaml", HW)
    s = resolve_stack(plan_of(read))
    assert (s.framework, s.loss_implementation, s.packing, s.activation_offloading, s.kbit_upcast) == \
        ("axolotl", "fused_linear", True, True, False)
    assert not any("over-estimate" in w and "cross-entropy" in w for w in read.warnings)


def test_axolotl_activation_offloading_key(ax_root):
    read = read_foreign("examples/alst/llama3-8b-deepspeed-alst.yaml", HW)  # activation_offloading: legacy
    assert resolve_stack(plan_of(read)).activation_offloading is True
    assert not any("activation_offloading" in w for w in read.warnings)


def test_axolotl_unpacked_batches_pad_to_longest(ax_root):
    # mistral-qlora-fsdp.yml: sample_packing: false, no pad_to_sequence_len: the collator pads to the longest
    read = read_foreign("examples/mistral/mistral-qlora-fsdp.yml", HW)
    s = resolve_stack(plan_of(read))
    assert (s.packing, s.padding, s.fixed_shapes) == (False, "longest", False)


def test_torchtune_chunked_loss_and_offloading(tmp_path):
    read = read_foreign(upstream("torchtune", "recipes/configs/phi4/14B_full_low_memory.yaml"), HW)
    s = resolve_stack(plan_of(read))
    # loss: CEWithChunkedOutputLoss (num_output_chunks defaults to 8), enable_activation_offloading: True, packed: False
    assert (s.framework, s.loss_implementation, s.loss_chunks, s.activation_offloading, s.packing, s.padding) == \
        ("torchtune", "chunked", 8, True, False, "longest")
    q = resolve_stack(plan_of(read_foreign(upstream("torchtune", "recipes/configs/llama3_1/8B_qlora_single_device.yaml"), HW)))
    assert (q.activation_offloading, q.kbit_upcast) == (False, False)


def _lf(tmp_path: Path, extra: str) -> Path:
    src = upstream("llamafactory", "examples/train_lora/qwen3_lora_sft.yaml").read_text(encoding="utf-8")
    p = tmp_path / "lf.yaml"
    p.write_text(src + extra, encoding="utf-8")
    return p


def test_llamafactory_liger_unsloth_gc_and_packing(tmp_path):
    read = read_foreign(_lf(tmp_path, "enable_liger_kernel: true\nuse_unsloth_gc: true\npacking: true\n"), HW)
    s = resolve_stack(plan_of(read))
    assert (s.framework, s.loss_implementation, s.activation_offloading, s.packing) == \
        ("llamafactory", "fused_linear", True, True)
    # model_utils/liger_kernel.py apply_liger_kernel keeps apply_liger_kernel_to_*'s rms_norm and swiglu on
    assert s.liger_kernels is True
    assert not any("use_unsloth_gc" in w or "enable_liger_kernel" in w for w in read.warnings)


def test_axolotl_liger_plugin_layer_kernels(ax_root):
    # examples/llama-3/3b-fp8-fsdp2.yaml: LigerPlugin with liger_rms_norm, liger_glu_activation and
    # liger_fused_linear_cross_entropy true
    s = resolve_stack(plan_of(read_foreign("examples/llama-3/3b-fp8-fsdp2.yaml", HW)))
    assert (s.liger_kernels, s.loss_implementation) == (True, "fused_linear")
    plain = resolve_stack(plan_of(read_foreign("examples/mistral/mistral-qlora-fsdp.yml", HW)))
    assert plain.liger_kernels is False


def test_llamafactory_defaults_and_pretraining_packs(tmp_path):
    plain = resolve_stack(plan_of(read_foreign(_lf(tmp_path, ""), HW)))
    assert (plain.framework, plain.loss_implementation, plain.kbit_upcast, plain.packing, plain.padding) == \
        ("llamafactory", "standard", False, False, "longest")
    pt = read_foreign(upstream("llamafactory", "examples/train_lora/qwen3_lora_pretrain.yaml"), HW)  # stage: pt
    assert resolve_stack(plan_of(pt)).packing is True
