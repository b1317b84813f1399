"""The optimiser: one Optax chain of global-norm clipping and AdamW on a warmup + cosine schedule.

    lr(step) = lr · step / warmup                                    for step ≤ warmup
             = min_lr + (lr − min_lr) · ½(1 + cos(π · (step − warmup) / (steps − warmup)))  after

so the schedule reaches `lr` exactly at the end of warmup and `min_lr` exactly at the last step.
Weight decay applies to matrices (embeddings and projections, ndim ≥ 2) and never to the
RMSNorm scales: decaying a norm's gain towards 0 only fights the normalisation.

Gradient accumulation is not an Optax wrapper here: the train step (step.py) splits its global
batch into micro-batches and sums their gradients before this chain sees them. That keeps one
call = one update = one loader step, and makes the accumulated loss the exact weighted mean over
the whole batch (optax.MultiSteps averages per-micro-batch means instead).
"""

from __future__ import annotations

import jax
import optax

from lumi_jax.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup,
        decay_steps=config.steps,  # counts the warmup too: the floor is reached at `steps`
        end_value=config.min_lr,
    )


def decay_mask(params):
    """True for the leaves weight decay applies to: matrices, not norm scales."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(config),
        b1=config.beta1,
        b2=config.beta2,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw
