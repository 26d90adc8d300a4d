"""Which engine spreads a run over processes, read from how it was launched, checked before anything is written.

    accelerate launch --config_file configs/accelerate/<engine>.yaml training_script.py ...   (one machine or many)
    torchrun --nproc_per_node N training_script.py ... [--deepspeed configs/deepspeed/zero3.json]

accelerate launch turns its config file into environment variables (ACCELERATE_USE_FSDP, FSDP_*,
ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_*); torchrun sets WORLD_SIZE. Every process reads the same
variables and files and runs the same checks, so a mistake stops every process with the same one line
before any collective call (no process is left waiting for the others) and before anything is written.

The engines themselves are accelerate's and DeepSpeed's (through the Trainer); this module only reads and
checks their settings, plus one shim: accelerate 1.15 treats a multi-process CPU run as MULTI_CPU (gloo
DDP) and ignores its FSDP plugin there, although torch's FSDP2 (`fully_shard`) runs on the CPU with gloo.
`enable_fsdp_on_cpu` hands such a run to accelerate's own FSDP2 preparation (fsdp2_prepare_model).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..cli import fail

ZERO_STAGES = (0, 1, 2, 3)
FSDP2_STATE_DICT_TYPES = ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
FSDP_WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
# DeepSpeed's batch fields the Trainer fills in when they say "auto"; a number must agree with the flags.
DS_BATCH_FIELDS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


@dataclass(frozen=True)
class EngineSettings:
    engine: str  # single | ddp | fsdp | deepspeed
    world_size: int
    nodes: int
    source: str  # where the engine was asked for: "accelerate config", "--deepspeed <file>", "torchrun", ...
    zero_stage: int | None = None
    deepspeed_config: str | None = None  # the DeepSpeed JSON file, when there is one
    fsdp_version: int | None = None
    fsdp_state_dict_type: str | None = None
    fsdp_wrap_classes: tuple[str, ...] = ()

    @property
    def shards_parameters(self) -> bool:
        """FSDP and ZeRO-3 keep 1/N of every parameter on each process."""
        return self.engine == "fsdp" or (self.engine == "deepspeed" and self.zero_stage == 3)

    def describe(self) -> str:
        if self.engine == "single":
            return "one process"
        name = {"ddp": "DDP", "fsdp": f"FSDP{self.fsdp_version or ''}", "deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}"}[self.engine]
        return f"{name} x{self.world_size}" + (f" on {self.nodes} nodes" if self.nodes > 1 else "")

    def to_dict(self) -> dict:
        return {"engine": self.engine, "world_size": self.world_size, "nodes": self.nodes, "source": self.source,
                "zero_stage": self.zero_stage, "deepspeed_config": self.deepspeed_config,
                "fsdp_version": self.fsdp_version, "fsdp_state_dict_type": self.fsdp_state_dict_type,
                "fsdp_wrap_classes": list(self.fsdp_wrap_classes)}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("true", "1", "yes")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        fail(f"environment variable {name}={value!r} is not a whole number")


# ---------------------------------------------------------------------------------------------
# DeepSpeed's JSON
# ---------------------------------------------------------------------------------------------
def read_deepspeed_json(path: str, where: str) -> dict:
    """The DeepSpeed config file, parsed and checked: one line naming the file (and field) on any mistake."""
    file = Path(path)
    if not file.is_file():
        fail(f"{where} {path}: no such file")
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        fail(f"{where} {path}: not valid UTF-8 ({error.reason} at byte {error.start})")
    except json.JSONDecodeError as error:
        fail(f"{where} {path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})")
    if not isinstance(values, dict):
        fail(f"{path}: expected a JSON object (DeepSpeed's settings), found {type(values).__name__}")
    zero = values.get("zero_optimization", {})
    if not isinstance(zero, dict):
        fail(f"{path}: zero_optimization must be an object, found {type(zero).__name__}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        fail(f"{path}: zero_optimization.stage {json.dumps(stage)} does not exist; DeepSpeed's ZeRO stages are 0, 1, 2 and 3")
    for field in DS_BATCH_FIELDS:
        value = values.get(field, "auto")
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"{path}: {field} must be \"auto\" or a whole number >= 1, got {json.dumps(value)}")
    optimizer = values.get("optimizer")
    if optimizer is not None and not (isinstance(optimizer, dict) and isinstance(optimizer.get("type"), str)):
        fail(f"{path}: optimizer must be an object with a \"type\" (e.g. AdamW)")
    return values


def check_batch_divides(values: dict, path: str, world_size: int) -> None:
    """DeepSpeed's train_batch_size, when a number, is split evenly over the processes (the launcher checks this
    before starting them; every process checks it again)."""
    total = values.get("train_batch_size", "auto")
    if total != "auto" and total % world_size:
        fail(f"{path}: train_batch_size {total} is not divisible by the world size {world_size}")


def check_deepspeed_batch(values: dict, path: str, per_device: int, accumulation: int, world_size: int) -> None:
    """Numbers in DeepSpeed's batch fields must agree with the flags and the world size (DeepSpeed would stop
    mid-start otherwise): train_batch_size = micro batch x accumulation x world size."""
    micro = values.get("train_micro_batch_size_per_gpu", "auto")
    steps = values.get("gradient_accumulation_steps", "auto")
    total = values.get("train_batch_size", "auto")
    if micro != "auto" and micro != per_device:
        fail(f"{path}: train_micro_batch_size_per_gpu {micro} differs from --per_device_train_batch_size {per_device}; "
             "set it to \"auto\"")
    if steps != "auto" and steps != accumulation:
        fail(f"{path}: gradient_accumulation_steps {steps} differs from --gradient_accumulation_steps {accumulation}; "
             "set it to \"auto\"")
    check_batch_divides(values, path, world_size)
    if total != "auto":
        if total != per_device * accumulation * world_size:
            fail(f"{path}: train_batch_size {total} != {per_device} per device x {accumulation} accumulation steps x "
                 f"{world_size} processes = {per_device * accumulation * world_size}; set it to \"auto\"")


# ---------------------------------------------------------------------------------------------
# Reading the launch
# ---------------------------------------------------------------------------------------------
def deepspeed_values(deepspeed_flag) -> tuple[dict, str | None, str]:
    """(DeepSpeed's settings, their file or None, where they were asked for), from --deepspeed or accelerate's config."""
    if deepspeed_flag:
        if isinstance(deepspeed_flag, dict):
            return deepspeed_flag, None, "--deepspeed (a dict)"
        path = str(deepspeed_flag)
        return read_deepspeed_json(path, "--deepspeed"), path, f"--deepspeed {path}"
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    source = "accelerate config (deepspeed_config)"
    if path and path.lower() != "none":
        return read_deepspeed_json(path, "accelerate config deepspeed_config.deepspeed_config_file"), path, source
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if stage not in tuple(str(s) for s in ZERO_STAGES):
        fail(f"accelerate config deepspeed_config.zero_stage {stage} does not exist; DeepSpeed's ZeRO stages are "
             "0, 1, 2 and 3")
    return {"zero_optimization": {"stage": int(stage)}}, None, source


def check_deepspeed_source(train) -> None:
    """Called as the training arguments are built, before transformers and accelerate read DeepSpeed's file
    (they would stop with a traceback, or mid-start): the file, its fields and its batch, as one line."""
    if train.deepspeed or env_flag("ACCELERATE_USE_DEEPSPEED"):
        values, path, _ = deepspeed_values(train.deepspeed)
        check_deepspeed_batch(values, path or "DeepSpeed config", train.per_device_train_batch_size,
                              train.gradient_accumulation_steps, env_int("WORLD_SIZE", 1))


def deepspeed_settings(deepspeed_flag, world_size: int, nodes: int) -> EngineSettings:
    values, path, source = deepspeed_values(deepspeed_flag)
    try:
        import deepspeed  # noqa: F401
    except Exception as error:  # noqa: BLE001 - missing, or its import fails
        fail(f"{source}: DeepSpeed is not importable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
             "pip install deepspeed")
    stage = int(values.get("zero_optimization", {}).get("stage", 0))
    return EngineSettings("deepspeed", world_size, nodes, source, zero_stage=stage, deepspeed_config=path)


def fsdp_settings(train, world_size: int, nodes: int) -> EngineSettings:
    """FSDP as accelerate's FullyShardedDataParallelPlugin reads it (its own checks, as one line)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    via_flag = bool(train.fsdp) and not env_flag("ACCELERATE_USE_FSDP")
    source = "--fsdp" if via_flag else "accelerate config (fsdp_config)"
    field = "--fsdp_config" if via_flag else "accelerate config fsdp_config"
    version = (train.fsdp_config or {}).get("version", 2) if via_flag else env_int("FSDP_VERSION", 1)
    if str(version) != "2":
        fail(f"{field}: fsdp_version {version}: this toolkit runs FSDP2 (torch's fully_shard); set fsdp_version: 2")
    state_dict = os.environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT").upper()
    if not via_flag and state_dict not in FSDP2_STATE_DICT_TYPES:
        fail(f"{field}.fsdp_state_dict_type {state_dict}: FSDP2 saves {' or '.join(FSDP2_STATE_DICT_TYPES)}")
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "NO_WRAP").upper()
    if not via_flag and policy not in FSDP_WRAP_POLICIES:
        fail(f"{field}.fsdp_auto_wrap_policy {policy}: one of {', '.join(FSDP_WRAP_POLICIES)}")
    try:
        plugin = FullyShardedDataParallelPlugin(**(train.fsdp_plugin_args or {})) if via_flag else FullyShardedDataParallelPlugin()
    except (ValueError, KeyError, TypeError) as error:
        fail(f"{field}: {str(error).strip().splitlines()[0]}")
    classes = tuple(plugin.transformer_cls_names_to_wrap or ()) if policy == "TRANSFORMER_BASED_WRAP" else ()
    state_dict = str(getattr(plugin.state_dict_type, "name", plugin.state_dict_type))
    return EngineSettings("fsdp", world_size, nodes, source, fsdp_version=2, fsdp_state_dict_type=state_dict,
                          fsdp_wrap_classes=classes)


def read_engine(train) -> EngineSettings:
    """How this run was launched and with which engine, checked (the same on every process)."""
    world_size = env_int("WORLD_SIZE", 1)
    local = env_int("LOCAL_WORLD_SIZE", world_size)
    nodes = max(1, world_size // max(local, 1))
    if train.deepspeed or env_flag("ACCELERATE_USE_DEEPSPEED"):
        if train.fsdp or env_flag("ACCELERATE_USE_FSDP"):
            fail("both DeepSpeed and FSDP are asked for (an accelerate config and --deepspeed/--fsdp flags?); choose one")
        return deepspeed_settings(train.deepspeed, world_size, nodes)
    if train.fsdp or env_flag("ACCELERATE_USE_FSDP"):
        return fsdp_settings(train, world_size, nodes)
    launcher = ("accelerate launch" if "ACCELERATE_MIXED_PRECISION" in os.environ  # set by every accelerate launch
                else "torchrun" if world_size > 1 else "one process")
    return EngineSettings("ddp" if world_size > 1 else "single", world_size, nodes, launcher)


# ---------------------------------------------------------------------------------------------
# Combinations
# ---------------------------------------------------------------------------------------------
def check_combination(engine: EngineSettings, quantization: str, quant_storage: str, storage_given: bool,
                      device: str, sixteen_bit: str) -> None:
    """Combinations an engine cannot run, refused before any data or weight is read, naming what runs instead.

    Tried on this project's CPU (torch 2.13, accelerate 1.15, DeepSpeed 0.19.8, bitsandbytes 0.50.2; BENCHMARKS.md):
    - NF4/FP4 weights stored in the compute dtype ARE sharded by FSDP2 and by ZeRO-3 on the CPU (each process holds
      half of every 4-bit weight with 2 processes) and train to the single process's losses;
    - FSDP2 leaves 4-bit weights stored as uint8 whole on every process (accelerate excludes them from sharding);
    - DeepSpeed cannot run bf16/fp16 on the CPU through the Trainer: transformers allows 16-bit mixed precision on
      the CPU only with use_cpu, which turns DeepSpeed off;
    - bitsandbytes' int8 has no CPU kernel at all, and no engine shards 8-bit weights.
    """
    name = engine.describe().split(" x")[0]
    if engine.engine == "deepspeed" and device == "cpu" and engine.world_size > 1 and engine.source.startswith("--deepspeed"):
        fail(f"{engine.source} under torchrun on the CPU: transformers' own DeepSpeed start leaves the CPU's collective "
             "backend unset and counts one process; what runs: accelerate launch --config_file "
             f"configs/accelerate/deepspeed_zero{engine.zero_stage}_cpu.yaml training_script.py ... (without --deepspeed)")
    if engine.engine == "deepspeed" and device == "cpu" and sixteen_bit in ("bf16", "fp16"):
        fail(f"{sixteen_bit} under {name} on the CPU: transformers runs 16-bit mixed precision on the CPU only "
             f"with use_cpu, which turns DeepSpeed off, and 16-bit 4-bit layers under DeepSpeed are not tested on the "
             f"CPU; what runs: --compute_dtype fp32 with {name}, or "
             f"{sixteen_bit} with FSDP (configs/accelerate/fsdp_cpu.yaml) (bench/gpu.sh checks {name} in "
             f"{sixteen_bit} on a GPU)")
    if quantization == "none" or not engine.shards_parameters:
        return
    if quantization == "int8":
        fail(f"--quantization int8 under {name}: bitsandbytes' 8-bit weights cannot be sharded; what runs: "
             f"--quantization nf4 with {name} (4-bit weights stored in the compute dtype), or --quantization none")
    if engine.engine == "fsdp" and storage_given and quant_storage == "uint8":
        fail(f"--bnb_4bit_quant_storage uint8 under {name}: 4-bit weights stored as uint8 cannot be sharded (accelerate "
             f"leaves them whole on every process); what runs: --quantization {quantization} with the weights stored "
             "in the compute dtype (leave --bnb_4bit_quant_storage out, or give bf16/fp32)")


def check_wrap_classes(engine: EngineSettings, model_config, kind: str, trust_remote_code: bool = False) -> EngineSettings:
    """FSDP's auto-wrap classes, decided before any weight loads (make_plan puts them in the plan): the decoder-layer
    classes the accelerate config names, each of which must exist in this model; none named: the model's own
    no-split layers that it has, which accelerate wraps. Read from the model built on the meta device (its modules,
    no weights), since a composite model (LLaVA) holds classes of other models' code."""
    if engine.engine != "fsdp":
        return engine
    import torch

    from ..vision import model_class

    with torch.device("meta"):
        skeleton = model_class(kind).from_config(model_config, trust_remote_code=trust_remote_code)
    present = {type(module).__name__ for module in skeleton.modules()}
    if not engine.fsdp_wrap_classes:
        own = tuple(name for name in (getattr(skeleton, "_no_split_modules", None) or ()) if name in present)
        return dataclasses.replace(engine, fsdp_wrap_classes=own)
    missing = [name for name in engine.fsdp_wrap_classes if name not in present]
    if missing:
        layers = sorted(name for name in present if name.endswith(("DecoderLayer", "Block", "Layer")))
        fail(f"accelerate config fsdp_config.fsdp_transformer_layer_cls_to_wrap {','.join(missing)}: no such module in "
             f"this model (its layers: {', '.join(layers[:4]) or 'none found'}); leave it out to wrap the model's "
             "own no-split layers")
    return engine


# ---------------------------------------------------------------------------------------------
# FSDP2 on the CPU (the one shim)
# ---------------------------------------------------------------------------------------------
def enable_fsdp_on_cpu(accelerator, fsdp_plugin_args: dict | None, mixed_precision: str) -> bool:
    """Let accelerate's FSDP2 path run a multi-process CPU (gloo) run that accelerate made MULTI_CPU.

    accelerate only turns FSDP on for GPU-like devices (AcceleratorState); everything after that (auto-wrap
    with fully_shard, sharded optimizer, state dicts, checkpoints) is accelerate's and torch's own code, which
    works on the CPU with gloo. Returns whether it switched.

    What it buys, measured (BENCHMARKS.md, engines, CPU 2026-12-01 run 2): with two processes each holds half the
    weights (67.4 of 134.8 MiB) and half the AdamW states, at 582 real tokens/s against DDP's 773; and the FSDP
    configs (sharding, gathered adapter, checkpoints) are tested without a GPU (tests/test_scale_out.py)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**(fsdp_plugin_args or {}))
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    # Both shared states: AcceleratorState copies PartialState's distributed_type each time one is built.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True
