"""Launch lines for a chosen strategy: deepspeed, accelerate, LLaMA-Factory, and a hostfile template.

Flags checked against deepspeed 0.19 `deepspeed/launcher/runner.py: parse_args` (--hostfile,
--num_nodes, --num_gpus, --master_port), `accelerate launch --help` (accelerate 1.x: --use_deepspeed,
--deepspeed_config_file, --num_processes = total processes, --num_machines, --machine_rank,
--main_process_ip, --main_process_port, --deepspeed_hostfile, --deepspeed_multinode_launcher) and
LLaMA-Factory's README (FORCE_TORCHRUN, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT env variables).
"""
from __future__ import annotations

import shlex
from typing import Mapping

from ..plan.schema import Plan
from ..plan.strategy import Strategy

_MASTER_PORT = 29500  # torch.distributed's customary default


def _join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _deepspeed(plan: Plan, script: list[str]) -> str:
    hw = plan.hardware
    argv = ["deepspeed"]
    if hw.nodes > 1:
        argv += ["--hostfile", "hostfile", "--num_nodes", str(hw.nodes)]
    argv += ["--num_gpus", str(hw.gpus_per_node), *script]
    return _join(argv)


def _accelerate(plan: Plan, config_path: str, script: list[str]) -> str:
    hw = plan.hardware
    argv = ["accelerate", "launch", "--use_deepspeed", "--deepspeed_config_file", config_path,
            "--num_processes", str(hw.world_size), "--num_machines", str(hw.nodes)]
    if hw.nodes > 1:
        # Run the same line on every node with its own rank; node-1 is the hostfile's first entry.
        argv += ["--machine_rank", "$NODE_RANK", "--main_process_ip", "node-1",
                 "--main_process_port", str(_MASTER_PORT), "--deepspeed_multinode_launcher", "standard"]
    line = _join([*argv, *script])
    return line.replace("'$NODE_RANK'", '"$NODE_RANK"')


def _llamafactory(plan: Plan, lf_yaml: str) -> str:
    hw = plan.hardware
    # Every DeepSpeed run needs torchrun, and llamafactory-cli uses it on one GPU only when forced
    # (launcher.py; parser.py: "Please use `FORCE_TORCHRUN=1` to launch DeepSpeed training.").
    env = ["FORCE_TORCHRUN=1"]
    if hw.nodes > 1:
        env += [f"NNODES={hw.nodes}", 'NODE_RANK="$NODE_RANK"', "MASTER_ADDR=node-1", f"MASTER_PORT={_MASTER_PORT}"]
    return " ".join([*env, "llamafactory-cli", "train", shlex.quote(lf_yaml)])


def _with_env(env: Mapping[str, str], line: str) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), line])


def launch_commands(plan: Plan, strategy: Strategy, config_path: str = "ds_config.json",
                    script: str = "train.py", lf_yaml: str = "lf.yaml",
                    env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Shell lines that start training with the emitted config.

    Args:
        plan: supplies nodes and GPUs per node.
        strategy: the chosen strategy (named in the comment line).
        config_path: where the DeepSpeed JSON was written.
        script: the training script; it receives `--deepspeed CONFIG` (the HF TrainingArguments flag).
        lf_yaml: the LLaMA-Factory YAML written by `llamafactory_yaml`.
        env: environment variables the rules set (policy.knobs.env_for), put in front of each line.
    Returns:
        {"comment", "deepspeed", "accelerate", "llamafactory"} and, for nodes > 1, "hostfile": what the
        hostfile holds, in one line. The file itself (`hostfile_text`) is built only when written:
        one line per node per candidate cost 24 s and 1.5 GB for `nodes: 1000000`. With env,
        "deepspeed_env" (the text of .deepspeed_env: the deepspeed launcher forwards to other nodes
        only the variables listed there or with its EXPORT_ENVS prefixes, deepspeed/launcher/runner.py).
        Multi-node lines expect $NODE_RANK set on each node.
    """
    env = dict(env or {})
    script_argv = [script, "--deepspeed", config_path]
    out = {
        "comment": f"# {strategy.key} on {plan.hardware.nodes} node(s) x {plan.hardware.gpus_per_node} GPU(s)",
        "deepspeed": _with_env(env, _deepspeed(plan, script_argv)),
        "accelerate": _with_env(env, _accelerate(plan, config_path, script_argv)),
        "llamafactory": _with_env(env, _llamafactory(plan, lf_yaml)),
    }
    if plan.hardware.nodes > 1:
        out["hostfile"] = (f"{plan.hardware.nodes} lines 'node-I slots={plan.hardware.gpus_per_node}' "
                           "(advise --out DIR writes DIR/hostfile)")
        if env:
            out["deepspeed_env"] = "".join(f"{k}={v}\n" for k, v in env.items())
    return out


def hostfile_template(plan: Plan) -> str:
    """An MPI-style hostfile for `deepspeed --hostfile`: one `HOST slots=N` line per node.

    Returns:
        The file text; host names are placeholders (node-1 ... node-K) to replace with real ones.
    """
    return hostfile_text(plan.hardware.nodes, plan.hardware.gpus_per_node)


def hostfile_text(nodes: int, gpus_per_node: int) -> str:
    """The text of `hostfile_template` for `nodes` nodes of `gpus_per_node` GPUs each."""
    lines = ["# DeepSpeed hostfile: one line per node, 'HOSTNAME slots=GPUS'. Replace node-1.. with host names",
             "# reachable by passwordless ssh from the first node; the first line is the master."]
    lines += [f"node-{i} slots={gpus_per_node}" for i in range(1, nodes + 1)]
    return "\n".join(lines) + "\n"
