"""Checkpoints and loading runs: fallback past a corrupt or half-written checkpoint, clear errors."""

from __future__ import annotations

import errno
import json
import shutil

import jax
import numpy as np
import pytest

from lumi_jax.checkpoint import MANIFEST_NAME, CheckpointStore
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


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    corrupt(run / "checkpoints" / "300")
    loaded = load_run(run)
    assert loaded.step == 290
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint step 300" in err and "damaged" in err and "using step 290" in err


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
    with pytest.raises(UserError, match="no readable checkpoint"):
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


# ---------------------------------------------------------------------------------------------
# Checksums: a manifest per step, written once the save has finished, checked before a restore.


def test_every_kept_step_has_a_manifest_of_all_its_files(finished):
    for step_dir in (p for p in (finished / "checkpoints").iterdir() if p.name.isdigit()):
        files = json.loads((step_dir / MANIFEST_NAME).read_text())["files"]
        on_disk = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file()} - {MANIFEST_NAME}
        assert set(files) == on_disk and any(name.startswith("params/") for name in files)


def test_garbled_bytes_in_the_newest_checkpoint_are_refused_in_one_line(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    arrays = [p for p in (run / "checkpoints" / "300" / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(arrays, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: the values stay finite, only the checksum can tell
    largest.write_bytes(bytes(data))
    loaded = load_run(run)
    assert loaded.step == 290
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and "Traceback" not in err and "Warning" not in err
    with pytest.raises(UserError, match="step 300 is damaged"):
        load_run(run, step=300)


def small_store(directory, steps_and_values):
    store = CheckpointStore(directory, keep=5)
    for step, value in steps_and_values:
        store.save(step, {"w": np.full(3, value, np.float32)}, {"m": np.zeros(3, np.float32)}, {"step": step})
    store.close()
    return CheckpointStore(directory, read_only=True, report=lambda line: None)


ABSTRACT = {"w": jax.ShapeDtypeStruct((3,), np.float32)}


def test_the_manifest_is_written_after_the_save_finishes(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    store.save(1, {"w": np.ones(3, np.float32)}, {"m": np.zeros(3, np.float32)}, {"step": 1})
    store.save(2, {"w": np.ones(3, np.float32)}, {"m": np.zeros(3, np.float32)}, {"step": 2})
    assert (tmp_path / "checkpoints" / "1" / MANIFEST_NAME).is_file()  # sealed before step 2 started
    store.close()
    assert (tmp_path / "checkpoints" / "2" / MANIFEST_NAME).is_file()


def test_non_finite_values_without_a_manifest_are_refused(tmp_path):
    store = small_store(tmp_path / "checkpoints", [(1, 1.0), (2, float("nan"))])
    (tmp_path / "checkpoints" / "2" / MANIFEST_NAME).unlink()  # as saved before manifests existed
    restored = store.restore_latest_good(ABSTRACT)
    assert restored["meta"]["step"] == 1 and store.unreadable == [2] and "not finite" in store.damage[2]


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "I/O"),
                                   ValueError("PERMISSION_DENIED: Error opening file: Permission denied")])
def test_a_transient_read_error_is_not_damage(tmp_path, monkeypatch, error):
    store = small_store(tmp_path / "checkpoints", [(1, 1.0), (2, 2.0)])

    def failing(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(store, "restore", failing)
    with pytest.raises(UserError, match="could not be read .* not damage"):
        store.restore_latest_good(ABSTRACT)
    assert store.unreadable == [] and sorted(store.steps()) == [1, 2]  # nothing skipped, nothing set aside
