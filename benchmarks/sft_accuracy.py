"""Held-out exact match of supervised fine-tuning, before and after, on this machine.

    .venv/bin/python benchmarks/sft_accuracy.py [--pretrain-steps 1000] [--sft-minutes 15]

The issue-6 measurement, end to end, each stage reusing what an earlier invocation left:
1. `lumi prepare --source sample` (the generated stories) into data/sft_bench_stories;
2. pretrain the `tiny` shape on it into runs/sft_bench_pretrain with the prototype session's
   recipe (config/recipes/prototype.json; a resumable run: rerunning the script continues it);
3. `lumi prepare --source sample-instructions --tokenizer runs/sft_bench_pretrain/tokenizer.model`;
4. `lumi sft` (full fine-tuning) with a wall-clock budget of --sft-minutes, compile included; the
   number of steps is chosen from the throughput measured in pretraining so that the schedule
   ends within the budget (the budget also stops training if the machine is slower than that);
5. greedy exact match on the held-out split (unseen combinations), before and after, by family.
Writes benchmarks/results/sft_accuracy.json with the figures, the settings, the machine and
its load (other processes share the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi_jax.config import TrainConfig, load_model_config, load_train_config  # noqa: E402
from lumi_jax.data.instructions import APPROX_BYTES_PER_EXAMPLE  # noqa: E402
from lumi_jax.data.prepare import prepare_dataset  # noqa: E402
from lumi_jax.sft import fine_tune  # noqa: E402
from lumi_jax.train import train  # noqa: E402

RESULT = REPO_ROOT / "benchmarks" / "results" / "sft_accuracy.json"


def machine() -> dict:
    import jax
    import psutil

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "jax_backend": jax.default_backend(), "jax": jax.__version__,
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def name_copy_probe(run_dir: Path, data_dir: Path, windows: int = 16) -> dict:
    """Does the pretrained model copy from its context? Mean −log p of the characters' names (whole-
    name tokens) in validation stories: at a name's first occurrence in a window, and when it
    already occurred earlier in it. A model that copies pays far less for the repeats; ln(number
    of names) is what guessing among all names costs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lumi_jax.data import sample_corpus
    from lumi_jax.data.loader import TokenDataset
    from lumi_jax.model import forward
    from lumi_jax.runs import load_run

    run = load_run(run_dir)
    context = run.model_config.max_seq_len
    tokens = np.asarray(TokenDataset(data_dir).split("val").tokens[: windows * context + 1], np.int32)
    names = set(sample_corpus.GIRL_NAMES + sample_corpus.BOY_NAMES + sample_corpus.ANIMAL_NAMES)
    first, repeat = [], []
    for w in range(windows):
        window = tokens[w * context: (w + 1) * context + 1]
        log_probs = jax.nn.log_softmax(forward(run.model_config, run.params, jnp.asarray(window[None, :-1]))[0])
        nats = -np.asarray(log_probs[jnp.arange(context), window[1:]])
        for t, token in enumerate(window[1:].tolist()):
            piece = run.tokenizer.id_to_piece(token)
            if piece.startswith("\u2581") and piece[1:] in names:
                (repeat if token in window[: t + 1] else first).append(float(nats[t]))
    return {"windows": windows, "first_occurrence_mean_nats": round(float(np.mean(first)), 3),
            "repeat_mean_nats": round(float(np.mean(repeat)), 3), "first_count": len(first),
            "repeat_count": len(repeat), "guessing_among_all_names_nats": round(float(np.log(len(names))), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--pretrain-batch", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, help="tokenizer size (default: the tiny shape's own)")
    parser.add_argument("--sft-minutes", type=float, default=15.0)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--sft-context", type=int, default=128,
                        help="tokens per fine-tuning window: ~4 whole examples (a window starts at an example)")
    parser.add_argument("--sft-lr", type=float, default=2e-3)
    parser.add_argument("--sft-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of fine-tuning (parameters stay float32)")
    parser.add_argument("--sft-steps", type=int, help="default: what fits the budget, estimated from the pretraining "
                        "throughput")
    parser.add_argument("--train-examples", type=int,
                        help="sample-instructions training examples (default: the source's own, 30,000)")
    parser.add_argument("--name", default="sft_bench", help="prefix of the data/ and runs/ directories")
    parser.add_argument("--eval-examples", type=int, default=400)
    parser.add_argument("--probe-only", action="store_true",
                        help="only add the copy probe of the pretrained run to the existing result file")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)
    timings = {}

    stories, pretrained = Path(f"data/{args.name}_stories"), Path(f"runs/{args.name}_pretrain")
    if args.probe_only:
        result = json.loads(RESULT.read_text())
        result["pretrained_copy_probe"] = name_copy_probe(pretrained, stories)
        RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result["pretrained_copy_probe"], indent=2))
        return 0
    instructions = Path(f"data/{args.name}_instr" + (f"_{args.train_examples}" if args.train_examples else ""))
    tuned = Path(f"runs/{args.name}_sft")
    model_config = load_model_config("tiny")
    if args.vocab_size:
        model_config = dataclasses.replace(model_config, vocab_size=args.vocab_size)
    if not (stories / "meta.json").exists():
        started = time.perf_counter()
        prepare_dataset("sample", stories, vocab_size=model_config.vocab_size)
        timings["prepare_stories_s"] = time.perf_counter() - started

    # The prototype session's pretraining: its recipe (1000 steps of 8 x 256), unless told otherwise.
    pretrain_config = dataclasses.replace(load_train_config("prototype"), steps=args.pretrain_steps,
                                          batch_size=args.pretrain_batch)
    summary_path = pretrained / "summary.json"
    finished = summary_path.exists() and json.loads(summary_path.read_text())["steps"] >= args.pretrain_steps
    if not finished:  # a new run, or the continuation of an interrupted one
        started = time.perf_counter()
        train(pretrain_config, model_config, stories, pretrained, show_progress=True)
        timings["pretrain_this_invocation_s"] = time.perf_counter() - started
    pretrain_summary = json.loads(summary_path.read_text())
    metrics = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    pretrain_seconds = max(m.get("elapsed_s", 0) for m in metrics)
    measured_tokens_per_s = statistics.median(m["tokens_per_s"] for m in metrics if m.get("tokens_per_s"))

    if not (instructions / "meta.json").exists():
        started = time.perf_counter()
        # the source counts examples as int(size / APPROX_BYTES_PER_EXAMPLE); half an example keeps the count exact
        size_mb = (args.train_examples + 0.5) * APPROX_BYTES_PER_EXAMPLE / 1e6 if args.train_examples else None
        prepare_dataset("sample-instructions", instructions, tokenizer=pretrained / "tokenizer.model", size_mb=size_mb)
        timings["prepare_instructions_s"] = time.perf_counter() - started

    tokens_per_step = args.sft_batch * args.sft_context
    # Windows half as long as pretraining's run ~1.15x the tokens/s (less attention); ~45 s of the
    # budget go to compiling and to the two evaluations.
    steps = args.sft_steps or int((args.sft_minutes * 60 - 45) * 1.15 * measured_tokens_per_s / tokens_per_step)
    sft_config = TrainConfig(steps=steps, batch_size=args.sft_batch, context=args.sft_context, lr=args.sft_lr,
                             warmup=max(1, steps // 20), min_lr=args.sft_lr / 10, weight_decay=0.0, dtype=args.sft_dtype,
                             time_budget_minutes=args.sft_minutes, save_every=max(steps // 2, 1),
                             eval_every=0, log_every=10)
    if tuned.exists():
        raise SystemExit(f"{tuned} exists: move it away to measure fine-tuning again")
    load_before = os.getloadavg()
    started = time.perf_counter()
    report = fine_tune(pretrained, instructions, tuned, sft_config, eval_examples=args.eval_examples)
    timings["fine_tune_with_evaluations_s"] = time.perf_counter() - started

    after, before = report["held_out_exact_match"]["after"], report["held_out_exact_match"]["before"]
    summary = report["train_summary"]
    result = {
        "benchmark": "held-out exact match (unseen combinations) before and after supervised fine-tuning",
        "command": " ".join([".venv/bin/python benchmarks/sft_accuracy.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average_at_sft_start": [round(x, 2) for x in load_before],
        "model": {**model_config.to_dict(), "note": f"the tiny shape with vocab_size {model_config.vocab_size}"},
        "pretraining": {"recipe": "prototype", "settings": pretrain_config.to_dict(),
                        "steps": pretrain_summary["steps"], "batch_size": args.pretrain_batch, "context": 256,
                        "tokens_seen": pretrain_summary["tokens_seen"], "final_val_loss": pretrain_summary["final_val_loss"],
                        "copy_warmup": pretrain_summary.get("copy_warmup"),
                        "train_seconds_total": round(pretrain_seconds, 1),
                        "median_tokens_per_s": round(measured_tokens_per_s, 1)},
        "fine_tuning": {"settings": sft_config.to_dict(), "steps_done": summary["steps"],
                        "training_examples": json.loads((instructions / "meta.json").read_text())
                        .get("source_details", {}).get("train_examples"),
                        "stop_reason": summary["stop_reason"], "wall_time_s": round(summary["wall_time_s"], 1),
                        "compile_time_s": summary.get("compile_time_s"), "final_train_loss": summary["final_train_loss"],
                        "tokens_per_s": summary.get("tokens_per_s")},
        "held_out_exact_match": {"examples": report["held_out_exact_match"]["examples"],
                                 "pretrained_only": before["accuracy"], "fine_tuned": after["accuracy"],
                                 "by_family_before": before["by_family"], "by_family_after": after["by_family"],
                                 "wrong_samples_after": after["wrong_samples"]},
        "pretrained_copy_probe": name_copy_probe(pretrained, stories),
        "target": "fine-tuned >= 0.80 within the --sft-minutes budget; pretrained-only near 0",
        "met": after["accuracy"] >= 0.8 and summary["wall_time_s"] <= args.sft_minutes * 60 + 1,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "runs": {"pretrained": str(pretrained), "fine_tuned": str(tuned), "instructions": str(instructions)},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("held_out_exact_match", "met")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
