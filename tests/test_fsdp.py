"""PyTorch FSDP plans: memory terms from first principles, the search behind training.sharding, the
accelerate config accepted by accelerate's own launch validation, `advise check` on LLaMA-Factory's
shipped FSDP YAMLs, and two real FSDP steps on CPU with gloo (1 and 2 ranks)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from memfit.cli.main import main
from memfit.engine import estimate, plan_from_dict
from memfit.engine.core.errors import PlanError
from memfit.engine.memory.estimate import GIB, estimate_memory
from memfit.engine.memory.fsdp import pinned_bytes, unit_params
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.strategy import Strategy
from memfit.engine.search.candidates import strategy_shapes

FIXTURES = Path(__file__).parent / "fixtures" / "upstream" / "accelerate"
MISTRAL = {"model": "mistralai/Mistral-7B-v0.1",
           "hardware": {"gpu_memory": 80, "gpus_per_node": 2, "host_memory": 128},
           "training": {"method": "full", "seq_len": 4096, "micro_batch_size": 2, "precision": "pure_bf16",
                        "gradient_checkpointing": True, "attention": "flash_attention_2", "zero_stage": 3,
                        "offload_optimizer": "none", "offload_param": "none", "sharding": "fsdp1"}}


def _fsdp(**kw) -> Strategy:
    base = dict(method="full", zero_stage=3, gradient_checkpointing=True, micro_batch_size=2, sharding="fsdp")
    return Strategy(**{**base, **kw})


def test_default_strategy_key_is_unchanged_and_fsdp_key_names_the_engine():
    assert Strategy(method="full", zero_stage=3).key == "full/z3/nogc/mb1"  # as before the sharding field
    assert _fsdp(fsdp_version=2, offload_param="cpu", offload_optimizer="cpu").key == "full/fsdp2-full/offload/gc/mb2"
    assert _fsdp(zero_stage=2, fsdp_sharding="SHARD_GRAD_OP", gather_16bit_on_save=False).key == \
        "full/fsdp1-grad_op/sharded-save/gc/mb2"


def test_pure_bf16_full_shard_step_is_ten_bytes_per_param_over_the_ranks():
    # First principles: bf16 shard 2 + bf16 grad 2 + AdamW m, v 2 + 2 + foreach sqrt(v) copy 2 = 10 B per
    # parameter, over 2 ranks; plus CUDA context and NCCL. (Published: fms-acceleration measured 34.24 GiB.)
    plan = plan_from_dict(MISTRAL)
    facts = resolve_model(plan.model)
    e = estimate_memory(plan, facts, _fsdp())
    assert e.gpu_peak_phase == "optimizer step"
    expected = 10 * facts.total_params / 2 / GIB + e.gpu.cuda_context_gib + e.gpu.nccl_gib
    # the named terms (the calibrated centre scales them afterwards: memory/band.py centre_for)
    assert e.gpu_modelled_gib == pytest.approx(expected, rel=1e-9)
    assert abs(e.gpu_modelled_gib / 34.24 - 1) < 0.05


def test_fused_adamw_has_no_foreach_copy_and_deepspeed_model_differs():
    plan = plan_from_dict(MISTRAL)
    facts = resolve_model(plan.model)
    fsdp = estimate_memory(plan, facts, _fsdp()).gpu.optimizer_states_gib
    # the foreach copy of v is 2 B/param/2 ranks on top of m + v (4 B/param/2 ranks)
    assert fsdp == pytest.approx(6 * facts.total_params / 2 / GIB)


def test_root_unit_and_gradient_stay_unsharded_at_the_end_of_backward():
    # FSDP1 keeps the root (embeddings, lm_head, norm) unsharded after forward (_post_forward_reshard:
    # `not state._is_root`); at the end of backward its unsharded gradient is still alive.
    plan = plan_from_dict({**MISTRAL, "training": {**MISTRAL["training"], "precision": "bf16"}})
    facts = resolve_model(plan.model)
    layer, root = unit_params(facts)
    assert layer * facts.num_layers + root == pytest.approx(facts.total_params)
    assert root == pytest.approx(facts.embedding_params + facts.lm_head_params + facts.hidden_size)
    from memfit.engine.memory.fsdp import fsdp_terms

    t = fsdp_terms(plan, facts, _fsdp(), 0.0)
    assert t.gpu_phase in ("optimizer step", "end of backward", "forward/backward")


def test_units_in_flight_at_the_start_of_backward():
    # FULL_SHARD: root unit + current and prefetched layer unsharded (2 in-flight all-gathers,
    # _limiter_utils._FreeEventQueue) + the root's unsharded gradient, all bf16 (pure_bf16).
    # SHARD_GRAD_OP: every unit stays gathered after forward (2 B per parameter).
    from memfit.engine.memory.fsdp import fsdp_terms

    long = {**MISTRAL, "training": {**MISTRAL["training"], "gradient_checkpointing": False, "micro_batch_size": 8}}
    plan = plan_from_dict(long)
    facts = resolve_model(plan.model)
    layer, root = unit_params(facts)
    full = fsdp_terms(plan, facts, _fsdp(gradient_checkpointing=False, micro_batch_size=8), 0.0)
    assert full.gpu_phase == "forward/backward"
    assert full.gpu["zero_buffers_gib"] == pytest.approx(2 * (root + 2 * layer) + 2 * root)
    v2 = fsdp_terms(plan, facts, _fsdp(gradient_checkpointing=False, micro_batch_size=8, fsdp_version=2), 0.0)
    assert v2.gpu["zero_buffers_gib"] - full.gpu["zero_buffers_gib"] == pytest.approx(2 * layer)  # all-gather output
    sgo = fsdp_terms(plan, facts, _fsdp(zero_stage=2, fsdp_sharding="SHARD_GRAD_OP", gradient_checkpointing=False,
                                        micro_batch_size=8), 0.0)
    assert sgo.gpu["zero_buffers_gib"] == pytest.approx(2 * facts.total_params + 2 * root)


LLAMA7B_LORA = {"model": "meta-llama/Llama-2-7b-hf",
                "hardware": {"gpu_memory": 40, "gpus_per_node": 4, "host_memory": 256},
                "training": {"method": "lora", "seq_len": 2048, "micro_batch_size": 4, "global_batch_size": 16,
                             "precision": "pure_bf16", "gradient_checkpointing": True, "attention": "eager",
                             "lora": {"rank": 8, "alpha": 32, "target_modules": ["q_proj", "v_proj"]},
                             "zero_stage": 3, "offload_optimizer": "none", "offload_param": "none",
                             "sharding": "fsdp1"}}


def test_without_the_rate_limiter_every_unit_is_held():
    # FSDP1 limit_all_gathers=False (_runtime_utils.py _unshard skips _FreeEventQueue): every unit's
    # gathered block is held in bf16, 2 B per parameter of the meta-device count, instead of the root
    # and two layers. Published: llama-cookbook pull request 41 switched the limiter on for exactly
    # this run (Llama 2 7B LoRA q/v, 4 x A100, pure bf16, 4 x 2048) and reserved fell by 13.31 "GB",
    # of which 0.98 GiB were fp32 logits the same change stopped keeping (8192 x 32000 x 4 B): the
    # rest is 11.42 (GB = 1e9) to 12.33 GiB; memfit's difference must fall in it, within 5 %.
    from memfit.engine.memory.fsdp import fsdp_terms

    on = plan_from_dict(LLAMA7B_LORA)
    off = plan_from_dict({**LLAMA7B_LORA, "training": {**LLAMA7B_LORA["training"], "fsdp_limit_all_gathers": False}})
    facts = resolve_model(on.model)
    s = _fsdp(method="lora", micro_batch_size=4)
    held_on, held_off = (fsdp_terms(p, facts, s, 0.0).gpu_phases["forward/backward"]["zero_buffers_gib"] for p in (on, off))
    adapters = 32 * 2 * 8 * (4096 + 4096)  # 32 layers x (q, v) x rank 8 x (A: 4096 in + B: 4096 out)
    assert held_off == pytest.approx(2 * (facts.total_params + adapters), rel=1e-9)  # no trainable root: no root grad
    layer, root = unit_params(facts)
    assert held_on == pytest.approx(2 * (root + 2 * layer), rel=1e-3)  # + two layers' adapters
    logits = 8192 * 32000 * 4
    assert 0.95 * (13.31e9 - logits) <= held_off - held_on <= 1.05 * (13.31 * 2**30 - logits)
    # FSDP2 has no such flag: the setting changes nothing there.
    v2 = _fsdp(method="lora", micro_batch_size=4, fsdp_version=2)
    assert fsdp_terms(off, facts, v2, 0.0).gpu == fsdp_terms(on, facts, v2, 0.0).gpu


def test_start_of_backward_holds_every_stored_activation_and_the_last_layers_working_set():
    # The last decoder layer's backward (its recompute under checkpointing) runs while every other
    # layer's stored activations are still live; without FSDP memfit adds them (ActivationBytes
    # peak_bytes), and FSDP does not change activations. Eager attention at 4 x 2048 makes the layer's
    # working set (fp32 softmax of 4 x 32 x 2048^2 scores) larger than the loss peak, so it sets the
    # moment.
    from memfit.engine.memory.activations import activation_bytes
    from memfit.engine.memory.fsdp import fsdp_terms

    plan = plan_from_dict(LLAMA7B_LORA)
    facts = resolve_model(plan.model)
    t = plan.training
    act = activation_bytes(facts, t.seq_len, 4, t.attention, "lora", True, t.precision, lora_rank=8,
                           lora_targets=t.lora.target_modules, lora_dropout=t.lora.dropout)
    assert act.working_bytes > act.logits_loss_bytes
    start = fsdp_terms(plan, facts, _fsdp(method="lora", micro_batch_size=4), 0.0).gpu_phases["forward/backward"]
    assert start["activations_gib"] + start["logits_loss_gib"] == pytest.approx(act.stored_bytes + act.working_bytes)


def test_qlora_root_unit_gathers_in_bf16():
    # QLoRA stores only the decoder layers' Linear weights in 4 bit; the embeddings, lm_head and final
    # norm (FSDP's root unit) stay bf16. First principles for Llama 2 70B (vocab 32000, hidden 8192,
    # untied): the root gathers (2 x 32000 x 8192 + 8192) x 2 B, the meta-device count's shapes.
    from memfit.engine.memory.fsdp import fsdp_terms

    plan = plan_from_dict({"model": "meta-llama/Llama-2-70b-hf",
                           "hardware": {"gpu_memory": 24, "gpus_per_node": 2, "host_memory": 256},
                           "training": {"method": "qlora", "seq_len": 512, "micro_batch_size": 1, "precision": "bf16",
                                        "gradient_checkpointing": True, "attention": "flash_attention_2",
                                        "lora": {"rank": 32, "target_modules": "all-linear"}, "zero_stage": 3,
                                        "offload_optimizer": "none", "offload_param": "none", "sharding": "fsdp1"}})
    facts = resolve_model(plan.model)
    layer, root = unit_params(facts)
    assert root == 2 * 32000 * 8192 + 8192
    t = fsdp_terms(plan, facts, _fsdp(method="qlora", micro_batch_size=1), 0.0)
    held = t.gpu_phases["forward/backward"]["zero_buffers_gib"]
    # held = root + 2 layers; a layer is its 4-bit Linear weights (0.5 B a parameter: all but its two
    # 8192-wide norms) plus bf16 adapters, r 32 on q, k, v, o, gate, up, down: 32 x (2 x (8192 + 8192)
    # + 2 x (8192 + 1024) + 3 x (8192 + 28672)) = 5.18M parameters, 1.2 % of the layer's bytes at 2 B.
    layer_bytes = (held - 2 * root) / 2
    adapters = 32 * (2 * (8192 + 8192) + 2 * (8192 + 1024) + 3 * (8192 + 28672))
    assert layer_bytes == pytest.approx(0.5 * (layer - 2 * 8192) + 2 * 2 * 8192 + 2 * adapters, rel=1e-3)


def test_qlora_under_fsdp_checkpoints_a_bf16_residual_stream():
    # peft's k-bit upcast (fp32 norms, hence an fp32 residual stream) cannot happen under FSDP: one dtype
    # per FlatParameter. Each checkpointed layer then saves its bf16 input, s x b x h x 2 B: 2048 x 2 x
    # 8192 x 2 = 64 MiB for Llama 2 70B at micro-batch 2, what `advise probe` traces per layer on this
    # shape; the single-GPU HF Trainer stack upcasts and saves twice that.
    from memfit.engine.memory.activations import activation_bytes
    from memfit.engine.memory.fsdp import fsdp_terms
    from memfit.engine.plan.stack import resolve_stack

    plan = plan_from_dict({"model": "meta-llama/Llama-2-70b-hf",
                           "hardware": {"gpu_memory": 24, "gpus_per_node": 2, "host_memory": 256},
                           "training": {"method": "qlora", "seq_len": 2048, "micro_batch_size": 2,
                                        "precision": "pure_bf16", "gradient_checkpointing": True, "attention": "sdpa",
                                        "lora": {"rank": 64, "target_modules": "all-linear"}, "zero_stage": 3,
                                        "offload_optimizer": "cpu", "offload_param": "cpu", "sharding": "fsdp1"}})
    facts = resolve_model(plan.model)
    t = plan.training
    upcast = activation_bytes(facts, 2048, 2, "sdpa", "qlora", True, t.precision, lora_rank=64,
                              lora_targets="all-linear", stack=resolve_stack(plan, facts))
    start = fsdp_terms(plan, facts, _fsdp(method="qlora", micro_batch_size=2, offload_param="cpu",
                                          offload_optimizer="cpu"), 0.0).gpu_phases["forward/backward"]
    per_layer = 2048 * 2 * 8192 * 2
    assert per_layer == 64 * 2**20
    # the FSDP moment holds 80 bf16 checkpoints where the upcast stack holds 80 fp32 ones
    fsdp_activations = start["activations_gib"] + start["logits_loss_gib"]
    assert upcast.peak_bytes - fsdp_activations == pytest.approx(80 * per_layer, rel=1e-6)


def test_lora_inside_layer_units_grads_cover_every_layer_under_fsdp1_only():
    # training.fsdp_lora_wrap: layer (traced on CPU in tests/test_fsdp_runtime.py). Llama 2 7B on 4 GPUs,
    # pure bf16: the sharded gradient is every decoder layer's parameters and the adapters, 2 B each,
    # over 4 ranks; the root (embeddings, lm_head: no adapter) has none. FSDP2 is unchanged.
    from memfit.engine.memory.fsdp import fsdp_terms

    shared = plan_from_dict({**LLAMA7B_LORA, "training": {**LLAMA7B_LORA["training"], "fsdp_lora_wrap": "layer"}})
    facts = resolve_model(shared.model)
    layer, _ = unit_params(facts)
    adapters = 32 * 2 * 8 * (4096 + 4096)
    step = fsdp_terms(shared, facts, _fsdp(method="lora", micro_batch_size=4), 0.0).gpu_phases["optimizer step"]
    assert step["gradients_gib"] == pytest.approx((32 * layer + adapters) * 2 / 4, rel=1e-9)
    v2 = _fsdp(method="lora", micro_batch_size=4, fsdp_version=2)
    assert fsdp_terms(shared, facts, v2, 0.0).gpu == fsdp_terms(plan_from_dict(LLAMA7B_LORA), facts, v2, 0.0).gpu


def test_pinned_host_blocks_round_up_to_powers_of_two():
    # ATen/core/CachingHostAllocator.h: PowerOf2Ceil(size)
    assert pinned_bytes(1) == 1 and pinned_bytes(1024) == 1024 and pinned_bytes(1025) == 2048
    assert pinned_bytes(3 * 2**30) == 4 * 2**30


def test_cpu_offload_moves_states_to_host():
    plan = plan_from_dict({**MISTRAL, "training": {**MISTRAL["training"], "offload_param": "cpu",
                                                   "offload_optimizer": "cpu"}})
    facts = resolve_model(plan.model)
    e = estimate_memory(plan, facts, _fsdp(offload_param="cpu", offload_optimizer="cpu"))
    assert e.gpu.weights_gib == e.gpu.gradients_gib == e.gpu.optimizer_states_gib == 0.0
    # params + grads in bf16 (2 + 2 B) on the node, both ranks' shards
    assert e.host.offloaded_params_gib == pytest.approx(4 * facts.total_params / GIB)
    assert e.host.offload_slack_gib >= 0


@pytest.mark.parametrize("sharding,engines", [("auto", {"deepspeed"}), ("deepspeed", {"deepspeed"}),
                                              ("fsdp", {"fsdp"}), ("any", {"deepspeed", "fsdp"})])
def test_training_sharding_selects_the_engines(sharding, engines):
    plan = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 24, "gpus_per_node": 2,
                                                                    "host_memory": 64},
                           "training": {"sharding": sharding, "method": "full"}})
    shapes = list(strategy_shapes(plan))
    assert {s.sharding for s in shapes} == engines
    fsdp = [s for s in shapes if s.sharding == "fsdp"]
    assert all(s.offload_param == s.offload_optimizer for s in fsdp)  # CPUOffload moves both together
    assert "HYBRID_SHARD" not in {s.fsdp_sharding for s in fsdp}  # one node: same as FULL_SHARD


def test_sharding_none_is_zero_0_only():
    plan = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 24, "host_memory": 64},
                           "training": {"sharding": "none"}})
    assert {s.zero_stage for s in strategy_shapes(plan)} == {0}


def test_estimate_needs_the_fsdp_version_pinned():
    data = {**MISTRAL, "training": {**MISTRAL["training"], "sharding": "fsdp"}}
    with pytest.raises(PlanError, match="training.sharding: is 'fsdp'; advise estimate needs"):
        estimate(plan_from_dict(data))
    assert estimate(plan_from_dict(MISTRAL)).deepspeed_estimate is None


def test_advise_pinned_to_fsdp_recommends_and_explains_fsdp():
    from memfit.engine import advise

    plan = plan_from_dict({"model": "meta-llama/Meta-Llama-3-8B", "hardware": {"gpu_memory": 80, "gpus_per_node": 4,
                                                                             "host_memory": 512},
                           "training": {"sharding": "fsdp", "method": "lora"}})
    best = advise(plan).best
    assert best.sharding == "fsdp" and best.accelerate_config["distributed_type"] == "FSDP"
    rules = {e.rule for e in best.explanation}
    assert "fsdp-ram-efficient-loading" in rules and best.settings["fsdp_cpu_ram_efficient_loading"] is True
    assert set(best.framework_keys) == {"llamafactory", "axolotl", "torchtune"}


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.yaml")))
def test_advise_check_reads_llamafactory_fsdp_yamls(name, capsys):
    assert main(["check", str(FIXTURES / name)]) == 0
    assert "ERROR" not in capsys.readouterr().out


@pytest.mark.parametrize("text,match", [
    ("distributed_type: FSDP\nfsdp_config: {fsdp_sharding_stratgy: FULL_SHARD}\n", "did you mean 'fsdp_sharding_strategy'"),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_offload_params: maybe}\n", "must be one of"),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_cpu_ram_efficient_loading: true, fsdp_sync_module_states: false}\n",
     "needs sync_module_states"),
    ("distributed_type: MULTI_GPU\n", "not an FSDP config"),
])
def test_advise_check_names_bad_accelerate_keys(tmp_path, capsys, text, match):
    path = tmp_path / "acc.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    assert match in capsys.readouterr().out


def test_advise_check_unparsable_yaml_is_exit_2(tmp_path, capsys):
    path = tmp_path / "acc.yaml"
    path.write_text("fsdp_config: [unclosed\n")
    assert main(["check", str(path)]) == 2
    assert "acc.yaml: not valid YAML" in capsys.readouterr().err


def _shapes_to_write():
    multi = {"gpu_memory": 80, "gpus_per_node": 8, "nodes": 2, "host_memory": 512}
    for hw in ({"gpu_memory": 24, "gpus_per_node": 2, "host_memory": 64}, multi):
        plan = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": hw, "training": {"sharding": "fsdp"}})
        for s in strategy_shapes(plan):
            yield plan, s


@pytest.mark.slow
def test_accelerate_launch_accepts_every_written_config(tmp_path):
    """accelerate's own path: load_config_from_file, then `accelerate launch --config_file X train.py`'s
    argument parsing and validation (_validate_launch_command) and the FSDP_* environment it hands the
    training processes (prepare_multi_gpu_env), which FullyShardedDataParallelPlugin reads."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from memfit.engine.fsdp.config import accelerate_yaml

    seen = set()
    for plan, s in _shapes_to_write():
        path = tmp_path / f"{len(seen)}.yaml"
        path.write_text(accelerate_yaml(s, plan))
        seen.add(s.key)
        cfg = load_config_from_file(str(path))
        assert cfg.distributed_type == "FSDP" and cfg.num_processes == plan.hardware.world_size
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path), "t.py"]))
        env = prepare_multi_gpu_env(args)
        assert env["FSDP_VERSION"] == str(s.fsdp_version)
        assert env["FSDP_OFFLOAD_PARAMS"] == str(s.offload_param == "cpu").lower()
        if s.fsdp_version == 1:
            assert env["FSDP_SHARDING_STRATEGY"] == s.effective_fsdp_sharding
        else:
            assert env["FSDP_RESHARD_AFTER_FORWARD"] == str(s.effective_fsdp_sharding == "FULL_SHARD").lower()
        assert env["FSDP_ACTIVATION_CHECKPOINTING"] == str(s.gradient_checkpointing).lower()
    assert len(seen) > 10


@pytest.mark.slow
def test_verify_runs_fsdp_steps_on_cpu_with_one_and_two_ranks():
    from memfit.engine.deepspeed.verify import tiny_config
    from memfit.engine.fsdp.verify import verify_fsdp

    plan = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 24, "gpus_per_node": 2,
                                                                    "host_memory": 64},
                           "training": {"sharding": "fsdp", "precision": "bf16"}})
    facts = resolve_model(plan.model)
    strategies = [_fsdp(fsdp_version=2), _fsdp(method="lora", fsdp_version=1, gradient_checkpointing=False),
                  _fsdp(fsdp_version=1, offload_param="cpu", offload_optimizer="cpu")]
    results = verify_fsdp(plan, strategies, tiny_config(dict(facts.config)), timeout_s=240)
    assert [r.ranks for r in results] == [1, 2, 1, 2, 1, 2]
    for r in results[:4]:
        assert r.passed, r.error
        # random tokens over a 512-word vocabulary: the first loss is near ln(512) = 6.24
        assert len(r.losses) == 2 and all(math.isfinite(x) for x in r.losses) and abs(r.losses[0] - math.log(512)) < 1
    assert results[4].skipped and "accelerator" in results[4].skipped
    # Every rank draws the same batch (same seed), so the mean gradient over 2 ranks is one rank's:
    # sharded over 2 ranks, the run must reproduce the 1-rank losses.
    for one, two in (results[0:2], results[2:4]):
        assert two.losses == pytest.approx(one.losses, rel=1e-3)


def _step_temporary_bytes(**adamw) -> tuple[int, list[int]]:
    """Peak bytes of new tensors during one AdamW step (after the first, which creates the states),
    traced with a dispatch mode over real CPU tensors; in-place and view results are not new memory."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0

        def _free(self, n):
            self.live -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func._schema.is_mutable:
                for o in out if isinstance(out, (list, tuple)) else [out]:
                    if isinstance(o, torch.Tensor) and o._base is None:
                        n = o.untyped_storage().nbytes()
                        self.live += n
                        weakref.finalize(o, self._free, n)
                self.peak = max(self.peak, self.live)
            return out

    sizes = [4096, 65536, 16384]
    params = [torch.nn.Parameter(torch.randn(n, dtype=torch.bfloat16)) for n in sizes]
    opt = torch.optim.AdamW(params, lr=1e-3, **adamw)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    mode = Live()
    with mode:
        opt.step()
    return mode.peak, sizes


@pytest.mark.slow
def test_adamw_step_temporaries_traced():
    """The optimizer-step term of memory/fsdp.py, traced: foreach AdamW allocates one copy of every
    second moment at once (torch._foreach_sqrt), the single-tensor path (AdamW on CPU tensors, i.e.
    FSDP CPU offload) about two copies of the largest tensor's, fused AdamW none."""
    foreach, sizes = _step_temporary_bytes(foreach=True)
    assert foreach == 2 * sum(sizes)  # bf16 v of every tensor
    single, _ = _step_temporary_bytes(foreach=False)
    assert 2 * 2 * max(sizes) <= single <= 2 * 2 * max(sizes) + 2 * min(sizes) * 2
    fused, _ = _step_temporary_bytes(fused=True)
    assert fused == 0


@pytest.mark.parametrize("pins, reason", [
    ({"zero_stage": 0, "sharding": "fsdp2"}, "FSDP2 has no stage 0"),  # fully_shard has no NO_SHARD
    ({"zero_stage": 2, "sharding": "fsdp2", "offload_optimizer": "cpu", "offload_param": "cpu"},
     "only when it reshards after forward"),
])
def test_pins_that_leave_no_candidate_are_a_plan_error_naming_the_keys(tmp_path, capsys, pins, reason):
    """A plan whose pinned keys FSDP cannot run gets a message naming them and exit 2 (it was an
    internal IndexError in advise), and `advise estimate` refuses the FSDP2 stage 0 the same way."""
    plan = {**MISTRAL, "training": {**MISTRAL["training"], "offload_optimizer": "none", "offload_param": "none",
                                    **pins}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "leave no candidate strategy" in err and reason in err and "sharding: fsdp2" in err
    assert "Traceback" not in err and "internal error" not in err
    if pins["zero_stage"] == 0:
        assert main(["estimate", str(path)]) == 2
        assert "FSDP2 has no stage 0" in capsys.readouterr().err
