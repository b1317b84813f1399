"""Assessment: real under-trained and over-fitted runs are called so; the statistics on known curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_runs import trained_runs

from lumi_jax import assess, cli
from lumi_jax.errors import USER_ERROR_EXIT_STATUS


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir):
    return trained_runs(tmp_path_factory, shared_data_dir)


def by_name(report):
    return {f["name"]: f for f in report["findings"]}


def test_an_under_trained_run_is_called_under_trained(runs):
    report = assess.assess_run(runs["under_trained"])
    findings = by_name(report)
    assert findings["under_training"]["status"] == "problem"
    assert findings["under_training"]["values"]["curve"] == "validation"
    advice = findings["under_training"]["recommendation"]
    assert "longer run" in advice and "new --out" in advice and "--resume" not in advice  # the resume rule
    assert findings["over_fitting"]["status"] == "ok"
    assert report["grade"] in ("C", "D")
    saved = json.loads((runs["under_trained"] / "assess.json").read_text())
    assert saved["grade"] == report["grade"]
    assert "under training" in (runs["under_trained"] / "assess.md").read_text()


def test_an_over_fitted_run_is_called_over_fitted(runs):
    report = assess.assess_run(runs["over_fitted"])
    findings = by_name(report)
    assert findings["over_fitting"]["status"] == "problem"
    assert findings["over_fitting"]["values"]["gap_ratio"] > assess.OVERFIT_GAP_RATIO
    assert "more data" in findings["over_fitting"]["recommendation"]
    assert findings["under_training"]["status"] == "ok"  # its falling training loss is memorisation
    assert findings["data_budget"]["values"]["epochs"] > assess.USEFUL_EPOCHS
    assert report["grade"] in ("C", "D")


def _noisy_curve(steps=200, seed=0):
    rng = np.random.default_rng(seed)
    step = np.arange(10, steps + 1, 10, dtype=float)
    return step, 3.0 + 2.0 * np.exp(-step / 40) + rng.normal(0, 0.02, len(step))


def test_a_loss_spike_is_found_and_answered_with_a_lower_learning_rate():
    step, loss = _noisy_curve()
    calm = assess.loss_spikes(step, loss, {"lr": 1e-3, "warmup": 50}, "completed")
    assert calm["status"] == "ok"
    loss[12] += 0.8  # one record 40 noise-widths above its neighbours
    spiky = assess.loss_spikes(step, loss, {"lr": 1e-3, "warmup": 50}, "completed")
    assert spiky["status"] == "problem" and spiky["values"]["count"] == 1
    assert spiky["values"]["spikes"][0][0] == int(step[12])
    assert "0.0005" in spiky["recommendation"]  # half of 1e-3
    diverged = assess.loss_spikes(step, loss, {"lr": 1e-3, "warmup": 50}, "nan")
    assert diverged["status"] == "problem" and diverged["values"]["diverged"]


def test_the_end_slope_separates_falling_from_flat_curves():
    step = np.arange(10, 301, 10, dtype=float)
    falling = 5.0 - step / 100
    flat = np.full_like(step, 3.0) + np.where(np.arange(len(step)) % 2, 0.01, -0.01)
    fit = assess.end_slope(step, falling)
    assert fit["slope_per_step"] == pytest.approx(-0.01)
    assert fit["drop_over_last_third"] == pytest.approx(1.0)  # 100 steps × 0.01
    assert assess.under_training(step, falling, step, falling, 300)["status"] == "problem"
    assert assess.under_training(step, flat, step, flat, 300)["status"] == "ok"


def test_data_budget_counts_tokens_per_parameter_and_epochs():
    short = assess.data_budget(tokens_seen=1_000_000, params=100_000, train_tokens=10_000_000,
                               tokens_per_step=1_000, steps=1_000)
    assert short["status"] == "note" and short["values"]["tokens_per_param"] == 10
    assert "--steps 2000" in short["recommendation"]  # 1M more tokens at 1,000 per step
    repeated = assess.data_budget(tokens_seen=3_000_000, params=100_000, train_tokens=500_000,
                                  tokens_per_step=1_000, steps=3_000)
    assert repeated["values"]["epochs"] == 6 and "more data" in repeated["recommendation"]
    enough = assess.data_budget(tokens_seen=3_000_000, params=100_000, train_tokens=3_000_000,
                                tokens_per_step=1_000, steps=3_000)
    assert enough["status"] == "ok"


def test_grades_follow_the_findings():
    def finding(name, status, **values):
        return {"name": name, "status": status, "values": values}

    healthy = [finding("baseline_gain", "ok"), finding("over_fitting", "ok"), finding("data_budget", "ok")]
    assert assess.grade(healthy) == "A"
    assert assess.grade(healthy + [finding("repetition", "note")]) == "B"
    assert assess.grade(healthy + [finding("over_fitting", "problem")]) == "C"
    assert assess.grade([finding("baseline_gain", "problem")] + healthy[1:]) == "D"


def test_compare_puts_runs_side_by_side(runs, capsys):
    rows = assess.compare_runs([runs["under_trained"], runs["over_fitted"]])
    assert [row["run"] for row in rows] == [str(runs["under_trained"]), str(runs["over_fitted"])]
    for row in rows:
        assert row["bits_per_byte"] > 0 and row["grade"] in assess.GRADES
    assert "over_fitting" in rows[1]["problems"]
    assert cli.main(["assess", "--compare", str(runs["under_trained"]), str(runs["over_fitted"])]) == 0
    assert "runs side by side" in capsys.readouterr().out


def test_a_missing_run_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["assess", "--run", str(tmp_path / "missing")])
    assert stopped.value.code == USER_ERROR_EXIT_STATUS
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such run directory" in err and "\n" not in err
