"""`lumi export`: a run's parameters and tokenizer for Hugging Face transformers or llama2.c.

    lumi export --run runs/tiny --format hf --out exports/tiny-hf [--dtype bfloat16]
    lumi export --run runs/tiny --format llama2c --out exports/tiny.bin   (+ exports/tokenizer.bin)
"""

from __future__ import annotations

import argparse
import time

from lumi_jax.errors import UserError
from lumi_jax.interop.hf import EXPORT_DTYPES, export_hf
from lumi_jax.interop.llama2c import export_llama2c
from lumi_jax.runs import latest_run

FORMATS = ("hf", "llama2c")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=None, help="the run to export, e.g. runs/tiny (default: the latest run under runs/)")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: a transformers LlamaForCausalLM directory (default); "
                             "llama2c: run.c's version-0 .bin file plus tokenizer.bin beside it")
    parser.add_argument("--out", required=True,
                        help="hf: a new (or empty) directory; llama2c: a new FILE.bin")
    parser.add_argument("--dtype", choices=tuple(EXPORT_DTYPES), default="float32",
                        help="weight precision for --format hf (llama2c is always float32)")
    parser.add_argument("--step", type=int, default=None, help="export this checkpoint step (default: the latest)")


def run(args: argparse.Namespace) -> int:
    if args.format == "llama2c" and args.dtype != "float32":
        raise UserError("llama2.c's version-0 file is float32 only; drop --dtype, or export with --format hf")
    started = time.perf_counter()
    run_dir = args.run or latest_run()
    if args.format == "hf":
        out = export_hf(run_dir, args.out, dtype=args.dtype, step=args.step)
        print(f"wrote {out} (config.json, model.safetensors as {args.dtype}, tokenizer, README.md) "
              f"in {time.perf_counter() - started:.1f} s")
        print(f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer.from_pretrained(...)")
        return 0
    model_path, tokenizer_path = export_llama2c(run_dir, args.out, step=args.step)
    print(f"wrote {model_path} and {tokenizer_path} in {time.perf_counter() - started:.1f} s")
    print(f"run it with llama2.c: ./run {model_path} -z {tokenizer_path}")
    return 0
