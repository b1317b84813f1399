"""Checkpoints and loading runs: fallback past a corrupt or half-written checkpoint, clear errors."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from lumi_jax.config import TrainConfig
from lumi_jax.data.prepare import prepare_dataset
from lumi_jax.errors import UserError
from lumi_jax.runs import latest_run, load_run
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")  # compiled steps shared through the cache

# The same settings as the resume tests, so the compiled step is shared through the cache.
CONFIG = TrainConfig(steps=300, batch_size=8, context=32, lr=3e-3, warmup=4, min_lr=3e-4,
                     eval_every=0, save_every=10, log_every=1)


@pytest.fixture(scope="module")
def finished(micro_config, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    train(CONFIG, micro_config, dataset_dir, out, show_progress=False)
    return out


def corrupt(checkpoint_dir):
    """Damage a checkpoint the way a failing disk would: its parameter files become garbage."""
    for path in (checkpoint_dir / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")


def test_keeps_the_last_n_checkpoints(finished):
    assert sorted(int(p.name) for p in (finished / "checkpoints").iterdir() if p.name.isdigit()) == [280, 290, 300]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    corrupt(run / "checkpoints" / "300")
    with pytest.warns(UserWarning, match="step 300 .* unreadable"):
        loaded = load_run(run)
    assert loaded.step == 290


def test_half_written_checkpoint_is_never_chosen(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    # What a save killed midway leaves: Orbax's temporary directory, never renamed to "310".
    partial = run / "checkpoints" / "310.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(run / "checkpoints" / "300", partial)
    corrupt(partial)
    assert load_run(run).step == 300


def test_resume_past_a_corrupt_checkpoint_redoes_the_steps_exactly(finished, micro_config, dataset_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    corrupt(run / "checkpoints" / "300")
    with pytest.warns(UserWarning, match="unreadable"):
        summary = train(CONFIG, micro_config, dataset_dir, run, show_progress=False)
    assert summary["resumed_from_step"] == 290 and summary["steps"] == 300
    assert any((run / "checkpoints_unreadable").iterdir())  # set aside, not deleted
    for a, b in zip(jax.tree.leaves(load_run(finished).params), jax.tree.leaves(load_run(run).params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_every_checkpoint_unreadable_is_a_clear_error(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for step in (280, 290, 300):
        corrupt(run / "checkpoints" / str(step))
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no readable checkpoint"):
        load_run(run)


def test_load_run_names_missing_runs_and_missing_checkpoints(finished, tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        load_run(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a lumi run"):
        load_run(tmp_path / "plain")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(finished / "config.json", fresh / "config.json")
    shutil.copy(finished / "tokenizer.model", fresh / "tokenizer.model")
    with pytest.raises(UserError, match="no checkpoints yet"):
        load_run(fresh)
    with pytest.raises(UserError, match="no checkpoint for step 5"):
        load_run(finished, step=5)


def test_load_run_refuses_a_foreign_tokenizer(finished, dataset_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    other = tmp_path / "other-data"
    prepare_dataset("sample", other, vocab_size=512, size_mb=0.1, seed=1, log=None)
    shutil.copy(other / "tokenizer.model", run / "tokenizer.model")
    with pytest.raises(UserError, match="not the tokenizer this run was trained with"):
        load_run(run)


def test_latest_run_picks_the_newest_run(finished, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(UserError, match="no runs yet"):
        latest_run(runs)
    shutil.copytree(finished, runs / "old")
    (runs / "not-a-run").mkdir()
    shutil.copytree(finished, runs / "new")
    (runs / "new" / "summary.json").write_text(json.dumps({"touched": True}))
    assert latest_run(runs) == runs / "new"
