"""Training: the loss, the jitted step, the loop, and `lumi train`.

    batch ─► loss (weighted mean of −log p(target)) ─► grads ─► clip + AdamW ─► new state
             │ targets come from the loader already shifted: targets[t] is the token after
             │ inputs[t]; nothing here shifts again.

The step is one jitted function of (state, batch) with the state donated, compiled ahead of
time so compile time is measured apart from step time. Parameters stay float32 (the master
copy); the model computes in the config's dtype (bfloat16 for mixed precision). A step whose
loss or gradient is not finite leaves the state untouched and stops the loop, so the last good
state is what gets saved.

The loop never loses work: checkpoints every `save_every` steps, at the end, when the time
budget runs out and on SIGINT/SIGTERM; running again into the same directory resumes from the
latest good checkpoint and, on CPU, reproduces the uninterrupted run bit for bit (the loader is
a pure function of (seed, step), and the state is restored exactly).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint
from jax.sharding import NamedSharding, PartitionSpec

from lumi_jax import sharding as shard
from lumi_jax.checkpoint import CheckpointStore, abstract_with_shardings
from lumi_jax.config import (
    ModelConfig,
    TrainConfig,
    config_hash,
    load_model_config,
    load_train_config,
    model_config_from_dict,
    read_json,
    train_config_from_dict,
)
from lumi_jax.copy_warmup import COPY_WARMUP_FILE, warm_up
from lumi_jax.data import loader as data_loader
from lumi_jax.errors import UserError
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
from lumi_jax.model import example_segments, forward, init_params, param_shapes
from lumi_jax.optim import learning_rate_schedule, make_optimizer

# Settings that change what is computed: a resume must keep them, or it is a different run.
RESUME_LOCKED_FIELDS = ("batch_size", "grad_accum", "context", "lr", "warmup", "min_lr",
                        "weight_decay", "beta1", "beta2", "grad_clip", "seed", "dtype")


# ---------------------------------------------------------------------------------------------
# The loss, shared with evaluation.


def token_nats(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """−log p(target) at every position, in float32: logsumexp(logits) − logit[target]."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BTV, axis=-1) - target_logit_BT


def loss_sums(params, model_config: ModelConfig, inputs_BT, targets_BT, weights_BT, remat: bool = False,
              scored_limit: int | None = None, separate_examples: bool = False):
    """(Σ weights·nats, Σ weights): sums, so callers can aggregate batches exactly.

    `separate_examples`: the row holds BOS-led examples (instruction data) and each attends only
    to itself, as when it is asked alone; without it a question could read the previous
    example's names and numbers, answers a held-out question never has beside it.

    `scored_limit` N: no batch has more than N weighted targets (instruction data, where only
    answers count), so only those positions go through the head and the softmax. The sums are
    the same; the caller guarantees the bound (see data/loader.py: max_window_targets).
    """
    weights_BT = jnp.asarray(weights_BT, jnp.float32)
    segments_BT = example_segments(inputs_BT) if separate_examples else None
    if scored_limit is None:
        logits_BTV = forward(model_config, params, inputs_BT, remat=remat, segments_BT=segments_BT)
        return jnp.sum(token_nats(logits_BTV, targets_BT) * weights_BT), jnp.sum(weights_BT)
    weights_M, targets_M = weights_BT.reshape(-1), jnp.asarray(targets_BT).reshape(-1)
    (scored_N,) = jnp.nonzero(weights_M > 0, size=scored_limit, fill_value=0)
    in_use_N = jnp.arange(scored_limit) < jnp.sum(weights_M > 0)  # the fill repeats position 0
    logits_NV = forward(model_config, params, inputs_BT, remat=remat, scored_N=scored_N, segments_BT=segments_BT)
    nats_N = token_nats(logits_NV, targets_M[scored_N])
    return jnp.sum(nats_N * jnp.where(in_use_N, weights_M[scored_N], 0.0)), jnp.sum(weights_M)


def make_eval_step(model_config: ModelConfig, separate_examples: bool = False):
    """A jitted fn(params, inputs, targets, weights) -> (Σ nats, Σ weights) for evaluation."""
    return jax.jit(lambda params, inputs, targets, weights: loss_sums(
        params, model_config, inputs, targets, weights, separate_examples=separate_examples))


# ---------------------------------------------------------------------------------------------
# The state and the step.


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any  # float32 master parameters
    opt_state: Any


def make_train_step(model_config: ModelConfig, train_config: TrainConfig, optimizer, mesh,
                    window_target_limit: int | None = None, separate_examples: bool = False):
    """fn(state, batch) -> (state, metrics): one update over the global batch.

    `window_target_limit`: the most weighted targets any training window holds, when that is
    well under the window (instruction data): the loss then runs the head on those only.
    `separate_examples`: packed instruction examples do not attend to each other (loss_sums).
    """
    accum = train_config.grad_accum
    scored_limit = None if window_target_limit is None else window_target_limit * (train_config.batch_size // accum)
    schedule = learning_rate_schedule(train_config)
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, shard.BATCH_AXES))

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        # Dividing each micro-batch's Σ nats by the WHOLE batch's weight makes the summed
        # gradients exactly those of the weighted mean over the batch, however it is split.
        total_weight = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)

        def micro_loss(params, inputs, targets, weights):
            nats, _ = loss_sums(params, model_config, inputs, targets, weights, train_config.remat, scored_limit,
                                separate_examples)
            return nats / total_weight

        grad_fn = jax.value_and_grad(micro_loss)
        if accum == 1:
            loss, grads = grad_fn(state.params, batch["inputs"], batch["targets"], batch["weights"])
        else:
            def to_micro(x_BT):
                # Row i·K + k goes to micro-batch k: each device's rows stay on that device.
                B, T = x_BT.shape
                x_KMT = x_BT.reshape(B // accum, accum, T).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x_KMT, micro_sharding)

            def accumulate(carry, micro):
                loss_sum, grad_sum = carry
                loss, grads = grad_fn(state.params, *micro)
                return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            micro_batches = tuple(to_micro(batch[name]) for name in ("inputs", "targets", "weights"))
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.float32(0), zeros), micro_batches)

        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updated = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite step changes nothing, so the state stays the last good one.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": finite}
        return new_state, metrics

    return train_step


def jit_train_step(model_config, train_config, optimizer, mesh, state_shardings, window_target_limit=None,
                   separate_examples=False):
    """The step as training runs it: placed by the sharding rule, the state donated."""
    return jax.jit(make_train_step(model_config, train_config, optimizer, mesh, window_target_limit,
                                   separate_examples),
                   in_shardings=(state_shardings, shard.batch_sharding(mesh)),
                   out_shardings=(state_shardings, shard.replicated(mesh)),
                   donate_argnums=0)


def new_state(params, optimizer) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def initial_state(model_config, train_config, optimizer, mesh, given_params=None):
    """A fresh state placed by the sharding rule: new parameters, or `given_params` (fine-tuning)."""
    abstract = jax.eval_shape(lambda: new_state(init_params(model_config, jax.random.key(0)), optimizer))
    shardings = shard.state_shardings(abstract, mesh)
    if given_params is None:
        seed = train_config.seed
        make = jax.jit(lambda: new_state(init_params(model_config, jax.random.key(seed)), optimizer),
                       out_shardings=shardings)
        return make(), shardings
    expected = jax.tree.map(lambda leaf: (leaf.shape, str(leaf.dtype)), abstract.params)
    given = jax.tree.map(lambda leaf: (tuple(leaf.shape), str(jnp.asarray(leaf).dtype)), given_params)
    if jax.tree.structure(expected) != jax.tree.structure(given) or expected != given:
        raise UserError(
            f"init params do not fit the model '{model_config.name}' (different shapes or names); "
            "fine-tune with the model config the params were trained with"
        )
    params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), given_params),
                            shardings.params)
    make = jax.jit(lambda p: new_state(p, optimizer), out_shardings=shardings)
    return make(params), shardings


# ---------------------------------------------------------------------------------------------
# The run directory.


def enable_compilation_cache() -> None:
    """Keep compiled steps on disk, so a resumed or repeated run skips XLA compilation.

    On a laptop CPU compiling even the micro model's step takes seconds (tiny's, tens of
    seconds); with the cache a second run with the same shapes starts at once. The directory is
    $LUMI_COMPILE_CACHE, or ~/.cache/lumi_jax/xla; LUMI_COMPILE_CACHE=off disables it, and a
    directory already chosen through JAX's own settings is left alone.
    """
    choice = os.environ.get("LUMI_COMPILE_CACHE", "")
    if choice == "off" or jax.config.jax_compilation_cache_dir:
        return
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = Path(choice) if choice else cache_home / "lumi_jax" / "xla"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only home: compile every time rather than fail
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        lumi_version = version("lumi-jax")
    except PackageNotFoundError:
        lumi_version = "unknown"
    return {"lumi_jax": lumi_version, "python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "orbax": orbax.checkpoint.__version__}


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def run_identity_hash(model_config: ModelConfig, train_config: TrainConfig) -> str:
    """What a checkpoint must belong to: the model's shape and the settings that change the math."""
    model = {k: v for k, v in model_config.to_dict().items() if k != "description"}
    return config_hash({"model": model, "train": {f: getattr(train_config, f) for f in RESUME_LOCKED_FIELDS}})


def check_resume_matches(stored: dict, model_config: ModelConfig, train_config: TrainConfig,
                         dataset, run_dir: Path) -> None:
    """Refuse to continue a run with a different model, data, tokenizer or optimisation."""
    source = run_dir / "config.json"
    stored_model = dict(stored.get("model", {}))
    wanted_model = model_config.to_dict()
    for ignored in ("dtype", "description"):  # compute dtype is a training setting, checked below
        stored_model.pop(ignored, None)
        wanted_model.pop(ignored, None)
    if stored_model != wanted_model:
        changed = sorted(k for k in set(stored_model) | set(wanted_model) if stored_model.get(k) != wanted_model.get(k))
        raise UserError(
            f"{source}: the run was trained with a different model config ({', '.join(changed)} differ); "
            "resume with the run's own model, or train into a new --out directory"
        )
    stored_data = stored.get("data", {})
    if stored_data.get("tokenizer_sha256") != dataset.tokenizer_sha256:
        raise UserError(
            f"{source}: the run's tokenizer differs from the dataset's ({dataset.tokenizer_path}); "
            f"resume with the run's data ({stored_data.get('path')}), or train into a new --out directory"
        )
    if data_identity(stored_data.get("meta") or {}) != data_identity(json.loads(json.dumps(dataset.meta))):
        raise UserError(
            f"{source}: the run was trained on different data ({stored_data.get('path')}); "
            "resume with the same dataset, or train into a new --out directory"
        )
    stored_train = stored.get("train", {})
    for field in RESUME_LOCKED_FIELDS:
        if stored_train.get(field) != getattr(train_config, field):
            raise UserError(
                f"{source}: the run was trained with {field}={json.dumps(stored_train.get(field))}, "
                f"not {json.dumps(getattr(train_config, field))}; resume with the same setting, "
                "or train into a new --out directory"
            )


def data_identity(meta: dict) -> dict:
    """The fields of a dataset's meta.json that say what the data is (not when or how fast)."""
    return {key: value for key, value in meta.items() if key != "created" and not key.endswith("_seconds")}


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
    return dataset


def put_global(arrays: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Place a batch that every process holds whole (validation) on the batch sharding."""
    sharding = shard.batch_sharding(mesh)
    return {name: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
            for name, value in arrays.items()}


def evaluate_split(eval_step, params, split, train_config: TrainConfig, context: int, mesh) -> float:
    nats, count = 0.0, 0.0
    batches = data_loader.validation_batches(split, batch_size=train_config.batch_size, context=context,
                                             max_batches=train_config.eval_batches)
    for batch in batches:  # full shape always (the loader pads with weight 0): one compilation
        placed = put_global({"inputs": batch.inputs, "targets": batch.targets, "weights": batch.weights}, mesh)
        batch_nats, batch_count = eval_step(params, placed["inputs"], placed["targets"], placed["weights"])
        nats += float(batch_nats)
        count += float(batch_count)
    return nats / count if count else float("nan")


# ---------------------------------------------------------------------------------------------
# The loop.


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop finishes its step, saves and exits cleanly."""

    def __init__(self):
        self.signal_name: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        if threading_is_main():
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


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(
    train_config: TrainConfig,
    model_config: ModelConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    init_params: Any = None,
    init_from: str | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train into `out_dir` (a new run, or the continuation of the one there); return the summary.

    `init_params` (with `init_from`, the run they came from) starts from given parameters with a
    fresh optimizer: fine-tuning. `resume=True` insists that there is a run to continue.
    """
    shard.initialize_distributed()
    enable_compilation_cache()
    is_writer = jax.process_index() == 0
    stopwatch = Stopwatch(train_config.time_budget_minutes)
    train_config.validate("train config")
    model_config.validate(f"model '{model_config.name}'")
    model_config = dataclasses.replace(model_config, dtype=train_config.dtype)
    context = train_config.context or model_config.max_seq_len
    data_path, run_dir = Path(data_path), Path(out_dir)
    dataset = open_dataset(data_path, model_config, context)
    for split_name in ("train", "val") if train_config.eval_every else ("train",):
        if len(dataset.split(split_name)) < context + 1:
            raise UserError(
                f"{data_path}: the {split_name} split has {len(dataset.split(split_name))} tokens, fewer than one "
                f"window of context {context} + 1; prepare more text, or train with a shorter --context"
                + (" (or --eval-every 0)" if split_name == "val" else "")
            )
    if train_config.tensorboard:
        tensorboard_writer_class()  # a missing package is found before anything is written

    mesh = shard.make_mesh(train_config.mesh_data, train_config.mesh_fsdp)
    shard.check_batch_divides(train_config.batch_size, train_config.grad_accum, mesh)
    if train_config.batch_size % jax.process_count():
        raise UserError(f"batch_size {train_config.batch_size} does not divide among {jax.process_count()} hosts; "
                        f"use a multiple of {jax.process_count()}")

    # The run directory: new, or an existing run to continue.
    config_path = run_dir / "config.json"
    existing = config_path.exists()
    if existing:
        stored = read_json(config_path)
        check_resume_matches(stored, model_config, train_config, dataset, run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: exists and is not a lumi run (no config.json); choose a new or empty --out")
    elif resume:
        raise UserError(f"{run_dir}: no run to resume (no config.json); drop --resume to start a new run there")
    if resume and not any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*")):
        raise UserError(f"{run_dir}: has no checkpoint to resume from; drop --resume to start it again")
    run_config = {
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": {"path": str(data_path), "tokenizer_sha256": dataset.tokenizer_sha256, "meta": dataset.meta},
        "versions": versions(),
        "init_from": init_from if not existing else stored.get("init_from"),
    }
    if jax.process_count() > 1:  # every host has decided new-or-resume before host 0 writes
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("lumi train: run directory checked")
    if is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config_path, run_config)  # on resume: the new steps / budget, same identity
        if not (run_dir / "tokenizer.model").exists():
            shutil.copyfile(dataset.tokenizer_path, run_dir / "tokenizer.model")

    optimizer = make_optimizer(train_config)
    identity_hash = run_identity_hash(model_config, train_config)

    abstract_state = jax.eval_shape(lambda params: new_state(params, optimizer), param_shapes(model_config))
    state_shardings = shard.state_shardings(abstract_state, mesh)
    store = CheckpointStore(run_dir / "checkpoints", keep=train_config.keep_checkpoints)
    restored = store.restore_latest_good(
        abstract_with_shardings(abstract_state.params, state_shardings.params),
        abstract_with_shardings(abstract_state.opt_state, state_shardings.opt_state),
    )
    if is_writer:
        for moved in store.set_aside_unreadable(run_dir / "checkpoints_unreadable"):
            print(f"moved the unreadable checkpoint to {moved}; training continues from the one before",
                  file=sys.stderr, flush=True)
    if restored is None:
        start_step = 0
        state, _ = initial_state(model_config, train_config, optimizer, mesh, init_params)
        if train_config.copy_warmup_steps and init_params is None:
            fresh_params = state.params
            del state  # its optimizer state would sit in memory beside the warm-up's own
            warm_params, copy_warmup = warm_up(fresh_params, model_config, train_config, context, mesh,
                                               log=lambda line: print(line, flush=True) if is_writer and show_progress else None)
            state, _ = initial_state(model_config, train_config, optimizer, mesh, warm_params)
            if is_writer:
                write_json_atomic(run_dir / COPY_WARMUP_FILE, copy_warmup)
    else:
        meta = restored["meta"]
        if meta.get("tokenizer_sha256") != dataset.tokenizer_sha256 or meta.get("config_hash") != identity_hash:
            raise UserError(f"{run_dir}: the checkpoint at step {meta.get('step')} belongs to another "
                            "configuration; train into a new --out directory")
        start_step = int(meta["step"])
        state = TrainState(step=jax.device_put(jnp.int32(start_step), state_shardings.step),
                           params=restored["params"], opt_state=restored["opt_state"])

    metrics_log = MetricsLog(run_dir, tensorboard=train_config.tensorboard, enabled=is_writer)
    metrics_log.truncate_after(start_step)
    display = ProgressDisplay(train_config.steps, start_step, enabled=show_progress and is_writer)
    if start_step:
        display.note(f"resuming {run_dir} from step {start_step}")

    # Compile once, ahead of time, so compile time is never mistaken for step time.
    rows = train_config.batch_size // jax.process_count()
    batch_spec = {name: jax.ShapeDtypeStruct((train_config.batch_size, context), dtype,
                                             sharding=shard.batch_sharding(mesh))
                  for name, dtype in (("inputs", jnp.int32), ("targets", jnp.int32), ("weights", jnp.float32))}
    train_split, val_split = dataset.split("train"), dataset.split("val")
    target_limit = data_loader.max_window_targets(train_split, context)
    if target_limit is not None and target_limit > context // 2:
        target_limit = None  # most positions count: the full head is as cheap
    separate_examples = train_split.example_starts is not None  # instruction data: BOS-led examples
    step_fn = jit_train_step(model_config, train_config, optimizer, mesh, state_shardings, target_limit,
                             separate_examples)
    compile_started = time.perf_counter()
    compiled_step = step_fn.lower(jax.eval_shape(lambda: state), batch_spec).compile()
    eval_step = make_eval_step(model_config, separate_examples)
    compile_time_s = time.perf_counter() - compile_started

    tokens_per_step = train_config.batch_size * context
    flops_token = flops_per_token(model_config, context)
    peak, _peak_how = peak_flops()
    rng_data = np.asarray(jax.random.key_data(jax.random.key(train_config.seed))).tolist()

    def load_batch(step: int) -> dict[str, jax.Array]:
        batch = data_loader.train_batch(
            train_split, seed=train_config.seed, step=step, batch_size=train_config.batch_size,
            context=context, process_index=jax.process_index(), process_count=jax.process_count())
        arrays = {"inputs": batch.inputs, "targets": batch.targets, "weights": batch.weights}
        assert arrays["inputs"].shape == (rows, context), "the loader returned a batch of another shape"
        assert target_limit is None or (batch.weights > 0).sum(axis=1).max() <= target_limit, \
            "a window holds more answer tokens than the bound the step was compiled for"
        return shard.put_batch(arrays, mesh)

    def save(step: int) -> None:
        meta = {"step": step, "rng": rng_data, "loader": {"seed": train_config.seed, "next_step": step},
                "config_hash": identity_hash, "tokenizer_sha256": dataset.tokenizer_sha256,
                "config": {"model": run_config["model"], "train": run_config["train"]}}
        store.save(step, state.params, state.opt_state, meta)

    eval_seconds = [0.0]  # the last evaluation's duration, kept back from the time budget

    def run_eval(step: int) -> float:
        started = time.perf_counter()
        val_loss = evaluate_split(eval_step, state.params, val_split, train_config, context, mesh)
        eval_seconds[0] = time.perf_counter() - started
        metrics_log.write({"step": step, "val_loss": val_loss,
                           "val_ppl": math.exp(val_loss) if val_loss < 50 else float("inf"),
                           "elapsed_s": stopwatch.elapsed()})
        return val_loss

    def saved_note(good_step: int) -> str:
        if good_step == 0:
            return "no step succeeded, so there is no checkpoint"
        return f"the last good state (step {good_step}) is saved"

    step = start_step
    stop_reason = "completed"
    message = ""
    last_loss = last_val = None
    step_times: list[float] = []
    tokens_seen_now = 0
    next_batch = load_batch(step) if step < train_config.steps else None
    with StopRequest() as stop:
        while step < train_config.steps:
            started = time.perf_counter()
            state, metrics = compiled_step(state, next_batch)
            # Prepare the next batch on the host while the device computes this step.
            next_batch = load_batch(step + 1) if step + 1 < train_config.steps else None
            loss, grad_norm, lr, finite = (float(metrics["loss"]), float(metrics["grad_norm"]),
                                           float(metrics["lr"]), bool(metrics["finite"]))
            step_time = time.perf_counter() - started
            if not finite:
                stop_reason = "nan"
                message = (f"training diverged at step {step + 1}: loss {loss:.4g}, gradient norm {grad_norm:.4g} "
                           f"(lr {lr:.3g}); {saved_note(step)}; lower --lr "
                           f"(now {train_config.lr:g}) or lengthen --warmup, and train into a new --out")
                break
            step += 1
            last_loss = loss
            tokens_seen_now += tokens_per_step
            step_times.append(step_time)
            if step % train_config.log_every == 0 or step == train_config.steps or step == start_step + 1:
                recent = step_times[-train_config.log_every:]
                tokens_per_s = tokens_per_step / (sum(recent) / len(recent))
                record = {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr,
                          "tokens_per_s": tokens_per_s, "step_time_s": step_time,
                          "mfu": flops_token * tokens_per_s / peak if peak else None,
                          "tokens": step * tokens_per_step, "elapsed_s": stopwatch.elapsed()}
                metrics_log.write(record)
                eta = (train_config.steps - step) * sum(recent) / len(recent)
                display.update(record, train_config.steps, stopwatch.left(), eta)
            if train_config.eval_every and step % train_config.eval_every == 0 and step < train_config.steps:
                last_val = run_eval(step)
            if step % train_config.save_every == 0 and step < train_config.steps:
                save(step)
            if stop.signal_name is not None:
                stop_reason = "signal"
                break
            # Stop while there is still time for one more step and the final evaluation.
            budget_left = stopwatch.left()
            if budget_left is not None and budget_left < step_times[-1] + eval_seconds[0]:
                stop_reason = "time_budget"
                break

    if stop_reason in ("completed", "time_budget") and train_config.eval_every:
        last_val = run_eval(step)
    if step > 0 and (stop_reason != "nan" or step > start_step):
        save(step)
    store.close()
    display.close()
    metrics_log.close()

    if stop_reason == "signal":
        message = (f"stopped by {stop.signal_name} at step {step}; checkpoint saved; resume with: "
                   f"lumi train --out {run_dir} --data {data_path} --resume")
    elif stop_reason == "time_budget":
        message = (f"time budget of {train_config.time_budget_minutes:g} min reached at step {step}; "
                   f"checkpoint saved; continue with: lumi train --out {run_dir} --data {data_path} --resume")
    summary = {
        "steps": step,
        "target_steps": train_config.steps,
        "final_train_loss": last_loss,
        "final_val_loss": last_val,
        "tokens_seen": step * tokens_per_step,
        "tokens_this_session": tokens_seen_now,
        "wall_time_s": stopwatch.elapsed(),
        "compile_time_s": compile_time_s,
        "mean_step_time_s": float(np.mean(step_times)) if step_times else None,
        "tokens_per_s": tokens_per_step / float(np.mean(step_times[1:] or step_times)) if step_times else None,
        "stop_reason": stop_reason,
        "resumed_from_step": start_step or None,
        "copy_warmup": read_json(run_dir / COPY_WARMUP_FILE) if (run_dir / COPY_WARMUP_FILE).exists() else None,
        "message": message,
    }
    if is_writer:
        write_json_atomic(run_dir / "summary.json", summary)
        plot_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "curves.png", title=str(run_dir))
        if message and stop_reason != "nan":  # how to resume: printed even when the display is off
            print(message, flush=True)  # (a divergence is the caller's to report: the CLI's error line)
        if show_progress:
            val_text = f", val loss {last_val:.4f}" if last_val is not None else ""
            loss_text = f"train loss {last_loss:.4f}" if last_loss is not None else "no step"
            print(f"{run_dir}: {stop_reason} at step {step} ({loss_text}{val_text}) in "
                  f"{summary['wall_time_s']:.1f} s, compile {compile_time_s:.1f} s", flush=True)
    return summary


# ---------------------------------------------------------------------------------------------
# `lumi train`.

FLAG_FIELDS = {  # flag -> TrainConfig field (flags override the recipe)
    "steps": "steps", "batch_size": "batch_size", "grad_accum": "grad_accum", "context": "context",
    "lr": "lr", "warmup": "warmup", "min_lr": "min_lr", "weight_decay": "weight_decay", "seed": "seed",
    "copy_warmup_steps": "copy_warmup_steps",
    "time_budget": "time_budget_minutes", "save_every": "save_every", "eval_every": "eval_every",
    "log_every": "log_every", "keep": "keep_checkpoints",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model: a name in config/architectures (micro, tiny, small, base) or a "
                        "JSON path; default tiny, or the run's own model when resuming")
    parser.add_argument("--data", required=True, help="a prepared dataset directory (lumi prepare), e.g. data/sample")
    parser.add_argument("--out", required=True, help="the run directory, e.g. runs/tiny; an existing run continues")
    parser.add_argument("--recipe", help="a training recipe: a name in config/recipes (quick, prototype, "
                        "experiment) or a JSON path; the flags below override it")
    parser.add_argument("--steps", type=int, help="optimizer updates")
    parser.add_argument("--batch-size", type=int, help="sequences per update over all devices")
    parser.add_argument("--grad-accum", type=int, help="split each batch into this many micro-batches")
    parser.add_argument("--context", type=int, help="tokens per sequence (default: the model's max_seq_len)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup", type=int, help="linear warmup steps")
    parser.add_argument("--min-lr", type=float, help="learning-rate floor at the last step")
    parser.add_argument("--copy-warmup-steps", type=int, help="a fresh run first trains this many steps on "
                        "synthetic copying, so attention learns to read back (lumi_jax/copy_warmup.py)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (matrices only)")
    parser.add_argument("--seed", type=int, help="initialisation and data-order seed")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop cleanly and save after this long")
    parser.add_argument("--save-every", type=int, help="checkpoint interval in steps")
    parser.add_argument("--eval-every", type=int, help="validation interval in steps (0: no validation)")
    parser.add_argument("--log-every", type=int, help="metrics interval in steps")
    parser.add_argument("--keep", type=int, help="checkpoints to keep")
    parser.add_argument("--dtype", choices=("bf16", "fp32", "bfloat16", "float32"), help="compute dtype")
    parser.add_argument("--remat", action="store_true", default=None, help="recompute activations in the backward pass")
    parser.add_argument("--mesh", help="device mesh, e.g. data=4 or data=2,fsdp=2 (default: all devices on data)")
    parser.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard logs")
    parser.add_argument("--resume", action="store_true", help="insist on continuing the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def train_config_from_args(args: argparse.Namespace, stored: dict | None) -> TrainConfig:
    """Recipe (or the run's own settings when resuming) overridden by the flags given."""
    if args.recipe:
        base = load_train_config(args.recipe).to_dict()
    elif stored is not None:
        base = dict(stored["train"])
    else:
        base = TrainConfig().to_dict()
    for flag, field in FLAG_FIELDS.items():
        value = getattr(args, flag, None)  # `lumi sft` has no --copy-warmup-steps: it never warms up
        if value is not None:
            base[field] = value
    if args.dtype:
        base["dtype"] = {"bf16": "bfloat16", "fp32": "float32"}.get(args.dtype, args.dtype)
    if args.remat is not None:
        base["remat"] = args.remat
    if args.tensorboard is not None:
        base["tensorboard"] = args.tensorboard
    if args.mesh:
        base["mesh_data"], base["mesh_fsdp"] = shard.parse_mesh_spec(args.mesh)
    return train_config_from_dict(base, "command line")


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.out)
    stored = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    if args.model:
        model_config = load_model_config(args.model)
    elif stored is not None:
        model_config = model_config_from_dict(stored["model"], str(run_dir / "config.json"))
    else:
        model_config = load_model_config("tiny")
    data_path = Path(args.data)
    if not data_path.is_dir():
        raise UserError(f"{data_path}: no such dataset directory; prepare one with: lumi prepare --out {data_path}")
    train_config = train_config_from_args(args, stored)
    summary = train(train_config, model_config, data_path, run_dir, resume=args.resume, show_progress=not args.quiet)
    if summary["stop_reason"] == "nan":
        raise UserError(summary["message"])
    return 0
