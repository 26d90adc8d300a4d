"""The HF Trainer, extended with what instruction tuning needs to be measured honestly.

- The loss (`compute_loss`): the chunked cross-entropy on labelled positions (training/loss.py) from the
  decoder's final hidden states and the model's untouched output layer, or the model's own loss.
- Token accounting: real, trained and padding tokens per logging interval (tokens/s, padding share),
  derived from the labels.
- Held-out loss weighted by token (the mean negative log-likelihood of every response token), not the mean
  of per-batch means that Trainer.evaluate reports; each process takes its share and the sums are added.
- The log written to the run folder is the Trainer's own history (`state.log_history`), so a resumed run's
  log is the checkpoint's, continued.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ..data.tokenization import IGNORE_INDEX
from ..run_folder import RunFolder
from ..vision import is_processor
from .collators import token_counts
from .loss import labelled_loss_sum, no_positions
from .neftune import PerExampleNEFTune, example_lengths
from .plan import TrainingPlan


@dataclass
class TokenStats:
    """Token counts of the training batches since the last log."""

    total: int = 0
    real: int = 0
    trained: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, total: int, real: int, trained: int) -> None:
        self.total += total
        self.real += real
        self.trained += trained

    def flush(self, world_size_sum) -> dict[str, float]:
        total, real, trained = world_size_sum([self.total, self.real, self.trained])
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self.total = self.real = self.trained = 0
        self.started = time.perf_counter()
        return {
            "tokens_per_second": round(real / seconds, 2),
            "trained_tokens_per_second": round(trained / seconds, 2),
            "padding_share": round((total - real) / total, 4) if total else 0.0,
            "tokens": real,
        }


class InstructionTrainer(Trainer):
    def __init__(self, *args, plan: TrainingPlan, eval_examples=None, **kwargs):
        self.plan = plan  # before Trainer.__init__, which builds the accelerator (create_accelerator_and_postprocess)
        super().__init__(*args, **kwargs)
        self.token_stats = TokenStats()
        self.eval_examples = eval_examples or []
        # --neftune_noise_alpha: our hook, scaled by each example's length (training/neftune.py), in place of
        # transformers' (scaled by the row: a fraction of the noise in packed rows), which train() would add.
        self.neftune = None
        if self.neftune_noise_alpha is not None:
            self.neftune = PerExampleNEFTune(self.neftune_noise_alpha)
            self.model.get_input_embeddings().register_forward_hook(self.neftune)
            self.neftune_noise_alpha = None

    def _get_train_sampler(self, *args, **kwargs):
        """Length grouping measures each example's first model input: for an image-text model's processor that is
        pixel_values, which examples do not hold (the collator makes them); the lengths are those of input_ids."""
        if not is_processor(self.processing_class):
            return super()._get_train_sampler(*args, **kwargs)
        processor = self.processing_class
        self.processing_class = processor.tokenizer
        try:
            return super()._get_train_sampler(*args, **kwargs)
        finally:
            self.processing_class = processor

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """No batch once the run is at --max_steps. transformers (5.24, Trainer._run_epoch) checks the stop only after
        a step, so a run resumed from a checkpoint taken at its last step (stopped during its final evaluation)
        trained one step more: 161 of 160 in the SmolLM2 study, a weight change under a constant rate."""
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def create_accelerator_and_postprocess(self) -> None:
        """accelerate's Accelerator, as the Trainer builds it; on the CPU, FSDP handed to accelerate's FSDP2 path
        (engines.enable_fsdp_on_cpu: accelerate 1.15 would otherwise run DDP and ignore the FSDP plugin)."""
        super().create_accelerator_and_postprocess()
        if self.plan.engine == "fsdp" and not self.is_fsdp_enabled:
            from .engines import enable_fsdp_on_cpu

            if enable_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args, self.plan.mixed_precision):
                self.is_fsdp_enabled = True

    # -- the loss --------------------------------------------------------------------------------
    @property
    def loss_is_scaled_for_ga(self) -> bool | None:
        """The chunked loss is normalised by the accumulated batch's labelled tokens (num_items_in_batch)."""
        return True if self.plan.loss == "chunked" else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.token_stats.add(*token_counts(inputs["labels"]))
        if self.neftune is not None:
            self.neftune.lengths = example_lengths(inputs) if model.training else None
        if self.plan.loss == "full_logits":
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        total, count, outputs = self.labelled_loss(model, inputs)
        loss = total / (num_items_in_batch if num_items_in_batch is not None else max(count, 1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every process's tokens
        return (loss, outputs) if return_outputs else loss

    def labelled_loss(self, model, inputs: dict):
        """(summed NLL over the labelled positions, their number, the model's outputs): the chunked loss.

        The model's own forward runs (through every wrapper: PEFT, DDP) with no logits kept; the output
        layer is then applied to the labelled positions only (training/loss.py)."""
        features = {name: value for name, value in inputs.items() if name != "labels"}
        outputs = model(**features, output_hidden_states=True, logits_to_keep=no_positions(inputs["labels"].device),
                        use_cache=False)
        output_layer = self.accelerator.unwrap_model(model).get_output_embeddings()
        total, count = labelled_loss_sum(outputs.hidden_states[-1], inputs["labels"], output_layer)
        return total, count, outputs

    def batch_loss_sum(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        """(summed NLL, labelled tokens) of one batch, through the same loss as training."""
        if self.plan.loss == "chunked":
            total, count, _ = self.labelled_loss(model, batch)
            return total.detach(), count
        count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return model(**batch, use_cache=False).loss.detach() * count, count

    # -- held-out evaluation ---------------------------------------------------------------------
    def eval_batches(self) -> list[list[dict]]:
        """This process's share of the held-out examples, in batches; every process gets as many batches
        (sharded engines gather parameters in every forward, so all processes must run the same number)."""
        world, rank = self.args.world_size, self.args.process_index
        size = self.args.per_device_eval_batch_size
        share = self.eval_examples[rank::world]
        count = math.ceil(math.ceil(len(self.eval_examples) / world) / size)
        filler = {**self.eval_examples[0], "labels": [IGNORE_INDEX] * len(self.eval_examples[0]["labels"])}
        return [share[i * size : (i + 1) * size] or [filler] for i in range(count)]  # a filler adds no token

    @torch.no_grad()
    def heldout_loss(self) -> dict[str, float]:
        """Mean NLL per response token over the whole held-out set."""
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        for examples in self.eval_batches():
            batch = {k: v.to(self.args.device) for k, v in self.data_collator(examples).items()}
            with self.compute_loss_context_manager():
                nll, tokens = self.batch_loss_sum(model, batch)
            sums += torch.stack([nll.double().to(sums.device), torch.tensor(float(tokens), dtype=torch.float64, device=sums.device)])
        if self.args.world_size > 1:
            torch.distributed.all_reduce(sums)
        model.train(was_training)
        self.token_stats.started = time.perf_counter()  # evaluation time is not training time
        nll, tokens = float(sums[0]), int(sums[1])
        mean = nll / max(tokens, 1)
        return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0)), "eval_tokens": tokens}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval") -> dict[str, float]:
        metrics = self.heldout_loss()
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # -- logging ---------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self.token_stats.flush(self._sum_over_processes))
        super().log(logs, start_time)

    def _sum_over_processes(self, values: list[int]) -> list[int]:
        if self.args.world_size <= 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.args.device)
        torch.distributed.all_reduce(tensor)
        return [int(v) for v in tensor.tolist()]


class EngineStartCallback(TrainerCallback):
    """What must run on the model as the engine prepared it, before the first step (FSDP, DeepSpeed): the
    held-out loss before training (every process its share of the held-out set, in lockstep), and, where
    ZeRO-3 partitioned the weights as they loaded, the packing check (train.attention_keeps_examples_apart)."""

    def __init__(self, trainer: "InstructionTrainer", on_start):
        self.trainer = trainer
        self.on_start = on_start

    def on_train_begin(self, args, state, control, **kwargs):
        self.on_start(self.trainer)


class TrainLogCallback(TrainerCallback):
    """train_log.jsonl: the Trainer's log history, rewritten whole (atomically) at every log event."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            self.folder.write_log(state.log_history)


class LossProgressCallback(ProgressCallback):
    """The training progress bar, with loss, tokens/s and held-out loss in its postfix instead of printed dicts."""

    def __init__(self):
        super().__init__()
        self.postfix: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4f}"
            self.postfix["tok/s"] = f"{logs.get('tokens_per_second', 0):.0f}"
        if "eval_loss" in logs:
            self.postfix["eval_loss"] = f"{logs['eval_loss']:.4f}"
        self.training_bar.set_postfix(self.postfix, refresh=True)
