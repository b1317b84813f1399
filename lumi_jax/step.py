"""One optimisation step: the loss, the train state, what is trained, and the jitted steps.

    batch ─► logits ─► loss (weighted mean of −log p(target)) ─► grads ─► clip + AdamW ─► new state
             │ targets come from the loader already shifted: targets[t] is the token after
             │ inputs[t]; nothing here shifts again.

One loss function (`loss_sums`) serves training and evaluation. What is trained is a small
object (nanodo's "loss factory"): `FullTraining` trains every parameter; `lora.LoraTraining`
trains low-rank adapters beside a frozen base. Both plug into the same step and the same loop
(train.py), so accumulation, sharding, the divergence guard and checkpoints work for either.

The step is one jitted function of (state, batch) with the state donated. Parameters stay
float32 (the master copy); the model computes in the config's dtype. A step whose loss or
gradient is not finite leaves the state untouched, so the last good state is what gets saved.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from lumi_jax import sharding as shard
from lumi_jax.config import ModelConfig, TrainConfig
from lumi_jax.errors import UserError
from lumi_jax.model import forward, fused_head_chunk, init_params, token_nats
from lumi_jax.optim import learning_rate_schedule, make_optimizer

BATCH_FIELDS = ("inputs", "targets", "weights")  # plus "segments" for packed instruction examples


# ---------------------------------------------------------------------------------------------
# The loss, shared with evaluation.


def model_logits(model_config: ModelConfig, params, tokens_BT, **options) -> jax.Array:
    """The plain model's logits: `logits_fn` for everything that is not LoRA."""
    return forward(model_config, params, tokens_BT, **options)


def loss_sums(params, model_config: ModelConfig, batch: dict, *, remat: str = "off",
              scored_limit: int | None = None, per_row: bool = False, logits_fn=model_logits,
              head_chunk: int | None = None):
    """(Σ weights·nats, Σ weights): sums, so callers can aggregate batches exactly.

    `batch` holds inputs, targets, weights and, for packed instruction examples, segments: each
    example then attends only to itself, as when it is asked alone.
    `per_row`: sums per row (B,), for evaluation's per-window spread.
    `scored_limit` N: no batch has more than N weighted targets (instruction data, where only
    answers count), so only those positions go through the head and the softmax. The sums are
    the same; the caller guarantees the bound (see data/loader.py: max_window_targets).
    `logits_fn(model_config, params, tokens_BT, remat=, scored_N=, segments_BT=, targets_BT=,
    head_chunk=)`: what computes the logits (the plain model, or the model with LoRA adapters).
    `head_chunk`: positions per chunk of the fused head and loss (model.fused_head_nats), 0 for
    the plain head; None decides by the size of the logits (model.fused_head_chunk).
    """
    inputs_BT, targets_BT = batch["inputs"], batch["targets"]
    weights_BT = jnp.asarray(batch["weights"], jnp.float32)
    segments_BT = batch.get("segments")
    if scored_limit is None:
        if head_chunk is None:
            head_chunk = fused_head_chunk(model_config, *inputs_BT.shape)
        if head_chunk:
            nats_BT = logits_fn(model_config, params, inputs_BT, remat=remat, segments_BT=segments_BT,
                                targets_BT=targets_BT, head_chunk=head_chunk)
        else:
            nats_BT = token_nats(logits_fn(model_config, params, inputs_BT, remat=remat, segments_BT=segments_BT),
                                 targets_BT)
        weighted_BT = nats_BT * weights_BT
        axis = -1 if per_row else None
        return jnp.sum(weighted_BT, axis=axis), jnp.sum(weights_BT, axis=axis)
    weights_M, targets_M = weights_BT.reshape(-1), jnp.asarray(targets_BT).reshape(-1)
    (scored_N,) = jnp.nonzero(weights_M > 0, size=scored_limit, fill_value=0)
    in_use_N = jnp.arange(scored_limit) < jnp.sum(weights_M > 0)  # the fill repeats position 0
    logits_NV = logits_fn(model_config, params, inputs_BT, remat=remat, scored_N=scored_N, segments_BT=segments_BT)
    nats_N = token_nats(logits_NV, targets_M[scored_N])
    return jnp.sum(nats_N * jnp.where(in_use_N, weights_M[scored_N], 0.0)), jnp.sum(weights_M)


def make_eval_step(model_config: ModelConfig, per_row: bool = False):
    """A jitted fn(params, batch) -> (Σ nats, Σ weights) for evaluation of the model's parameters."""
    return jax.jit(lambda params, batch: loss_sums(params, model_config, batch, per_row=per_row))


# ---------------------------------------------------------------------------------------------
# What is trained.


class Trained(Protocol):
    """What a run trains. `trained` is the pytree the optimizer updates; `frozen` what stays fixed."""

    def start(self, params: Any, seed: int) -> tuple[Any, Any]:
        """(trained, frozen) at step 0, from the model parameters the run starts from."""

    def logits_fn(self, frozen: Any):
        """fn(model_config, trained, tokens_BT, **options) -> logits, closing over `frozen`."""

    def model_params(self, trained: Any, frozen: Any) -> Any:
        """The model's parameters (what evaluation and checkpoints' `params` item hold)."""

    def resume_item(self, trained: Any, opt_state: Any) -> Any:
        """What a checkpoint keeps beside `params` to resume this exactly."""

    def from_resume_item(self, params: Any, item: Any) -> tuple[Any, Any]:
        """(trained, opt_state) back from a checkpoint's params and resume item."""

    def record(self) -> dict | None:
        """What goes in config.json (None for full training)."""


@dataclasses.dataclass(frozen=True)
class FullTraining:
    """Every parameter is trained; a checkpoint holds the parameters and the optimizer state."""

    def start(self, params, seed):
        return params, None

    def logits_fn(self, frozen):
        return model_logits

    def model_params(self, trained, frozen):
        return trained

    def resume_item(self, trained, opt_state):
        return opt_state

    def from_resume_item(self, params, item):
        return params, item

    def record(self):
        return None


FULL_TRAINING = FullTraining()


# ---------------------------------------------------------------------------------------------
# The state and the step.


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any  # float32: what is trained (the model's parameters, or LoRA adapters)
    opt_state: Any
    frozen: Any = None  # float32 parameters that stay fixed (LoRA's base model); None otherwise
    # Set by the first non-finite update, and then every later update changes nothing: the loop
    # reads the metrics only every few steps, and the state it finds is still the last good one.
    diverged: jax.Array | bool = False


def new_state(trained, optimizer, frozen=None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=trained, opt_state=optimizer.init(trained),
                      frozen=frozen, diverged=jnp.zeros((), bool))


def check_params_fit(model_config: ModelConfig, abstract_params, given_params) -> None:
    expected = jax.tree.map(lambda leaf: (tuple(leaf.shape), str(leaf.dtype)), abstract_params)
    given = jax.tree.map(lambda leaf: (tuple(leaf.shape), str(jnp.asarray(leaf).dtype)), given_params)
    if jax.tree.structure(expected) != jax.tree.structure(given) or expected != given:
        raise UserError(
            f"init params do not fit the model '{model_config.name}' (different shapes or names); "
            "fine-tune with the model config the params were trained with"
        )


def initial_state(model_config, train_config, optimizer, mesh, given_params=None,
                  trained_kind: Trained = FULL_TRAINING):
    """A fresh state placed by the sharding rule: new parameters (seeded by the config), or
    `given_params` (fine-tuning), started as `trained_kind` says. Returns (state, shardings)."""
    seed = train_config.seed

    def make_state(params):
        trained, frozen = trained_kind.start(params, seed)
        return new_state(trained, optimizer, frozen)

    abstract_params = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
    shardings = shard.state_shardings(jax.eval_shape(make_state, abstract_params), mesh)
    if given_params is None:
        make = jax.jit(lambda: make_state(init_params(model_config, jax.random.key(seed))), out_shardings=shardings)
        return make(), shardings
    check_params_fit(model_config, abstract_params, given_params)
    # On the host first: parameters already placed on one device (a run loaded before the mesh
    # grew to every core) would otherwise clash with the state's placement over the whole mesh.
    params = jax.tree.map(lambda x: np.asarray(x, np.float32) if getattr(x, "is_fully_addressable", True)
                          else jnp.asarray(x, jnp.float32), given_params)
    return jax.jit(make_state, out_shardings=shardings)(params), shardings


def make_train_step(model_config: ModelConfig, train_config: TrainConfig, mesh,
                    window_target_limit: int | None = None, trained_kind: Trained = FULL_TRAINING):
    """fn(state, batch, plan=None) -> (state, metrics): one update over the global batch.

    `plan`: where a WSD schedule decays ({"decay_start", "decay_end"} int32 arrays; see optim.py);
    None means over the config's steps. The optimizer is built around it here, at trace time.
    `window_target_limit`: the most weighted targets any training window holds, when that is
    well under the window (instruction data): the loss then runs the head on those only.
    """
    accum = train_config.grad_accum
    scored_limit = None if window_target_limit is None else window_target_limit * (train_config.batch_size // accum)
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, shard.BATCH_AXES))

    def train_step(state: TrainState, batch: dict[str, jax.Array], plan: dict | None = None):
        optimizer = make_optimizer(train_config, plan)
        schedule = learning_rate_schedule(train_config, plan)
        # Dividing each micro-batch's Σ nats by the WHOLE batch's weight makes the summed
        # gradients exactly those of the weighted mean over the batch, however it is split.
        total_weight = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)
        logits_fn = trained_kind.logits_fn(state.frozen)

        def micro_loss(trained, micro_batch):
            nats, _ = loss_sums(trained, model_config, micro_batch, remat=train_config.remat,
                                scored_limit=scored_limit, logits_fn=logits_fn)
            return nats / total_weight

        grad_fn = jax.value_and_grad(micro_loss)
        if accum == 1:
            loss, grads = grad_fn(state.params, batch)
        else:
            def to_micro(x_BT):
                # Row i·K + k goes to micro-batch k: each device's rows stay on that device.
                B, T = x_BT.shape
                x_KMT = x_BT.reshape(B // accum, accum, T).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x_KMT, micro_sharding)

            def accumulate(carry, micro_batch):
                loss_sum, grad_sum = carry
                loss, grads = grad_fn(state.params, micro_batch)
                return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            micro_batches = {name: to_micro(value) for name, value in batch.items()}
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.float32(0), zeros), micro_batches)

        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updated = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                opt_state=opt_state)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~jnp.asarray(state.diverged, bool)

        def unless_diverged(new, old):  # a non-finite step changes nothing: the state stays the last good one
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        # The frozen base (LoRA) never changes: it is passed through, not selected again each step.
        new = state.replace(step=unless_diverged(updated.step, state.step),
                            params=unless_diverged(updated.params, state.params),
                            opt_state=unless_diverged(updated.opt_state, state.opt_state),
                            diverged=~finite)  # sticky: once diverged, `finite` stays false
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": finite}
        return new, metrics

    return train_step


def jit_train_step(model_config, train_config, mesh, state_shardings, window_target_limit=None,
                   trained_kind: Trained = FULL_TRAINING):
    """The step as training runs it: placed by the sharding rule, the state donated."""
    return jax.jit(make_train_step(model_config, train_config, mesh, window_target_limit, trained_kind),
                   in_shardings=(state_shardings, shard.batch_sharding(mesh), shard.replicated(mesh)),
                   out_shardings=(state_shardings, shard.replicated(mesh)),
                   donate_argnums=0)


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
