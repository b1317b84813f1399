"""The rule for a new --steps on resume (train.Trainer.change_length): the learning rate never
jumps back up and a decay is never cut short. A WSD run may be lengthened until its decay begins;
a cosine run, or a decay under way, is refused with what to do instead, and nothing is written."""

from __future__ import annotations

import itertools
import shutil

import pytest
from disk_state import tree_hash

from lumi_jax.config import TrainConfig
from lumi_jax.errors import UserError
from lumi_jax.metrics import read_metrics
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")

COSINE = TrainConfig(steps=40, batch_size=8, context=32, lr=3e-3, warmup=4, min_lr=3e-4, eval_every=0,
                     save_every=10, keep_checkpoints=100, log_every=1, schedule="cosine")
WSD = TrainConfig(**{**COSINE.to_dict(), "schedule": "wsd"})  # decays over steps 32..40


def cut_back_to(run, step: int) -> None:
    """The run as a kill at `step` would have left it: later checkpoints gone."""
    for checkpoint in (run / "checkpoints").iterdir():
        if checkpoint.name.isdigit() and int(checkpoint.name) > step:
            shutil.rmtree(checkpoint)


@pytest.fixture(scope="module")
def finished_runs(micro_config, dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_rule")
    for name, config in (("cosine", COSINE), ("wsd", WSD)):
        train(config, micro_config, dataset_dir, root / name, show_progress=False)
    return root


def refused(config, micro_config, dataset_dir, run) -> str:
    before = tree_hash(run)
    with pytest.raises(UserError) as refusal:
        train(config, micro_config, dataset_dir, run, show_progress=False)
    assert tree_hash(run) == before, "a refused resume changed the run on disk"
    return str(refusal.value)


def test_a_cosine_run_refuses_a_new_length(finished_runs, micro_config, dataset_dir, tmp_path):
    run = tmp_path / "cosine"
    shutil.copytree(finished_runs / "cosine", run)
    cut_back_to(run, 20)
    message = refused(TrainConfig(**{**COSINE.to_dict(), "steps": 80}), micro_config, dataset_dir, run)
    assert "planned for 40 steps" in message and "at step 20" in message
    assert "--steps 40" in message and "new --out" in message  # what to do instead


def test_a_wsd_decay_under_way_is_never_cut_or_stretched(finished_runs, micro_config, dataset_dir, tmp_path):
    run = tmp_path / "wsd_decaying"
    shutil.copytree(finished_runs / "wsd", run)
    # finished at 40, its decay (32 to 40) done: neither a longer nor a shorter run may follow from it
    for steps in (30, 80):
        message = refused(TrainConfig(**{**WSD.to_dict(), "steps": steps}), micro_config, dataset_dir, run)
        assert "decay began at step 32" in message


def test_a_wsd_run_is_lengthened_before_its_decay_without_a_jump(finished_runs, micro_config, dataset_dir, tmp_path):
    run = tmp_path / "wsd_lengthened"
    shutil.copytree(finished_runs / "wsd", run)
    cut_back_to(run, 20)  # constant learning rate until 32: not yet decaying
    longer = TrainConfig(**{**WSD.to_dict(), "steps": 80})
    summary = train(longer, micro_config, dataset_dir, run, show_progress=False)
    assert summary["stop_reason"] == "completed" and summary["resumed_from_step"] == 20
    assert summary["steps"] == 80 and summary["schedule"]["decay_start"] == 64
    lrs = [record["lr"] for record in read_metrics(run / "metrics.jsonl") if "lr" in record]
    assert lrs[-1] == pytest.approx(WSD.min_lr)  # ended at the floor
    held = lrs[WSD.warmup:64]
    assert max(held) == pytest.approx(WSD.lr) and min(held) == pytest.approx(WSD.lr)  # no dip, no jump
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(lrs[64:]))  # then only down


def test_a_run_cut_by_its_budget_prints_a_resume_with_the_time_the_rest_needs(micro_config, dataset_dir, tmp_path):
    """Not the stored budget again (it would stop after the same minutes): what the steps left need."""
    budget_minutes = 0.1
    cut = TrainConfig(**{**COSINE.to_dict(), "steps": 100_000, "time_budget_minutes": budget_minutes})
    summary = train(cut, micro_config, dataset_dir, tmp_path / "cut", show_progress=False)
    assert summary["stop_reason"] == "time_budget"
    command = summary["message"].split("continue with: ", 1)[1]
    assert command.startswith("lumi train --out ") and " --resume --time-budget " in command
    minutes = float(command.rsplit(" ", 1)[1])
    assert minutes > 10 * budget_minutes  # ~100,000 steps left: far more than the 6 s that ran out
