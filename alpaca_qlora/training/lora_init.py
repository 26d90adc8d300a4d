"""LoRA initialisations that change the base weights as well as the adapter: PiSSA and LoftQ (peft's).

peft initialises both on 16/32-bit weights only. PiSSA moves the r principal singular directions of each weight into
the adapter and leaves the residual in the base; LoftQ replaces each weight by its NF4-quantized values and puts the
best rank-r approximation of the quantization error into the adapter. For a quantized run (QLoRA) the modified base
is then quantized as the run asks, which is peft's own recipe (its examples pissa_finetuning and loftq_finetuning):

    the base in the compute dtype -> get_peft_model(init) -> the initial adapter saved aside
    -> unload() (the modified base) saved aside -> loaded back quantized -> the initial adapter on top, trainable

so the base is read twice and, for a moment, held in 16/32 bits (the memory of a 16/32-bit base, once, before
training; NF4 storage during training as usual; eval_results.json records that moment's peak apart, as
initialisation_peak_memory_gib: train.initialise_modified_base). Everything set aside lives in one temporary folder
in the system's temporary folder ($TMPDIR), removed when the training process exits, finished or failed; a process
killed outright (SIGKILL, the kernel's out-of-memory killer) leaves it behind: a 16/32-bit copy of the base in a
folder named alpaca-qlora-init-*, to delete by hand.

The trained adapter applies to the modified base. At the end of a PiSSA run peft converts it into a plain LoRA of rank
2r that applies to the original base (`save_pretrained(path_initial_model_for_weight_conversion=...)`), so inference.py
and the merge load it on the base as given. With a quantized base the conversion is not exact: the run trained on
Quant(W_res) + AB, the converted adapter is applied to Quant(W) (peft warns: Quant(W_res) + AB != Quant(W) + dW); the
held-out loss of eval_results.json is the trained model's. A PiSSA run's checkpoint-N folders hold the adapter before
conversion (the Trainer saves it as it is): generation and the merge refuse them (run_folder.adapter_base_model).

A LoftQ adapter needs no conversion when its base is what generation loads again, the NF4 quantization of the
original weights; peft's loftq_init (peft/utils/loftq_utils.py) gives that only with one iteration (with more, the
modified base is dequantize(NF4(W - AB)) of the previous iteration's A and B, not NF4(W)), and it quantizes without
double quantization (compress_statistics=False). So LoftQ runs with --quantization nf4 --double_quant false
--loftq_iter 1 only (--quantization none would train on the dequantized NF4 weights in the compute dtype while
generation loads the untouched ones); check_lora_init refuses every other combination with one line.

The checks below refuse what peft cannot do here, before any data or weight is read.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..cli import fail

MODIFYING_INITS = ("pissa", "loftq")


def modifies_base(init_lora_weights: str) -> bool:
    return init_lora_weights in MODIFYING_INITS


def converts_adapter(init_lora_weights) -> bool:
    """Whether the finished run's adapter is converted for the original base (PiSSA): its checkpoints' adapters are
    not, and apply to the modified base only. A LoftQ adapter, converted or not, applies to NF4(W)."""
    return init_lora_weights == "pissa"


def check_lora_init(lora, quantization: str, double_quant: bool, device: str, engine: str, world_size: int) -> None:
    """One line, exit 2, for the combinations peft (0.21) cannot train or convert, or whose adapter would not apply
    to the base that generation loads (LoftQ: the module docstring). The CPU refusal of LoftQ comes last, so that a
    LoftQ combination refused anyway is named as such on any machine."""
    init = lora.init_lora_weights
    if init != "loftq" and lora.loftq_iter != 1:
        fail(f"--loftq_iter {lora.loftq_iter}: only --init_lora_weights loftq iterates")
    if not modifies_base(init):
        return
    flag = f"--init_lora_weights {init}"
    if lora.use_dora:
        fail(f"{flag} with --use_dora: peft converts the adapter back for the original base by its A and B only "
             "(a DoRA magnitude does not convert); use one of the two")
    if engine in ("fsdp", "deepspeed") or world_size > 1:
        fail(f"{flag}: the modified base is built by one process before training; run it in one process "
             f"(this launch has {world_size} processes, engine {engine})")
    if init == "loftq":
        check_loftq(lora, quantization, double_quant)
        if device == "cpu":
            fail(f"{flag}: peft computes LoftQ on CUDA (or XPU) only (peft.utils.loftq_utils moves each weight to "
                 "'cuda'); on the CPU use --init_lora_weights pissa")


def check_loftq(lora, quantization: str, double_quant: bool) -> None:
    """LoftQ's adapter applies to NF4(W) quantized without double quantization, which peft's base is with one
    iteration only, and which only an NF4 run without double quantization loads again at generation."""
    flag = "--init_lora_weights loftq"
    if quantization != "nf4":
        fail(f"{flag} needs --quantization nf4, not {quantization}: its adapter applies to the NF4 quantization of "
             "the base, which generation loads again only from an NF4 run (with another setting the run would train "
             "on other weights than those generation loads)")
    if double_quant:
        fail(f"{flag} needs --double_quant false: peft quantizes LoftQ's base without double quantization "
             "(compress_statistics=False), and its adapter applies to that quantization")
    if lora.loftq_iter != 1:
        fail(f"--loftq_iter {lora.loftq_iter}: LoftQ runs one iteration here (with more, peft's modified base is the "
             "NF4 quantization of W - AB, not of W, so the adapter would not apply to the NF4 base generation "
             "loads); use --loftq_iter 1")


@dataclass
class InitialAdapter:
    """The initialised adapter and the modified base, set aside for the run (see the module docstring)."""

    folder: tempfile.TemporaryDirectory
    init: str

    @property
    def adapter(self) -> Path:
        return Path(self.folder.name) / "initial_adapter"

    @property
    def base(self) -> Path:
        return Path(self.folder.name) / "modified_base"

    def drop_base(self) -> None:
        """The modified base is read once; its 16/32-bit copy on disk goes as soon as it is loaded."""
        shutil.rmtree(self.base, ignore_errors=True)

    def conversion(self) -> dict:
        """save_pretrained's arguments that turn a trained PiSSA adapter into a LoRA on the original base."""
        return {"path_initial_model_for_weight_conversion": str(self.adapter)} if converts_adapter(self.init) else {}


def initialise_aside(full_model, lora_config) -> InitialAdapter:
    """peft's initialisation on the 16/32-bit base, then the initial adapter and the modified base saved aside.

    peft rewrites `full_model` in place, and unload() gives it back: this function lets go of its own references,
    and the caller, which still holds `full_model`, frees it (train.initialise_modified_base)."""
    from peft import get_peft_model

    peft_model = get_peft_model(full_model, lora_config)  # PiSSA / LoftQ rewrite the base weights here
    aside = InitialAdapter(tempfile.TemporaryDirectory(prefix="alpaca-qlora-init-"), lora_config.init_lora_weights)
    # peft's rule for the initial adapter: saved as a plain LoRA (init True), so that loading it back does not
    # initialise again from the (already modified) base, and so that the conversion accepts it.
    peft_model.peft_config["default"].init_lora_weights = True
    peft_model.save_pretrained(aside.adapter, safe_serialization=True)
    base = peft_model.unload()
    base.save_pretrained(aside.base, safe_serialization=True)
    del peft_model, base
    gc.collect()
    return aside


def lora_init_description(init: str, quantization: str) -> str:
    """What the model card says of an initialisation that modified the base."""
    if init == "pissa":
        exact = ("" if quantization == "none" else
                 f"; trained on the {quantization} quantization of the residual, so the converted adapter on the "
                 f"{quantization} original is close to, not exactly, the trained model")
        return ("PiSSA initialisation (saved converted to a plain LoRA of rank 2r that applies to the original base"
                f"{exact})")
    if init == "loftq":
        return ("LoftQ initialisation (one iteration; the adapter applies to the NF4 quantization of the base, "
                "without double quantization)")
    return f"{init} initialisation"
