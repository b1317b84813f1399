"""LoRA trains in the one loop: gradient accumulation is exact, and a run killed with SIGKILL and
resumed ends bit-identical to an uninterrupted one (what full training has always proved)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lumi_jax import sharding as shard
from lumi_jax.config import TrainConfig
from lumi_jax.data import loader
from lumi_jax.data.prepare import prepare_dataset
from lumi_jax.lora import LoraTraining, flatten
from lumi_jax.metrics import read_metrics
from lumi_jax.model import init_params
from lumi_jax.optim import make_optimizer
from lumi_jax.runs import load_run
from lumi_jax.step import initial_state, jit_train_step
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")

REPO = Path(__file__).resolve().parent.parent
CONTEXT = 64
LORA = LoraTraining(rank=2)
SFT_FLAGS = ["--steps", "120", "--batch-size", "4", "--context", str(CONTEXT), "--warmup", "2", "--lr", "0.01",
             "--eval-every", "0", "--save-every", "5", "--log-every", "1", "--eval-examples", "0", "--quiet",
             "--lora-rank", "2"]


# The reference run trains in this process, on one device; the child must too, since a batch split
# over several devices sums in another order and the runs would differ in the last bits.
ONE_DEVICE = {**os.environ, "LUMI_CPU_DEVICES": "1"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, micro_config):
    root = tmp_path_factory.mktemp("lora")
    prepare_dataset("sample", root / "stories", vocab_size=512, size_mb=0.2, log=None)
    config = TrainConfig(steps=2, batch_size=4, context=CONTEXT, warmup=1, eval_every=0, save_every=2, log_every=1)
    train(config, micro_config, root / "stories", root / "pre", show_progress=False)
    prepare_dataset("sample-instructions", root / "instr", tokenizer=root / "pre" / "tokenizer.model",
                    size_mb=0.05, log=None)
    return root / "pre"


def test_lora_gradient_accumulation_equals_the_whole_batch(micro_config, pretrained):
    split = loader.TokenDataset(pretrained.parent / "instr").split("train")
    batch = loader.train_batch(split, seed=0, step=0, batch_size=8, context=CONTEXT).arrays()
    assert "segments" in batch  # packed examples: the segments travel through the accumulation too
    base = init_params(micro_config, jax.random.key(1))
    mesh = shard.make_mesh()
    results = {}
    for accum in (1, 2):
        config = TrainConfig(steps=10, batch_size=8, grad_accum=accum, context=CONTEXT, lr=1e-2, warmup=1)
        optimizer = make_optimizer(config)
        state, shardings = initial_state(micro_config, config, optimizer, mesh, base, LORA)
        step = jit_train_step(micro_config, config, mesh, shardings, trained_kind=LORA)
        for _ in range(2):  # B is zero at the start: the second step moves A as well
            state, metrics = step(state, shard.put_batch(batch, mesh), None)
        results[accum] = (state, metrics)
    (one, one_metrics), (two, two_metrics) = results[1], results[2]
    assert float(two_metrics["loss"]) == pytest.approx(float(one_metrics["loss"]), rel=1e-5)
    assert float(two_metrics["grad_norm"]) == pytest.approx(float(one_metrics["grad_norm"]), rel=1e-4)
    assert float(one_metrics["grad_norm"]) > 0
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # only adapters were trained: the frozen base is exactly what it was
    for a, b in zip(jax.tree.leaves(one.frozen), jax.tree.leaves(base), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert len(flatten(one.params)) == 7 * micro_config.n_layers  # wq wk wv wo w1 w2 w3 in every layer


def start_sft(pretrained: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lumi_jax.cli", "sft", "--from", str(pretrained), "--data",
         str(pretrained.parent / "instr"), "--out", str(out), *SFT_FLAGS],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_DEVICE)


def finish(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr


def test_lora_resume_after_kill_9_reproduces_the_uninterrupted_run(pretrained, tmp_path):
    whole = tmp_path / "whole"
    finish(start_sft(pretrained, whole))

    killed = tmp_path / "killed"
    process = start_sft(pretrained, killed)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "10").is_dir():
        assert process.poll() is None, f"fine-tuning ended before its checkpoints: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(record["step"] for record in read_metrics(killed / "metrics.jsonl"))
    assert killed_at < 120, "the run finished before it was killed; the test proves nothing"

    finish(start_sft(pretrained, killed))  # the same command again continues the run
    summary = load_run(killed)
    assert summary.step == load_run(whole).step == 120
    for a, b in zip(jax.tree.leaves(load_run(whole).params), jax.tree.leaves(summary.params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "resumed LoRA parameters differ from the uninterrupted run's"
    losses = [[(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
              for run in (whole, killed)]
    assert losses[0] == losses[1]
