"""Data preparation throughput: tokenizer training time and tokenise-and-pack MB/s.

    .venv/bin/python benchmarks/prepare_throughput.py [--text ../shared/data/war_and_peace.txt]

Measures, on this machine, for the given real text (War and Peace by default):
- reading and normalising it (BOM, CRLF) and cutting it into documents;
- training the SentencePiece BPE tokenizer (vocab 4096, the tiny model's, and 512, micro's);
- tokenising every document on all cores and packing the uint16 token files (MB/s of UTF-8 text);
and for the generated `sample` corpus: generation MB/s, and the whole `prepare` the quick
session runs (1 MB, vocab 512). Each timing is the median of --repeats runs. Writes
benchmarks/results/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece
from host import cpu_model  # benchmarks/host.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi_jax.data.prepare import pack_documents, prepare_dataset, token_dtype_for  # noqa: E402
from lumi_jax.data.sample_corpus import generate_stories  # noqa: E402
from lumi_jax.data.sources import Document  # noqa: E402
from lumi_jax.data.text import read_text_file, split_documents  # noqa: E402
from lumi_jax.data.tokenizer import train_tokenizer  # noqa: E402

DEFAULT_TEXT = REPO_ROOT.parent / "shared" / "data" / "war_and_peace.txt"
RESULT = REPO_ROOT / "benchmarks" / "results" / "prepare_throughput.json"


CPU_SECONDS: dict[int, float] = {}  # id(result) -> median CPU seconds of the call that made it


def median_seconds(function, repeats: int) -> tuple[float, object]:
    """Median wall seconds (and, in CPU_SECONDS, median CPU seconds of this process) of `repeats` calls."""
    times, cpu_times, result = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    CPU_SECONDS[id(result)] = statistics.median(cpu_times)
    return statistics.median(times), result


def machine() -> dict:
    cpu = cpu_model()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "sentencepiece": sentencepiece.__version__,
            "numpy": np.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if not args.text.exists():
        print(f"error: {args.text} does not exist; pass --text PATH to a large UTF-8 text file", file=sys.stderr)
        return 2

    # other work on the machine slows every number here: the load averages say how busy it was
    results: dict = {"machine": machine(), "text": str(args.text), "repeats": args.repeats,
                     "load_average_1min_before": round(os.getloadavg()[0], 2)}
    read_s, (text, _stats) = median_seconds(lambda: read_text_file(args.text), args.repeats)
    documents = [Document.of_text(d) for d in split_documents(text)]
    text_mb = sum(len(d.text.encode("utf-8")) for d in documents) / 1e6
    results["real_text"] = {"file_mb": args.text.stat().st_size / 1e6, "documents": len(documents),
                            "document_mb": round(text_mb, 3), "read_normalise_split_s": round(read_s, 3)}

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for vocab in (4096, 512):
            train_s, tokenizer = median_seconds(
                lambda vocab=vocab: train_tokenizer([d.text for d in documents], vocab, scratch / f"t{vocab}.model"),
                args.repeats)
            pack_s, tokens = median_seconds(
                lambda tokenizer=tokenizer: pack_documents(documents, tokenizer, token_dtype_for(tokenizer.vocab_size),
                                                           scratch / "train.bin", None), args.repeats)
            pack_cpu_s = CPU_SECONDS[id(tokens)]
            results["real_text"][f"vocab_{vocab}"] = {
                "tokenizer_train_s": round(train_s, 3),
                "tokenise_and_pack_s": round(pack_s, 3),
                "tokenise_and_pack_cpu_s": round(pack_cpu_s, 3),
                "tokenise_and_pack_mb_per_cpu_s": round(text_mb / pack_cpu_s, 2),
                "tokenise_and_pack_mb_per_s": round(text_mb / pack_s, 2),
                "tokens": tokens,
                "bytes_per_token": round(text_mb * 1e6 / tokens, 3),
            }

        generate_s, stories = median_seconds(lambda: generate_stories(4.0, seed=0), args.repeats)
        sample_mb = sum(len(s) + 1 for s in stories) / 1e6
        quick_s, meta = median_seconds(
            lambda: prepare_dataset("sample", scratch / "quick", vocab_size=512, size_mb=1.0, force=True, log=None),
            args.repeats)
        default_s, default_meta = median_seconds(
            lambda: prepare_dataset("sample", scratch / "default", force=True, log=None), 1)
        results["sample"] = {
            "generate_mb_per_s": round(sample_mb / generate_s, 2),
            "quick_prepare_1mb_vocab512_s": round(quick_s, 3),
            "quick_prepare_train_tokens": meta["train_tokens"],
            "default_prepare_4mb_vocab4096_s": round(default_s, 3),
            "default_prepare_bytes_per_token": round(default_meta["bytes_per_token"], 3),
        }

    results["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
