"""What training reports: FLOPs and MFU, metrics.jsonl, TensorBoard, the live display, the curves.

FLOP formula (PaLM, appendix B; what MaxText and nanoGPT use), per trained token:

    6 · N_matmul  +  12 · n_layers · context · d_model

N_matmul counts every weight that multiplies activations: all block matrices plus the output
head (V · D, also when it is tied to the embedding), but not the embedding lookup, which is a
gather. The second term is the attention scores and weighted sum (QKᵀ and AV: 2 matmuls of
2 · T · D FLOPs per token forward, ×3 for forward + backward), counted over the full causal
square as PaLM does. MFU = FLOPs per token × tokens/s ÷ the device's dense peak.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lumi_jax.config import ModelConfig
from lumi_jax.errors import UserError
from lumi_jax.files import write_text_atomic

# Dense peak FLOP/s per device (bf16 tensor cores on GPUs). Matched as substrings of device_kind.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
                  "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def matmul_params(config: ModelConfig) -> int:
    """Weights that take part in matmuls: block matrices and the output head, not the lookup."""
    D, F, V = config.d_model, config.ffn_dim, config.vocab_size
    kv_width = config.kv_heads * config.head_dim
    per_layer = D * D * 2 + D * kv_width * 2 + 3 * D * F  # wq, wo; wk, wv; w1, w2, w3
    return config.n_layers * per_layer + V * D


def flops_per_token(config: ModelConfig, context: int) -> float:
    """Training FLOPs per token, PaLM's formula (Chowdhery et al., 2022, appendix B): 6·N for the
    matmul weights plus 12·L·T·D for attention (its scores and weighted sum, forward and
    backward, counted over the whole T×T square as PaLM does, though causal masking skips half)."""
    return 6.0 * matmul_params(config) + 12.0 * config.n_layers * context * config.d_model


def cpu_peak_flops() -> tuple[float, str]:
    """A CPU's float32 peak: cores × clock × FLOPs per cycle (2 FMA units × vector width × 2)."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    frequency = psutil.cpu_freq()
    ghz = (frequency.max or frequency.current) / 1000 if frequency and (frequency.max or frequency.current) else 2.5
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    # AMD Zen 4 runs AVX-512 as two 256-bit halves, so only Intel's AVX-512 doubles the width.
    lanes = 16 if "avx512f" in flags and "GenuineIntel" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2
    return cores * ghz * 1e9 * per_cycle, f"{cores} cores × {ghz:.2f} GHz × {per_cycle} FLOP/cycle (fp32 FMA)"


def peak_flops() -> tuple[float | None, str]:
    """The whole job's dense peak FLOP/s and how it was obtained (None when unknown)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        per_process, how = cpu_peak_flops()
        return per_process * jax.process_count(), how
    kind = getattr(device, "device_kind", "")
    for name, flops in GPU_PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops * jax.device_count(), f"{jax.device_count()} × {kind} at {flops / 1e12:.0f} TFLOP/s bf16 dense"
    return None, f"unknown peak for {kind}"


def tensorboard_writer_class():
    """tensorboardX's SummaryWriter (event files without TensorFlow), or a clear error."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboardX package (no TensorFlow required); "
            "install it with: .venv/bin/pip install -e '.[tensorboard]'"
        ) from None
    return SummaryWriter


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and, when asked, TensorBoard event files."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled  # only process 0 of a multi-host job writes
        self.tensorboard = None
        if tensorboard and enabled:
            self.tensorboard = tensorboard_writer_class()(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step`: a resumed run redoes those steps and logs them again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [json.dumps(record) for record in read_metrics(self.path) if record.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))  # a crash keeps the old file whole

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            step = record["step"]
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a killed process is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    sign, seconds = ("-" if seconds < 0 else ""), int(abs(seconds))  # -22 s is -0:22, not -1:38
    whole = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"
    return sign + whole


class ProgressDisplay:
    """On a terminal, a live bar with the numbers on a line below it (so a narrow terminal cuts
    nothing); elsewhere (logs, pipes) one plain line per logged step."""

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool = True):
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=False)
        self.live = None
        if enabled and self.console.is_terminal:
            from rich.console import Group
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
            from rich.text import Text

            self.progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=None),
                                     console=self.console, expand=True)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step)
            self.stats = Text("compiling…")
            self.live = Live(Group(self.progress, self.stats), console=self.console, refresh_per_second=4)
            self.live.start()

    @staticmethod
    def describe(record: dict[str, Any], budget_left_s: float | None, eta_s: float | None) -> str:
        mfu = record.get("mfu")
        parts = [
            f"loss {record['loss']:.4f}",
            f"{record['tokens_per_s']:,.0f} tok/s",
            f"MFU {100 * mfu:.1f}%" if mfu is not None else "MFU –",
            f"lr {record['lr']:.2e}",
            f"ETA {_duration(eta_s)}",
        ]
        if budget_left_s is not None:
            parts.append(f"budget left {_duration(budget_left_s)}")
        return " · ".join(parts)

    def update(self, record: dict[str, Any], total_steps: int, budget_left_s: float | None, eta_s: float | None) -> None:
        if not self.enabled:
            return
        text = self.describe(record, budget_left_s, eta_s)
        if self.live is not None:
            self.progress.update(self.task, completed=record["step"])
            self.stats.plain = text
        else:
            print(f"step {record['step']}/{total_steps} · {text}", flush=True)

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, markup=False)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def plot_curves(metrics: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Train and validation loss against step, learning rate beside them; a PNG at `path`."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(3, 1))
    if train:
        steps, losses = np.array(train).T
        loss_axis.plot(steps, losses, label="train loss", linewidth=1)
    if val:
        steps, losses = np.array(val).T
        loss_axis.plot(steps, losses, "o-", label="validation loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss (nats / token)")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend()
    loss_axis.set_title(title or "training curves")
    lrs = [(m["step"], m["lr"]) for m in metrics if "lr" in m]
    if lrs:
        steps, values = np.array(lrs).T
        lr_axis.plot(steps, values, color="tab:green")
    lr_axis.set_xlabel("step")
    lr_axis.set_title("learning rate")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


class Stopwatch:
    """Wall time since start, and the time left in an optional budget."""

    def __init__(self, budget_minutes: float | None):
        self.start = time.perf_counter()
        self.budget_s = None if budget_minutes is None else budget_minutes * 60

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        return None if self.budget_s is None else self.budget_s - self.elapsed()


def stderr_note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
