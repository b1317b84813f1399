"""The copy warm-up: its rows, that it teaches copying, and when `train` runs it."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from lumi_jax.config import TrainConfig
from lumi_jax.copy_warmup import (
    COPY_WARMUP_FILE,
    FIRST_ORDINARY_ID,
    copy_batch_source,
    copy_rows,
    recall_rows,
    warmup_config,
)
from lumi_jax.errors import UserError
from lumi_jax.model import init_params
from lumi_jax.step import FULL_TRAINING, loss_sums
from lumi_jax.train import StopRequest, Trainer, train

pytestmark = pytest.mark.usefixtures("compilation_cache")

# Context 32: rows of a 16-token span and its repeat; micro learns to copy them in ~200 steps.
WARM_CONFIG = TrainConfig(steps=10, batch_size=8, context=32, lr=3e-3, warmup=2, min_lr=3e-4, eval_every=0,
                          save_every=10, log_every=5, copy_warmup_steps=300)


def test_rows_repeat_a_random_span_and_weigh_only_what_copying_predicts():
    rows = copy_rows(np.random.default_rng(0), rows=4, span=16, vocab_size=512)
    inputs, targets, weights = rows["inputs"], rows["targets"], rows["weights"]
    assert inputs.shape == targets.shape == weights.shape == (4, 32)
    assert np.array_equal(inputs[:, 16:], inputs[:, :16])  # the span, then the span again
    assert np.array_equal(targets[:, :-1], inputs[:, 1:])  # targets are the next tokens
    assert inputs.min() >= FIRST_ORDINARY_ID and inputs.max() < 512  # never unk, bos or eos
    counted = weights > 0
    assert counted[:, 16:].all() and not counted[:, :16].any()
    # every counted target is the token that followed the same input in the first span
    assert np.array_equal(targets[:, 16:], targets[:, :16])


def test_recall_rows_ask_each_key_for_the_value_listed_before_it():
    rows = recall_rows(np.random.default_rng(1), rows=3, span=16, vocab_size=512)
    inputs, targets, weights = rows["inputs"], rows["targets"], rows["weights"]
    assert inputs.shape == targets.shape == weights.shape == (3, 32)
    assert np.array_equal(targets[:, :-1], inputs[:, 1:])
    assert inputs.min() >= FIRST_ORDINARY_ID and inputs.max() < 512
    for row_inputs, row_targets, row_weights in zip(inputs, targets, weights, strict=True):
        values, keys = row_inputs[:16:2], row_inputs[1:16:2]  # listed as (value, key)
        assert len(set(keys.tolist())) == 8  # a key names one value
        asked = np.flatnonzero(row_weights)
        assert asked.tolist() == list(range(16, 32, 2))  # every key asked once, after the list
        for position in asked:
            key = row_inputs[position]
            assert row_targets[position] == values[keys.tolist().index(key)]


def test_a_recall_share_replaces_that_share_of_the_copy_rows_and_zero_changes_nothing():
    config = dataclasses.replace(WARM_CONFIG, batch_size=8)
    _, plain = copy_batch_source(config, 32, 512, 0, 1)
    _, none = copy_batch_source(dataclasses.replace(config, recall_share=0.0), 32, 512, 0, 1)
    _, half = copy_batch_source(dataclasses.replace(config, recall_share=0.5), 32, 512, 0, 1)
    assert all(np.array_equal(plain(3)[name], none(3)[name]) for name in ("inputs", "targets", "weights"))
    batch = half(3)
    repeats = [np.array_equal(row[16:], row[:16]) for row in batch["inputs"]]
    assert repeats == [True] * 4 + [False] * 4  # copy rows first, then recall rows
    assert np.array_equal(batch["inputs"][:4], plain(3)["inputs"][:4])


def test_a_recall_share_outside_zero_to_one_is_refused():
    with pytest.raises(UserError, match="'recall_share' is 1.5"):
        dataclasses.replace(WARM_CONFIG, recall_share=1.5).validate("recipe")


def copy_nats(params, micro_config) -> float:
    rows = copy_rows(np.random.default_rng(123), rows=16, span=16, vocab_size=micro_config.vocab_size)
    nats, weight = loss_sums(params, micro_config, rows)
    return float(nats / weight)


def test_warm_up_teaches_a_fresh_model_to_copy_what_it_has_read(micro_config, dataset_dir, tmp_path, capsys):
    """The trainer's warm-up phase (the one loop, fed copy rows) on fresh parameters."""
    params = init_params(micro_config, jax.random.key(WARM_CONFIG.seed))  # what the run starts from
    before = copy_nats(params, micro_config)
    trainer = Trainer(WARM_CONFIG, micro_config, dataset_dir, tmp_path / "run", init_params=None, init_from=None,
                      trained_kind=FULL_TRAINING, show_progress=True)
    trainer.open_run(resume=False)
    trainer.restore_or_initialise()
    assert trainer.needs_copy_warmup
    with StopRequest() as stop:
        trainer.copy_warm_up(stop)
    trainer.store.close()
    after = copy_nats(trainer.state.params, micro_config)
    assert before > 5.5  # ln(509) = 6.2: a fresh model guesses
    assert after < 1.0, f"copy loss {before:.2f} -> {after:.2f} nats: no induction after the warm-up"
    info = json.loads((tmp_path / "run" / COPY_WARMUP_FILE).read_text())
    assert info["steps"] == 300 and info["final_copy_nats"] < 1.0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("copy warm-up")]
    assert len(lines) == 6 and lines[-1].startswith("copy warm-up 300/300")


def test_a_fresh_run_warms_up_first_and_a_fine_tuning_does_not(micro_config, dataset_dir, tmp_path):
    config = dataclasses.replace(WARM_CONFIG, copy_warmup_steps=5)
    summary = train(config, micro_config, dataset_dir, tmp_path / "fresh", show_progress=False)
    assert summary["copy_warmup"]["steps"] == 5 and summary["steps"] == 10
    assert json.loads((tmp_path / "fresh" / COPY_WARMUP_FILE).read_text())["steps"] == 5

    given = init_params(micro_config, jax.random.key(1))
    summary = train(config, micro_config, dataset_dir, tmp_path / "tuned", init_params=given, show_progress=False)
    assert summary["copy_warmup"] is None and not (tmp_path / "tuned" / COPY_WARMUP_FILE).exists()


def test_the_warm_ups_result_is_step_0_and_a_rerun_resumes_from_it(micro_config, dataset_dir, tmp_path):
    """Killed after the warm-up but before the first text save: the rerun starts from the saved
    warm-up (no second warm-up) and ends where an uninterrupted run ends."""
    import shutil

    from lumi_jax.runs import load_run

    config = dataclasses.replace(WARM_CONFIG, copy_warmup_steps=20, keep_checkpoints=100, save_every=5)
    whole = tmp_path / "whole"
    train(config, micro_config, dataset_dir, whole, show_progress=False)
    assert (whole / "checkpoints" / "0").is_dir()
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for checkpoint in (cut / "checkpoints").iterdir():
        if checkpoint.name.isdigit() and int(checkpoint.name) > 0:
            shutil.rmtree(checkpoint)  # as a kill between the warm-up and the first text save leaves it
    (cut / COPY_WARMUP_FILE).write_text('{"marker": "not rewritten"}')
    summary = train(config, micro_config, dataset_dir, cut, show_progress=False)
    assert summary["steps"] == 10 and summary["copy_warmup"] == {"marker": "not rewritten"}  # no second warm-up
    for a, b in zip(jax.tree.leaves(load_run(whole).params), jax.tree.leaves(load_run(cut).params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_negative_warm_up_steps_are_refused():
    with pytest.raises(UserError, match="'copy_warmup_steps' is -1; use zero or a positive integer"):
        dataclasses.replace(WARM_CONFIG, copy_warmup_steps=-1).validate("recipe")


def test_the_prototype_recipe_warms_up_and_a_scaled_down_session_warms_up_less():
    from lumi_jax.sessions.steps import session_train_config

    assert session_train_config("prototype", seed=0, steps=None).copy_warmup_steps == 300
    assert session_train_config("prototype", seed=0, steps=20).copy_warmup_steps == 6  # 3 for every 10 steps


def test_the_warm_up_keeps_the_runs_tokens_per_step_and_micro_batches():
    run = TrainConfig(steps=1000, batch_size=8, grad_accum=4, lr=1e-3, copy_warmup_steps=300)
    config, span = warmup_config(run, context=256)
    assert (span, config.context, config.batch_size, config.grad_accum) == (64, 128, 16, 4)  # 16 x 128 = 8 x 256
    assert config.steps == 300 and config.min_lr == config.lr == 1e-3 and config.weight_decay == 0.0
