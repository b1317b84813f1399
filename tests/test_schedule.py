"""Time-aware schedules: WSD's shape, a budgeted run that ends its decay at the deadline, and a
resumed budgeted run that follows the decay it recorded, bit for bit."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil

import jax
import numpy as np
import pytest

from lumi_jax.config import TrainConfig
from lumi_jax.metrics import read_metrics
from lumi_jax.optim import SchedulePlan, learning_rate_schedule
from lumi_jax.runs import load_run
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")

BUDGETED = TrainConfig(steps=100_000, batch_size=8, context=32, lr=3e-3, warmup=10, min_lr=3e-4, eval_every=0,
                       save_every=10, keep_checkpoints=1000, log_every=1, time_budget_minutes=0.2)


def test_wsd_warms_up_holds_then_decays_to_the_floor_by_the_last_update():
    config = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr=1e-4, schedule="wsd", decay_fraction=0.2)
    plan = SchedulePlan.over_steps(config)
    assert plan == SchedulePlan(warmup=10, decay_start=80, decay_end=100)
    # a short run keeps the configured warmup and its decay; too short for both, it warms up until
    # the decay, never behind what is done
    assert SchedulePlan.over_steps(config, 15, done=6) == SchedulePlan(warmup=10, decay_start=12, decay_end=15)
    assert SchedulePlan.over_steps(config, 10, done=3) == SchedulePlan(warmup=8, decay_start=8, decay_end=10)
    assert SchedulePlan.over_steps(config, 10, done=9) == SchedulePlan(warmup=9, decay_start=9, decay_end=10)
    lr = learning_rate_schedule(config, plan.to_dict())
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == float(lr(79)) == pytest.approx(1e-3)
    assert float(lr(90)) < 1e-3
    assert float(lr(99)) == pytest.approx(1e-4) and float(lr(150)) == pytest.approx(1e-4)
    traced = jax.jit(lambda count, plan: learning_rate_schedule(config, plan)(count))
    for count in (0, 10, 85, 99):  # the plan as arrays (what the step gets) gives the same numbers
        assert float(traced(count, plan.arrays())) == pytest.approx(float(lr(count)))
    # a budget that leaves room for a one-update decay: that update runs at the floor, not the peak
    squeezed = learning_rate_schedule(config, SchedulePlan(warmup=10, decay_start=10, decay_end=11).to_dict())
    assert float(squeezed(9)) == pytest.approx(9e-4) and float(squeezed(10)) == pytest.approx(1e-4)


def test_auto_means_wsd_with_a_budget_and_cosine_without():
    assert TrainConfig().resolved_schedule == "cosine"
    assert TrainConfig(time_budget_minutes=5.0).resolved_schedule == "wsd"
    assert TrainConfig(schedule="cosine", time_budget_minutes=5.0).resolved_schedule == "cosine"


@pytest.fixture(scope="module")
def budgeted_run(micro_config, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "run"
    summary = train(BUDGETED, micro_config, dataset_dir, out, show_progress=False)
    return out, summary


def test_a_budgeted_run_ends_its_decay_at_the_deadline(budgeted_run):
    out, summary = budgeted_run
    schedule = summary["schedule"]
    assert schedule["kind"] == "wsd" and schedule["decided"]
    assert summary["stop_reason"] == "completed", summary["message"]
    assert summary["steps"] == schedule["decay_end"] < BUDGETED.steps  # the budget, not `steps`, set the length
    assert summary["wall_time_s"] <= 1.05 * 60 * BUDGETED.time_budget_minutes
    lrs = {r["step"]: r["lr"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r}
    assert lrs[summary["steps"]] == pytest.approx(BUDGETED.min_lr)  # the last update ran at the floor
    reached_floor = min(step for step, lr in lrs.items() if step > BUDGETED.warmup and lr == pytest.approx(BUDGETED.min_lr))
    assert reached_floor >= 0.95 * summary["steps"]  # ...and reached it only at the end, not cut mid-decay
    after_warmup = [lrs[step] for step in sorted(lrs) if step > BUDGETED.warmup]
    assert after_warmup[0] == pytest.approx(BUDGETED.lr)  # held at the peak, then decayed:
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(after_warmup))  # never back up, even if shortened
    assert json.loads((out / "config.json").read_text())["train"]["schedule"] == "wsd"  # recorded, not "auto"


def test_a_resumed_budgeted_run_follows_its_recorded_decay(budgeted_run, micro_config, dataset_dir, tmp_path):
    out, summary = budgeted_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    steps = sorted(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit())
    decaying = [s for s in steps if summary["schedule"]["decay_start"] <= s < summary["steps"]]
    assert decaying, "no checkpoint fell inside the decay; save more often"
    keep = max(decaying)  # a checkpoint after the plan was fixed (before it, a resume plans again)
    for step in steps:
        if step > keep:
            shutil.rmtree(resumed / "checkpoints" / str(step))
    # a slower or faster machine now would plan differently: the recorded plan must win
    again = train(dataclasses.replace(BUDGETED, time_budget_minutes=0.5), micro_config, dataset_dir, resumed,
                  show_progress=False)
    assert again["resumed_from_step"] == keep and again["steps"] == summary["steps"]
    assert again["schedule"] == summary["schedule"]
    for a, b in zip(jax.tree.leaves(load_run(out).params), jax.tree.leaves(load_run(resumed).params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_budget_too_short_to_anneal_after_its_warmup_holds_the_peak_like_a_cut_cosine():
    config = TrainConfig(steps=20_000, lr=1e-3, warmup=100, min_lr=1e-4, schedule="wsd", decay_fraction=0.2)
    held = SchedulePlan.to_deadline(config, 137, done=6)  # 137 - 2 * 27 < 100: no room to hold, then anneal
    assert held == SchedulePlan(warmup=100, decay_start=137, decay_end=137) and not held.decays
    lr = learning_rate_schedule(config, held.to_dict())
    assert float(lr(50)) == pytest.approx(5e-4) and float(lr(136)) == pytest.approx(1e-3)
    # near its end the plan stays a hold: `done` squeezing the decay does not bring one back
    assert not SchedulePlan.to_deadline(config, 140, done=130).decays
    # long enough, it is the usual plan: warmup, hold, decay over the last fifth
    assert SchedulePlan.to_deadline(config, 300, done=6) == SchedulePlan(warmup=100, decay_start=240, decay_end=300)


def test_a_budgeted_run_that_holds_its_peak_trains_to_the_deadline(micro_config, dataset_dir, tmp_path):
    """A warmup longer than the budget allows: the plan holds (no decay) and keeps moving its end
    as steps fit, so the run goes on past each planned end until the deadline stops it."""
    config = dataclasses.replace(BUDGETED, warmup=90_000, save_every=100_000, time_budget_minutes=0.1)
    summary = train(config, micro_config, dataset_dir, tmp_path / "run", show_progress=False)
    assert summary["stop_reason"] == "time_budget", summary["message"]
    assert summary["wall_time_s"] <= 1.05 * 60 * config.time_budget_minutes
    assert summary["schedule"]["decay_start"] == summary["schedule"]["decay_end"]  # held: no decay planned
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert len(lrs) > 20 and all(b > a for a, b in itertools.pairwise(lrs))  # still warming up, never decayed
