"""memfit's copy of DeepSpeed's estimators equals DeepSpeed's own functions (the oracle), and the
published numbers of the motivating report."""
from __future__ import annotations

import pytest

from memfit.engine.deepspeed.parity import zero2_estimate, zero3_estimate
from memfit.engine.core.units import GIB

# Qwen2.5-32B base model as AutoModel loads it (no lm_head), and its largest module (sources.md §1).
P_BASE = 31_985_308_672
L = 778_567_680


def test_published_report_numbers():
    # The estimator output quoted in sources.md §1 / issue 2, printed with two decimals. Our exact
    # values are 804.29 / 714.93 / 539.10 (= DeepSpeed's function, test below); the quoted figures are
    # 0.03 GiB lower throughout, so the tolerance is 0.05 GiB.
    assert zero3_estimate(P_BASE, L).host_gib == pytest.approx(804.26, abs=0.05)
    assert zero3_estimate(P_BASE, L, offload_param=False).host_gib == pytest.approx(714.90, abs=0.05)
    assert zero3_estimate(P_BASE, L, offload_optimizer=False, offload_param=False).gpu_gib == pytest.approx(539.07, abs=0.05)
    assert zero3_estimate(P_BASE, L).gpu_gib == pytest.approx(2.90, abs=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("gpus, nodes", [(1, 1), (8, 1), (8, 2), (4, 4)])
@pytest.mark.parametrize("opt, param", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("zero_init", [True, False])
def test_zero3_equals_deepspeed(gpus, nodes, opt, param, zero_init):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(P_BASE, L, gpus, nodes, opt, param, zero_init)
    ours = zero3_estimate(P_BASE, L, gpus, nodes, opt, param, zero_init)
    assert ours.host_gib * GIB == pytest.approx(cpu, abs=1)
    assert ours.gpu_gib * GIB == pytest.approx(gpu, abs=1)


@pytest.mark.slow
@pytest.mark.parametrize("gpus, nodes", [(1, 1), (8, 1), (8, 4)])
@pytest.mark.parametrize("offload", [True, False])
def test_zero2_equals_deepspeed(gpus, nodes, offload):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    cpu, gpu = estimate_zero2_model_states_mem_needs(P_BASE, gpus, nodes, offload)
    ours = zero2_estimate(P_BASE, gpus, nodes, offload)
    assert ours.host_gib * GIB == pytest.approx(cpu, abs=1)
    assert ours.gpu_gib * GIB == pytest.approx(gpu, abs=1)
