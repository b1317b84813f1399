"""Reading a prepared dataset: memmapped token files and batches as pure functions.

`train_batch(split, seed=, step=, ...)` draws the window starts of a GLOBAL batch from
(seed, step) alone (anywhere in a text split; at an example's BOS in an instruction split, so
that no window begins inside an example and trains on an answer whose question it cannot see),
so resuming at step N sees exactly the batches an uninterrupted run would have seen, and every process of a multi-host run computes the same global batch and slices its
own rows from it (it reads only those rows' tokens). `validation_batches` walks the validation
split in order, non-overlapping, so every token after the first is scored exactly once; the
last batch is padded to full shape with weight 0 so a jitted evaluation compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lumi_jax.data.tokenizer import BOS_ID
from lumi_jax.errors import UserError
from lumi_jax.files import file_sha256

SUPPORTED_FORMAT_VERSIONS = (1,)
SPLITS = ("train", "val")
REQUIRED_META = ("format_version", "kind", "source", "vocab_size", "tokenizer_sha256", "token_dtype",
                 "seed", "train_tokens", "val_tokens", "train_documents", "val_documents",
                 "train_bytes", "val_bytes", "bytes_per_token", "created")
# Written by `lumi prepare` since the checksums were added; older datasets lack them and still load
# (their ids are checked all the same; only `lumi data-info --verify` has nothing to compare with).
CHECKSUM_META = tuple(f"{split}_{fact}" for split in SPLITS for fact in ("sha256", "max_id"))
CHUNK_ELEMENTS = 1 << 24  # 16M tokens (32 MB of uint16) per pass of a file check: memory stays flat


def max_token_id(tokens: np.ndarray) -> int:
    """The largest id in a token array (a memmap is read in chunks); -1 when it is empty."""
    highest = -1
    for start in range(0, len(tokens), CHUNK_ELEMENTS):
        highest = max(highest, int(np.max(tokens[start:start + CHUNK_ELEMENTS])))
    return highest


def unreadable_is_user_error(path: Path) -> Path:
    """`path`, after checking this process may read it (an unreadable file is the user's to fix)."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); check its permissions "
                        f"(e.g. chmod u+r {path})") from None
    return path


def split_checksums(directory: Path, dtype: np.dtype) -> dict[str, Any]:
    """What `lumi prepare` records of each written split: the sha256 and the largest id of NAME.bin,
    and the sha256 of NAME_mask.bin when there is one."""
    facts: dict[str, Any] = {}
    for name in SPLITS:
        tokens_path = Path(directory) / f"{name}.bin"
        facts[f"{name}_sha256"] = file_sha256(tokens_path)
        size = tokens_path.stat().st_size
        facts[f"{name}_max_id"] = max_token_id(np.memmap(tokens_path, dtype=dtype, mode="r")) if size else -1
        mask_path = Path(directory) / f"{name}_mask.bin"
        if mask_path.is_file():
            facts[f"{name}_mask_sha256"] = file_sha256(mask_path)
    return facts


class Batch(NamedTuple):
    """One batch; a NamedTuple, so it is also a JAX pytree."""

    inputs: np.ndarray  # int32 (B, T): the tokens the model reads
    targets: np.ndarray  # int32 (B, T): the next token at each position
    weights: np.ndarray  # float32 (B, T): 1 where the target counts in the loss, 0 for padding/masked
    segments: np.ndarray | None = None  # int32 (B, T) for packed instruction examples: each BOS starts one

    def arrays(self) -> dict[str, np.ndarray]:
        """The batch as the train and eval steps take it (segments only when there are examples)."""
        fields = {"inputs": self.inputs, "targets": self.targets, "weights": self.weights}
        if self.segments is not None:
            fields["segments"] = self.segments
        return fields


def example_segments(inputs_BT: np.ndarray) -> np.ndarray:
    """Segment ids of packed examples: each BOS starts a new one, so examples do not attend to
    each other (the model's `segments_BT`)."""
    return np.cumsum(np.asarray(inputs_BT) == BOS_ID, axis=1, dtype=np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSplit:
    name: str
    tokens: np.ndarray  # memmap, uint16 or uint32
    mask: np.ndarray | None  # memmap uint8, 1 = target counts; None means every target counts
    dataset_path: Path

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @functools.cached_property
    def example_starts(self) -> np.ndarray | None:
        """Offsets of the examples' BOS tokens in an instruction split (one with a loss mask);
        None for plain text, or masked tokens not packed as BOS-led examples: windows start anywhere."""
        if self.mask is None:
            return None
        starts = np.flatnonzero(np.asarray(self.tokens) == BOS_ID).astype(np.int64)
        return starts if len(starts) else None


class TokenDataset:
    """A prepared data/NAME directory (see lumi_jax/data/prepare.py for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: is a file, not a dataset directory; give the directory `lumi prepare` "
                            "wrote (it holds meta.json, train.bin and val.bin)")
        if not self.path.is_dir():
            raise UserError(f"{self.path}: no such dataset directory; create it with "
                            f"`lumi prepare --source sample --out {self.path}`")
        self.meta: dict[str, Any] = self._read_meta()
        self.vocab_size: int = int(self.meta["vocab_size"])
        self.tokenizer_sha256: str = self.meta["tokenizer_sha256"]
        self.tokenizer_path = self.path / "tokenizer.model"
        if not self.tokenizer_path.is_file():
            self._malformed("has no tokenizer.model")
        actual_sha256 = file_sha256(unreadable_is_user_error(self.tokenizer_path))
        if actual_sha256 != self.tokenizer_sha256:
            raise UserError(f"{self.tokenizer_path}: its SHA-256 ({actual_sha256[:12]}) differs from the one in "
                            f"meta.json ({self.tokenizer_sha256[:12]}): the tokenizer was replaced after the "
                            f"tokens were written; prepare the dataset again with `lumi prepare ... --out {self.path} --force`")
        self._splits: dict[str, TokenSplit] = {}

    def _malformed(self, problem: str) -> None:
        raise UserError(f"{self.path}: {problem}; it is not a complete dataset, prepare it again with "
                        f"`lumi prepare --source ... --out {self.path} --force`")

    def _read_meta(self) -> dict[str, Any]:
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            self._malformed("has no meta.json")
        try:
            meta = json.loads(unreadable_is_user_error(meta_path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._malformed("meta.json is not valid JSON")
        if not isinstance(meta, dict):
            self._malformed("meta.json is not a JSON object")
        missing = [key for key in REQUIRED_META if key not in meta]
        if missing:
            self._malformed(f"meta.json lacks {', '.join(missing)}")
        if meta["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
            raise UserError(f"{self.path}: dataset format version {meta['format_version']} is not supported by "
                            f"this lumi_jax (it reads {SUPPORTED_FORMAT_VERSIONS}); prepare it again with this version")
        if meta["token_dtype"] not in ("uint16", "uint32"):
            self._malformed(f"meta.json token_dtype is {meta['token_dtype']!r}")
        return meta

    def split(self, name: str) -> TokenSplit:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        if name not in self._splits:
            self._splits[name] = self._open_split(name)
        return self._splits[name]

    def _open_split(self, name: str) -> TokenSplit:
        dtype = np.dtype(self.meta["token_dtype"])
        expected = int(self.meta[f"{name}_tokens"])
        tokens_path = self.path / f"{name}.bin"
        if not tokens_path.is_file():
            self._malformed(f"has no {name}.bin")
        size = tokens_path.stat().st_size
        if size != expected * dtype.itemsize:
            self._malformed(f"{name}.bin has {size} bytes, meta.json says {expected} {dtype.name} tokens")
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        mask = None
        mask_path = self.path / f"{name}_mask.bin"
        if mask_path.is_file():
            if mask_path.stat().st_size != expected:
                self._malformed(f"{name}_mask.bin has {mask_path.stat().st_size} bytes for {expected} tokens")
            mask = np.memmap(mask_path, dtype=np.uint8, mode="r") if expected else np.zeros(0, np.uint8)
        return TokenSplit(name, tokens, mask, self.path)

    def check_ids(self, vocab_size: int | None = None, *, against_meta: bool = False) -> None:
        """Refuse token files whose ids do not fit the vocabulary (an id >= vocab_size would make
        the embedding lookup return garbage, and training diverge for no visible reason), and, with
        `against_meta`, whose largest id is not the one `lumi prepare` recorded. One chunked pass
        over each memmap."""
        vocab_size = self.vocab_size if vocab_size is None else vocab_size
        fix = f"prepare the dataset again with `lumi prepare --source ... --out {self.path} --force`"
        for name in SPLITS:
            highest = max_token_id(self.split(name).tokens)
            if highest >= vocab_size:
                raise UserError(f"{self.path / (name + '.bin')}: holds token id {highest}, outside the vocabulary "
                                f"of {vocab_size} ids (0..{vocab_size - 1}): the file is damaged or was made with "
                                f"another tokenizer; {fix}")
            recorded = self.meta.get(f"{name}_max_id")
            if against_meta and recorded is not None and highest != recorded:
                raise UserError(f"{self.path / (name + '.bin')}: its largest token id is {highest}, but meta.json "
                                f"recorded {recorded}: the file changed after it was prepared; {fix}")

    def verify_checksums(self) -> list[str]:
        """Compare each token (and mask) file's sha256 with meta.json; returns what was checked.
        A mismatch is a UserError naming the file and the fix; a dataset prepared before the
        checksums were recorded has none to compare (an empty list)."""
        checked = []
        for name in SPLITS:
            for file_name, key in ((f"{name}.bin", f"{name}_sha256"), (f"{name}_mask.bin", f"{name}_mask_sha256")):
                expected = self.meta.get(key)
                if expected is None:
                    continue
                path = self.path / file_name
                if not path.is_file():
                    self._malformed(f"has no {file_name}")
                actual = file_sha256(path)
                if actual != expected:
                    raise UserError(f"{path}: its sha256 ({actual[:12]}) differs from the one in meta.json "
                                    f"({expected[:12]}): the file changed or was damaged after it was prepared; "
                                    f"prepare the dataset again with `lumi prepare --source ... --out {self.path} --force`")
                checked.append(file_name)
        return checked

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.path)!r}, vocab_size={self.vocab_size})"


def check_batch_fits(batch_size: int, context: int, memory_bytes: int | None = None) -> None:
    """The host builds every batch whole (inputs, targets, weights, segments: 16 bytes a token):
    refuse a batch that could never fit in this machine's memory, before anything is written."""
    if memory_bytes is None:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    needed = 16 * batch_size * context
    if needed > memory_bytes // 2:
        raise UserError(f"--batch-size {batch_size} with context {context} needs {needed / 2**30:,.1f} GiB of host "
                        f"memory for each batch, more than half of this machine's {memory_bytes / 2**30:,.1f} GiB; "
                        "use a smaller --batch-size")


def _check_window(split: TokenSplit, context: int) -> None:
    if context < 1:
        raise UserError(f"context is {context}; use a positive context length")
    if len(split) < context + 1:
        raise UserError(f"{split.dataset_path}: the {split.name} split has {len(split)} tokens, fewer than one "
                        f"window of {context + 1} (context {context} + 1); prepare more text, "
                        "raise --val-fraction, or use a model with a shorter context")


def _windows(split: TokenSplit, starts: np.ndarray, context: int) -> Batch:
    index_BW = starts[:, None] + np.arange(context + 1)[None, :]
    window_BW = np.asarray(split.tokens[index_BW], dtype=np.int32)
    if split.mask is None:
        weights_BT = np.ones((len(starts), context), np.float32)
    else:
        weights_BT = np.asarray(split.mask[index_BW[:, 1:]], dtype=np.float32)
    inputs_BT = window_BW[:, :-1]
    segments_BT = example_segments(inputs_BT) if split.example_starts is not None else None
    return Batch(inputs_BT, window_BW[:, 1:], weights_BT, segments_BT)


def train_window_starts(split_length: int, *, seed: int, step: int, batch_size: int, context: int,
                        example_starts: np.ndarray | None = None) -> np.ndarray:
    """Start offsets of the global batch at `step`, from (seed, step) only: uniform over all full
    windows, or, given `example_starts`, uniform over the examples that begin a full window."""
    rng = np.random.default_rng([seed, step])
    if example_starts is None:
        return rng.integers(0, split_length - context, size=batch_size, dtype=np.int64)
    usable = int(np.searchsorted(example_starts, split_length - context))  # starts < split_length - context
    if usable == 0:
        raise UserError(f"no example starts a full window of {context + 1} tokens; use a shorter --context")
    return example_starts[rng.integers(0, usable, size=batch_size, dtype=np.int64)]


def max_window_targets(split: TokenSplit, context: int) -> int | None:
    """The most weighted targets a training window of `context` can hold (None without a mask):
    over every window `train_batch` may draw, from a running sum of the mask, so exact."""
    if split.example_starts is None:  # text, or masked tokens not packed as examples
        return None
    _check_window(split, context)
    running = np.concatenate([[0], np.cumsum(np.asarray(split.mask) > 0, dtype=np.int64)])
    starts = split.example_starts[split.example_starts < len(split) - context]
    if len(starts) == 0:
        return None
    # a window starting at s has targets s+1 .. s+context
    return max(int(np.max(running[starts + 1 + context] - running[starts + 1])), 1)


def train_batch(split: TokenSplit, *, seed: int, step: int, batch_size: int, context: int,
                process_index: int = 0, process_count: int = 1) -> Batch:
    """This process's rows of the global training batch at `step`: a pure function of the arguments."""
    if batch_size < 1 or seed < 0 or step < 0:
        raise UserError(f"batch_size {batch_size}, seed {seed}, step {step}: batch size must be positive "
                        "and seed and step non-negative")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
    if batch_size % process_count:
        raise UserError(f"the global batch size {batch_size} does not divide among {process_count} processes; "
                        f"use a multiple of {process_count}")
    _check_window(split, context)
    starts = train_window_starts(len(split), seed=seed, step=step, batch_size=batch_size, context=context,
                                 example_starts=split.example_starts)
    rows = batch_size // process_count
    return _windows(split, starts[process_index * rows:(process_index + 1) * rows], context)


def validation_batch_count(split: TokenSplit, *, batch_size: int, context: int) -> int:
    windows = -(-(len(split) - 1) // context)
    return -(-windows // batch_size)


def validation_batches(split: TokenSplit, *, batch_size: int, context: int,
                       max_batches: int | None = None) -> Iterator[Batch]:
    """Sequential windows starting at 0, context, 2*context, ...: each token after the first is a
    target exactly once. Short last window and missing last rows are padded with weight 0."""
    _check_window(split, context)
    length = len(split)
    starts = np.arange(0, length - 1, context, dtype=np.int64)
    batches = -(-len(starts) // batch_size)
    if max_batches is not None:
        batches = min(batches, max_batches)
    for batch_index in range(batches):
        batch_starts = starts[batch_index * batch_size:(batch_index + 1) * batch_size]
        inputs = np.zeros((batch_size, context), np.int32)
        targets = np.zeros((batch_size, context), np.int32)
        weights = np.zeros((batch_size, context), np.float32)
        for row, start in enumerate(batch_starts):
            end = min(start + context + 1, length)
            window = np.asarray(split.tokens[start:end], dtype=np.int32)
            n = len(window) - 1
            inputs[row, :n] = window[:-1]
            targets[row, :n] = window[1:]
            weights[row, :n] = 1.0 if split.mask is None else split.mask[start + 1:end]
        segments = example_segments(inputs) if split.example_starts is not None else None
        yield Batch(inputs, targets, weights, segments)
