"""Figures written into run folders."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .files import atomic_write_bytes  # noqa: E402


def save_figure(figure, path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_loss_curve(log_rows: list[dict], path, title: str, before_training: float | None = None) -> None:
    """Training loss per logging step and held-out loss per evaluation (step 0: before training), against the step."""
    train = [(row["step"], row["loss"]) for row in log_rows if "loss" in row]
    evals = [(row["step"], row["eval_loss"]) for row in log_rows if "eval_loss" in row]
    if before_training is not None:
        evals = [(0, before_training)] + evals
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if train:
        axis.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        axis.plot(*zip(*evals), label="held-out loss", color="tab:orange", marker="o")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (nats / token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)
