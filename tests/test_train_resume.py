"""Never losing work: kill -9 and resume reproduces the uninterrupted run; SIGINT saves and exits 0.

These run `lumi train` as a real subprocess (micro model, a few hundred tiny steps) and kill or
interrupt it once its first checkpoint exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lumi_jax.config import TrainConfig
from lumi_jax.metrics import read_metrics
from lumi_jax.runs import load_run
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")  # compiled steps shared through the cache

CONFIG = TrainConfig(steps=300, batch_size=8, context=32, lr=3e-3, warmup=4, min_lr=3e-4,
                     eval_every=0, save_every=10, log_every=1)
CLI_FLAGS = ["--model", "micro", "--steps", "300", "--batch-size", "8", "--context", "32", "--lr", "3e-3",
             "--warmup", "4", "--min-lr", "3e-4", "--eval-every", "0", "--save-every", "10",
             "--log-every", "1"]
REPO = Path(__file__).resolve().parent.parent


# The reference run trains in this process, on one device; the child must too, since a batch split
# over several devices sums in another order and the runs would differ in the last bits.
ONE_DEVICE = {**os.environ, "LUMI_CPU_DEVICES": "1"}


@pytest.fixture(scope="module")
def uninterrupted(micro_config, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    train(CONFIG, micro_config, dataset_dir, out, show_progress=False)
    return out


def start_training(dataset_dir: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lumi_jax.cli", "train", *CLI_FLAGS, "--data", str(dataset_dir), "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_DEVICE,
    )


def wait_for_checkpoint(process: subprocess.Popen, out: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (out / "checkpoints" / "10").is_dir():
        if process.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.02)


def test_resume_after_kill_9_reproduces_the_uninterrupted_run(micro_config, dataset_dir, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = start_training(dataset_dir, out)
    wait_for_checkpoint(process, out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = max(record["step"] for record in read_metrics(out / "metrics.jsonl"))
    assert killed_at < CONFIG.steps, "the run finished before it was killed; the test proves nothing"

    summary = train(CONFIG, micro_config, dataset_dir, out, show_progress=False)
    assert summary["stop_reason"] == "completed" and summary["resumed_from_step"] >= 10

    whole, resumed = load_run(uninterrupted), load_run(out)
    assert resumed.step == whole.step == CONFIG.steps
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "resumed parameters differ from the uninterrupted run's"
    whole_losses = [(r["step"], r["loss"]) for r in read_metrics(uninterrupted / "metrics.jsonl") if "loss" in r]
    resumed_losses = [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert resumed_losses == whole_losses


def test_sigint_finishes_the_step_saves_and_exits_0(dataset_dir, tmp_path):
    out = tmp_path / "interrupted"
    process = start_training(dataset_dir, out)
    wait_for_checkpoint(process, out)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "signal"
    assert summary["steps"] < CONFIG.steps
    assert "resume with: lumi train" in stdout
    assert (out / "checkpoints" / str(summary["steps"])).is_dir()
    assert load_run(out).step == summary["steps"]
