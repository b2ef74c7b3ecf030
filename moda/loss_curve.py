"""The loss curve a training run and a published checkpoint's card show (train_hf.py, push_to_hub.py)."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(log_history: list[dict], path: Path) -> None:
    """Train and validation loss per epoch from Trainer's `log_history`, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(entry["epoch"], entry["loss"]) for entry in log_history if "loss" in entry]
    validation = [(entry["epoch"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axis = plt.subplots(figsize=(6, 4))
    for points, label in ((train, "train"), (validation, "validation")):
        if points:
            axis.plot(*zip(*points), marker="o", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (cross-entropy per description token)")
    axis.set_title("MODA training")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
