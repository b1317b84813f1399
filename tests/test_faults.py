"""Faults a run must survive (issue 15): kill -9 at ten moments, a full disk, an exception mid-loop.

- Ten kills of one `lumi train` (frequent saves, evaluations, a copy warm-up), each at a chosen
  kind of moment: during the copy warm-up, while a checkpoint is being written, while an
  evaluation runs, and at random times. After each, the same command again. The run that
  finally completes must equal an uninterrupted one bit for bit: parameters, every logged loss
  and every validation loss.
- A file-size limit (`ulimit -f`) reached mid-run: one line, exit 2, the state the
  loop had reached saved, restorable, and the run resumable once the limit is gone.
- An exception from the data mid-loop: the reached state is saved before the error propagates.

With LUMI_FAULTS_RECORD=FILE, each test appends what it saw to FILE (JSON lines):
benchmarks/reliability_catalogue.py writes those figures into benchmarks/results/reliability.json.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lumi_jax.config import TrainConfig
from lumi_jax.data import loader as data_loader
from lumi_jax.metrics import read_metrics
from lumi_jax.runs import load_run
from lumi_jax.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compilation_cache")]

REPO = Path(__file__).resolve().parent.parent
SAVE_EVERY, EVAL_EVERY = 7, 35  # every fifth save shares its step with an evaluation
KILL_RUN_STEPS = 300
KILL_RUN_FLAGS = ["--model", "micro", "--steps", str(KILL_RUN_STEPS), "--batch-size", "8", "--context", "32", "--lr", "3e-3",
                  "--warmup", "4", "--min-lr", "3e-4", "--save-every", str(SAVE_EVERY), "--eval-every",
                  str(EVAL_EVERY), "--eval-batches", "100", "--log-every", "1", "--copy-warmup-steps", "200"]
MOMENTS = ["copy warm-up", "checkpoint write", "evaluation", "random", "checkpoint write",
           "random", "evaluation", "random", "checkpoint write", "random"]


def record(kind: str, **figures) -> None:
    destination = os.environ.get("LUMI_FAULTS_RECORD")
    if destination:
        with open(destination, "a") as file:
            file.write(json.dumps({"kind": kind, **figures}) + "\n")


class Training:
    """`lumi train` as a subprocess whose stdout is read as it comes."""

    def __init__(self, flags: list[str], *, env: dict | None = None, limit_kib: int | None = None):
        self.started = time.time()
        command = [sys.executable, "-m", "lumi_jax.cli", "train", *flags]
        if limit_kib is not None:
            command = ["bash", "-c", f'ulimit -f {limit_kib} && exec "$@"', "lumi", *command]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env or dict(os.environ))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        stderr = self.process.stderr.read()
        self.process.wait(timeout)
        self.reader.join(timeout)
        return self.process.returncode, stderr


def logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def saving(run: Path, since: float) -> bool:
    """An Orbax save in flight: a temporary directory made (or written) since `since` (a killed
    save's leftover stays until the next writer's checkpoint manager clears it)."""
    directory = run / "checkpoints"
    try:
        return directory.is_dir() and any("tmp" in p.name and p.stat().st_mtime >= since for p in directory.iterdir())
    except FileNotFoundError:  # renamed or removed while looking: that save is done
        return False


def evaluating(run: Path) -> int | None:
    """The step being evaluated, if one is: at an evaluation step the loss line is written, then
    the save starts (its directory appears), then the evaluation runs until its val_loss line."""
    records = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in records if "loss" in r]
    if not steps or steps[-1] % EVAL_EVERY or any(r.get("step") == steps[-1] and "val_loss" in r for r in records):
        return None
    directory = run / "checkpoints"
    started = directory.is_dir() and any(p.name.split(".")[0] == str(steps[-1]) for p in directory.iterdir())
    return steps[-1] if started else None


def wait_for_moment(training: Training, run: Path, moment: str, rng: random.Random, deadline: float) -> str:
    """Block until `moment` has come in this process's life; returns what was happening."""
    start_steps = len(logged_steps(run))
    while time.monotonic() < deadline:
        if training.process.poll() is not None:
            return "finished"
        if moment == "copy warm-up" and any(line.startswith("copy warm-up") for line in training.lines):
            time.sleep(rng.uniform(0.0, 0.3))
            return "copy warm-up"
        if moment == "checkpoint write" and saving(run, training.started):
            return "checkpoint write"
        if moment == "evaluation" and evaluating(run) is not None:
            time.sleep(rng.uniform(0.0, 0.03))
            return "evaluation"
        if moment == "random" and len(logged_steps(run)) > start_steps:
            time.sleep(rng.uniform(0.0, 0.25))
            return "random"
        time.sleep(0.002)
    return "timeout"


@pytest.fixture(scope="module")
def uninterrupted(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "whole"
    status, stderr = Training([*KILL_RUN_FLAGS, "--data", str(dataset_dir), "--out", str(out), "--quiet"]).finish()
    assert status == 0, stderr
    return out


def test_ten_kill_9s_at_chosen_moments_then_resume_bit_identical(dataset_dir, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    flags = [*KILL_RUN_FLAGS, "--data", str(dataset_dir), "--out", str(run)]
    rng = random.Random(15)
    kills = []
    for moment in MOMENTS:
        training = Training(flags)
        hit = wait_for_moment(training, run, moment, rng, time.monotonic() + 180)
        before, evaluated_step, writing = logged_steps(run), evaluating(run), saving(run, training.started)
        training.process.send_signal(signal.SIGKILL)
        training.finish()
        assert hit not in ("finished", "timeout"), f"the run {hit} before the '{moment}' kill; the test proves nothing"
        kills.append({"moment": moment, "last_logged_step": before[-1] if before else 0,
                      "saving_at_kill": writing, "evaluating_at_kill": evaluated_step is not None,
                      "checkpoints": sorted(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())
                      if (run / "checkpoints").is_dir() else []})
    status, stderr = Training(flags).finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr

    whole, resumed = load_run(uninterrupted), load_run(run)
    assert resumed.step == whole.step == KILL_RUN_STEPS
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "the killed and resumed run's parameters differ"

    def curve(path, key):
        return [(r["step"], r[key]) for r in read_metrics(path / "metrics.jsonl") if key in r]

    assert curve(run, "loss") == curve(uninterrupted, "loss")
    assert curve(run, "val_loss") == curve(uninterrupted, "val_loss")
    kinds = {kill["moment"] for kill in kills}
    assert kinds == set(MOMENTS)
    assert any(kill["saving_at_kill"] for kill in kills), "no kill landed while a checkpoint was being written"
    assert any(kill["evaluating_at_kill"] for kill in kills), "no kill landed during an evaluation"
    # what the kills cost: steps logged but not yet checkpointed, redone after the resume
    for kill in kills:
        kill["steps_redone"] = kill["last_logged_step"] - max(kill["checkpoints"], default=0)
    record("kill_points", kills=kills, survived=len(kills), bit_identical=True)


NANO = {"name": "nano", "vocab_size": 512, "d_model": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1,
        "hidden_dim": 32, "max_seq_len": 64, "tie_embeddings": True}
FILE_LIMIT_BYTES = 200 * 1024  # larger than any checkpoint file of NANO; metrics.jsonl outgrows it


def test_a_full_disk_ends_in_one_line_with_the_reached_state_saved(dataset_dir, tmp_path):
    model = tmp_path / "nano.json"
    model.write_text(json.dumps(NANO))
    run = tmp_path / "full"
    flags = ["--model", str(model), "--steps", "1500", "--batch-size", "4", "--context", "32", "--warmup", "4",
             "--save-every", "100", "--eval-every", "0", "--log-every", "1", "--quiet",
             "--data", str(dataset_dir), "--out", str(run)]

    # `ulimit -f` (in KiB) in a shell that then becomes lumi: every write past the limit fails with
    # EFBIG (Python ignores SIGXFSZ). The compile cache's files would meet the limit too: off.
    env = {**os.environ, "LUMI_COMPILE_CACHE": "off"}
    status, stderr = Training(flags, env=env, limit_kib=FILE_LIMIT_BYTES // 1024).finish()
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "file-size limit" in lines[0] and "resume with: lumi train" in lines[0]
    saved = re.search(r"the last good state \(step (\d+)\) is saved", lines[0])
    assert saved, lines[0]
    reached = int(saved.group(1))
    assert reached - max(logged_steps(run)) in (0, 1)  # the update whose metrics line the limit cut is kept too
    assert reached % 100, "the limit was met at a checkpoint step; the test would not show the failure save"
    assert load_run(run).step == reached  # restorable, and it is the state the loop reached
    metrics_bytes = (run / "metrics.jsonl").stat().st_size

    status, stderr = Training(flags[:-4] + ["--data", str(dataset_dir), "--out", str(run)]).finish()
    assert status == 0, stderr
    assert load_run(run).step == 1500 and json.loads((run / "summary.json").read_text())["resumed_from_step"] == reached
    record("full_disk", file_size_limit_bytes=FILE_LIMIT_BYTES, failed_at_step=reached, saved_step=reached,
           steps_lost=0, metrics_bytes_at_failure=metrics_bytes, exit_status=2, error_line=lines[0])


def test_an_exception_mid_loop_saves_the_reached_state_first(micro_config, dataset_dir, tmp_path, monkeypatch):
    config = TrainConfig(steps=60, batch_size=8, context=32, lr=3e-3, warmup=4, min_lr=3e-4, eval_every=0,
                         save_every=10, log_every=1)
    real_batch = data_loader.train_batch

    def failing_batch(*args, step, **kwargs):
        if step == 24:
            raise RuntimeError("the storage under the dataset went away")
        return real_batch(*args, step=step, **kwargs)

    monkeypatch.setattr(data_loader, "train_batch", failing_batch)
    with pytest.raises(RuntimeError, match="went away"):
        train(config, micro_config, dataset_dir, tmp_path / "failed", show_progress=False)
    # batch 24 loads while the update from batch 23 runs: the state after 24 updates is the one kept
    assert load_run(tmp_path / "failed").step == 24
    assert max(logged_steps(tmp_path / "failed")) == 23  # that update's metrics were never read
