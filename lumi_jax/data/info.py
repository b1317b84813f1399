"""`lumi data-info data/NAME`: what a prepared dataset holds, and a few decoded windows of it."""

from __future__ import annotations

import argparse

import numpy as np

from lumi_jax.data.loader import TokenDataset
from lumi_jax.data.tokenizer import Tokenizer
from lumi_jax.errors import UserError


def summary_lines(dataset: TokenDataset) -> list[str]:
    meta = dataset.meta
    lines = [
        f"dataset      {dataset.path}",
        f"source       {meta['source']} ({meta['kind']})",
        f"tokenizer    vocab {meta['vocab_size']}, sha256 {meta['tokenizer_sha256'][:16]}, "
        f"tokens stored as {meta['token_dtype']}",
    ]
    for name in ("train", "val"):
        lines.append(f"{name:<12} {meta[f'{name}_documents']:>10,} documents {meta[f'{name}_tokens']:>13,} tokens "
                     f"{meta[f'{name}_bytes'] / 1e6:>9.2f} MB")
    lines.append(f"bytes/token  {meta['bytes_per_token']:.3f}")
    if dataset.split("train").mask is not None:
        masked = float(np.mean(dataset.split("train").mask))
        lines.append(f"loss mask    {masked:.1%} of training tokens are targets")
    stats = meta.get("text_stats") or {}
    if stats.get("replaced_sequences") or stats.get("removed_control_chars"):
        lines.append(f"text fixes   {stats.get('replaced_sequences', 0)} invalid UTF-8 sequences replaced, "
                     f"{stats.get('removed_control_chars', 0)} control characters removed")
    lines.append(f"seed {meta['seed']}, created {meta['created']}")
    return lines


def sample_windows(dataset: TokenDataset, count: int, tokens: int) -> list[str]:
    """`count` decoded windows of the validation split, evenly spaced, deterministic."""
    tokenizer = Tokenizer.load(dataset.tokenizer_path)
    split = dataset.split("val")
    length = min(tokens, len(split))
    starts = np.linspace(0, len(split) - length, num=count, dtype=np.int64) if len(split) else []
    return [tokenizer.decode(split.tokens[start:start + length]) for start in starts]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a prepared dataset directory, e.g. data/sample")
    parser.add_argument("--samples", type=int, default=3, help="decoded validation windows to show (default 3)")
    parser.add_argument("--sample-tokens", type=int, default=64, help="tokens per shown window (default 64)")
    parser.add_argument("--verify", action="store_true", help="also check every token file against the sha256 "
                        "and largest id recorded in meta.json (reads each file once)")


def verify_lines(dataset: TokenDataset) -> list[str]:
    """Check the files against meta.json (a mismatch is a UserError); say what was checked."""
    dataset.check_ids(against_meta=True)
    checked = dataset.verify_checksums()
    ids = f"every token id is below the vocabulary size {dataset.vocab_size}"
    if not checked:
        return [f"verified     {ids}; meta.json records no checksums (prepared before they were), so the "
                "contents could not be compared: prepare again with --force to record them"]
    return [f"verified     {', '.join(checked)} match their sha256 in meta.json; {ids}"]


def run(args: argparse.Namespace) -> int:
    if args.samples < 0 or args.sample_tokens < 1:
        raise UserError(f"--samples {args.samples} --sample-tokens {args.sample_tokens}: use --samples 0 or more "
                        "and --sample-tokens 1 or more")
    dataset = TokenDataset(args.dataset)
    print("\n".join(summary_lines(dataset)))
    if args.verify:
        print("\n".join(verify_lines(dataset)))
    elif args.samples:
        dataset.check_ids()  # an id outside the vocabulary cannot be decoded: say so, not a traceback
    for number, text in enumerate(sample_windows(dataset, args.samples, args.sample_tokens), start=1):
        print(f"\n--- validation window {number} ({args.sample_tokens} tokens) ---")
        print(text)
    return 0
