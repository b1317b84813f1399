"""The steps the training sessions share: environment, data, reproducibility, training.

Each function is one step's body: it takes the StepContext (its given time, the console, the
state handed between steps) and calls the stage's Python function directly. A result that is
not what the session promises raises StepFailed with the reason; a user mistake surfaces as the
stage's own UserError.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

from lumi_jax.config import ModelConfig, TrainConfig, config_hash, load_train_config
from lumi_jax.errors import UserError
from lumi_jax.sessions import env_check
from lumi_jax.sessions.runner import StepContext, StepFailed
from lumi_jax.tables import print_table

DATA_DIR = Path("data")
RUNS_DIR = Path("runs")
# Training stops at its budget, then evaluates and saves once more; this share of a step's given
# time (at most a minute) is kept back for that.
TRAIN_RESERVE_FRACTION, TRAIN_RESERVE_MAX_S = 0.1, 60.0
LAUNCH_SLACK_S = 300.0  # a launched training run past its budget by this much is stopped (a hang)


def check_environment(ctx: StepContext) -> None:
    checks = env_check.run_checks(Path.cwd())
    print_table(ctx.console, env_check.checks_table(checks))
    failed = env_check.failures(checks)
    ctx.metrics["warnings"] = [f"{c.name}: {c.detail}" for c in checks if c.status == "warn"]
    ctx.metrics["headline"] = f"{len(checks) - len(failed)}/{len(checks)} checks ok"
    if failed:
        raise StepFailed("; ".join(f"{c.name}: {c.detail} ({c.fix})" for c in failed))


# ---------------------------------------------------------------------------------------------
# Data


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "data"


def dataset_dir(source: str, vocab_size: int, size_mb: float | None, seed: int) -> Path:
    """Where a session's dataset lives. Generated sources are a pure function of (seed, size), so
    their directory names say exactly that and a later session reuses them. A path source is
    named by a fingerprint of its files, so an edited file is prepared again, never confused."""
    if source.startswith("sample"):
        size = f"-{size_mb:g}mb" if size_mb is not None else ""
        return DATA_DIR / f"{source}-v{vocab_size}{size}-seed{seed}"
    if source.startswith("tfds:"):
        return DATA_DIR / f"{slug(source)}-v{vocab_size}-seed{seed}"
    return DATA_DIR / f"{slug(Path(source).stem)}-{source_fingerprint(source)}-v{vocab_size}-seed{seed}"


def source_fingerprint(source: str) -> str:
    """A short hash of a path source's files (names, sizes, times), so a changed file is re-prepared."""
    paths = sorted(Path(p) for p in glob.glob(str(Path(source).expanduser())))
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])]
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:8]


def is_prepared_dataset(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file() and (Path(path) / "train.bin").is_file()


def prepare_data(ctx: StepContext, source: str, model_config: ModelConfig, *, size_mb: float | None,
                 seed: int, state_key: str = "data", tokenizer: Path | None = None) -> None:
    """Prepare (or reuse) the dataset for `source` with the model's vocabulary; state[state_key]."""
    from lumi_jax.config import read_json
    from lumi_jax.data.prepare import prepare_dataset

    if is_prepared_dataset(source):  # DATA may name a dataset that is already prepared
        out = Path(source)
        reused = True
    else:
        out = dataset_dir(source, model_config.vocab_size, size_mb, seed)
        if tokenizer is not None:
            out = out.with_name(out.name + "-shared-tokenizer")
        reused = is_prepared_dataset(out)
        if not reused:
            prepare_dataset(source, out, vocab_size=None if tokenizer else model_config.vocab_size,
                            tokenizer=tokenizer, seed=seed, size_mb=size_mb, log=ctx.console.print)
    meta = read_json(out / "meta.json")
    if meta["vocab_size"] != model_config.vocab_size:
        raise UserError(f"{out}: its tokenizer has {meta['vocab_size']} ids but model '{model_config.name}' "
                        f"has vocab_size {model_config.vocab_size}; prepare the data with --model {model_config.name}")
    if reused:
        ctx.console.print(f"reusing {out} (prepared earlier from {meta['source']})")
    ctx.state[state_key] = out
    ctx.session.set_output(state_key, out)
    ctx.metrics.update(path=str(out), reused=reused, source=meta["source"], train_tokens=meta["train_tokens"],
                       val_tokens=meta["val_tokens"], bytes_per_token=round(meta["bytes_per_token"], 3),
                       headline=f"{out}: {meta['train_tokens']:,} train tokens" + (" (reused)" if reused else ""))


# ---------------------------------------------------------------------------------------------
# Training


def session_train_config(recipe: str, *, seed: int, steps: int | None) -> TrainConfig:
    """The recipe, with the session's seed and (when scaled down) fewer steps and shorter warmups."""
    config = dataclasses.replace(load_train_config(recipe), seed=seed)
    if steps is not None:
        config = dataclasses.replace(
            config, steps=steps, warmup=min(config.warmup, steps // 10),
            copy_warmup_steps=min(config.copy_warmup_steps, steps * 3 // 10),
            save_every=min(config.save_every, steps), eval_every=min(config.eval_every, steps),
            log_every=min(config.log_every, max(1, steps // 10)))
    return config


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    from lumi_jax.metrics import read_metrics

    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def reproducibility_check(ctx: StepContext, model_config: ModelConfig, train_config: TrainConfig,
                          steps: int) -> None:
    """Train the first `steps` steps twice from the same seed: the losses must be identical."""
    from lumi_jax.train import train

    config = dataclasses.replace(train_config, steps=steps, warmup=min(train_config.warmup, steps - 1),
                                 log_every=1, eval_every=0, save_every=steps, time_budget_minutes=None)
    RUNS_DIR.mkdir(exist_ok=True)
    losses = []
    with tempfile.TemporaryDirectory(prefix=".tmp-repro-", dir=RUNS_DIR) as scratch:
        for attempt in ("a", "b"):
            run_dir = Path(scratch) / attempt
            train(config, model_config, ctx.state["data"], run_dir, show_progress=False)
            losses.append([loss for _step, loss in logged_losses(run_dir)])
    identical = losses[0] == losses[1] and len(losses[0]) == steps
    check = {"steps": steps, "identical": identical, "losses_first": losses[0], "losses_second": losses[1]}
    ctx.session.set_reproducibility(check)
    ctx.console.print(f"first {steps} steps, twice: " + ("identical losses" if identical else "DIFFERENT losses"))
    ctx.metrics["headline"] = f"{steps} steps twice: {'identical' if identical else 'different'}"
    if not identical:
        raise StepFailed(f"the first {steps} steps gave different losses on a second run "
                         f"({losses[0]} vs {losses[1]}); training is not reproducible here")


def train_budget_minutes(ctx: StepContext) -> float:
    left = ctx.time_left_s()
    reserve = min(TRAIN_RESERVE_FRACTION * left, TRAIN_RESERVE_MAX_S)
    if left - reserve <= 1:
        raise StepFailed(f"only {left:.0f} s of the session budget is left for training; "
                         "give the session more time (SESSION_TIME)")
    return (left - reserve) / 60


def source_bytes(source: str) -> int:
    """The bytes of text a path source holds (files, a directory, a glob)."""
    paths = [Path(p) for p in glob.glob(str(Path(source).expanduser()))]
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])]
    return sum(f.stat().st_size for f in files if f.is_file())


def auto_model_for_source(source: str) -> ModelConfig:
    """Before the data is prepared: the smallest auto-recipe shape, with the vocabulary the
    auto recipe gives this much text (the train step then chooses the shape from the budget)."""
    from lumi_jax import auto_recipe

    vocab = auto_recipe.vocab_for_corpus(source_bytes(source))
    d_model, n_layers, n_heads = auto_recipe.CANDIDATE_SHAPES[0]
    return auto_recipe.candidate_config(d_model, n_layers, n_heads, vocab, auto_recipe.batch_shape(0)[1])


def train_auto(ctx: StepContext, run_dir: Path, seed: int, *, data_key: str = "data") -> dict:
    """Train with `--recipe auto`'s choices for the prepared data and this step's time."""
    from lumi_jax import auto_recipe
    from lumi_jax.config import read_json

    meta = read_json(Path(ctx.state[data_key]) / "meta.json")
    model_config, train_config, reasons = auto_recipe.choose(
        int(meta["train_bytes"]), 60 * train_budget_minutes(ctx), vocab_size=int(meta["vocab_size"]),
        bytes_per_token=float(meta["bytes_per_token"]), log=ctx.console.print)
    for name in ("vocab_size", "model", "batch", "lr"):
        ctx.console.print(f"auto recipe: {name}: {reasons[name]}")
    ctx.metrics["auto_recipe"] = {name: reasons[name] for name in ("vocab_size", "model", "batch", "lr")}
    return train_model(ctx, model_config, dataclasses.replace(train_config, seed=seed), run_dir, data_key=data_key,
                       record={"auto_recipe": reasons})


def train_model(ctx: StepContext, model_config: ModelConfig, train_config: TrainConfig, run_dir: Path, *,
                data_key: str = "data", init_params: Any = None, init_from: str | None = None,
                record: dict | None = None, processes: int = 1) -> dict:
    """Train within the step's given time; the trainer saves when the budget runs out. With
    `processes` > 1 the training runs as that many joined processes (`lumi launch`)."""
    from lumi_jax.train import train

    train_config = dataclasses.replace(train_config, time_budget_minutes=train_budget_minutes(ctx))
    ctx.console.print(f"training {model_config.name} into {run_dir}: up to {train_config.steps} steps, "
                      f"batch {train_config.batch_size}, lr {train_config.lr:g}, "
                      f"budget {train_config.time_budget_minutes:.1f} min"
                      + (f", as {processes} processes" if processes > 1 else ""))
    if ctx.session.record["config_hash"] is None:
        ctx.session.set_config_hash(config_hash({"model": model_config.to_dict(), "train": train_config.to_dict()}))
    if processes > 1:
        summary = train_launched(ctx, model_config, train_config, run_dir, processes, data_key)
    else:
        summary = train(train_config, model_config, ctx.state[data_key], run_dir,
                        init_params=init_params, init_from=init_from, record=record)
    ctx.metrics.update({key: summary.get(key) for key in (
        "steps", "target_steps", "final_train_loss", "final_val_loss", "tokens_seen", "tokens_per_s",
        "compile_time_s", "mean_step_time_s", "wall_time_s", "stop_reason")})
    if (run_dir / "curves.png").exists():
        ctx.session.set_output("curves", run_dir / "curves.png")
        ctx.console.print(f"training curves: {run_dir / 'curves.png'}")
    if summary["stop_reason"] == "nan":
        raise StepFailed(summary["message"])
    if summary["stop_reason"] == "signal":
        raise KeyboardInterrupt
    if not summary["steps"]:
        raise StepFailed(f"no training step fitted in the budget of {train_config.time_budget_minutes:.1f} min")
    ctx.metrics["headline"] = (f"{summary['steps']}/{summary['target_steps']} steps, loss "
                               f"{summary['final_train_loss']:.3f}" + (" (time budget)" if summary["stop_reason"] == "time_budget" else ""))
    return summary


def train_launched(ctx: StepContext, model_config: ModelConfig, train_config: TrainConfig, run_dir: Path,
                   processes: int, data_key: str = "data") -> dict:
    """`lumi train` as `processes` joined processes on this machine (launch.py), one CPU device
    each; the model and the settings travel as JSON files. Returns the run's summary.json."""
    from lumi_jax.config import read_json
    from lumi_jax.files import write_json_atomic
    from lumi_jax.launch import launch

    ctx.metrics["processes"] = processes
    RUNS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-launch-", dir=RUNS_DIR) as scratch:
        model_path, recipe_path = Path(scratch) / "model.json", Path(scratch) / "recipe.json"
        write_json_atomic(model_path, model_config.to_dict())
        write_json_atomic(recipe_path, train_config.to_dict())
        # The run stops itself at its budget; the timeout only ends processes that hang past it.
        status = launch(["train", "--model", str(model_path), "--recipe", str(recipe_path),
                         "--data", str(ctx.state[data_key]), "--out", str(run_dir)], processes,
                        timeout_s=60 * train_config.time_budget_minutes + LAUNCH_SLACK_S)
    if status != 0 or not (run_dir / "summary.json").is_file():
        raise StepFailed(f"training as {processes} processes failed (exit status {status}); the launcher's "
                         "last line above names the process and its error")
    return read_json(run_dir / "summary.json")


def check_loss_fell(ctx: StepContext, run_dir: Path, min_drop_fraction: float) -> None:
    """The last logged loss must be at least `min_drop_fraction` below the first."""
    losses = logged_losses(run_dir)
    if len(losses) < 2:
        raise StepFailed(f"{run_dir}: fewer than two logged losses; train for more steps")
    (first_step, first), (last_step, last) = losses[0], losses[-1]
    ctx.metrics.update(first_loss=first, last_loss=last, loss_drop_fraction=round(1 - last / first, 4))
    ctx.console.print(f"loss {first:.3f} at step {first_step} → {last:.3f} at step {last_step} "
                      f"({100 * (1 - last / first):.0f}% lower; at least {100 * min_drop_fraction:.0f}% required)")
    if last > (1 - min_drop_fraction) * first:
        raise StepFailed(f"the loss did not fall clearly: {first:.3f} → {last:.3f} "
                         f"(needs a drop of {100 * min_drop_fraction:.0f}%); check the data and the learning rate")


def new_run_dir(session: str, stamp_from: Path) -> Path:
    """runs/SESSION-STAMP, with the session record's own timestamp, never an existing directory."""
    run_dir = RUNS_DIR / f"{session}-{stamp_from.stem}"
    suffix = 2
    while run_dir.exists():
        run_dir = RUNS_DIR / f"{session}-{stamp_from.stem}-{suffix}"
        suffix += 1
    return run_dir


# ---------------------------------------------------------------------------------------------
# Architecture of the trained model: the estimate against what this session really used


def run_configs(ctx: StepContext, run_key: str = "run") -> tuple[ModelConfig, TrainConfig]:
    """The model and training settings the session's run really used (its config.json)."""
    from lumi_jax.config import model_config_from_dict, read_json, train_config_from_dict

    config = read_json(Path(ctx.state[run_key]) / "config.json")
    return (model_config_from_dict(config["model"], "config.json (model)"),
            train_config_from_dict(config["train"], "config.json (train)"))


def architecture_of_run(ctx: StepContext, model_config: ModelConfig, train_config: TrainConfig) -> None:
    from lumi_jax import architecture
    from lumi_jax.sessions.monitor import format_bytes

    context = train_config.context or model_config.max_seq_len
    config = dataclasses.replace(model_config, dtype=train_config.dtype)
    report = architecture.analyse(config, batch=train_config.batch_size, seq=context)
    architecture.print_report([report], [])
    key = f"{config.dtype}{'_remat' if train_config.remat else ''}"
    estimate = report["memory"]["training"][key]["total"]
    peaks = ctx.session.peak_so_far()
    measured = peaks["peak_accelerator_memory_bytes"] or peaks["peak_rss_bytes"]
    where = "accelerator memory" if peaks["peak_accelerator_memory_bytes"] else "process RSS (includes the runtime)"
    ctx.console.print(f"training estimate for batch {train_config.batch_size}×{context} ({key}): "
                      f"{format_bytes(estimate)}; measured peak {where}: {format_bytes(measured)}")
    warnings = [c["name"] for c in report["conformance"] if c["status"] != "pass"]
    ctx.metrics.update(params=report["params"]["total"], estimated_train_bytes=estimate,
                       measured_peak_bytes=measured, measured_what=where,
                       conformance_warnings=warnings, suggestions=report["suggestions"],
                       headline=f"{report['params']['total'] / 1e6:.2f}M params; estimate "
                                f"{format_bytes(estimate)}, measured {format_bytes(measured)}")


# ---------------------------------------------------------------------------------------------
# Evaluation and assessment


def evaluate_run(ctx: StepContext, *, quick: bool, run_key: str = "run", beat_unigram: bool = False) -> dict:
    """Evaluate state[run_key] (eval.json and eval.md in the run); with `beat_unigram`, the model
    must beat the unigram baseline, or training taught it nothing the token counts did not."""
    from lumi_jax import evaluate

    run_dir = Path(ctx.state[run_key])
    report = evaluate.evaluate_run(run_dir, quick=quick, time_limit_s=ctx.given_s)
    evaluate.print_summary(report)
    ctx.console.print(f"wrote {run_dir / 'eval.json'} and {run_dir / 'eval.md'}")
    validation, gain = report["validation"], report["gain_over_unigram_bits_per_byte"]
    ctx.metrics.update(run=str(run_dir), step=report["step"], quick=quick, val_loss=validation["loss"],
                       perplexity=validation["perplexity"], bits_per_byte=validation["bits_per_byte"],
                       gain_over_unigram_bits_per_byte=gain, scored_tokens=validation["tokens"])
    if report.get("exact_match"):
        ctx.metrics["exact_match"] = report["exact_match"]["accuracy"]
    if report.get("samples"):
        ctx.metrics["repetition_rate"] = report["samples"]["repetition_rate"]
        ctx.metrics["distinct_2"] = report["samples"]["distinct_2"]
    ctx.metrics["headline"] = (f"val loss {validation['loss']:.3f}, {validation['bits_per_byte']:.3f} bits/byte "
                               f"({gain:+.3f} vs unigram)")
    if beat_unigram and not gain > 0:
        raise StepFailed(f"the model ({validation['bits_per_byte']:.3f} bits per byte) does not beat the unigram "
                         f"baseline ({report['baselines']['unigram']['bits_per_byte']:.3f}); train longer or check the data")
    return report


# ---------------------------------------------------------------------------------------------
# Fine-tuning


SFT_RESERVE_FRACTION = 0.25  # exact match before and after fine-tuning is generation: keep time for it


def fine_tune_run(ctx: StepContext, train_config: TrainConfig, *, from_key: str = "run",
                  data_key: str = "instructions", out_key: str = "sft_run") -> dict:
    """Fine-tune state[from_key] on state[data_key] into RUN-sft; held-out exact match before and after."""
    from lumi_jax.sft import fine_tune

    from_run = Path(ctx.state[from_key])
    out = from_run.with_name(from_run.name + "-sft")
    ctx.state[out_key] = out
    ctx.session.set_output(out_key, out)
    minutes = train_budget_minutes(ctx) * (1 - SFT_RESERVE_FRACTION)
    train_config = dataclasses.replace(train_config, time_budget_minutes=minutes)
    ctx.console.print(f"fine-tuning {from_run} on {ctx.state[data_key]} into {out}: up to {train_config.steps} "
                      f"steps, budget {minutes:.1f} min")
    report = fine_tune(from_run, ctx.state[data_key], out, train_config, log=ctx.console.print)
    summary, held_out = report["train_summary"], report["held_out_exact_match"]
    before = (held_out.get("before") or {}).get("accuracy")
    after = (held_out.get("after") or {}).get("accuracy")
    ctx.metrics.update(steps=summary["steps"], final_train_loss=summary["final_train_loss"],
                       final_val_loss=summary["final_val_loss"], stop_reason=summary["stop_reason"],
                       exact_match_before=before, exact_match_after=after, examples=held_out.get("examples"),
                       truncation=report["truncation"])
    if summary["stop_reason"] == "nan":
        raise StepFailed(summary["message"])
    ctx.metrics["headline"] = (f"{summary['steps']} steps; held-out exact match "
                               + (f"{before:.0%} → {after:.0%}" if before is not None and after is not None else "n/a"))
    return report


def find_run(ctx: StepContext, run_path: Path | None) -> None:
    """MODEL_PATH, or the most recently changed run under runs/."""
    from lumi_jax.runs import is_run, latest_run

    run_dir = Path(run_path) if run_path is not None else latest_run(RUNS_DIR)
    if not is_run(run_dir):
        raise UserError(f"MODEL_PATH / --run {run_dir}: not a lumi run (no config.json); "
                        "give a directory made by lumi train or a session (see `make session-status`)")
    ctx.state["run"] = run_dir
    ctx.session.set_output("run", run_dir)
    chosen = "given" if run_path is not None else "the latest run"
    ctx.console.print(f"evaluating {run_dir} ({chosen})")
    ctx.metrics.update(run=str(run_dir), headline=f"{run_dir} ({chosen})")


def assess_runs(ctx: StepContext, *run_keys: str) -> None:
    """Assess state[key] for each key (assess.json and assess.md in each run)."""
    from lumi_jax import assess

    grades = []
    for key in run_keys or ("run",):
        run_dir = Path(ctx.state[key])
        report = assess.assess_run(run_dir)
        assess.print_report(report)
        ctx.console.print(f"wrote {run_dir / 'assess.json'} and {run_dir / 'assess.md'}")
        ctx.metrics[str(run_dir)] = {
            "grade": report["grade"], "recommendations": report["recommendations"],
            "problems": [f["name"] for f in report["findings"] if f["status"] == "problem"]}
        grades.append(f"{run_dir.name} {report['grade']}")
    ctx.metrics["headline"] = "grade " + ", ".join(grades)


MAX_COMPARED_RUNS = 6


def compare_with_earlier_runs(ctx: StepContext) -> None:
    """The chosen run next to the most recent earlier runs that have been evaluated."""
    from lumi_jax import assess

    chosen = Path(ctx.state["run"])
    earlier = sorted((p for p in RUNS_DIR.iterdir() if (p / "eval.json").is_file() and p.resolve() != chosen.resolve()),
                     key=lambda p: (p / "eval.json").stat().st_mtime) if RUNS_DIR.is_dir() else []
    runs = earlier[-(MAX_COMPARED_RUNS - 1):] + [chosen]
    if len(runs) == 1:
        ctx.console.print("no earlier evaluated run to compare with; the next evaluation will have this one")
    rows = assess.compare_runs(runs)
    assess.print_comparison(rows)
    best = min(rows, key=lambda r: r["bits_per_byte"])
    ctx.metrics.update(rows=rows, best=best["run"],
                       headline=f"{len(rows)} run(s); best bits/byte {best['bits_per_byte']:.3f}: {best['run']}")
