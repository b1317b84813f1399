"""The loader: batches as pure functions of (seed, step), exact resume, complete validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lumi_jax.data.loader import (
    Batch,
    TokenDataset,
    train_batch,
    validation_batch_count,
    validation_batches,
)
from lumi_jax.data.prepare import FORMAT_VERSION, prepare_dataset
from lumi_jax.errors import UserError

CONTEXT = 32
BATCH = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> TokenDataset:
    out = tmp_path_factory.mktemp("data") / "sample"
    prepare_dataset("sample", out, vocab_size=512, size_mb=0.1, seed=0, log=None)
    return TokenDataset(out)


def write_dataset(directory: Path, tokens: np.ndarray, vocab_size: int, dtype: str,
                  mask: np.ndarray | None = None) -> TokenDataset:
    """A hand-made dataset (same layout as prepare writes), for exact token checks."""
    directory.mkdir()
    tokenizer_bytes = b"stands in for a tokenizer: the loader only checks its hash"
    (directory / "tokenizer.model").write_bytes(tokenizer_bytes)
    half = len(tokens) // 2
    for name, part in (("train", tokens[:half]), ("val", tokens[half:])):
        part.astype(dtype).tofile(directory / f"{name}.bin")
        if mask is not None:
            (mask[:half] if name == "train" else mask[half:]).astype(np.uint8).tofile(directory / f"{name}_mask.bin")
    meta = {"format_version": FORMAT_VERSION, "kind": "text", "source": "test", "vocab_size": vocab_size,
            "tokenizer_sha256": hashlib.sha256(tokenizer_bytes).hexdigest(), "token_dtype": dtype, "seed": 0, "train_tokens": half,
            "val_tokens": len(tokens) - half, "train_documents": 1, "val_documents": 1, "train_bytes": half,
            "val_bytes": len(tokens) - half, "bytes_per_token": 1.0, "created": "now"}
    (directory / "meta.json").write_text(json.dumps(meta))
    return TokenDataset(directory)


def assert_same_batch(a: Batch, b: Batch) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_batch_shapes_dtypes_and_shift(dataset):
    batch = train_batch(dataset.split("train"), seed=0, step=0, batch_size=BATCH, context=CONTEXT)
    assert batch.inputs.shape == batch.targets.shape == batch.weights.shape == (BATCH, CONTEXT)
    assert batch.inputs.dtype == np.int32 and batch.targets.dtype == np.int32 and batch.weights.dtype == np.float32
    np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    assert np.all(batch.weights == 1.0)
    assert batch.inputs.max() < dataset.vocab_size


def test_resume_at_step_n_equals_the_uninterrupted_sequence(dataset):
    split = dataset.split("train")
    uninterrupted = [train_batch(split, seed=7, step=s, batch_size=BATCH, context=CONTEXT) for s in range(6)]
    reopened = TokenDataset(dataset.path).split("train")  # as after a restart
    for step in (3, 4, 5):
        assert_same_batch(train_batch(reopened, seed=7, step=step, batch_size=BATCH, context=CONTEXT),
                          uninterrupted[step])
    assert not np.array_equal(uninterrupted[0].inputs, uninterrupted[1].inputs)
    other_seed = train_batch(split, seed=8, step=0, batch_size=BATCH, context=CONTEXT)
    assert not np.array_equal(other_seed.inputs, uninterrupted[0].inputs)


def test_processes_split_the_global_batch(dataset):
    split = dataset.split("train")
    whole = train_batch(split, seed=1, step=2, batch_size=BATCH, context=CONTEXT)
    parts = [train_batch(split, seed=1, step=2, batch_size=BATCH, context=CONTEXT,
                         process_index=i, process_count=4) for i in range(4)]
    assert all(p.inputs.shape == (BATCH // 4, CONTEXT) for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.inputs for p in parts]), whole.inputs)
    np.testing.assert_array_equal(np.concatenate([p.targets for p in parts]), whole.targets)
    with pytest.raises(UserError, match="does not divide among 3 processes"):
        train_batch(split, seed=1, step=2, batch_size=BATCH, context=CONTEXT, process_index=0, process_count=3)


def test_validation_scores_every_token_after_the_first_exactly_once(dataset):
    split = dataset.split("val")
    tokens = np.asarray(split.tokens, dtype=np.int32)
    batches = list(validation_batches(split, batch_size=BATCH, context=CONTEXT))
    assert len(batches) == validation_batch_count(split, batch_size=BATCH, context=CONTEXT)
    assert all(b.inputs.shape == (BATCH, CONTEXT) for b in batches)  # padded: one shape, one compilation
    targets = np.concatenate([b.targets.reshape(-1) for b in batches])
    weights = np.concatenate([b.weights.reshape(-1) for b in batches])
    inputs = np.concatenate([b.inputs.reshape(-1) for b in batches])
    assert weights.sum() == len(tokens) - 1
    np.testing.assert_array_equal(targets[weights == 1], tokens[1:])
    np.testing.assert_array_equal(inputs[weights == 1], tokens[:-1])
    assert weights[-1] == 0.0  # the last batch is padded
    assert len(list(validation_batches(split, batch_size=BATCH, context=CONTEXT, max_batches=2))) == 2


def test_uint32_tokens_and_masks_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 70_000, size=400).astype(np.int64)
    tokens[:10] = 69_999
    mask = (rng.random(400) < 0.5).astype(np.uint8)
    dataset = write_dataset(tmp_path / "big", tokens, vocab_size=70_000, dtype="uint32", mask=mask)
    split = dataset.split("train")
    assert split.tokens.dtype == np.uint32
    batch = train_batch(split, seed=0, step=0, batch_size=4, context=16)
    assert batch.inputs.max() < 70_000 and batch.inputs.dtype == np.int32
    val = list(validation_batches(split, batch_size=4, context=16))
    targets = np.concatenate([b.targets.reshape(-1) for b in val])
    weights = np.concatenate([b.weights.reshape(-1) for b in val])
    # the train split is tokens[:200]; weights carry the mask of each target token
    kept = targets[np.flatnonzero(weights)]
    np.testing.assert_array_equal(kept, tokens[1:200][mask[1:200] == 1])
    assert tokens[0] == 69_999 and split.tokens[0] == 69_999


def test_split_smaller_than_one_window_names_sizes_and_fix(tmp_path):
    dataset = write_dataset(tmp_path / "small", np.arange(40), vocab_size=512, dtype="uint16")
    with pytest.raises(UserError, match=r"the train split has 20 tokens, fewer than one window of 33 .*prepare more text"):
        train_batch(dataset.split("train"), seed=0, step=0, batch_size=2, context=32)
    with pytest.raises(UserError, match="fewer than one window"):
        next(validation_batches(dataset.split("val"), batch_size=2, context=32))


def test_missing_or_malformed_dataset_directories(tmp_path):
    with pytest.raises(UserError, match="no such dataset directory"):
        TokenDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no meta.json"):
        TokenDataset(tmp_path / "empty")
    dataset = write_dataset(tmp_path / "cut", np.arange(100), vocab_size=512, dtype="uint16")
    with open(dataset.path / "train.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(UserError, match="train.bin has 10 bytes"):
        TokenDataset(dataset.path).split("train")
    (dataset.path / "tokenizer.model").write_bytes(b"another tokenizer")
    with pytest.raises(UserError, match="differs from the one in meta.json"):
        TokenDataset(dataset.path)
    (dataset.path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="meta.json is not valid JSON"):
        TokenDataset(dataset.path)
