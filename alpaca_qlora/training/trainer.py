"""The HF Trainer, extended with what instruction tuning needs to be measured honestly.

- Token accounting: real, trained and padding tokens per logging interval (tokens/s, padding share).
- Held-out loss weighted by token (the mean negative log-likelihood of every response token),
  not the mean of per-batch means that Trainer.evaluate reports.
- A per-step JSONL log that survives resuming, and a progress bar showing loss and tokens/s.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ..data.tokenization import IGNORE_INDEX
from .loss import trained_token_loss_sum
from .collators import pop_token_counts


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
    def __init__(self, *args, eval_examples=None, hidden_states_head=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_states_head = hidden_states_head  # set when the loss runs on trained positions only
        self.token_stats = TokenStats()
        self.eval_examples = eval_examples or []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        total, real, trained = pop_token_counts(inputs)
        if model.training:
            self.token_stats.add(total, real, trained)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

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

    def batch_loss_sum(self, model, batch: dict) -> tuple[float, int]:
        """(summed NLL, labelled tokens) of one batch, through the same loss as training."""
        if self.hidden_states_head is None:
            trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            return float(model(**batch, use_cache=False).loss) * trained, trained
        labels = batch.pop("labels")
        outputs = model(**batch, use_cache=False)
        total, count = trained_token_loss_sum(outputs.logits, labels, self.hidden_states_head.head)
        return float(total), count

    @torch.no_grad()
    def heldout_loss(self) -> dict[str, float]:
        """Mean NLL per response token over the whole held-out set (each process computes all of it)."""
        model = self.model
        was_training = model.training
        model.eval()
        loader = DataLoader(self.eval_examples, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)
        nll, tokens = 0.0, 0
        for batch in loader:
            pop_token_counts(batch)
            batch = {k: v.to(self.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with self.compute_loss_context_manager():
                batch_nll, batch_tokens = self.batch_loss_sum(model, batch)
            nll += batch_nll
            tokens += batch_tokens
        model.train(was_training)
        mean = nll / max(tokens, 1)
        return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0)), "eval_tokens": tokens}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval") -> dict[str, float]:
        metrics = self.heldout_loss()
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.token_stats.started = time.perf_counter()  # evaluation time is not training time
        return metrics


class JsonlLogCallback(TrainerCallback):
    """train_log.jsonl: one JSON line per log event; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


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


#END
