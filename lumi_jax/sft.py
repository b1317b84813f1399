"""Supervised fine-tuning: `lumi sft` and what it needs beyond the training loop.

    lumi sft --from runs/tiny --data data/instructions-tiny --out runs/tiny-sft [--lora-rank 8]

The pretrained run's parameters and tokenizer start a new run; the one training loop (train.py)
trains them on instruction data, where the loss counts responses only (the dataset's mask, made
by data/instructions.py in the template of data/template.py) and packed examples do not attend to
each other (the loader's segment ids). With `--lora-rank` it trains adapters instead of all
weights (lora.py), in the same loop. Before and after, the held-out examples are answered
greedily and scored by exact match (evaluate.exact_match).

Examples longer than the context are cut from the prompt side, in a copy of the dataset (the
original is never touched), so the model always sees the whole answer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from lumi_jax.config import load_train_config
from lumi_jax.data.instructions import held_out_examples
from lumi_jax.data.loader import TokenDataset, split_checksums
from lumi_jax.data.tokenizer import BOS_ID
from lumi_jax.errors import UserError
from lumi_jax.evaluate import exact_match
from lumi_jax.files import write_json_atomic
from lumi_jax.flags import (
    add_train_flags,
    non_negative_whole_number,
    positive_number,
    train_config_from_flags,
)
from lumi_jax.lora import LoraTraining
from lumi_jax.run_lock import RunLock
from lumi_jax.runs import load_run
from lumi_jax.step import FullTraining
from lumi_jax.train import train

# ---------------------------------------------------------------------------------------------
# Examples longer than the context: truncated from the prompt side.


def truncate_example(tokens: np.ndarray, mask: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Fit one packed example (BOS, prompt, response, EOS) into `max_len` tokens.

    Prompt tokens are dropped from the left, just after the BOS, so the model still sees the
    end of the question and the whole answer. Only when the response alone does not fit is the
    response cut at the end too. Returns (tokens, mask, what): what is "", "prompt" or "response".
    """
    if len(tokens) <= max_len:
        return tokens, mask, ""
    excess = len(tokens) - max_len
    prompt_len = int(np.argmax(mask[1:])) if mask[1:].any() else len(tokens) - 1  # context tokens after BOS
    drop = min(excess, prompt_len)
    tokens = np.concatenate([tokens[:1], tokens[1 + drop:]])
    mask = np.concatenate([mask[:1], mask[1 + drop:]])
    if len(tokens) <= max_len:
        return tokens, mask, "prompt"
    return tokens[:max_len], mask[:max_len], "response"


def example_bounds(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the packed examples (each starts with a BOS)."""
    starts = np.flatnonzero(tokens == BOS_ID)
    return starts, np.append(starts[1:], len(tokens))


def fit_to_context(dataset_dir: Path, context: int, out_dir: Path, log) -> tuple[Path, dict]:
    """The dataset to train on with windows of context + 1 tokens, and what was truncated.

    When no example is longer than a window, that is the dataset itself. Otherwise a truncated
    copy is written to `out_dir` (the original is never touched) and its path returned.
    """
    dataset = TokenDataset(dataset_dir)
    max_len = context + 1
    report = {"context": context, "examples": {}, "truncated_prompt": {}, "truncated_response": {}}
    too_long = False
    for name in ("train", "val"):
        starts, ends = example_bounds(np.asarray(dataset.split(name).tokens))
        report["examples"][name] = len(starts)
        too_long |= bool(np.any(ends - starts > max_len))
    if not too_long:
        for name in ("train", "val"):
            report["truncated_prompt"][name] = report["truncated_response"][name] = 0
        return Path(dataset_dir), report

    if out_dir.exists():
        meta_path = out_dir / "meta.json"
        ours = meta_path.is_file() and "truncated_from" in json.loads(meta_path.read_text(encoding="utf-8"))
        if not ours:
            raise UserError(f"{out_dir} exists and is not a truncated copy made by lumi sft; move it away "
                            "(lumi sft writes examples cut to the context there)")
    # Written into a hidden sibling and renamed into place when complete (our own earlier copy, rebuilt
    # from the source every time, is replaced only then): a crash never leaves half a dataset.
    temporary = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        meta = dict(dataset.meta)
        for name in ("train", "val"):
            split = dataset.split(name)
            tokens, mask = np.asarray(split.tokens), np.asarray(split.mask if split.mask is not None
                                                                   else np.ones(len(split), np.uint8))
            pieces, mask_pieces, counts = [], [], {"prompt": 0, "response": 0, "": 0}
            for start, end in zip(*example_bounds(tokens), strict=True):
                kept, kept_mask, what = truncate_example(tokens[start:end], mask[start:end], max_len)
                pieces.append(kept)
                mask_pieces.append(kept_mask)
                counts[what] += 1
            np.concatenate(pieces).astype(tokens.dtype).tofile(temporary / f"{name}.bin")
            np.concatenate(mask_pieces).astype(np.uint8).tofile(temporary / f"{name}_mask.bin")
            meta[f"{name}_tokens"] = int(sum(map(len, pieces)))
            report["truncated_prompt"][name] = counts["prompt"]
            report["truncated_response"][name] = counts["response"]
        meta.update(split_checksums(temporary, np.dtype(dataset.meta["token_dtype"])))
        meta["truncated_for_context"] = report
        meta["truncated_from"] = str(dataset_dir)
        rewritten = {"meta.json", "train.bin", "val.bin", "train_mask.bin", "val_mask.bin"}
        for extra in Path(dataset_dir).iterdir():  # tokenizer.model, val_examples.jsonl, ...
            if extra.is_file() and extra.name not in rewritten:
                shutil.copyfile(extra, temporary / extra.name)
        write_json_atomic(temporary / "meta.json", meta)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
            out_dir.rename(old)
            temporary.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            temporary.rename(out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for name in ("train", "val"):
        cut_prompt, cut_response = report["truncated_prompt"][name], report["truncated_response"][name]
        if cut_prompt or cut_response:
            log(f"{name}: {cut_prompt + cut_response:,} of {report['examples'][name]:,} examples are longer than "
                f"the context ({context} tokens + 1): {cut_prompt:,} truncated from the prompt side"
                + (f", {cut_response:,} with responses too long even alone (cut at the end)" if cut_response else ""))
    return out_dir, report


# ---------------------------------------------------------------------------------------------
# Fine-tuning.


def spread_sample(items: Sequence, count: int) -> list:
    """`count` items evenly spaced through `items` (held-out files are grouped by task family)."""
    if count <= 0 or not items:
        return []
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def check_instruction_data(data_dir: Path, tokenizer_sha256: str, from_run: Path):
    """The dataset, after checking it is instruction data made with the pretrained run's tokenizer."""
    if not Path(data_dir).is_dir():
        raise UserError(f"{data_dir}: no such dataset directory; prepare it with `lumi prepare --source "
                        f"sample-instructions --out {data_dir} --tokenizer {from_run}/tokenizer.model`")
    dataset = TokenDataset(data_dir)
    if dataset.tokenizer_sha256 != tokenizer_sha256:
        raise UserError(f"{data_dir} was tokenised with another tokenizer than the pretrained run {from_run} "
                        f"(sha256 {dataset.tokenizer_sha256[:12]} vs {tokenizer_sha256[:12]}); prepare it again "
                        f"with --tokenizer {from_run}/tokenizer.model")
    if dataset.meta["kind"] != "instructions":
        raise UserError(f"{data_dir} is {dataset.meta['kind']} data, not instructions; fine-tune on instruction "
                        "data (lumi prepare --source sample-instructions, or a .jsonl of instruction/input/output "
                        "or messages records), or continue pretraining with lumi train")
    dataset.check_ids()
    return dataset


def context_copy_dir(data_dir: Path, context: int) -> Path:
    return Path(data_dir).parent / f"{Path(data_dir).name}.context{context}"


def fine_tune(from_run: str | Path, data_dir: str | Path, out_dir: str | Path, train_config, *,
              lora_rank: int = 0, lora_alpha: float | None = None, eval_examples: int = 200,
              show_progress: bool = True, log=print) -> dict:
    """Fine-tune the pretrained run `from_run` on instruction data into `out_dir`; returns a report
    with the training summary and the held-out exact match before and after. Running it again into
    the same `out_dir` continues the fine-tuning from its latest checkpoint."""
    from_run, data_dir, out_dir = Path(from_run), Path(data_dir), Path(out_dir)
    if out_dir.resolve() == from_run.resolve():
        raise UserError(f"--out {out_dir} is the pretrained run itself; fine-tune into a new directory")
    pretrained = load_run(from_run)
    check_instruction_data(data_dir, pretrained.tokenizer.sha256, from_run)
    if lora_rank < 0:
        raise UserError(f"--lora-rank is {lora_rank}; use 0 for full fine-tuning or a small rank such as 8")
    context = train_config.context or pretrained.model_config.max_seq_len
    if context > pretrained.model_config.max_seq_len:
        raise UserError(f"context {context} is longer than the pretrained model's max_seq_len "
                        f"{pretrained.model_config.max_seq_len}; use --context {pretrained.model_config.max_seq_len} or less")
    train_data, truncation = fit_to_context(data_dir, context, context_copy_dir(data_dir, context), log)

    # One writer from the first score to sft.json: a second `lumi sft --out` there is refused at once.
    with RunLock(out_dir, enabled=jax.process_index() == 0):
        examples = spread_sample(held_out_examples(data_dir), eval_examples)
        before = exact_match(pretrained.model_config, pretrained.params, pretrained.tokenizer, examples) if examples else None
        if before is not None:
            log(f"held-out exact match before fine-tuning: {before['accuracy']:.1%} ({before['correct']}/{before['total']})")

        trained_kind = LoraTraining(lora_rank, lora_alpha) if lora_rank else FullTraining()
        summary = train(train_config, pretrained.model_config, train_data, out_dir, init_params=pretrained.params,
                        init_from=str(from_run), trained_kind=trained_kind, show_progress=show_progress,
                        resume_command=f"lumi sft --from {from_run} --data {data_dir} --out {out_dir}"
                        + (f" --lora-rank {lora_rank}" if lora_rank else ""))
        if summary["stop_reason"] == "nan":
            raise UserError(summary["message"])

        after = None
        if examples:
            tuned = load_run(out_dir)
            after = exact_match(tuned.model_config, tuned.params, tuned.tokenizer, examples)
            log(f"held-out exact match after fine-tuning: {after['accuracy']:.1%} ({after['correct']}/{after['total']})"
                + "".join(f"\n  {family}: {before['by_family'].get(family, 0):.0%} -> {accuracy:.0%}"
                          + (f" (trivial baseline {after['baselines'][family]['best']:.0%})"
                             if "baselines" in after else "")
                          for family, accuracy in after["by_family"].items()))
        report = {
            "from": str(from_run),
            "data": str(data_dir),
            "trained_on": str(train_data),
            "method": f"lora(rank={lora_rank}, alpha={lora_alpha or lora_rank})" if lora_rank else "full",
            "truncation": truncation,
            "held_out_exact_match": {"before": before, "after": after, "examples": len(examples)},
            "train_summary": summary,
        }
        write_json_atomic(out_dir / "sft.json", report)
    return report


# ---------------------------------------------------------------------------------------------
# `lumi sft`.

DEFAULT_RECIPE = "sft"
NOT_FOR_FINE_TUNING = {"copy_warmup_steps"}  # a fine-tuning starts from trained weights: no warm-up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_run", required=True,
                        help="the pretrained run to start from, e.g. runs/tiny (its parameters and tokenizer)")
    parser.add_argument("--data", required=True, help="instruction data prepared with the run's tokenizer, e.g. "
                        "lumi prepare --source sample-instructions --out data/instr --tokenizer runs/tiny/tokenizer.model")
    parser.add_argument("--out", required=True, help="the fine-tuned run directory, e.g. runs/tiny-sft")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="training recipe: a name in config/recipes or a "
                        f"JSON path (default {DEFAULT_RECIPE}); the flags below override it")
    parser.add_argument("--lora-rank", type=non_negative_whole_number, default=0, help="train rank-r LoRA adapters on the attention and "
                        "MLP matrices instead of all weights (merged into the weights on save); 0 = full fine-tuning")
    parser.add_argument("--lora-alpha", type=positive_number, help="LoRA scale numerator: updates are scaled by alpha/rank "
                        "(default alpha = rank)")
    parser.add_argument("--eval-examples", type=non_negative_whole_number, default=200, help="held-out examples scored by exact match "
                        "before and after (0: skip)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_train_flags(parser, exclude=NOT_FOR_FINE_TUNING)


def run(args: argparse.Namespace) -> int:
    train_config = train_config_from_flags(args, load_train_config(args.recipe).to_dict(), scale_warmup=True)
    fine_tune(args.from_run, args.data, args.out, train_config, lora_rank=args.lora_rank,
              lora_alpha=args.lora_alpha, eval_examples=args.eval_examples, show_progress=not args.quiet)
    return 0
