"""Plan loading: sizes with units, every problem at once with file and key, did-you-mean."""
from __future__ import annotations

import pytest

from memfit.engine import PlanError, load_plan, plan_from_dict
from memfit.engine.core.units import GIB, parse_size_gib

from conftest import EXAMPLES


@pytest.mark.parametrize("value, gpu, expected", [
    (80, False, 80.0),                      # plain numbers are GiB
    ("80 GiB", False, 80.0),
    ("744GB", False, 744e9 / GIB),          # host: SI gigabytes, 692.9 GiB
    ("1.5TB", False, 1.5e12 / GIB),
    ("96GB", True, 96.0),                   # GPU vendors' GB is GiB (A100 80GB reports 81,920 MiB)
    ("512 MiB", False, 0.5),
])
def test_sizes(value, gpu, expected):
    assert parse_size_gib(value, gb_means_gib=gpu) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["lots", "80 parsecs", True, None, "-"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size_gib(bad)


BASE = {"model": "Qwen/Qwen2.5-7B", "hardware": {"gpu_memory": 80, "host_memory": 256}}

BAD_PLANS = [
    ("negative gpu", {"hardware": {"gpu_memory": -8, "host_memory": 1}}, r"p.yaml: hardware.gpu_memory: must be > 0 \(got -8\)"),
    ("typo", {"hardware": {"gpu_memory": 8, "host_memry": 1}}, r"hardware.host_memry: unknown key; did you mean 'host_memory'\?"),
    ("missing host", {"hardware": {"gpu_memory": 8}}, r"hardware.host_memory: Field required"),
    ("no gpu memory", {"hardware": {"host_memory": 8}}, r"hardware: give gpu_memory"),
    ("unknown gpu", {"hardware": {"gpu": "H100-SXM-80G", "host_memory": 8}}, r"did you mean 'H100-SXM-80GB'"),
    ("micro batch 0", {"training": {"micro_batch_size": 0}}, r"training.micro_batch_size: must be between 1 and 65536, or 'auto' \(got 0\)"),
    ("precision", {"training": {"precision": "bf8"}}, r"training.precision: .*'bf16'.* \(got 'bf8'\)"),
    ("zero stage", {"training": {"zero_stage": 4}}, r"training.zero_stage: .* \(got 4\)"),
    ("headroom", {"policy": {"gpu_headroom": 1.5}}, r"policy.gpu_headroom: .*less than 1 \(got 1.5\)"),
    ("top-level typo", {"trainng": {}}, r"trainng: unknown key; did you mean 'training'\?"),
    ("inline without type", {"model": {"hidden_size": 8}}, r"model: an inline model mapping needs model_type"),
    ("lora rank", {"training": {"lora": {"rank": 0}}}, r"training.lora.rank: .*greater than or equal to 1"),
]


@pytest.mark.parametrize("name, change, message", BAD_PLANS, ids=[b[0] for b in BAD_PLANS])
def test_bad_plans_name_file_and_key(name, change, message):
    data = {**BASE, **change}
    with pytest.raises(PlanError, match=message):
        plan_from_dict(data, "p.yaml")


def test_every_problem_reported_at_once():
    data = {"model": "x", "hardware": {"gpu_memory": -1, "host_memry": 2},
            "training": {"micro_batch_sise": 2, "precision": "bf8"}}
    with pytest.raises(PlanError) as info:
        plan_from_dict(data, "p.yaml")
    assert len(info.value.problems) == 5  # gpu_memory, host_memry, missing host_memory, micro_batch_sise, precision
    assert all(p.startswith("p.yaml: ") for p in info.value.problems)


def test_yaml_errors_name_the_line(tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text("model: x\nhardware: [1, 2\n")
    with pytest.raises(PlanError, match=r"plan.yaml: not valid YAML at line 3"):
        load_plan(f)


def test_missing_file(tmp_path):
    with pytest.raises(PlanError, match=r"nope.yaml: cannot read the plan"):
        load_plan(tmp_path / "nope.yaml")


def test_not_a_mapping(tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(PlanError, match=r"the plan must be a mapping"):
        load_plan(f)


def test_example_reads_units_as_documented():
    plan = load_plan(EXAMPLES / "qwen32b-one-h100.yaml")
    assert plan.hardware.gpu_memory_gib == 96.0
    assert plan.hardware.host_memory_gib == pytest.approx(744e9 / 2**30)  # 692.9 GiB
    assert plan.base_dir == str(EXAMPLES)
