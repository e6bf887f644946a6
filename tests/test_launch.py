"""Launch lines parsed by the launchers' own argument parsers; the hostfile by DeepSpeed's own parser."""
from __future__ import annotations

import shlex

import pytest

from memfit.engine.deepspeed.launch import hostfile_template, launch_commands
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy

STRATEGY = Strategy(method="full", zero_stage=3, offload_optimizer="cpu", offload_param="cpu")


def plan(gpus, nodes):
    return plan_from_dict({"model": {"model_type": "llama"},
                           "hardware": {"gpu_memory": 80, "host_memory": 512, "gpus_per_node": gpus, "nodes": nodes}})


def test_single_node_lines():
    cmds = launch_commands(plan(8, 1), STRATEGY, "out/ds.json")
    assert cmds["deepspeed"] == "deepspeed --num_gpus 8 train.py --deepspeed out/ds.json"
    assert cmds["llamafactory"] == "FORCE_TORCHRUN=1 llamafactory-cli train lf.yaml"
    assert "hostfile" not in cmds and "full/z3/opt=cpu/param=cpu" in cmds["comment"]
    # one GPU too: llamafactory-cli starts torchrun (which DeepSpeed needs) only with FORCE_TORCHRUN=1
    assert launch_commands(plan(1, 1), STRATEGY)["llamafactory"] == "FORCE_TORCHRUN=1 llamafactory-cli train lf.yaml"


def test_multi_node_lines_and_hostfile():
    cmds = launch_commands(plan(8, 2), STRATEGY)
    assert cmds["deepspeed"].startswith("deepspeed --hostfile hostfile --num_nodes 2 --num_gpus 8 ")
    assert cmds["llamafactory"].startswith('FORCE_TORCHRUN=1 NNODES=2 NODE_RANK="$NODE_RANK" MASTER_ADDR=node-1 ')
    assert cmds["hostfile"] == "2 lines 'node-I slots=8' (advise --out DIR writes DIR/hostfile)"
    assert hostfile_template(plan(8, 2)).splitlines()[-2:] == ["node-1 slots=8", "node-2 slots=8"]


@pytest.mark.slow
@pytest.mark.parametrize("gpus,nodes", [(8, 1), (8, 2), (4, 3)])
def test_deepspeed_launcher_parses_the_line(gpus, nodes):
    from deepspeed.launcher.runner import parse_args

    argv = shlex.split(launch_commands(plan(gpus, nodes), STRATEGY)["deepspeed"])
    args = parse_args(argv[1:])
    assert (args.num_gpus, args.user_script, args.user_args) == (gpus, "train.py", ["--deepspeed", "ds_config.json"])
    assert args.num_nodes == (nodes if nodes > 1 else -1)  # -1: deepspeed's "all local" default
    assert args.hostfile == ("hostfile" if nodes > 1 else "/job/hostfile")


@pytest.mark.slow
def test_deepspeed_reads_the_hostfile_template():
    from deepspeed.launcher.runner import _parse_hostfile

    pool = _parse_hostfile(hostfile_template(plan(4, 3)).splitlines())
    assert dict(pool) == {"node-1": 4, "node-2": 4, "node-3": 4}


@pytest.mark.slow
@pytest.mark.parametrize("gpus,nodes", [(8, 1), (8, 2)])
def test_accelerate_parses_the_line(gpus, nodes):
    from accelerate.commands.launch import launch_command_parser

    line = launch_commands(plan(gpus, nodes), STRATEGY)["accelerate"].replace('"$NODE_RANK"', "0")
    args = launch_command_parser().parse_args(shlex.split(line)[2:])
    assert args.use_deepspeed and args.deepspeed_config_file == "ds_config.json"
    assert (args.num_processes, args.num_machines) == (gpus * nodes, nodes)  # accelerate counts all processes
    assert args.training_script == "train.py" and args.training_script_args == ["--deepspeed", "ds_config.json"]
    if nodes > 1:
        assert (args.machine_rank, args.main_process_ip, args.deepspeed_multinode_launcher) == (0, "node-1", "standard")
