"""`lumi prepare`: a text source -> data/NAME/ (tokenizer.model, train.bin, val.bin, meta.json).

Steps: read and normalise the source (sources.py), split it into train and validation *by
document* (deterministic from the seed), train a SentencePiece tokenizer on the training
documents (or reuse one with --tokenizer), tokenise every document on all cores as
BOS + text + EOS, and write flat token files. Everything is written into a hidden sibling
directory that is renamed to data/NAME only at the end, so an interrupted or failed prepare
leaves no half dataset, and an existing data/NAME is replaced only with --force.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

import lumi_jax
from lumi_jax.config import load_model_config
from lumi_jax.data.catalog import describe_sources, load_corpus
from lumi_jax.data.loader import split_checksums
from lumi_jax.data.sources import Corpus, Document, SourceOptions
from lumi_jax.data.text import ERROR_MODES, check_error_mode
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, Tokenizer, train_tokenizer
from lumi_jax.errors import UserError

FORMAT_VERSION = 1
DEFAULT_MODEL = "tiny"  # the default vocabulary size is this model config's
DEFAULT_VAL_FRACTION = 0.05
ENCODE_CHUNK_DOCUMENTS = 4096  # documents tokenised per call: bounds memory on big corpora
MASK_DTYPE = np.uint8

Log = Callable[[str], None]


def token_dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def split_by_document(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation documents: a seeded shuffle, each part in corpus order."""
    if count < 2:
        raise UserError(f"the corpus has {count} document(s); a train/validation split needs at least 2 "
                        "(give more text, or several files, or separate sections with two blank lines)")
    val_count = min(count - 1, max(1, round(count * val_fraction)))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[val_count:]), np.sort(order[:val_count])


def pack_documents(documents: Sequence[Document], tokenizer: Tokenizer, token_dtype: np.dtype,
                   tokens_path: Path, mask_path: Path | None) -> int:
    """Write BOS + tokens + EOS for each document to tokens_path; return the token count.

    With mask_path, also write one uint8 per token: 1 where the token is a training target
    (tokens of target segments and the EOS), 0 for context segments and the BOS.
    """
    total = 0
    with open(tokens_path, "wb") as tokens_file, (open(mask_path, "wb") if mask_path else nullcontext()) as mask_file:
        for start in range(0, len(documents), ENCODE_CHUNK_DOCUMENTS):
            chunk = documents[start:start + ENCODE_CHUNK_DOCUMENTS]
            if mask_file is None:
                ids = tokenizer.encode_batch([d.text for d in chunk], bos=True, eos=True)
                count = sum(map(len, ids))
                np.fromiter(itertools.chain.from_iterable(ids), dtype=token_dtype, count=count).tofile(tokens_file)
            else:
                tokens, mask = _encode_segmented(chunk, tokenizer)
                count = len(tokens)
                np.asarray(tokens, dtype=token_dtype).tofile(tokens_file)
                np.asarray(mask, dtype=MASK_DTYPE).tofile(mask_file)
            total += count
    return total


def _encode_segmented(documents: Sequence[Document], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Each segment tokenised on its own, so the mask boundary falls exactly between tokens."""
    texts = [text for d in documents for text, _ in d.segments]
    encoded = iter(tokenizer.encode_batch(texts))
    tokens: list[int] = []
    mask: list[int] = []
    for document in documents:
        tokens.append(BOS_ID)
        mask.append(0)
        for _text, is_target in document.segments:
            ids = next(encoded)
            tokens.extend(ids)
            mask.extend([int(is_target)] * len(ids))
        tokens.append(EOS_ID)
        mask.append(1)
    return tokens, mask


def resolve_vocab_size(vocab_size: int | None, model: str | None, tokenizer: str | None) -> tuple[int | None, int | None]:
    """(vocab size to train, context length to check) from --vocab-size / --model / defaults."""
    if vocab_size is not None and model is not None:
        raise UserError("give --vocab-size or --model, not both (the model config sets the vocab size)")
    context = None
    if model is not None:
        config = load_model_config(model)
        vocab_size, context = config.vocab_size, config.max_seq_len
    if vocab_size is None and tokenizer is None:
        vocab_size = load_model_config(DEFAULT_MODEL).vocab_size
    if vocab_size is not None and not 260 <= vocab_size <= 1_000_000:
        raise UserError(f"--vocab-size is {vocab_size}; use a size between 260 and 1000000 "
                        "(256 byte pieces and 3 special ids come first)")
    return vocab_size, context


def prepare_dataset(source: str, out: str | Path, *, vocab_size: int | None = None, model: str | None = None,
                    val_fraction: float = DEFAULT_VAL_FRACTION, tokenizer: str | Path | None = None,
                    seed: int = 0, force: bool = False, errors: str = "strict", size_mb: float | None = None,
                    val_source: str | None = None, family_weights: Mapping[str, int] | None = None,
                    log: Log | None = print) -> dict[str, Any]:
    """Prepare a dataset directory; returns its meta.json content. See the module docstring.
    `val_source`: held-out text of the user's choosing (all of `source` is then training text).
    `family_weights`: sample-instructions' training mix (instructions.FAMILY_WEIGHTS by default)."""
    log = log or (lambda _message: None)
    out = Path(out)
    check_error_mode(errors)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction is {val_fraction}; use a fraction between 0 and 1, such as 0.05")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another --out, or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another --out")
    vocab_size, context = resolve_vocab_size(vocab_size, model, None if tokenizer is None else str(tokenizer))
    existing_tokenizer = Tokenizer.load(tokenizer) if tokenizer is not None else None
    if existing_tokenizer is not None and vocab_size is not None and vocab_size != existing_tokenizer.vocab_size:
        raise UserError(f"{tokenizer} has {existing_tokenizer.vocab_size} ids but the vocab size asked for is "
                        f"{vocab_size}; leave out --vocab-size/--model, or train a new tokenizer")

    started = time.perf_counter()
    corpus = load_corpus(source, SourceOptions(seed=seed, errors=errors, size_mb=size_mb, family_weights=family_weights))
    if val_source is not None:
        held_out = load_corpus(val_source, SourceOptions(seed=seed, errors=errors))
        if held_out.kind != corpus.kind:
            raise UserError(f"--val-source {val_source} is {held_out.kind} but --source {source} is {corpus.kind}; "
                            "give held-out text of the same kind")
        corpus = dataclasses.replace(corpus, val_documents=held_out.documents,
                                     source=f"{corpus.source} + held out {held_out.source}")
    train_docs, val_docs = _split(corpus, val_fraction, seed)
    read_seconds = time.perf_counter() - started
    log(f"read {corpus.source}: {len(train_docs):,} training and {len(val_docs):,} validation documents "
        f"({read_seconds:.1f}s)")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        meta = _build(corpus, train_docs, val_docs, partial, vocab_size, existing_tokenizer, context, seed, log)
        meta["read_seconds"] = round(read_seconds, 3)
        (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _move_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"wrote {out}: {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens, "
        f"{meta['bytes_per_token']:.2f} bytes per token, vocab {meta['vocab_size']}")
    return meta


def _split(corpus: Corpus, val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    if corpus.val_documents is not None:
        if not corpus.documents or not corpus.val_documents:
            raise UserError(f"{corpus.source}: gives an empty training or validation split; give more text")
        return corpus.documents, corpus.val_documents
    train_index, val_index = split_by_document(len(corpus.documents), val_fraction, seed)
    return [corpus.documents[i] for i in train_index], [corpus.documents[i] for i in val_index]


def _build(corpus: Corpus, train_docs: list[Document], val_docs: list[Document], directory: Path,
           vocab_size: int | None, existing_tokenizer: Tokenizer | None, context: int | None,
           seed: int, log: Log) -> dict[str, Any]:
    tokenizer_path = directory / "tokenizer.model"
    started = time.perf_counter()
    if existing_tokenizer is None:
        assert vocab_size is not None
        tokenizer = train_tokenizer((d.text for d in train_docs), vocab_size, tokenizer_path, seed=seed)
    else:
        shutil.copyfile(existing_tokenizer.path, tokenizer_path)
        tokenizer = Tokenizer.load(tokenizer_path)
    tokenizer_seconds = time.perf_counter() - started
    log(f"tokenizer: vocab {tokenizer.vocab_size}, "
        + (f"trained in {tokenizer_seconds:.1f}s" if existing_tokenizer is None else f"reused {existing_tokenizer.path}"))

    token_dtype = token_dtype_for(tokenizer.vocab_size)
    with_mask = not all(d.all_targets for d in itertools.chain(train_docs, val_docs))
    started = time.perf_counter()
    counts = {}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        mask_path = directory / f"{name}_mask.bin" if with_mask else None
        counts[name] = pack_documents(docs, tokenizer, token_dtype, directory / f"{name}.bin", mask_path)
    pack_seconds = time.perf_counter() - started
    train_bytes = sum(len(d.text.encode("utf-8")) for d in train_docs)
    val_bytes = sum(len(d.text.encode("utf-8")) for d in val_docs)
    log(f"tokenised and packed {(train_bytes + val_bytes) / 1e6:.1f} MB in {pack_seconds:.1f}s "
        f"({(train_bytes + val_bytes) / 1e6 / max(pack_seconds, 1e-9):.1f} MB/s)")

    if context is not None and min(counts.values()) < context + 1:
        smaller = "train" if counts["train"] < counts["val"] else "val"
        raise UserError(f"the {smaller} split has {counts[smaller]} tokens, fewer than one window of "
                        f"{context + 1} (context {context} + 1); give more text or raise --val-fraction")

    extra_facts = corpus.write_extra_files(directory, train_docs, val_docs) if corpus.write_extra_files else {}
    total_tokens = counts["train"] + counts["val"]
    return {
        "format_version": FORMAT_VERSION,
        "kind": corpus.kind,
        "source": corpus.source,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": tokenizer.sha256,
        "tokenizer_trained": existing_tokenizer is None,
        "token_dtype": token_dtype.name,
        "has_mask": with_mask,
        "seed": seed,
        "val_fraction": None if corpus.val_documents is not None else _val_fraction(train_docs, val_docs),
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        **split_checksums(directory, token_dtype),  # train_sha256, train_max_id, ...: checked by train and data-info
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "train_bytes": train_bytes,
        "val_bytes": val_bytes,
        "bytes_per_token": (train_bytes + val_bytes) / total_tokens,
        "document_layout": "BOS text EOS",
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "text_stats": corpus.stats.to_dict(),
        "source_details": {**corpus.details, **extra_facts},
        "tokenizer_seconds": round(tokenizer_seconds, 3),
        "pack_seconds": round(pack_seconds, 3),
        "lumi_jax_version": lumi_jax.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _val_fraction(train_docs: list[Document], val_docs: list[Document]) -> float:
    return round(len(val_docs) / (len(train_docs) + len(val_docs)), 6)


def _remove_stale_partials(out: Path) -> None:
    """Partial directories left by a prepare that was killed (its process no longer exists)."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(partial: Path, out: Path) -> None:
    """Rename partial -> out; an old out (only with --force) is moved aside first, then deleted."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
        try:
            partial.rename(out)
        except BaseException:
            old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


# ---------------------------------------------------------------------------------------------
# The command line.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help=f"what to read: {describe_sources()}")
    parser.add_argument("--out", required=True, help="the dataset directory to write, e.g. data/sample")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=int, help=f"tokenizer vocabulary (default: the {DEFAULT_MODEL} model's)")
    vocab.add_argument("--model", help="take the vocab size (and check the context) from this model config, e.g. micro")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help=f"share of documents held out for validation (default {DEFAULT_VAL_FRACTION})")
    parser.add_argument("--val-source", help="held-out text to validate on (a file, directory or glob); "
                        "without it --val-fraction of the source's documents is held out")
    parser.add_argument("--tokenizer", help="reuse this tokenizer.model instead of training one")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sample corpus, the split and the tokenizer")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--errors", choices=ERROR_MODES, default="strict",
                        help="invalid UTF-8: stop with an error (strict) or replace it with U+FFFD (replace)")
    parser.add_argument("--size-mb", type=float, help="size of a generated corpus such as sample, in MB")


def run(args: argparse.Namespace) -> int:
    prepare_dataset(args.source, args.out, vocab_size=args.vocab_size, model=args.model,
                    val_fraction=args.val_fraction, tokenizer=args.tokenizer, seed=args.seed,
                    force=args.force, errors=args.errors, size_mb=args.size_mb, val_source=args.val_source)
    return 0
