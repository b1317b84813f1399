"""Copy warm-up: induction heads before text.

To answer a question about its input, a model needs attention that finds an earlier occurrence
of a token and carries over what stands next to it (an induction head). Learning one is abrupt:
a long plateau, then a quick drop. On stories, where only a few tokens (a name said again) can
be predicted that way, tiny does not get past the plateau within the prototype's 1000 steps: it
pays as much for a name it has already read as for a new one. On rows made for nothing else (a
random span of tokens, then the same span again, the loss on the repeat only) it does, in a
few hundred steps: tiny's copy loss falls from 8.3 to 0.2 nats in 300 steps of 16 x 128.

This module is a data source. `train` runs its batches first, through the same loop and the
same step as the text, when `copy_warmup_steps` > 0 and a run starts from fresh parameters (not
when it resumes or fine-tunes); the warmed parameters then start the text training with a fresh
optimizer. Ids 0-2 (unk, bos, eos) never appear in the rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lumi_jax.config import TrainConfig

COPY_WARMUP_FILE = "copy_warmup.json"  # in the run directory: steps, final copy loss, seconds
SPAN = 64  # tokens in the random span; a row is the span twice
FIRST_ORDINARY_ID = 3  # after unk, bos and eos
LR_WARMUP_STEPS = 20
PROGRESS_EVERY = 50  # steps between the warm-up's progress lines
BUDGET_SHARE = 0.25  # with a time budget, the warm-up takes at most this share of the time left


def copy_rows(rng: np.random.Generator, rows: int, span: int, vocab_size: int) -> dict[str, np.ndarray]:
    """`rows` rows of a random span and its repeat, as inputs / targets / weights (2·span each).

    The weight is 1 where the target lies in the repeat (from its second token on: its first
    cannot be known), so the loss counts only what copying can predict."""
    spans = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(rows, span), dtype=np.int64)
    sequence = np.concatenate([spans, spans, spans[:, :1]], axis=1).astype(np.int32)
    weights = np.zeros((rows, 2 * span), np.float32)
    weights[:, span:] = 1.0  # targets span+1 .. 2·span: the repeat after its first token
    return {"inputs": sequence[:, :-1], "targets": sequence[:, 1:], "weights": weights}


def recall_rows(rng: np.random.Generator, rows: int, span: int, vocab_size: int) -> dict[str, np.ndarray]:
    """`rows` rows of key-value recall, as inputs / targets / weights (2·span each).

    A row lists span/2 pairs as (value, key), then asks every key again in a shuffled order as
    (key, value): each asked value stood *before* its key. The story questions need this ("Tom
    has a blue kite" ... "What color is Tom's kite?" → the word before "kite"), and copying alone
    does not teach it (docs/fine-tuning.md). Keys are distinct within a row; the weight is 1 where
    the target is an asked value, the only tokens recall can predict."""
    pairs = span // 2
    ordinary = vocab_size - FIRST_ORDINARY_ID
    keys = np.argsort(rng.random((rows, ordinary)), axis=1)[:, :pairs] + FIRST_ORDINARY_ID  # distinct per row
    values = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(rows, pairs))
    asked = np.argsort(rng.random((rows, pairs)), axis=1)
    listed = np.stack([values, keys], axis=2).reshape(rows, 2 * pairs)
    questions = np.stack([np.take_along_axis(keys, asked, 1), np.take_along_axis(values, asked, 1)], axis=2)
    sequence = np.concatenate([listed, questions.reshape(rows, 2 * pairs), keys[:, :1]], axis=1).astype(np.int32)
    weights = np.zeros((rows, 4 * pairs), np.float32)
    weights[:, 2 * pairs::2] = 1.0  # inputs that are asked keys: their targets are the values
    return {"inputs": sequence[:, :-1], "targets": sequence[:, 1:], "weights": weights}


def warmup_config(train_config: TrainConfig, context: int) -> tuple[TrainConfig, int]:
    """The warm-up's own settings: the run's tokens per step in rows of 2·SPAN, split into the
    run's micro-batches (so it fits where the run fits), its peak lr held after 20 steps, no
    weight decay and no clipping (as measured)."""
    span = min(SPAN, context // 2)
    rows = train_config.batch_size * max(1, context // (2 * span))
    steps = train_config.copy_warmup_steps
    config = dataclasses.replace(
        train_config, steps=steps, batch_size=rows, context=2 * span,  # grad_accum kept: rows divide by it
        warmup=min(LR_WARMUP_STEPS, steps - 1), min_lr=train_config.lr, weight_decay=0.0, grad_clip=0.0,
        schedule="cosine")  # from lr to min_lr = lr: constant after the warmup
    return config, span


def copy_batch_source(train_config: TrainConfig, context: int, vocab_size: int, process_index: int,
                      process_count: int):
    """(the warm-up's settings, batch_at(step) -> this process's rows at `step`): a pure function
    of (seed, process, step), like the text loader, so the loop treats it as any other data."""
    config, span = warmup_config(train_config, context)
    host_rows = config.batch_size // process_count

    def batch_at(step: int) -> dict[str, np.ndarray]:  # the global batch, then this process's rows of it
        rng = np.random.default_rng([train_config.seed, 0, step])
        recall = round(train_config.recall_share * config.batch_size)
        rows = copy_rows(rng, config.batch_size - recall, span, vocab_size)
        if recall:  # after the copy rows, from the same generator: a share of 0 draws what it drew before
            extra = recall_rows(rng, recall, span, vocab_size)
            rows = {name: np.concatenate([rows[name], extra[name]]) for name in rows}
        return {name: value[process_index * host_rows:(process_index + 1) * host_rows] for name, value in rows.items()}

    return config, batch_at


def progress_line(step: int, steps: int, copy_nats: float, vocab_size: int) -> str:
    return (f"copy warm-up {step}/{steps}: {copy_nats:.3f} nats on the repeats "
            f"(guessing: {np.log(vocab_size - FIRST_ORDINARY_ID):.1f})")
