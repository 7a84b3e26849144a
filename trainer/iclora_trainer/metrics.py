"""The run's loss curve: per-step loss and learning rate (metrics.jsonl) and its plot (loss.png).

Rank 0 appends each progress interval's steps and uploads the file to the run's folder, so a
resumed run continues the same curve (steps after the checkpoint it resumes from are dropped:
they are trained again). At the end the file and a plot of it are the artifacts
`metricsFile` and `lossPlot`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from iclora_api.contract import METRICS_NAME
from iclora_trainer.storage import Store

log = logging.getLogger(__name__)


class MetricsLog:
    """metrics.jsonl in `work_dir`, mirrored to the store's METRICS_NAME after each append."""

    def __init__(self, store: Store, work_dir: Path, enabled: bool = True) -> None:
        self.store = store
        self.path = work_dir / METRICS_NAME
        self.enabled = enabled
        self.rows: list[dict[str, float]] = []

    def restore(self, start_step: int) -> None:
        """Continue the curve of an earlier attempt up to `start_step` (the checkpoint resumed from)."""
        if not self.enabled:
            return
        self.rows = []
        if start_step and METRICS_NAME in self.store.list(METRICS_NAME):
            self.store.get_file(METRICS_NAME, self.path)
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                if row["step"] <= start_step:
                    self.rows.append(row)
        self._write()

    def append(self, first_step: int, losses: Iterable[float], lr_at: Callable[[int], float]) -> None:
        """Steps first_step, first_step + 1, ... (1-based: the step just completed) with their losses."""
        if not self.enabled:
            return
        for i, loss in enumerate(losses):
            step = first_step + i
            self.rows.append({"step": step, "loss": float(loss), "lr": float(lr_at(step - 1))})
        self._write()
        self.store.put_file(self.path, METRICS_NAME)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))


def plot_loss(rows: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """loss.png: the per-step loss (faint), its moving average, and the learning rate (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    window = max(1, len(rows) // 50)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss (per step)")
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.8, label=f"loss ({window}-step mean)")
        ax.set_xlabel("step")
        ax.set_ylabel("masked-token loss")
        ax.grid(alpha=0.3)
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", linewidth=1.0, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper right")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
