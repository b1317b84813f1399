"""`lumi import`: a local Hugging Face LLaMA checkpoint becomes a lumi run.

    lumi import --from path/to/hf-model --out runs/NAME [--tokenizer path/to/tokenizer.model]

DIR needs config.json (LlamaForCausalLM) and model.safetensors, or the shards listed in
model.safetensors.index.json. The run then works with `lumi generate`, `evaluate` and `sft`.
"""

from __future__ import annotations

import argparse
import time

from lumi_jax.interop.hf import import_hf
from lumi_jax.run_lock import RunLock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="a local Hugging Face model directory (config.json and *.safetensors)")
    parser.add_argument("--out", required=True, help="the new run directory, e.g. runs/NAME")
    parser.add_argument("--tokenizer", default=None,
                        help="a SentencePiece tokenizer.model to use (default: DIR/tokenizer.model when present)")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with RunLock(args.out):  # one writer per run: a train or another import into --out is refused
        out = import_hf(args.source, args.out, tokenizer=args.tokenizer, log=print)
    print(f"wrote the run {out} in {time.perf_counter() - started:.1f} s")
    if not (out / "tokenizer.model").is_file():
        print(f"note: {args.source} has no SentencePiece tokenizer.model, so the run has none; generate and "
              f"evaluate need one: import again with --tokenizer PATH/tokenizer.model")
    else:
        print(f"try it: lumi generate --run {out} --prompt 'Once upon a time'")
    return 0
