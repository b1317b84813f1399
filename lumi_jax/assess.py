"""Assessment: findings from a run's own evidence, each with a concrete recommendation, and a grade.

    config.json + summary.json + metrics.jsonl + eval.json ─► findings ─► grade ─► assess.json, assess.md

The findings, and the evidence each one reads:

    baseline gain   bits per byte below the unigram baseline (eval.json), against the
                    standard error of the validation loss: is the model better than word counts?
    over-fitting    the gap between validation and training loss at the end, and whether the
                    validation loss turned up from its minimum while the training loss fell;
    under-training  the slope of the loss over the last third of the run (validation curve when
                    there are ≥ 4 evaluations, else the training curve), by least squares, with
                    its standard error: still falling, significantly, at the end?
    loss spikes     training-loss records far above the median of their neighbours (3 records
                    each side), in units of the run's own robust noise (1.4826 · median |residual|);
    data budget     tokens seen against ~20 tokens per parameter (the compute-optimal ratio of
                    Hoffmann et al. 2022, "Chinchilla"), and epochs over the training data
                    (repeating data beyond ~4 epochs is worth much less than new data:
                    Muennighoff et al. 2023, "Scaling Data-Constrained Language Models");
    repetition      the share of repeated 4-grams in the evaluation samples, next to the same
                    measure on real validation text of the same length.

Thresholds. Each threshold below was set from measurements, not taste: `python
benchmarks/assess_evidence.py` trains micro models on War and Peace (healthy, under-trained,
over-fitted and too-high-learning-rate runs) and writes what each statistic measured to
benchmarks/results/assess_evidence.json; the numbers quoted next to each constant come from it.

Grade: D when the model is not measurably better than the unigram baseline or training
diverged; C when a major problem was found (over-fitting, under-training, loss spikes);
B when only minor notes remain (data budget, repetition); A when nothing was found.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lumi_jax.config import model_config_from_dict, read_json
from lumi_jax.errors import UserError
from lumi_jax.evaluate import evaluate_run
from lumi_jax.files import write_json_atomic
from lumi_jax.metrics import read_metrics
from lumi_jax.model import count_params, param_shapes
from lumi_jax.runs import latest_run

# ---- Thresholds. Measurements: benchmarks/results/assess_evidence.json (micro models on War
# and Peace, trained by benchmarks/assess_evidence.py); the tests' runs (tests/eval_runs.py).
# Significance: a statistic must exceed this many standard errors of its own noise.
SIGNIFICANCE_Z = 3.0
# Over-fitting: validation loss above training loss by more than this share of the validation
# loss. Measured gaps: healthy runs -0.5% (150 steps) and 2.6% (2,000 steps, 2 epochs);
# over-fitted runs 10% (the benchmark's) and 17% (the tests'). 5% lies between the two groups.
OVERFIT_GAP_RATIO = 0.05
# ...or validation loss risen from its minimum by more than this share while training loss fell.
# Measured: healthy runs end at their minimum (0%); over-fitted runs rose 0.04% and 0.8%. The rise
# catches clear cases early; the gap catches the rest.
OVERFIT_RISE_RATIO = 0.005
# Under-training: the loss fell by more than this share over the last third of the run (and the
# slope is significant). Measured on runs known to be under-trained: 2.0% (150 steps) and 3.9%
# (2,000 steps: micro still improves at 15 tokens per parameter), slope z >= 11. 1% is half the
# smallest of those; below it, more steps buy little.
UNDERTRAINED_DROP_RATIO = 0.01
# Loss spikes: a training-loss record this many robust standard deviations above the median of
# its 6 neighbours. Measured maxima: healthy runs 2.4 (2,000 steps, 200 records), 1.1 and 1.7;
# learning rate 0.1 without clipping 2.3 (slow but smooth); learning rate 0.5 without clipping
# (beta2 0.99) 6.8. 5 keeps a wide margin above noise and still catches the spiking run.
SPIKE_Z = 5.0
SPIKE_WINDOW = 3
# Data budget (literature, see the module docstring).
TOKENS_PER_PARAM = 20.0
USEFUL_EPOCHS = 4.0
# Repetition: mean share of repeated 4-grams in 64-token samples. Measured on the 2,000-step
# micro model: sampled (temperature 0.8, top-p 0.95) 0%, greedy 37%, real validation text 0%
# (11 windows of 64 tokens; 0.16% over 64 windows).
REPETITION_LIMIT = 0.2

GRADES = {"A": "no problems found", "B": "minor notes only", "C": "a major problem to fix",
          "D": "not measurably better than word frequencies, or training failed"}
MAJOR = ("over_fitting", "under_training", "loss_spikes")
MINOR = ("data_budget", "repetition")


# ---------------------------------------------------------------------------------------------
# Reading the evidence.


def split_curves(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train steps, train losses, eval steps, validation losses), each sorted by step."""
    train = sorted((r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float)))
    evals = sorted((r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float)))
    def to_arrays(pairs):
        array = np.asarray(pairs, np.float64).reshape(-1, 2)
        finite = np.isfinite(array[:, 1])
        return array[finite, 0], array[finite, 1]
    return (*to_arrays(train), *to_arrays(evals))


def robust_noise(steps: np.ndarray, losses: np.ndarray, window: int = SPIKE_WINDOW) -> tuple[np.ndarray, np.ndarray, float]:
    """Residuals of each record from the median of its neighbours (`window` records on each side,
    itself left out; a centred window follows the downward trend instead of lagging behind it),
    the steps they belong to, and their robust standard deviation (1.4826 · median absolute
    deviation). The first 10% of the run (the steep early descent) is left out."""
    start = max(window, int(np.searchsorted(steps, steps[-1] * 0.1))) if len(steps) else 0
    end = len(losses) - window  # only records with a full window on both sides
    residuals = np.array([losses[i] - np.median(np.concatenate([losses[i - window:i], losses[i + 1:i + 1 + window]]))
                          for i in range(start, end)])
    if len(residuals) < 3:
        return np.zeros(0), np.zeros(0), float("nan")
    sd = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
    return residuals, steps[start:end], max(sd, 1e-6)


def end_slope(steps: np.ndarray, losses: np.ndarray) -> dict[str, float] | None:
    """Least-squares slope of the loss over the last third of the run, with its standard error."""
    if len(steps) < 3:
        return None
    chosen = steps >= steps[-1] * 2 / 3
    if chosen.sum() < 3:
        chosen = np.arange(len(steps)) >= len(steps) - 3
    x, y = steps[chosen], losses[chosen]
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    dof = max(len(x) - 2, 1)
    slope_se = math.sqrt(float(np.sum(residual**2)) / dof / float(np.sum((x - x.mean()) ** 2))) if len(x) > 2 else 0.0
    span = steps[-1] / 3
    return {"slope_per_step": float(slope), "slope_stderr": slope_se, "points": int(len(x)),
            "drop_over_last_third": float(-slope * span), "from_step": float(x[0]), "to_step": float(x[-1])}


# ---------------------------------------------------------------------------------------------
# The findings. Each returns {"name", "status": ok | problem | note | unknown, "evidence",
# "recommendation", "values"}.


def _finding(name, status, evidence, recommendation="", **values) -> dict[str, Any]:
    return {"name": name, "status": status, "evidence": evidence, "recommendation": recommendation,
            "values": values}


def baseline_gain(evaluation: dict) -> dict[str, Any]:
    v = evaluation["validation"]
    unigram = evaluation["baselines"]["unigram"]["bits_per_byte"]
    gain = unigram - v["bits_per_byte"]
    # The loss's standard error in nats/token, as bits per byte.
    noise = (v.get("loss_stderr") or 0.0) / math.log(2) / v["bytes_per_token"]
    values = {"bits_per_byte": v["bits_per_byte"], "unigram_bits_per_byte": unigram, "gain": gain,
              "gain_share_of_unigram": gain / unigram, "noise_bits_per_byte": noise}
    if gain <= SIGNIFICANCE_Z * noise:
        return _finding("baseline_gain", "problem",
                        f"{v['bits_per_byte']:.3f} bits per byte is not measurably better than the unigram "
                        f"baseline ({unigram:.3f}; noise ±{noise:.3f}): the model has learned no more than "
                        "which tokens are common",
                        "train longer (see under-training) or check the learning rate; a model that trained "
                        "properly beats word frequencies within a few hundred steps", **values)
    return _finding("baseline_gain", "ok",
                    f"{gain:.3f} bits per byte better than the unigram baseline ({v['bits_per_byte']:.3f} vs "
                    f"{unigram:.3f}: {gain / unigram:.0%} shorter code), well beyond the noise (±{noise:.3f})",
                    **values)


def over_fitting(train_steps, train_losses, eval_steps, val_losses, train_noise_sd) -> dict[str, Any]:
    if len(eval_steps) == 0 or len(train_steps) == 0:
        return _finding("over_fitting", "unknown", "no validation losses in metrics.jsonl (eval_every was 0)",
                        "train with --eval-every N so validation loss is logged")
    end = train_steps[-1]
    recent = train_steps >= end * 0.9
    if recent.sum() < 3:
        recent = np.arange(len(train_steps)) >= len(train_steps) - 3
    train_end = float(np.mean(train_losses[recent]))
    val_end, val_min = float(val_losses[-1]), float(np.min(val_losses))
    best_step = int(eval_steps[int(np.argmin(val_losses))])
    gap = val_end - train_end
    noise = (train_noise_sd if np.isfinite(train_noise_sd) else 0.0) / math.sqrt(int(recent.sum()))
    rise = val_end - val_min
    train_fell = len(train_losses) > 1 and train_end < float(np.mean(train_losses[train_steps <= best_step][-3:]))
    values = {"train_loss_end": train_end, "val_loss_end": val_end, "val_loss_min": val_min,
              "val_min_step": best_step, "gap": gap, "gap_ratio": gap / val_end, "rise_ratio": rise / val_end}
    gap_says = gap / val_end > OVERFIT_GAP_RATIO and gap > SIGNIFICANCE_Z * noise
    rise_says = rise / val_end > OVERFIT_RISE_RATIO and train_fell
    if gap_says or rise_says:
        reasons = []
        if gap_says:
            reasons.append(f"validation loss {val_end:.3f} is {gap:.3f} nats ({gap / val_end:.0%}) above the "
                           f"training loss {train_end:.3f}")
        if rise_says:
            reasons.append(f"validation loss rose {rise:.3f} nats from its minimum {val_min:.3f} at step "
                           f"{best_step} while training loss kept falling")
        return _finding("over_fitting", "problem", "; ".join(reasons),
                        f"the model memorises its training text: train on more data (or a smaller model), "
                        f"or stop near step {best_step} where validation loss was lowest (--steps {best_step} "
                        "in a new run), or raise --weight-decay", **values)
    return _finding("over_fitting", "ok",
                    f"validation {val_end:.3f} vs training {train_end:.3f} nats: a gap of {gap:+.3f} "
                    f"({gap / val_end:+.1%}; over-fitted runs measured +10% and more); validation loss ended "
                    f"{rise:.3f} above its minimum", **values)


def under_training(train_steps, train_losses, eval_steps, val_losses, total_steps: int) -> dict[str, Any]:
    use_val = len(eval_steps) >= 4
    steps, losses, curve = (eval_steps, val_losses, "validation") if use_val else (train_steps, train_losses, "training")
    fit = end_slope(steps, losses)
    if fit is None:
        return _finding("under_training", "unknown", f"too few {curve}-loss records to see a trend",
                        "log more often (--log-every, --eval-every)")
    drop_ratio = fit["drop_over_last_third"] / float(losses[-1])
    significant = -fit["slope_per_step"] > SIGNIFICANCE_Z * fit["slope_stderr"]
    values = {**fit, "curve": curve, "drop_ratio": drop_ratio}
    if drop_ratio > UNDERTRAINED_DROP_RATIO and significant:
        more = max(total_steps, 1)
        return _finding("under_training", "problem",
                        f"the {curve} loss was still falling at the end: {fit['drop_over_last_third']:.3f} nats "
                        f"({drop_ratio:.1%}) over the last third of the run (slope {fit['slope_per_step']:.2e} "
                        f"± {fit['slope_stderr']:.1e} per step)",
                        f"train a longer run, about {total_steps + more} steps (--steps {total_steps + more}), "
                        "into a new --out: the curve has not flattened yet, and a finished run's learning rate has "
                        "decayed, so a resume cannot lengthen it", **values)
    how = "had flattened" if drop_ratio <= UNDERTRAINED_DROP_RATIO else "moved, but within its noise"
    return _finding("under_training", "ok",
                    f"the {curve} loss changed {-drop_ratio:+.1%} over the last third (slope "
                    f"{fit['slope_per_step']:.1e} ± {fit['slope_stderr']:.1e} per step): it {how}", **values)


def loss_spikes(train_steps, train_losses, train_config: dict, stop_reason: str | None) -> dict[str, Any]:
    lr = float(train_config.get("lr", 0.0))
    warmup = int(train_config.get("warmup", 0))
    if stop_reason == "nan":
        return _finding("loss_spikes", "problem", "training diverged (the loss became NaN or infinite)",
                        f"lower the learning rate to {lr / 3:.2g} (from {lr:.2g}) and lengthen warmup to "
                        f"{max(2 * warmup, 100)} steps", diverged=True)
    residuals, steps, sd = robust_noise(train_steps, train_losses)
    if len(residuals) == 0:
        return _finding("loss_spikes", "unknown", "too few training-loss records to judge spikes",
                        "log more often (--log-every)")
    z = residuals / sd
    spikes = [(int(s), float(r), float(zz)) for s, r, zz in zip(steps, residuals, z, strict=True) if zz > SPIKE_Z]
    values = {"noise_sd": sd, "max_z": float(z.max()), "spikes": spikes[:20], "count": len(spikes)}
    if spikes:
        worst = max(spikes, key=lambda s: s[2])
        return _finding("loss_spikes", "problem",
                        f"{len(spikes)} loss spike(s) above {SPIKE_Z:g}× the run's noise ({sd:.3f} nats); the "
                        f"worst at step {worst[0]}: +{worst[1]:.3f} nats (z = {worst[2]:.0f})",
                        f"lower the learning rate to {lr / 2:.2g} (from {lr:.2g}), or lengthen warmup to "
                        f"{max(2 * warmup, 100)} steps", **values)
    return _finding("loss_spikes", "ok", f"no spikes: the highest record stood {z.max():.1f}× the run's noise "
                    f"({sd:.3f} nats) above its neighbours", **values)


def data_budget(tokens_seen: int, params: int, train_tokens: int, tokens_per_step: int, steps: int) -> dict[str, Any]:
    ratio = tokens_seen / params
    epochs = tokens_seen / train_tokens if train_tokens else float("nan")
    values = {"tokens_seen": tokens_seen, "params": params, "tokens_per_param": ratio, "epochs": epochs,
              "train_tokens": train_tokens}
    notes, advice = [], []
    if ratio < TOKENS_PER_PARAM and epochs <= USEFUL_EPOCHS:
        needed = math.ceil((TOKENS_PER_PARAM * params - tokens_seen) / max(tokens_per_step, 1))
        notes.append(f"{ratio:.1f} tokens per parameter, under the ~{TOKENS_PER_PARAM:g} that is compute-optimal")
        advice.append(f"a run of about {steps + needed} steps (--steps {steps + needed}, into a new --out) reaches "
                      f"{TOKENS_PER_PARAM:g} tokens per parameter")
    elif ratio < TOKENS_PER_PARAM:
        notes.append(f"{ratio:.1f} tokens per parameter, under the ~{TOKENS_PER_PARAM:g} that is compute-optimal, "
                     "but more steps would only repeat the data")
    if epochs > USEFUL_EPOCHS:
        notes.append(f"the training data was seen {epochs:.1f} times; beyond ~{USEFUL_EPOCHS:g} epochs repeats "
                     "add little")
        advice.append(f"more data (≥ {tokens_seen / USEFUL_EPOCHS:,.0f} training tokens for this many steps) or a "
                      "smaller model")
    if notes:
        return _finding("data_budget", "note", "; ".join(notes), "; ".join(advice), **values)
    return _finding("data_budget", "ok", f"{ratio:.1f} tokens per parameter over {epochs:.1f} epochs", **values)


def repetition(evaluation: dict) -> dict[str, Any]:
    samples = evaluation.get("samples")
    if not samples or samples.get("repetition_rate") is None:
        return _finding("repetition", "unknown", "no samples in eval.json", "run lumi evaluate without --no-samples")
    rate = samples["repetition_rate"]
    reference = (samples.get("reference_text") or {}).get("repetition_rate")
    values = {"repetition_rate": rate, "reference_text": reference, "distinct_2": samples.get("distinct_2")}
    versus = f" (real text: {reference:.1%})" if reference is not None else ""
    if rate > REPETITION_LIMIT:
        return _finding("repetition", "note",
                        f"samples repeat themselves: {rate:.0%} of their 4-grams occurred earlier in the same "
                        f"sample{versus}",
                        "repetition fades with training; meanwhile sample with temperature ≥ 0.8 and top-p "
                        "0.9-0.95 rather than greedily", **values)
    return _finding("repetition", "ok", f"{rate:.1%} of sample 4-grams repeat{versus}", **values)


# ---------------------------------------------------------------------------------------------
# A run.


def load_evidence(run_dir: Path, evaluate_if_missing: bool = True) -> dict[str, Any]:
    """Everything assess reads from a run directory; runs a quick evaluation when eval.json is
    missing or belongs to an older checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; give a run made by lumi train (e.g. runs/NAME)")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a lumi run (no config.json); give a directory made by lumi train")
    config = read_json(run_dir / "config.json")
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    if not records:
        raise UserError(f"{run_dir}: has no metrics.jsonl records; train the run first (lumi train)")
    evaluation = read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else None
    last_step = summary.get("steps") or max(r.get("step", 0) for r in records)
    evaluated_now = False
    if evaluate_if_missing and (evaluation is None or evaluation.get("step") != last_step):
        evaluation = evaluate_run(run_dir, quick=True)
        evaluated_now = True
    return {"config": config, "summary": summary, "records": records, "evaluation": evaluation,
            "evaluated_now": evaluated_now, "last_step": last_step}


def grade(findings: Sequence[dict]) -> str:
    status = {f["name"]: f["status"] for f in findings}
    diverged = any(f["name"] == "loss_spikes" and f["values"].get("diverged") for f in findings)
    if status.get("baseline_gain") == "problem" or diverged:
        return "D"
    if any(status.get(name) == "problem" for name in MAJOR):
        return "C"
    if any(status.get(name) in ("problem", "note") for name in MINOR):
        return "B"
    return "A"


def assess_run(run_dir: str | Path, *, write: bool = True, evaluate_if_missing: bool = True) -> dict[str, Any]:
    """Findings, recommendations and a grade for runs/NAME; with `write`, assess.json and assess.md."""
    run_dir = Path(run_dir)
    evidence = load_evidence(run_dir, evaluate_if_missing)
    config, summary, evaluation = evidence["config"], evidence["summary"], evidence["evaluation"]
    train_config = config.get("train", {})
    train_steps, train_losses, eval_steps, val_losses = split_curves(evidence["records"])
    _residuals, _steps, noise_sd = robust_noise(train_steps, train_losses)
    model = config.get("model", {})
    context = train_config.get("context") or model.get("max_seq_len", 0)
    tokens_per_step = int(train_config.get("batch_size", 0)) * int(context)
    last_step = int(evidence["last_step"])
    tokens_seen = int(summary.get("tokens_seen") or last_step * tokens_per_step)
    params = evaluation["model"]["params"] if evaluation else _param_count(model)
    train_tokens = int(config.get("data", {}).get("meta", {}).get("train_tokens", 0))

    findings = []
    if evaluation is not None:
        findings.append(baseline_gain(evaluation))
    findings += [
        over_fitting(train_steps, train_losses, eval_steps, val_losses, noise_sd),
        under_training(train_steps, train_losses, eval_steps, val_losses, last_step),
        loss_spikes(train_steps, train_losses, train_config, summary.get("stop_reason")),
        data_budget(tokens_seen, params, train_tokens, tokens_per_step, last_step),
    ]
    if evaluation is not None:
        findings.append(repetition(evaluation))
    # In an over-fitted run more steps of the same data widen the gap: a falling training loss is
    # memorisation, and a validation loss still edging down calls for more data, not more steps.
    if any(f["name"] == "over_fitting" and f["status"] == "problem" for f in findings):
        for f in findings:
            if f["name"] == "under_training" and f["status"] == "problem":
                f["status"] = "ok"
                f["evidence"] += "; but the run over-fits, so more steps on the same data would not help"
                f["recommendation"] = ""
    letter = grade(findings)
    report = {
        "run": str(run_dir),
        "step": last_step,
        "grade": letter,
        "grade_meaning": GRADES[letter],
        "findings": findings,
        "recommendations": [f["recommendation"] for f in findings
                            if f["status"] in ("problem", "note") and f["recommendation"]],
        "evaluated_now": evidence["evaluated_now"],
        "evaluation": None if evaluation is None else {
            "bits_per_byte": evaluation["validation"]["bits_per_byte"], "loss": evaluation["validation"]["loss"],
            "quick": evaluation["quick"]},
    }
    if write:
        write_json_atomic(run_dir / "assess.json", report)
        (run_dir / "assess.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _param_count(model: dict) -> int:
    return count_params(param_shapes(model_config_from_dict(model, "config.json (model)")))


# ---------------------------------------------------------------------------------------------
# Several runs side by side.


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per run: size, training, validation bits per byte, gain over unigram and grade."""
    rows = []
    for run_dir in run_dirs:
        report = assess_run(run_dir)
        evaluation = read_json(Path(run_dir) / "eval.json")
        config = read_json(Path(run_dir) / "config.json")
        rows.append({
            "run": str(run_dir),
            "model": config.get("model", {}).get("name"),
            "params": evaluation["model"]["params"],
            "steps": report["step"],
            "tokens_per_param": next(f["values"]["tokens_per_param"] for f in report["findings"]
                                     if f["name"] == "data_budget"),
            "val_loss": evaluation["validation"]["loss"],
            "bits_per_byte": evaluation["validation"]["bits_per_byte"],
            "gain_over_unigram": evaluation["gain_over_unigram_bits_per_byte"],
            "vocab_size": evaluation["model"]["vocab_size"],
            "grade": report["grade"],
            "problems": [f["name"] for f in report["findings"] if f["status"] in ("problem", "note")],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Output.

STATUS_MARK = {"ok": "ok", "problem": "PROBLEM", "note": "note", "unknown": "?"}


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Assessment of {report['run']} (step {report['step']})", "",
             f"**Grade {report['grade']}**: {report['grade_meaning']}.", "", "## Findings", ""]
    for f in report["findings"]:
        lines.append(f"- **{f['name'].replace('_', ' ')}** [{STATUS_MARK[f['status']]}]: {f['evidence']}")
        if f["status"] in ("problem", "note") and f["recommendation"]:
            lines.append(f"  - *do*: {f['recommendation']}")
    lines += ["", "Thresholds and the measurements behind them: lumi_jax/assess.py, "
              "benchmarks/results/assess_evidence.json."]
    return "\n".join(lines) + "\n"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    colour = {"A": "green", "B": "green", "C": "yellow", "D": "red"}[report["grade"]]
    console.print(f"[bold]{escape(report['run'])}[/bold] step {report['step']}: "
                  f"[bold {colour}]grade {report['grade']}[/bold {colour}] ({report['grade_meaning']})")
    if report["evaluated_now"]:
        console.print("[dim](eval.json was missing or stale: ran a quick evaluation first)[/dim]")
    style = {"ok": "green", "problem": "red", "note": "yellow", "unknown": "dim"}
    for f in report["findings"]:
        console.print(f"  [{style[f['status']]}]{STATUS_MARK[f['status']]:>7}[/{style[f['status']]}] "
                      f"{f['name'].replace('_', ' ')}: {escape(f['evidence'])}", highlight=False)
        if f["status"] in ("problem", "note") and f["recommendation"]:
            console.print(f"          → {escape(f['recommendation'])}", highlight=False)


def print_comparison(rows: Sequence[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="runs side by side (bits per byte compare across tokenizers)")
    for column in ("run", "model", "params", "steps", "tokens/param", "val loss", "bits/byte",
                   "gain vs unigram", "grade", "findings"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["run"], str(r["model"]), f"{r['params']:,}", str(r["steps"]), f"{r['tokens_per_param']:.1f}",
                      f"{r['val_loss']:.3f}", f"{r['bits_per_byte']:.3f}", f"{r['gain_over_unigram']:.3f}",
                      r["grade"], ", ".join(r["problems"]) or "-")
    Console().print(table)


# ---------------------------------------------------------------------------------------------
# `lumi assess`.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="the run directory (default: the latest run under runs/)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="put several runs side by side")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    if args.compare:
        rows = compare_runs(args.compare)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_comparison(rows)
        return 0

    report = assess_run(Path(args.run) if args.run else latest_run())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
