"""The optimiser: one Optax chain of global-norm clipping and AdamW, and its learning-rate schedule.

Two shapes after a linear warmup from 0 to `lr`:

    cosine   lr(step) = min_lr + (lr − min_lr) · ½(1 + cos(π · (step − warmup) / (steps − warmup)))
             reaching `min_lr` exactly at `steps`;
    wsd      warmup-stable-decay: `lr` held until `decay_start`, then a straight line down to
             `min_lr`, reached by the last update (step `decay_end` − 1), and `min_lr` after.

A WSD run's decay is placed by a `SchedulePlan`: over the last `decay_fraction` of `steps`, or,
when the run has a time budget, over the last share of the steps that fit in the budget (the
trainer measures its step time after a few steps and decides; see train.py). The plan is two
integers passed to the step as arrays, so deciding it never recompiles the step, and it is
recorded in every checkpoint, so a resumed run follows the same schedule bit for bit.

Weight decay applies to matrices (embeddings and projections, ndim ≥ 2) and never to the
RMSNorm scales: decaying a norm's gain towards 0 only fights the normalisation.

Gradient accumulation is not an Optax wrapper here: the train step (step.py) splits its global
batch into micro-batches and sums their gradients before this chain sees them. That keeps one
call = one update = one loader step, and makes the accumulated loss the exact weighted mean over
the whole batch (optax.MultiSteps averages per-micro-batch means instead).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from lumi_jax.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class SchedulePlan:
    """A WSD schedule's shape: warm up until update `warmup`, hold, decay from `decay_start` to
    `decay_end` (the run's last step)."""

    warmup: int
    decay_start: int
    decay_end: int

    @classmethod
    def over_steps(cls, config: TrainConfig, total_steps: int | None = None, done: int = 0) -> SchedulePlan:
        """The decay over the last `decay_fraction` of `total_steps` (default: the config's steps),
        after the configured warmup. A run too short for both keeps its decay and warms up until the
        decay begins (never shorter than the `done` steps already taken). Until the decay, the
        learning rate is then the one a cosine over many more steps would have: a budget cutting a
        long cosine and this plan differ only in the decay at the end. (A warmup shrunk to a tenth
        of a short run, as before, held the peak rate from step ~12 and lost to the cut cosine on the
        book at tiny's ~130 steps: benchmarks/schedule_comparison.py.)"""
        total = config.steps if total_steps is None else total_steps
        decay = cls.decay_length(config, total)
        warmup = min(config.warmup, max(done, total - decay))
        return cls(warmup=warmup, decay_start=min(max(warmup, total - decay, done), total), decay_end=total)

    @classmethod
    def to_deadline(cls, config: TrainConfig, total_steps: int, done: int) -> SchedulePlan:
        """A time budget's plan: `over_steps`, except that a run too short to hold its peak rate for
        as long as it would decay (the budget ends within ~1.7 warmups) holds the peak to the end,
        as a cut cosine does. Measured (benchmarks/schedule_comparison.py, tiny, 2 minutes, ~130
        steps after a 100-step warmup, 3 seeds): a decay there lost to the cut cosine by 0.015
        bits/byte on the book and 0.024 on the stories, in every seed; a model that has only just
        reached its peak rate still gains more from it than from annealing. Later replans, with
        more steps fitting, may still bring the decay back."""
        decay = cls.decay_length(config, total_steps)  # the run's own, not squeezed by `done`
        if total_steps - 2 * decay < config.warmup:  # the configured warmup, cut by the deadline if need be
            return cls(warmup=config.warmup, decay_start=total_steps, decay_end=total_steps)
        return cls.over_steps(config, total_steps, done)

    @staticmethod
    def decay_length(config: TrainConfig, total_steps: int) -> int:
        return max(1, round(config.decay_fraction * total_steps))

    @property
    def decays(self) -> bool:
        return self.decay_start < self.decay_end

    def arrays(self) -> dict[str, jax.Array]:
        return {name: jnp.int32(value) for name, value in self.to_dict().items()}

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def learning_rate_schedule(config: TrainConfig, plan: dict | None = None) -> optax.Schedule:
    """lr as a function of the update count. `plan`: {"decay_start", "decay_end"} (ints or traced
    int32 arrays) for a WSD schedule; cosine ignores it."""
    if config.resolved_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.lr,
            warmup_steps=config.warmup,
            decay_steps=config.steps,  # counts the warmup too: the floor is reached at `steps`
            end_value=config.min_lr,
        )
    plan = plan if plan is not None else SchedulePlan.over_steps(config).to_dict()

    def wsd(count):
        count = jnp.asarray(count, jnp.float32)
        warmup = jnp.asarray(plan["warmup"], jnp.float32)
        start = jnp.asarray(plan["decay_start"], jnp.float32)
        last = jnp.maximum(jnp.asarray(plan["decay_end"], jnp.float32) - 1.0, start)  # the last update
        warming = config.lr * count / jnp.maximum(warmup, 1.0)
        # A decay of one update (a plan squeezed by a tight budget) is that update at the floor.
        done = jnp.where(last > start, jnp.clip((count - start) / jnp.maximum(last - start, 1.0), 0.0, 1.0),
                         jnp.where(count >= start, 1.0, 0.0))
        decaying = config.lr + (config.min_lr - config.lr) * done
        return jnp.where(count < warmup, warming, jnp.where(count < start, config.lr, decaying))

    return wsd


def decay_mask(params):
    """True for the leaves weight decay applies to: matrices, not norm scales."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(config: TrainConfig, plan: dict | None = None) -> optax.GradientTransformation:
    """The chain. Its state has the same structure whatever the schedule, so the train step may
    build it again around a traced `plan` (step.py) and update a state made here."""
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(config, plan),
        b1=config.beta1,
        b2=config.beta2,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw
