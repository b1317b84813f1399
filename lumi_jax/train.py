"""Training: the one loop, and `lumi train`.

`train()` reads as a table of contents over a small `Trainer`:

    open the run        check the settings and the data; a new run directory, or the one to continue
    restore or init     the latest good checkpoint, or fresh (or given) parameters
    copy warm-up        optional: synthetic copying rows through the same loop (copy_warmup.py)
    the loop            one update, divergence guard, logging, checkpoints and evaluation, termination
    finish              the final evaluation and save, summary.json, curves.png

What is trained plugs in (step.FullTraining, lora.LoraTraining); so does the data (the text
loader, or the copy warm-up's rows). Nothing else has a loop of its own.

The loop never loses work: checkpoints every `save_every` steps, at the end, when the time
budget runs out and on SIGINT/SIGTERM; running again into the same directory resumes from the
latest good checkpoint and, on CPU, reproduces the uninterrupted run bit for bit (the loader is
a pure function of (seed, step), and the state is restored exactly).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lumi_jax import auto_recipe, copy_warmup
from lumi_jax import sharding as shard
from lumi_jax.checkpoint import CheckpointStore, abstract_with_shardings
from lumi_jax.config import (
    ModelConfig,
    TrainConfig,
    load_model_config,
    load_train_config,
    model_config_from_dict,
    read_json,
)
from lumi_jax.data import loader as data_loader
from lumi_jax.errors import UserError
from lumi_jax.files import write_json_atomic
from lumi_jax.flags import add_train_flags, train_config_from_flags
from lumi_jax.metrics import (
    MetricsLog,
    ProgressDisplay,
    Stopwatch,
    flops_per_token,
    peak_flops,
    plot_curves,
    read_metrics,
    tensorboard_writer_class,
)
from lumi_jax.model import param_shapes
from lumi_jax.optim import SchedulePlan, make_optimizer
from lumi_jax.run_lock import LOCK_NAME, RunLock
from lumi_jax.runs import check_resume_matches, run_identity_hash, versions
from lumi_jax.step import (
    FULL_TRAINING,
    Trained,
    TrainState,
    enable_compilation_cache,
    initial_state,
    jit_train_step,
    make_eval_step,
    new_state,
)

PLAN_AFTER_STEPS = 6  # steps a time-budgeted run times before it sizes itself to the deadline
DRIFT_SHARE = 0.02  # of the time left, kept back for a machine that slows down; the decay re-checks every step
SPREAD_Z = 2.0  # standard deviations of the remaining steps' summed time kept back: the deadline rarely cuts
REPLAN_EVERY = 10  # steps between re-sizings while the learning rate is constant
EVAL_COST_PER_BATCH = 0.4  # an evaluation batch, in train steps (a forward pass, ~1/3 of one), until measured


def open_dataset(data_path: Path, model_config: ModelConfig, context: int):
    dataset = data_loader.TokenDataset(data_path)
    if dataset.vocab_size != model_config.vocab_size:
        raise UserError(
            f"{data_path}: the tokenizer has {dataset.vocab_size} ids but model '{model_config.name}' "
            f"has vocab_size {model_config.vocab_size}; prepare the data with --vocab-size "
            f"{model_config.vocab_size}, or use a model config with vocab_size {dataset.vocab_size}"
        )
    if context > model_config.max_seq_len:
        raise UserError(
            f"context {context} is longer than model '{model_config.name}' max_seq_len "
            f"{model_config.max_seq_len}; use --context {model_config.max_seq_len} or less"
        )
    dataset.check_ids(model_config.vocab_size)  # ids outside the vocabulary: refused, naming the file
    return dataset


def put_global(arrays: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Place a batch that every process holds whole (validation) on the batch sharding."""
    sharding = shard.batch_sharding(mesh)
    return {name: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
            for name, value in arrays.items()}


def evaluate_split(eval_step, params, split, train_config: TrainConfig, context: int, mesh,
                   max_batches: int | None = None) -> float:
    """Mean validation loss over the first `eval_batches` (or `max_batches`) batches of `split`."""
    nats, count = 0.0, 0.0
    batches = data_loader.validation_batches(split, batch_size=train_config.batch_size, context=context,
                                             max_batches=max_batches or train_config.eval_batches)
    for batch in batches:  # full shape always (the loader pads with weight 0): one compilation
        batch_nats, batch_count = eval_step(params, put_global(batch.arrays(), mesh))
        nats += float(batch_nats)
        count += float(batch_count)
    return nats / count if count else float("nan")


def first_non_finite(read: list[tuple[int, dict]]) -> tuple[int, dict] | None:
    """The first (step, metrics) whose update was not finite, among metrics read in step order."""
    return next((entry for entry in read if not entry[1]["finite"]), None)


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop finishes its step, saves and exits cleanly."""

    def __init__(self):
        self.signal_name: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, _frame):
        if self.signal_name is not None:  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *_exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


@dataclasses.dataclass
class Phase:
    """One stretch of the loop: its compiled step, where its batches come from, and what it does
    after each update (log, save, evaluate). The text and the copy warm-up are two phases."""

    name: str
    step_fn: Callable  # (state, batch) -> (state, metrics)
    batch_at: Callable[[int], dict[str, np.ndarray]]  # this process's rows at a step
    end: int  # the step count at which the phase is complete
    after_update: Callable[[int, dict | None, float], None]  # (step, metrics if read at this step, step time)
    reads_metrics_at: Callable[[int], bool]  # the steps whose metrics it needs (logging, progress)
    checkpoints_at: Callable[[int], bool] = lambda _step: False  # steps it saves at: read and checked first


# ---------------------------------------------------------------------------------------------
# The trainer.


class Trainer:
    """The state of one training process, and the stages `train()` calls in order."""

    def __init__(self, train_config: TrainConfig, model_config: ModelConfig, data_path: Path, run_dir: Path, *,
                 init_params: Any, init_from: str | None, trained_kind: Trained, show_progress: bool):
        train_config.validate("train config")
        model_config.validate(f"model '{model_config.name}'")
        self.train_config = train_config
        self.model_config = dataclasses.replace(model_config, dtype=train_config.dtype)
        self.context = train_config.context or model_config.max_seq_len
        self.data_path, self.run_dir = Path(data_path), Path(run_dir)
        self.init_params, self.init_from, self.trained_kind = init_params, init_from, trained_kind
        self.is_writer = jax.process_index() == 0
        self.show_progress = show_progress and self.is_writer
        self.stopwatch = Stopwatch(train_config.time_budget_minutes)
        self.dataset = open_dataset(self.data_path, self.model_config, self.context)
        self.check_splits()
        if train_config.tensorboard:
            tensorboard_writer_class()  # a missing package is found before anything is written
        self.mesh = shard.make_mesh(train_config.mesh_data, train_config.mesh_fsdp,
                                    batch_rows=train_config.batch_size // train_config.grad_accum)
        shard.check_batch_divides(train_config.batch_size, train_config.grad_accum, self.mesh)
        data_loader.check_batch_fits(train_config.batch_size, self.context)
        if train_config.batch_size % jax.process_count():
            raise UserError(f"batch_size {train_config.batch_size} does not divide among {jax.process_count()} "
                            f"hosts; use a multiple of {jax.process_count()}")
        self.optimizer = make_optimizer(train_config)
        self.identity_hash = run_identity_hash(self.model_config, train_config, trained_kind.record())
        self.train_split, self.val_split = self.dataset.split("train"), self.dataset.split("val")
        self.step_times: list[float] = []  # device step times (dispatch to metrics): throughput
        self.iteration_times: list[float] = []  # wall time per loop iteration, evaluations apart: the budget
        self.eval_seconds = 0.0  # the last evaluation's duration, kept back from the time budget
        self.eval_total_s = 0.0
        self.last_loss = self.last_val = None
        self.stop_reason, self.message, self.signal_name = "completed", "", None

    def check_splits(self) -> None:
        context, data_path = self.context, self.data_path
        for split_name in ("train", "val") if self.train_config.eval_every else ("train",):
            tokens = len(self.dataset.split(split_name))
            if tokens < context + 1:
                raise UserError(
                    f"{data_path}: the {split_name} split has {tokens} tokens, fewer than one window of "
                    f"context {context} + 1; prepare more text, or train with a shorter --context"
                    + (" (or --eval-every 0)" if split_name == "val" else ""))

    # -- open the run ----------------------------------------------------------------------------

    def open_run(self, resume: bool, record: dict[str, Any] | None = None) -> None:
        """A new run directory, or the continuation of the one there (which must match)."""
        run_dir, config_path = self.run_dir, self.run_dir / "config.json"
        existing = config_path.exists()
        stored = read_json(config_path) if existing else {}
        if self.train_config.schedule == "auto":  # recorded as what it resolves to, so a resume keeps it
            chosen = (stored.get("train", {}).get("schedule", "cosine") if existing
                      else self.train_config.resolved_schedule)
            self.train_config = dataclasses.replace(self.train_config, schedule=chosen)
        # Where a WSD schedule decays: decided now, or, with a time budget, after a few timed steps.
        self.plan = SchedulePlan.over_steps(self.train_config)
        self.time_aware = self.train_config.schedule == "wsd" and self.train_config.time_budget_minutes is not None
        self.plan_decided = self.plan_frozen = not self.time_aware
        if existing:
            check_resume_matches(stored, self.model_config, self.train_config, self.dataset, run_dir,
                                 self.trained_kind.record())
        elif run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise UserError(f"{run_dir}: exists and is not a lumi run (no config.json); choose a new or empty --out")
        elif resume:
            raise UserError(f"{run_dir}: no run to resume (no config.json); drop --resume to start a new run there")
        if resume and not any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*")):
            raise UserError(f"{run_dir}: has no checkpoint to resume from; drop --resume to start it again")
        self.run_config = {
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "data": {"path": str(self.data_path), "tokenizer_sha256": self.dataset.tokenizer_sha256,
                     "meta": self.dataset.meta},
            "versions": versions(),
            "init_from": stored.get("init_from") if existing else self.init_from,
        }
        if self.trained_kind.record() is not None:
            self.run_config["lora"] = self.trained_kind.record()
        for name, section in (record or {}).items() if not existing else ():
            self.run_config[name] = section
        for name in ("auto_recipe",) if existing else ():  # a continued run keeps how it was chosen
            if name in stored:
                self.run_config[name] = stored[name]
        self.stored_steps = int(stored["train"]["steps"]) if existing else None
        # Every host checks the directory before any host creates something in it (host 0's
        # checkpoint manager makes checkpoints/ next): a slow host would otherwise find that
        # directory and refuse the run as "not a lumi run" (seen under load, tests/test_multihost.py).
        shard.sync_processes("lumi train: run directory checked")

    def record_run(self) -> None:
        """Write config.json (on resume: the new budget and intervals, the same identity) and the
        tokenizer, once every check, the resume's included, has passed: a refused command changes nothing."""
        shard.sync_processes("lumi train: state restored")  # every host has restored before host 0 writes
        if self.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run_config["train"] = self.train_config.to_dict()  # the length as the resume rule left it
            write_json_atomic(self.run_dir / "config.json", self.run_config)
            if not (self.run_dir / "tokenizer.model").exists():
                shutil.copyfile(self.dataset.tokenizer_path, self.run_dir / "tokenizer.model")

    # -- restore or initialise ---------------------------------------------------------------------

    def restore_or_initialise(self) -> None:
        """The latest good checkpoint, or a fresh state (new, or the given parameters)."""
        kind, mesh = self.trained_kind, self.mesh
        if self.init_params is None and kind.record() is not None:
            raise UserError(f"{self.run_dir}: LoRA needs the pretrained parameters; continue it with lumi sft "
                            "--from the pretrained run")
        abstract_params = param_shapes(self.model_config)

        def started(params):
            trained, frozen = kind.start(params, 0)
            return new_state(trained, self.optimizer, frozen)

        abstract_state = jax.eval_shape(started, abstract_params)
        self.state_shardings = shard.state_shardings(abstract_state, mesh)
        self.store = CheckpointStore(self.run_dir / "checkpoints", keep=self.train_config.keep_checkpoints)
        resume_item = kind.resume_item(abstract_state.params, abstract_state.opt_state)
        resume_shardings = kind.resume_item(self.state_shardings.params, self.state_shardings.opt_state)
        restored = self.store.restore_latest_good(
            abstract_with_shardings(abstract_params, shard.state_shardings(abstract_params, mesh)),
            abstract_with_shardings(resume_item, resume_shardings))
        self.store.set_aside_unreadable(self.run_dir / "checkpoints_unreadable")  # every process (one moves)
        self.needs_copy_warmup = (restored is None and self.init_params is None
                                  and self.train_config.copy_warmup_steps > 0)
        if restored is None:
            self.start_step = 0
            if not self.needs_copy_warmup:  # the warm-up makes its own state, then this one
                self.state, _ = initial_state(self.model_config, self.train_config, self.optimizer, mesh,
                                              self.init_params, kind)
            return
        meta = restored["meta"]
        if meta.get("tokenizer_sha256") != self.dataset.tokenizer_sha256 or meta.get("config_hash") != self.identity_hash:
            raise UserError(f"{self.run_dir}: the checkpoint at step {meta.get('step')} belongs to another "
                            "configuration; train into a new --out directory")
        self.start_step = int(meta["step"])
        if "schedule" in meta:
            recorded = dict(meta["schedule"])
            self.plan_frozen = recorded.pop("frozen", True)
            self.plan, self.plan_decided = SchedulePlan(**recorded), True
        elif self.stored_steps is not None and self.train_config.resolved_schedule == "wsd":
            self.plan = SchedulePlan.over_steps(dataclasses.replace(self.train_config, steps=self.stored_steps))
        if self.stored_steps is not None and self.stored_steps != self.train_config.steps:
            self.change_length(self.stored_steps)
        trained, opt_state = kind.from_resume_item(restored["params"], restored["opt_state"])
        frozen = None
        if self.init_params is not None and kind.record() is not None:  # LoRA: the base, placed as before
            frozen = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), self.init_params),
                                    self.state_shardings.frozen)
        self.state = TrainState(step=jax.device_put(jnp.int32(self.start_step), self.state_shardings.step),
                                params=trained, opt_state=opt_state, frozen=frozen,
                                diverged=jax.device_put(jnp.zeros((), bool), self.state_shardings.diverged))

    def change_length(self, planned: int) -> None:
        """The resume rule for a new --steps: a run's learning rate never jumps back up, and its
        decay is never cut short. A WSD run whose decay has not begun may be lengthened or shortened:
        its constant phase simply runs to the new decay. A cosine run's whole curve depends on its
        length, and a decay that has begun is fixed: both are refused, with what to do instead."""
        config, step = self.train_config, self.start_step
        wanted = config.steps
        if config.resolved_schedule == "wsd" and step < self.plan.decay_start:
            lengthened = SchedulePlan.over_steps(config, wanted, done=step)
            self.plan = dataclasses.replace(lengthened, warmup=self.plan.warmup,
                                            decay_start=max(lengthened.decay_start, self.plan.warmup, step))
            self.plan_frozen = not self.time_aware  # a budgeted run sizes itself again
            return
        if config.resolved_schedule == "wsd":
            why = f"its decay began at step {self.plan.decay_start}"
        else:
            why = "its cosine schedule is defined over that length, so the learning rate would jump"
        raise UserError(
            f"{self.run_dir}: was planned for {planned} steps and is at step {step}; --steps {wanted} would change "
            f"a schedule already under way ({why}); resume with --steps {planned} (or leave --steps out), or train "
            f"a longer run into a new --out (with --schedule wsd, a run can be lengthened on resume until its "
            f"decay begins)")

    # -- the copy warm-up: another data source for the same loop ------------------------------------

    def copy_warm_up(self, stop: StopRequest) -> None:
        """Fresh parameters learn to copy (copy_warmup.py); the text then starts from them with a
        fresh optimizer. Its record goes to copy_warmup.json."""
        config, batch_at = copy_warmup.copy_batch_source(self.train_config, self.context, self.model_config.vocab_size,
                                                         jax.process_index(), jax.process_count())
        optimizer = make_optimizer(config)
        self.state, shardings = initial_state(self.model_config, config, optimizer, self.mesh)
        step_fn = jit_train_step(self.model_config, config, self.mesh, shardings)
        started = time.perf_counter()
        progress: dict[str, float] = {"copy_nats": float("nan")}

        def after_update(step: int, metrics: dict | None, _step_time: float) -> None:
            if step == PLAN_AFTER_STEPS and self.stopwatch.left() is not None:
                # With a time budget the warm-up takes at most its share of what is left (process 0's clock).
                left, step_time = shard.from_process_0([self.stopwatch.left(), self.recent_step_time()])
                share = copy_warmup.BUDGET_SHARE * left / step_time
                phase.end = max(step, min(phase.end, step + int(share)))
            if metrics is not None:  # read at its progress steps and at its end
                progress["copy_nats"] = metrics["loss"]
                if self.show_progress:
                    print(copy_warmup.progress_line(step, phase.end, metrics["loss"], self.model_config.vocab_size),
                          flush=True)

        phase = Phase("copy warm-up", lambda state, batch: step_fn(state, batch, None),
                      lambda step: shard.put_batch(batch_at(step), self.mesh), config.steps, after_update,
                      reads_metrics_at=lambda step: step % copy_warmup.PROGRESS_EVERY == 0)
        reached, reason = self.loop(phase, 0, stop)
        record = {"steps": reached, "final_copy_nats": round(progress["copy_nats"], 4),
                  "seconds": round(time.perf_counter() - started, 1)}
        warm_params = self.state.params
        del self.state  # its optimizer state would sit in memory beside the text's own
        self.state, _ = initial_state(self.model_config, self.train_config, self.optimizer, self.mesh, warm_params)
        if reason in ("signal", "nan"):  # out of time, the text still gets a step, a save and an evaluation
            self.stop_reason = reason
            self.signal_name = stop.signal_name or "a signal to another process"
        if self.is_writer:
            write_json_atomic(self.run_dir / copy_warmup.COPY_WARMUP_FILE, record)
        if reason not in ("signal", "nan"):
            # The warm-up's result, as step 0 of the text: a run killed before its first text save
            # resumes from here instead of warming up again. (A warm-up cut short saves nothing: the
            # rerun warms up whole, and so matches a run that was never interrupted.)
            self.save(0)

    # -- the loop ------------------------------------------------------------------------------------

    def loop(self, phase: Phase, start: int, stop: StopRequest) -> tuple[int, str]:
        """Run `phase` from step `start`; returns (the step reached, why it stopped).

        The host never waits for the step it has just dispatched: it loads the next batch, then
        waits only for the step before, so one update is always queued on the device. Metrics stay
        on the device and are read in one transfer when the phase needs them (a log line, a save,
        the end); the divergence guard looks at them then. A non-finite update and every update
        after it change nothing (step.TrainState.diverged), so however late the guard looks, the
        state it finds is the last good one, and that is what is saved."""
        step = self.reached = start
        self.phase_running = phase
        next_batch = phase.batch_at(step) if step < phase.end else None
        unread: list[tuple[int, dict]] = []  # (step, its metrics still on the device)
        previous_loss = None
        while step < phase.end:
            started = time.perf_counter()
            if next_batch is None:  # the phase's end moved past where it stood (a time-aware replan)
                next_batch = phase.batch_at(step)
            self.state, metrics = phase.step_fn(self.state, next_batch)
            next_batch = phase.batch_at(step + 1) if step + 1 < phase.end else None
            if previous_loss is not None:
                previous_loss.block_until_ready()  # at most this step in flight: a queue, not a flood
            previous_loss = metrics["loss"]
            step = self.reached = step + 1
            unread.append((step, metrics))
            read = None
            if phase.reads_metrics_at(step) or phase.checkpoints_at(step) or step == phase.end:
                read, unread = self.read_metrics(unread), []
                diverged = first_non_finite(read)
                if diverged is not None:  # the state is the one before that step (sticky guard)
                    return self.diverged(phase, *diverged), "nan"
                read = read[-1][1]
            step_time = time.perf_counter() - started
            self.step_times.append(step_time)

            # Logging, checkpoints and evaluation: the phase's own.
            evaluated_before = self.eval_total_s
            phase.after_update(step, read, step_time)
            # What one more iteration costs in wall time (logging and saves included, evaluations apart).
            self.iteration_times.append(time.perf_counter() - started - (self.eval_total_s - evaluated_before))

            # Termination: a signal, or no time left for one more step and the final evaluation. Every
            # process stops at the same step (else one saves while another steps, and both wait forever).
            budget_left = self.stopwatch.left()
            # The next iteration, as the median of the last few: one that held a save is a lump, not a trend.
            next_iteration = float(np.median(self.iteration_times[-5:]))
            out_of_time = budget_left is not None and budget_left < next_iteration + self.eval_seconds
            signalled, out_of_time = shard.any_process([stop.signal_name is not None, out_of_time])
            if signalled or out_of_time:  # what is stopped at is saved: check it first
                read_now = self.read_metrics(unread)
                diverged = first_non_finite(read_now)
                if diverged is not None:
                    return self.diverged(phase, *diverged), "nan"
                if read_now and phase is getattr(self, "text", None):
                    self.last_loss = read_now[-1][1]["loss"]  # the summary's loss is the stopping step's
                return step, "signal" if signalled else "time_budget"
        return step, "completed"

    @staticmethod
    def read_metrics(unread: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
        """The metrics of the unread steps, in one transfer, as Python numbers."""
        fetched = jax.device_get([metrics for _, metrics in unread])
        return [(step, {name: value.item() for name, value in metrics.items()})
                for (step, _), metrics in zip(unread, fetched, strict=True)]

    def diverged(self, phase: Phase, step: int, metrics: dict) -> int:
        """Describe the first non-finite update (`step`); returns the last good step."""
        good = step - 1
        self.message = (f"{phase.name} diverged at step {step}: loss {metrics['loss']:.4g}, gradient "
                        f"norm {metrics['grad_norm']:.4g} (lr {metrics['lr']:.3g}); {self.saved_note(good)}; "
                        f"lower --lr (now {self.train_config.lr:g}) or lengthen --warmup, and train into a new --out")
        return good

    def save_after_failure(self, error: BaseException) -> str:
        """An exception left the loop (a full disk, a failing batch, an evaluation out of memory):
        save the text state it reached, if that state is intact, and say where the run stands. Never
        raises: the original error is the one to report."""
        display = getattr(self, "display", None)
        if display is not None:
            display.close()  # the terminal back to normal before the error line
        phase = getattr(self, "phase_running", None)
        if phase is None or phase is not getattr(self, "text", None):
            return "no training step was taken, so nothing was saved"  # the copy warm-up saves nothing
        def latest() -> str:
            sealed = self.sealed_steps_safely()
            return f"the latest checkpoint is step {max(sealed)}" if sealed else "there is no checkpoint yet"

        if any(leaf.is_deleted() for leaf in jax.tree.leaves(self.state) if isinstance(leaf, jax.Array)):
            return f"the state after step {self.reached} was lost with the failed update; {latest()}"
        # The state's own count: an update may have finished after the last step the loop counted
        # (the next batch loads while it runs), and a non-finite one left the count as it was.
        step = int(jax.device_get(self.state.step))
        if step in self.sealed_steps_safely():
            return f"the last good state (step {step}) is saved"
        try:
            self.save(step)
            self.store.seal()  # waits: an asynchronous save's error surfaces here, not later
        except Exception as save_error:  # e.g. the disk that failed the loop fails the save too
            text = str(save_error).strip()
            return f"saving step {step} failed too ({text.splitlines()[0][:200] if text else type(save_error).__name__}); {latest()}"
        return f"the last good state (step {step}) is saved" if step in self.sealed_steps_safely() else latest()

    def sealed_steps_safely(self) -> list[int]:
        try:
            return self.store.sealed_steps()
        except Exception:  # a listing that fails too: claim nothing
            return []

    def saved_note(self, good_step: int) -> str:
        if good_step == 0:
            return "no step succeeded, so there is no checkpoint"
        return f"the last good state (step {good_step}) is saved"

    # -- the text phase ------------------------------------------------------------------------------

    def text_phase(self) -> Phase:
        """Compile the step once, ahead of time (so compile time is never mistaken for step time),
        and describe what follows each update: logging, checkpoints, evaluation."""
        config, context = self.train_config, self.context
        target_limit = data_loader.max_window_targets(self.train_split, context)
        if target_limit is not None and target_limit > context // 2:
            target_limit = None  # most positions count: the full head is as cheap
        step_fn = jit_train_step(self.model_config, config, self.mesh, self.state_shardings, target_limit,
                                 self.trained_kind)
        with_segments = self.train_split.example_starts is not None
        batch_spec = {name: jax.ShapeDtypeStruct((config.batch_size, context), dtype,
                                                 sharding=shard.batch_sharding(self.mesh))
                      for name, dtype in (("inputs", jnp.int32), ("targets", jnp.int32), ("weights", jnp.float32),
                                          ("segments", jnp.int32)) if name != "segments" or with_segments}
        compile_started = time.perf_counter()
        compiled = step_fn.lower(jax.eval_shape(lambda: self.state), batch_spec,
                                 jax.eval_shape(self.plan.arrays)).compile()
        self.compile_time_s = time.perf_counter() - compile_started
        self.eval_step = make_eval_step(self.model_config)
        if config.eval_every:
            self.measure_evaluation()
        rows = config.batch_size // jax.process_count()

        def batch_at(step: int) -> dict[str, jax.Array]:
            batch = data_loader.train_batch(
                self.train_split, seed=config.seed, step=step, batch_size=config.batch_size, context=context,
                process_index=jax.process_index(), process_count=jax.process_count())
            assert batch.inputs.shape == (rows, context), "the loader returned a batch of another shape"
            assert target_limit is None or (batch.weights > 0).sum(axis=1).max() <= target_limit, \
                "a window holds more answer tokens than the bound the step was compiled for"
            return shard.put_batch(batch.arrays(), self.mesh)

        self.text = Phase("training", lambda state, batch: compiled(state, batch, self.plan.arrays()), batch_at,
                          self.plan.decay_end if self.plan_decided else config.steps, self.after_text_update,
                          reads_metrics_at=lambda step: step % config.log_every == 0 or step == self.start_step + 1,
                          checkpoints_at=lambda step: step % config.save_every == 0
                          or bool(config.eval_every and step % config.eval_every == 0))
        return self.text

    def recent_step_time(self, count: int = PLAN_AFTER_STEPS) -> float:
        """The mean wall time of this session's last `count` iterations (its first, still warming,
        left out), logging and saves included, evaluations not."""
        recent = self.iteration_times[1:][-count:] or self.iteration_times
        return float(np.mean(recent))

    def plan_to_deadline(self, step: int, window: int) -> SchedulePlan:
        """The steps that fit in the time left, with the decay over their last share (optim.py)."""
        return SchedulePlan.to_deadline(self.train_config, self.steps_that_fit(step, window), done=step)

    def steps_that_fit(self, step: int, window: int) -> int:
        """The step count the run can reach before its deadline, at its recent speed. Counts the
        evaluations ahead (the last one measured, or ~0.4 of a step per batch) and keeps back only
        what the timing says is uncertain, because a step given up costs as much as the decay gains
        at short budgets: one lump (the slowest recent iteration above the mean: the final save), two
        standard deviations of the remaining steps' summed time, and a small share for drift. A
        machine that slows down further is caught by shorten_decay_to_fit, every step of the decay."""
        config = self.train_config
        recent = np.asarray(self.iteration_times[1:][-window:] or self.iteration_times)
        # Process 0's clock for every process: plans made from different timings would differ.
        # The spread from the median absolute deviation: the lumps (saves) are periodic, already in the
        # mean, and would swell a plain standard deviation into steps given up for nothing.
        spread = 1.4826 * float(np.median(np.abs(recent - np.median(recent))))
        step_time, left, eval_seconds, slowest, spread = shard.from_process_0(
            [float(recent.mean()), self.stopwatch.left(), self.eval_seconds, float(recent.max()), spread])
        eval_cost = eval_seconds or EVAL_COST_PER_BATCH * config.eval_batches * step_time
        per_step = step_time + (eval_cost / config.eval_every if config.eval_every else 0.0)
        usable = left - (eval_cost if config.eval_every else 0.0)
        remaining = max(usable / per_step, 1.0)  # for the size of the spread term only
        usable -= DRIFT_SHARE * left + max(slowest - step_time, 0.0) + SPREAD_Z * spread * math.sqrt(remaining)
        return min(config.steps, step + max(1, int(usable / per_step)))

    def size_to_deadline(self, step: int) -> None:
        """A time-budgeted WSD run sizes itself to its deadline: first after PLAN_AFTER_STEPS timed
        steps, then again every REPLAN_EVERY steps while the learning rate is still constant (so a
        machine that slows down or speeds up moves the decay, and nothing already trained changes),
        and for the last time when the decay begins. From then on the plan is fixed, and recorded
        in every checkpoint: a resumed run follows the same decay bit for bit."""
        steps_run = step - self.start_step
        if steps_run < PLAN_AFTER_STEPS:
            return
        # Recent (a machine's speed drifts), but long enough to hold a save: saves come in lumps,
        # and a window between two of them would plan too many steps and the budget cut the decay.
        window = max(PLAN_AFTER_STEPS, steps_run // 10, min(self.train_config.save_every, steps_run - 1))
        if self.plan_frozen:
            self.shorten_decay_to_fit(step, window)
            return
        first = not self.plan_decided
        if first or steps_run % REPLAN_EVERY == 0 or step >= self.plan.decay_start:
            self.plan, self.plan_decided = self.plan_to_deadline(step, window), True
            self.text.end = self.plan.decay_end
        self.plan_frozen = step >= self.plan.decay_start
        if (first or self.plan_frozen) and self.plan.decays:
            self.display.note(f"time-aware schedule: {self.plan.decay_end} of {self.train_config.steps} steps fit in "
                              f"the budget; warmup {self.plan.warmup} steps, lr decays from step "
                              f"{self.plan.decay_start} to {self.plan.decay_end}")
        elif first:
            self.display.note(f"time-aware schedule: ~{self.plan.decay_end} steps fit in the budget, too few to anneal "
                              f"after a {self.plan.warmup}-step warmup; lr holds at its peak to the deadline")

    def shorten_decay_to_fit(self, step: int, window: int) -> None:
        """A machine that slowed down during the decay: end the decay earlier, at the step the time
        left still reaches, going on from the learning rate it has now (never higher), rather than
        be cut by the deadline part way down. The new plan goes into every later checkpoint."""
        fits = self.steps_that_fit(step, window)
        start, last = self.plan.decay_start, self.plan.decay_end - 1
        done = (step - start) / max(last - start, 1)  # of the decay, at the next update
        if fits >= self.plan.decay_end or done >= 1.0:
            return
        new_end = max(fits, step + 1)
        # The start that puts the next update at least `done` of the way down the shorter decay.
        new_start = max(0, min(step, math.floor((step - done * (new_end - 1)) / (1.0 - done))))
        self.plan = dataclasses.replace(self.plan, decay_start=new_start, decay_end=new_end)
        self.text.end = new_end
        self.display.note(f"time-aware schedule: slower than planned; the decay now ends at step {new_end}")

    def measure_evaluation(self) -> None:
        """Compile the evaluation before the loop (its compile time is not a step's) and time one
        batch, so a time budget keeps back what an evaluation really costs from the start."""
        params = self.trained_kind.model_params(self.state.params, self.state.frozen)
        compile_started = time.perf_counter()
        evaluate_split(self.eval_step, params, self.val_split, self.train_config, self.context, self.mesh, 1)
        timed = time.perf_counter()
        evaluate_split(self.eval_step, params, self.val_split, self.train_config, self.context, self.mesh, 1)
        self.eval_seconds = (time.perf_counter() - timed) * self.train_config.eval_batches
        self.compile_time_s += timed - compile_started

    def after_text_update(self, step: int, metrics: dict | None, step_time: float) -> None:
        config = self.train_config
        if self.time_aware:
            self.size_to_deadline(step)
        self.tokens_this_session += self.tokens_per_step
        if metrics is not None and (step % config.log_every == 0 or step == self.text.end
                                    or step == self.start_step + 1):
            self.last_loss = metrics["loss"]
            recent = self.step_times[-config.log_every:]
            tokens_per_s = self.tokens_per_step / (sum(recent) / len(recent))
            record = {"step": step, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"], "lr": metrics["lr"],
                      "tokens_per_s": tokens_per_s, "step_time_s": step_time,
                      "mfu": self.flops_token * tokens_per_s / self.peak if self.peak else None,
                      "tokens": step * self.tokens_per_step, "elapsed_s": self.stopwatch.elapsed()}
            self.metrics_log.write(record)
            eta = (self.text.end - step) * sum(recent) / len(recent)
            self.display.update(record, self.text.end, self.stopwatch.left(), eta)
        if step < self.text.end:  # the last step is saved and evaluated by finish()
            if step % config.save_every == 0:  # saved first: an evaluation that fails loses nothing
                self.save(step)
            if config.eval_every and step % config.eval_every == 0:
                self.last_val = self.run_eval(step)

    def run_text(self, stop: StopRequest) -> None:
        config = self.train_config
        self.metrics_log = MetricsLog(self.run_dir, tensorboard=config.tensorboard, enabled=self.is_writer)
        self.metrics_log.truncate_after(self.start_step)
        self.display = ProgressDisplay(config.steps, self.start_step, enabled=self.show_progress)
        if self.start_step:
            self.display.note(f"resuming {self.run_dir} from step {self.start_step}")
        describe = getattr(self.trained_kind, "describe", None)
        if describe is not None:
            self.display.note(describe(self.state))
        self.tokens_per_step = config.batch_size * self.context
        self.tokens_this_session = 0
        self.flops_token = flops_per_token(self.model_config, self.context)
        self.peak, _ = peak_flops()
        phase = self.text_phase()
        self.step_times, self.iteration_times = [], []
        if self.stop_reason == "completed":
            self.step, self.stop_reason = self.loop(phase, self.start_step, stop)
            self.signal_name = stop.signal_name or "a signal to another process"
        else:  # the copy warm-up was stopped
            self.step = self.start_step

    # -- checkpoints and evaluation ------------------------------------------------------------------

    def save(self, step: int) -> None:
        kind, state = self.trained_kind, self.state
        meta = {"step": step, "rng": np.asarray(jax.random.key_data(jax.random.key(self.train_config.seed))).tolist(),
                "loader": {"seed": self.train_config.seed, "next_step": step}, "config_hash": self.identity_hash,
                "tokenizer_sha256": self.dataset.tokenizer_sha256,
                "config": {"model": self.run_config["model"], "train": self.run_config["train"]}}
        if kind.record() is not None:
            meta["lora"] = kind.record()
        if self.plan_decided and self.train_config.resolved_schedule == "wsd":
            meta["schedule"] = {**self.plan.to_dict(), "frozen": self.plan_frozen}  # a resume keeps the decay
        self.store.save(step, kind.model_params(state.params, state.frozen),
                        kind.resume_item(state.params, state.opt_state), meta)

    def run_eval(self, step: int) -> float:
        started = time.perf_counter()
        params = self.trained_kind.model_params(self.state.params, self.state.frozen)
        val_loss = evaluate_split(self.eval_step, params, self.val_split, self.train_config, self.context, self.mesh)
        self.eval_seconds = time.perf_counter() - started
        self.eval_total_s += self.eval_seconds
        self.metrics_log.write({"step": step, "val_loss": val_loss,
                                "val_ppl": math.exp(val_loss) if val_loss < 50 else float("inf"),
                                "elapsed_s": self.stopwatch.elapsed()})
        return val_loss

    # -- finish --------------------------------------------------------------------------------------

    def finish(self, resume_command: str) -> dict[str, Any]:
        """The final save and evaluation, the summary and the curves; returns the summary."""
        step, reason = self.step, self.stop_reason
        if step > 0 and (reason != "nan" or step > self.start_step):
            self.save(step)  # saved first: an evaluation that fails loses nothing
        if reason in ("completed", "time_budget") and self.train_config.eval_every and step > 0:
            self.last_val = self.run_eval(step)
        self.store.close()
        self.display.close()
        self.metrics_log.close()
        if reason == "signal" and step == 0:
            self.message = (f"stopped by {self.signal_name} before the first training step; nothing was saved; "
                            f"run the same command again to start over")
        elif reason == "signal":
            left, flag = self.resume_budget(self.stopwatch.left())
            note = f", {left} of its budget left" if flag else ""
            self.message = (f"stopped by {self.signal_name} at step {step}; checkpoint saved{note}; resume with: "
                            f"{resume_command}{flag}")
        elif reason == "time_budget":
            needed, flag = self.resume_budget(self.time_to_finish(step))
            self.message = (f"time budget of {self.train_config.time_budget_minutes:g} min reached at step {step} of "
                            f"{self.text.end}; checkpoint saved{'; the rest needs about ' + needed if needed else ''}; continue with: "
                            f"{resume_command}{flag}")
        summary = self.summary()
        if self.is_writer:
            write_json_atomic(self.run_dir / "summary.json", summary)
            plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png", title=str(self.run_dir))
            if self.message and reason != "nan":  # how to resume: printed even when the display is off
                print(self.message, flush=True)  # (a divergence is the caller's to report: the CLI's error line)
            if self.show_progress:
                val_text = f", val loss {self.last_val:.4f}" if self.last_val is not None else ""
                loss_text = f"train loss {self.last_loss:.4f}" if self.last_loss is not None else "no step"
                print(f"{self.run_dir}: {reason} at step {step} ({loss_text}{val_text}) in "
                      f"{summary['wall_time_s']:.1f} s, compile {self.compile_time_s:.1f} s", flush=True)
        return summary

    def time_to_finish(self, step: int) -> float:
        """Seconds the steps this run still plans (and their evaluations) take at its recent speed."""
        if not self.iteration_times:
            return float("nan")
        steps_left = max(self.text.end - step, 1)
        evaluations = (steps_left // self.train_config.eval_every + 1) if self.train_config.eval_every else 0
        return steps_left * self.recent_step_time() + evaluations * self.eval_seconds

    def resume_budget(self, seconds: float | None) -> tuple[str, str]:
        """('1.7 min', ' --time-budget 1.7') for a printed resume command: without the flag a resume
        takes the stored budget again, whole, and stops after the same minutes (or overspends it)."""
        if seconds is None or not math.isfinite(seconds) or self.train_config.time_budget_minutes is None:
            return "", ""
        minutes = max(0.1, math.ceil(seconds / 6) / 10)
        return f"{minutes:g} min", f" --time-budget {minutes:g}"

    def summary(self) -> dict[str, Any]:
        times, step = self.step_times, self.step
        warmup_file = self.run_dir / copy_warmup.COPY_WARMUP_FILE
        return {
            "steps": step,
            "target_steps": self.train_config.steps,
            "final_train_loss": self.last_loss,
            "final_val_loss": self.last_val,
            "tokens_seen": step * self.tokens_per_step,
            "tokens_this_session": self.tokens_this_session,
            "wall_time_s": self.stopwatch.elapsed(),
            "compile_time_s": self.compile_time_s,
            "mean_step_time_s": float(np.mean(times)) if times else None,
            "tokens_per_s": self.tokens_per_step / float(np.mean(times[1:] or times)) if times else None,
            "stop_reason": self.stop_reason,
            "devices": {"platform": self.mesh.devices.flat[0].platform, "count": int(self.mesh.devices.size),
                        "mesh": {axis: int(size) for axis, size in self.mesh.shape.items()}},
            "resumed_from_step": self.start_step or None,
            "copy_warmup": read_json(warmup_file) if warmup_file.exists() else None,
            "schedule": {"kind": self.train_config.resolved_schedule, "decided": self.plan_decided,
                         "frozen": self.plan_frozen,
                         **(self.plan.to_dict() if self.train_config.resolved_schedule == "wsd" else {})},
            "message": self.message,
        }


def train(
    train_config: TrainConfig,
    model_config: ModelConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    init_params: Any = None,
    init_from: str | None = None,
    trained_kind: Trained = FULL_TRAINING,
    resume: bool = False,
    show_progress: bool = True,
    resume_command: str | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train into `out_dir` (a new run, or the continuation of the one there); return the summary.

    `init_params` (with `init_from`, the run they came from) starts from given parameters with a
    fresh optimizer: fine-tuning. `trained_kind` says what is trained (all parameters, or LoRA
    adapters). `resume=True` insists that there is a run to continue. `record`: more sections for
    config.json (how the settings were chosen).
    """
    shard.initialize_distributed()
    enable_compilation_cache()
    trainer = Trainer(train_config, model_config, data_path, out_dir, init_params=init_params,
                      init_from=init_from, trained_kind=trained_kind, show_progress=show_progress)
    with RunLock(out_dir, enabled=trainer.is_writer):  # one writer per run, until the summary is written
        trainer.open_run(resume, record or {})
        trainer.restore_or_initialise()
        trainer.record_run()
        resume_command = resume_command or f"lumi train --out {out_dir} --data {data_path} --resume"
        try:
            with StopRequest() as stop:
                if trainer.needs_copy_warmup:
                    trainer.copy_warm_up(stop)
                trainer.run_text(stop)
            return trainer.finish(resume_command)
        except Exception as error:  # the loop, or the final save and evaluation: keep what can be kept
            replacement = failed_training(error, trainer.save_after_failure(error), resume_command)
            if replacement is error:
                raise
            raise replacement from error


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file-size limit (ulimit -f)


def full_disk_error(error: BaseException | None) -> OSError | None:
    """The full-disk OSError behind `error`, if any (an asynchronous save wraps it in its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in FULL_DISK:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def failed_training(error: Exception, where_it_stands: str, resume_command: str) -> Exception:
    """The exception to raise once the state is saved: a full disk is the user's to fix (one line,
    exit 2); anything else is re-raised as it was, after a line saying what was kept."""
    if isinstance(error, UserError):
        return UserError(f"{error}; {where_it_stands}")
    full_disk = full_disk_error(error)
    if full_disk is not None:
        place = f"{full_disk.filename}: " if full_disk.filename else ""
        return UserError(f"{place}the disk is full or a file-size limit was reached ({os.strerror(full_disk.errno)}) "
                         f"while training; {where_it_stands}; free some space, then resume with: {resume_command}")
    print(f"error: training failed ({type(error).__name__}); {where_it_stands}; after fixing the cause, resume "
          f"with: {resume_command}", file=sys.stderr, flush=True)
    return error


# ---------------------------------------------------------------------------------------------
# `lumi train`.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model: a name in config/architectures (micro, tiny, small, base) or a "
                        "JSON path; default tiny, or the run's own model when resuming")
    parser.add_argument("--data", required=True, help="a prepared dataset directory (lumi prepare), e.g. data/sample")
    parser.add_argument("--out", required=True, help="the run directory, e.g. runs/tiny; an existing run continues")
    parser.add_argument("--recipe", help="a training recipe: a name in config/recipes (quick, prototype, "
                        "experiment), a JSON path, or auto (model, vocabulary use, batch, lr and length chosen from "
                        "the data, --time-budget and this machine's speed); the flags below override it")
    parser.add_argument("--resume", action="store_true", help="insist on continuing the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_train_flags(parser)


def auto_recipe_for(args: argparse.Namespace, data_path: Path) -> tuple[ModelConfig, dict, dict]:
    """`--recipe auto`: the model and settings for this dataset and --time-budget (auto_recipe.py)."""
    if args.model:
        raise UserError("--recipe auto chooses the model itself; leave out --model (or use another recipe)")
    if args.time_budget_minutes is None:
        raise UserError("--recipe auto sizes the run to a time budget; give --time-budget MINUTES")
    meta = data_loader.TokenDataset(data_path).meta
    model_config, train_config, reasons = auto_recipe.choose(
        int(meta["train_bytes"]), 60 * args.time_budget_minutes, vocab_size=int(meta["vocab_size"]),
        bytes_per_token=float(meta["bytes_per_token"]), log=print)
    for name, reason in reasons.items():
        if name != "candidates":
            print(f"auto recipe: {name}: {reason}", flush=True)
    base = train_config.to_dict()
    args.time_budget_minutes = None  # measuring came out of the budget: the recipe's own budget stands
    return model_config, base, {"auto_recipe": reasons}


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.out)
    stored = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    record = None
    if args.model:
        model_config = load_model_config(args.model)
    elif stored is not None:
        model_config = model_config_from_dict(stored["model"], str(run_dir / "config.json"))
    else:
        model_config = load_model_config("tiny")
    data_path = Path(args.data)
    if data_path.exists() and not data_path.is_dir():
        raise UserError(f"{data_path}: is a file, not a dataset directory; give the directory lumi prepare wrote")
    if not data_path.is_dir():
        raise UserError(f"{data_path}: no such dataset directory; prepare one with: lumi prepare --out {data_path}")
    if args.recipe == "auto" and stored is None:
        model_config, base, record = auto_recipe_for(args, data_path)
    elif args.recipe:
        base = load_train_config(args.recipe).to_dict()
    elif stored is not None:
        base = dict(stored["train"])
        base.setdefault("schedule", "cosine")  # runs made before time-aware schedules keep their cosine
    else:
        base = TrainConfig().to_dict()
    train_config = train_config_from_flags(args, base, scale_warmup=stored is None)
    summary = train(train_config, model_config, data_path, run_dir, resume=args.resume, show_progress=not args.quiet,
                    record=record)
    if summary["stop_reason"] == "nan":
        raise UserError(summary["message"])
    return 0
