"""What each time-boxed session does: its steps, their shares of the budget, and their checks.

`build(name, args)` returns the session's list of `Step`s; the runner does the rest (time, logs,
records). The shares are relative weights: a step is given its share of the time still left when
it starts (see runner.py), so the numbers below read as "training gets most of the budget".
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from lumi_jax.config import load_model_config
from lumi_jax.sessions import steps as s
from lumi_jax.sessions.config_review import architecture_steps
from lumi_jax.sessions.runner import Step, StepContext

QUICK_MODEL, QUICK_SAMPLE_MB = "micro", 2.0
QUICK_REPRODUCIBILITY_STEPS = 5
QUICK_MIN_LOSS_DROP = 0.25  # the quick session's loss must end at least 25% below where it started
PROTOTYPE_MODEL = "tiny"
EXPERIMENT_MODEL, EXPERIMENT_SAMPLE_MB = "small", 16.0
# The sample stories use about 1,100 words: enough for a 4096-piece vocabulary, not for small's
# 32,000. On the sample corpus the experiment trains small's shape with vocab 4096 (and says so);
# with DATA (real text) it keeps the config's vocabulary.
SAMPLE_MAX_VOCAB = 4096


def uses_auto_recipe(args: argparse.Namespace) -> bool:
    """The user's own text (DATA), with no model named (CONFIG) and no step count: the shape,
    vocabulary, lr and length come from the text and the budget (auto_recipe.py). The sample
    stories keep their hand-made recipes."""
    return bool(args.data) and not args.data.startswith("sample") and not args.config and args.steps is None


def quick_steps(args: argparse.Namespace) -> list[Step]:
    auto = uses_auto_recipe(args)
    model_config = s.auto_model_for_source(args.data) if auto else load_model_config(args.config or QUICK_MODEL)
    train_config = s.session_train_config("quick", seed=args.seed, steps=args.steps)
    source = args.data or "sample"
    size_mb = args.data_mb or (QUICK_SAMPLE_MB if source == "sample" else None)
    repro_steps = min(QUICK_REPRODUCIBILITY_STEPS, train_config.steps)

    def train_and_check(ctx: StepContext) -> None:
        run_dir = s.new_run_dir("quick", ctx.session.record_path)
        ctx.state["run"] = run_dir
        ctx.session.set_output("run", run_dir)
        if auto:
            s.train_auto(ctx, run_dir, args.seed)
        else:
            s.train_model(ctx, model_config, train_config, run_dir, processes=args.processes)
        s.check_loss_fell(ctx, run_dir, QUICK_MIN_LOSS_DROP)

    return [
        Step("check environment", s.check_environment, 1, "Python, packages, devices, memory, disk"),
        Step("prepare data", lambda ctx: s.prepare_data(ctx, source, model_config, size_mb=size_mb, seed=args.seed),
             2, f"{source} ({size_mb or 'all'} MB) with a {model_config.vocab_size}-token tokenizer"),
        Step("reproducibility", lambda ctx: s.reproducibility_check(ctx, model_config, train_config, repro_steps),
             2, f"the first {repro_steps} steps twice from seed {args.seed}: identical losses"),
        Step("train", train_and_check, 16,
             ("the auto recipe's model, sized to the budget" if auto else
              f"{model_config.name} for {train_config.steps} steps")
             + (f", as {args.processes} processes (lumi launch)" if args.processes > 1 else "") + "; the loss must fall by "
             f"{100 * QUICK_MIN_LOSS_DROP:.0f}% or more"),
        Step("evaluate", lambda ctx: s.evaluate_run(ctx, quick=True, beat_unigram=True), 4,
             "validation loss and bits per byte on a fixed subset, baselines, short samples; "
             "the model must beat the unigram baseline"),
    ]


def prototype_steps(args: argparse.Namespace) -> list[Step]:
    auto = uses_auto_recipe(args)
    model_config = s.auto_model_for_source(args.data) if auto else load_model_config(args.config or PROTOTYPE_MODEL)
    train_config = s.session_train_config("prototype", seed=args.seed, steps=args.steps)
    source = args.data or "sample"
    size_mb = args.data_mb

    def train_run(ctx: StepContext) -> None:
        run_dir = s.new_run_dir("prototype", ctx.session.record_path)
        ctx.state["run"] = run_dir
        ctx.session.set_output("run", run_dir)
        if auto:
            s.train_auto(ctx, run_dir, args.seed)
        else:
            s.train_model(ctx, model_config, train_config, run_dir)

    return [
        Step("check environment", s.check_environment, 1, "Python, packages, devices, memory, disk"),
        Step("prepare data", lambda ctx: s.prepare_data(ctx, source, model_config, size_mb=size_mb, seed=args.seed),
             4, f"{source} with a {model_config.vocab_size}-token tokenizer"),
        Step("train", train_run, 60, "the auto recipe's model, sized to the budget" if auto else
             f"{model_config.name} for {train_config.steps} steps, saving at the budget"),
        Step("evaluate", lambda ctx: s.evaluate_run(ctx, quick=False, beat_unigram=True), 12,
             "the validation split (as much as its time allows): loss, perplexity, bits per byte, baselines, "
             "samples; the model must beat the unigram baseline"),
        Step("architecture check", lambda ctx: s.architecture_of_run(ctx, *s.run_configs(ctx)), 1,
             "the trained config's counts and memory estimate against the measured peak"),
    ]


def experiment_steps(args: argparse.Namespace) -> list[Step]:
    source = args.data or "sample"
    model_config = load_model_config(args.config or EXPERIMENT_MODEL)
    vocab_note = ""
    if source.startswith("sample") and model_config.vocab_size > SAMPLE_MAX_VOCAB:
        vocab_note = (f" ({model_config.name}'s vocab {model_config.vocab_size} cut to {SAMPLE_MAX_VOCAB}: "
                      "the sample corpus has too few words for more; DATA=your-text keeps it)")
        model_config = dataclasses.replace(model_config, vocab_size=SAMPLE_MAX_VOCAB,
                                           name=f"{model_config.name}-v{SAMPLE_MAX_VOCAB}")
    pretrain_config = s.session_train_config("experiment", seed=args.seed, steps=args.steps)
    sft_config = s.session_train_config("sft", seed=args.seed, steps=args.steps)
    size_mb = args.data_mb or (EXPERIMENT_SAMPLE_MB if source == "sample" else None)

    def pretrain(ctx: StepContext) -> None:
        run_dir = s.new_run_dir("experiment", ctx.session.record_path)
        ctx.state["run"] = run_dir
        ctx.session.set_output("run", run_dir)
        if vocab_note:
            ctx.console.print(f"[yellow]note[/]{vocab_note}")
        s.train_model(ctx, model_config, pretrain_config, run_dir)

    def prepare_instructions(ctx: StepContext) -> None:
        tokenizer = Path(ctx.state["data"]) / "tokenizer.model"
        s.prepare_data(ctx, "sample-instructions", model_config, size_mb=None, seed=args.seed,
                       state_key="instructions", tokenizer=tokenizer)

    return [
        Step("check environment", s.check_environment, 1, "Python, packages, devices, memory, disk"),
        Step("prepare data", lambda ctx: s.prepare_data(ctx, source, model_config, size_mb=size_mb, seed=args.seed),
             3, f"{source} with a {model_config.vocab_size}-token tokenizer{vocab_note}"),
        Step("prepare instructions", prepare_instructions, 1,
             "sample instructions (held-out split: unseen combinations) with the same tokenizer"),
        Step("pretrain", pretrain, 50, f"{model_config.name} for up to {pretrain_config.steps} steps within its share"),
        Step("fine-tune", lambda ctx: s.fine_tune_run(ctx, sft_config), 25,
             "responses only, from the pretrained weights; held-out exact match before and after"),
        Step("evaluate pretrained", lambda ctx: s.evaluate_run(ctx, quick=False, beat_unigram=True), 7,
             "the pretrained run on the text validation split; it must beat the unigram baseline"),
        Step("evaluate fine-tuned", lambda ctx: s.evaluate_run(ctx, quick=False, run_key="sft_run"), 7,
             "the fine-tuned run on the instruction validation split, with exact match"),
        Step("assess", lambda ctx: s.assess_runs(ctx, "run", "sft_run"), 2,
             "findings and recommendations for the pretrained and the fine-tuned run"),
    ]


def evaluation_session_steps(args: argparse.Namespace) -> list[Step]:
    return [
        Step("find the run", lambda ctx: s.find_run(ctx, args.run), 1, "MODEL_PATH, or the latest run"),
        Step("evaluate", lambda ctx: s.evaluate_run(ctx, quick=False), 6,
             "the whole validation split: loss, perplexity, bits per byte, baselines, samples, exact match"),
        Step("assess", s.assess_runs, 2, "findings from the evidence, with recommendations and a grade"),
        Step("compare", s.compare_with_earlier_runs, 2, "side by side with the most recent evaluated runs"),
    ]


BUILDERS: dict[str, Callable[[argparse.Namespace], list[Step]]] = {
    "quick": quick_steps,
    "prototype": prototype_steps,
    "experiment": experiment_steps,
    "evaluation": evaluation_session_steps,
    "architecture": architecture_steps,
}


def build(name: str, args: argparse.Namespace) -> list[Step]:
    return BUILDERS[name](args)
