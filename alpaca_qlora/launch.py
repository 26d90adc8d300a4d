"""`accelerate launch` with its config file checked first: a mistake in it is one line naming the file and the
field, exit 2, before any process starts (accelerate itself stops with a traceback, or only inside every process).

    python -m alpaca_qlora.launch --config_file configs/accelerate/fsdp_qlora.yaml [accelerate launch flags] \\
        training_script.py --base_model ... --output_dir runs/my-run

Everything after the check is accelerate's own `launch_command`, with the same flags as `accelerate launch`.
training_script.py checks again, in every process, what accelerate hands it (engines.py): a config launched
with plain `accelerate launch` gets the same one-line refusals there, minus the file's name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from .cli import fail, run_cli
from .training.engines import (
    FSDP2_STATE_DICT_TYPES, FSDP_WRAP_POLICIES, ZERO_STAGES, check_batch_divides, read_deepspeed_json,
)


def whole_number(path: str, values: dict, field: str, minimum: int) -> int | None:
    value = values.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(f"--config_file {path}: {field} must be a whole number >= {minimum}, got {value!r}")
    return value


def check_accelerate_config(path: str, num_processes: int | None = None, num_machines: int | None = None) -> dict:
    """The accelerate config file, read and checked field by field (the fields this toolkit's engines use)."""
    from accelerate.utils import DistributedType

    file = Path(path)
    if not file.is_file():
        fail(f"--config_file {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        fail(f"--config_file {path}: cannot parse it as YAML: {str(error).splitlines()[0]}")
    if not isinstance(values, dict):
        fail(f"--config_file {path}: expected a mapping of accelerate's settings, found {type(values).__name__}")
    kinds = [kind.value for kind in DistributedType]
    kind = values.get("distributed_type", "NO")
    if kind not in kinds:
        fail(f"--config_file {path}: distributed_type {kind!r} does not exist; one of {', '.join(kinds)}")
    processes = num_processes or whole_number(path, values, "num_processes", 1)
    machines = num_machines or whole_number(path, values, "num_machines", 1) or 1
    rank = whole_number(path, values, "machine_rank", 0)
    if rank is not None and rank >= machines:
        fail(f"--config_file {path}: machine_rank {rank} with num_machines {machines} (ranks are 0 to {machines - 1})")
    if processes and processes % machines:
        fail(f"--config_file {path}: num_processes {processes} is not divisible by num_machines {machines} "
             "(num_processes counts the processes of all machines)")
    if kind == "FSDP":
        fsdp = values.get("fsdp_config") or {}
        if not isinstance(fsdp, dict):
            fail(f"--config_file {path}: fsdp_config must be a mapping")
        version = fsdp.get("fsdp_version", 1)
        if str(version) != "2":
            fail(f"--config_file {path}: fsdp_config.fsdp_version {version}: this toolkit runs FSDP2 (torch's "
                 "fully_shard); set fsdp_version: 2")
        state_dict = str(fsdp.get("fsdp_state_dict_type", "SHARDED_STATE_DICT")).upper()
        if state_dict not in FSDP2_STATE_DICT_TYPES:
            fail(f"--config_file {path}: fsdp_config.fsdp_state_dict_type {state_dict}: FSDP2 saves "
                 f"{' or '.join(FSDP2_STATE_DICT_TYPES)}")
        policy = str(fsdp.get("fsdp_auto_wrap_policy", "NO_WRAP")).upper()
        if policy not in FSDP_WRAP_POLICIES:
            fail(f"--config_file {path}: fsdp_config.fsdp_auto_wrap_policy {policy}: one of {', '.join(FSDP_WRAP_POLICIES)}")
    if kind == "DEEPSPEED":
        deepspeed = values.get("deepspeed_config") or {}
        if not isinstance(deepspeed, dict):
            fail(f"--config_file {path}: deepspeed_config must be a mapping")
        json_file = deepspeed.get("deepspeed_config_file")
        if json_file:
            where = f"--config_file {path}: deepspeed_config.deepspeed_config_file"
            deepspeed_json = read_deepspeed_json(str(json_file), where)
            if processes:  # each process would refuse it, and the launcher end in a traceback
                check_batch_divides(deepspeed_json, f"{where} {json_file}", processes)
        else:
            stage = deepspeed.get("zero_stage", 2)
            if stage not in ZERO_STAGES:
                fail(f"--config_file {path}: deepspeed_config.zero_stage {stage} does not exist; DeepSpeed's ZeRO stages "
                     "are 0, 1, 2 and 3")
    return values


def main(argv: list[str] | None = None) -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    parser = launch_command_parser()
    parser.error = lambda message: fail(message)  # type: ignore[method-assign]
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.config_file is None:
        fail("--config_file is missing: name one of configs/accelerate/*.yaml (or run accelerate launch itself)")
    check_accelerate_config(args.config_file, args.num_processes, args.num_machines)
    launch_command(args)


if __name__ == "__main__":
    run_cli(main)
