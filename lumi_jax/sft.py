"""Supervised fine-tuning: the instruction template, loss masks, and `lumi sft`.

The one instruction template (preparation, training, evaluation and `lumi generate --chat` all
use these functions, so the model is always asked in the shape it was taught):

    <BOS>Task: What is the first item?
    Input: shell, bee, kite
    Answer: shell<EOS>

The `Input:` line is left out when there is no input. Everything up to and including "Answer:"
is the PROMPT (loss weight 0); the response (with its leading space) and the EOS that ends it
are the TARGET (loss weight 1), so the model learns what to say and when to stop, never to echo
the question. A chat (a `messages` list) renders earlier turns as Task/Answer lines (a system
message as `System:`); one example is made per assistant turn, with the whole history before
it as its prompt.

Why this shape, and not alpaca's `### Instruction:` sections: each header is one token (every
tokenizer lumi trains holds the markers as pieces, TEMPLATE_MARKERS), so a sample-instructions
example is ~28 tokens with the tiny tokenizer where alpaca's headers alone would cost ~35 (a
tokenizer trained on simple stories has no '#' pieces): more examples per fine-tuning minute.
And every header ends with ": ", so each word of the input and of the answer is tokenised the
same way (as a space-prefixed piece, "▁shell"). Copying a word from the input into the answer is
then copying tokens, not learning a second spelling of each word (after a newline "shell" and
" shell" are different tokens).

Prompt and response are tokenised separately (the mask boundary then falls exactly between
tokens), so a generator must encode the prompt on its own too: `encode(format_prompt(...))`, with
a BOS in front, then decode until EOS and strip the leading space.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lumi_jax.errors import UserError
from lumi_jax.data.tokenizer import BOS_ID

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
    from lumi_jax.data.loader import TokenDataset

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
        shutil.rmtree(out_dir)  # our own earlier copy; rebuilt from the source every time
    out_dir.mkdir(parents=True)
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
        np.concatenate(pieces).astype(tokens.dtype).tofile(out_dir / f"{name}.bin")
        np.concatenate(mask_pieces).astype(np.uint8).tofile(out_dir / f"{name}_mask.bin")
        meta[f"{name}_tokens"] = int(sum(map(len, pieces)))
        report["truncated_prompt"][name] = counts["prompt"]
        report["truncated_response"][name] = counts["response"]
    meta["truncated_for_context"] = report
    meta["truncated_from"] = str(dataset_dir)
    rewritten = {"meta.json", "train.bin", "val.bin", "train_mask.bin", "val_mask.bin"}
    for extra in Path(dataset_dir).iterdir():  # tokenizer.model, val_examples.jsonl, ...
        if extra.is_file() and extra.name not in rewritten:
            shutil.copyfile(extra, out_dir / extra.name)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in ("train", "val"):
        cut_prompt, cut_response = report["truncated_prompt"][name], report["truncated_response"][name]
        if cut_prompt or cut_response:
            log(f"{name}: {cut_prompt + cut_response:,} of {report['examples'][name]:,} examples are longer than "
                f"the context ({context} tokens + 1): {cut_prompt:,} truncated from the prompt side"
                + (f", {cut_response:,} with responses too long even alone (cut at the end)" if cut_response else ""))
    return out_dir, report


# ---------------------------------------------------------------------------------------------
# Held-out exact match: greedy answers to the held-out prompts, compared after stripping.


def exact_match(model_config, params, tokenizer, examples: Sequence[dict], *, batch_size: int = 64) -> dict:
    """Greedy-decode each example's prompt (BOS + prompt, stop at EOS) and compare the stripped
    answer with the stripped expected response. Returns accuracy, counts, per-family accuracy and
    a few wrong answers to look at."""
    from lumi_jax.generate import generate_ids

    if not examples:
        raise UserError("no held-out examples to evaluate; the dataset's validation split is empty")
    expected = [e["response"].strip() for e in examples]
    longest = max(len(tokenizer.encode(text)) for text in expected)
    max_new_tokens = min(longest + 8, model_config.max_seq_len - 1)
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [tokenizer.encode(e["prompt"], bos=True) for e in chunk]
        results = generate_ids(model_config, params, prompts, max_new_tokens=max_new_tokens)
        answers.extend(tokenizer.decode(r.new_ids).strip() for r in results)
    correct = [a == b for a, b in zip(answers, expected, strict=True)]
    by_family: dict[str, list[bool]] = {}
    for example, ok in zip(examples, correct, strict=True):
        by_family.setdefault(example.get("family", "all"), []).append(ok)
    wrong = [{"prompt": e["prompt"], "expected": x, "answer": a}
             for e, x, a, ok in zip(examples, expected, answers, correct, strict=True) if not ok]
    return {
        "accuracy": sum(correct) / len(correct),
        "correct": sum(correct),
        "total": len(correct),
        "by_family": {family: sum(oks) / len(oks) for family, oks in sorted(by_family.items())},
        "wrong_samples": wrong[:5],
    }


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
    from lumi_jax.data.loader import TokenDataset

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
    return dataset


def context_copy_dir(data_dir: Path, context: int) -> Path:
    return Path(data_dir).parent / f"{Path(data_dir).name}.context{context}"


def fine_tune(from_run: str | Path, data_dir: str | Path, out_dir: str | Path, train_config, *,
              lora_rank: int = 0, lora_alpha: float | None = None, eval_examples: int = 200,
              show_progress: bool = True, log=print) -> dict:
    """Fine-tune the pretrained run `from_run` on instruction data into `out_dir`; returns a report
    with the training summary and the held-out exact match before and after."""
    from lumi_jax.data.instructions import held_out_examples
    from lumi_jax.runs import load_run
    from lumi_jax.train import train, write_json_atomic

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

    examples = spread_sample(held_out_examples(data_dir), eval_examples)
    before = exact_match(pretrained.model_config, pretrained.params, pretrained.tokenizer, examples) if examples else None
    if before is not None:
        log(f"held-out exact match before fine-tuning: {before['accuracy']:.1%} ({before['correct']}/{before['total']})")

    if lora_rank:
        from lumi_jax.lora import train_lora

        summary = train_lora(train_config, pretrained.model_config, pretrained.params, train_data, out_dir,
                             rank=lora_rank, alpha=lora_alpha, init_from=str(from_run), show_progress=show_progress)
    else:
        summary = train(train_config, pretrained.model_config, train_data, out_dir,
                        init_params=pretrained.params, init_from=str(from_run), show_progress=show_progress)
        if summary["stop_reason"] == "nan":
            raise UserError(summary["message"])

    after = None
    if examples:
        tuned = load_run(out_dir)
        after = exact_match(tuned.model_config, tuned.params, tuned.tokenizer, examples)
        log(f"held-out exact match after fine-tuning: {after['accuracy']:.1%} ({after['correct']}/{after['total']})"
            + "".join(f"\n  {family}: {before['by_family'].get(family, 0):.0%} -> {accuracy:.0%}"
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


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="from_run", required=True,
                        help="the pretrained run to start from, e.g. runs/tiny (its parameters and tokenizer)")
    parser.add_argument("--data", required=True, help="instruction data prepared with the run's tokenizer, e.g. "
                        "lumi prepare --source sample-instructions --out data/instr --tokenizer runs/tiny/tokenizer.model")
    parser.add_argument("--out", required=True, help="the fine-tuned run directory, e.g. runs/tiny-sft")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="training recipe: a name in config/recipes or a "
                        f"JSON path (default {DEFAULT_RECIPE}); the flags below override it")
    parser.add_argument("--lora-rank", type=int, default=0, help="train rank-r LoRA adapters on the attention and "
                        "MLP matrices instead of all weights (merged into the weights on save); 0 = full fine-tuning")
    parser.add_argument("--lora-alpha", type=float, help="LoRA scale numerator: updates are scaled by alpha/rank "
                        "(default alpha = rank)")
    parser.add_argument("--eval-examples", type=int, default=200, help="held-out examples scored by exact match "
                        "before and after (0: skip)")
    for flag, kind, text in (
        ("--steps", int, "optimizer updates"), ("--batch-size", int, "sequences per update"),
        ("--grad-accum", int, "micro-batches per update"), ("--context", int, "tokens per sequence"),
        ("--lr", float, "peak learning rate"), ("--warmup", int, "linear warmup steps"),
        ("--min-lr", float, "learning-rate floor at the last step"), ("--weight-decay", float, "AdamW weight decay"),
        ("--seed", int, "data-order seed"), ("--save-every", int, "checkpoint interval in steps"),
        ("--eval-every", int, "validation-loss interval in steps (0: none)"), ("--log-every", int, "metrics interval"),
        ("--keep", int, "checkpoints to keep"),
    ):
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop cleanly and save after this long")
    parser.add_argument("--dtype", choices=("bf16", "fp32", "bfloat16", "float32"), help="compute dtype")
    parser.add_argument("--mesh", help="device mesh, e.g. data=4 (default: all devices on data)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def run(args) -> int:
    from lumi_jax.train import train_config_from_args

    args.remat = args.tensorboard = None  # the train-flag defaults train_config_from_args expects
    train_config = train_config_from_args(args, stored=None)
    fine_tune(args.from_run, args.data, args.out, train_config, lora_rank=args.lora_rank,
              lora_alpha=args.lora_alpha, eval_examples=args.eval_examples, show_progress=not args.quiet)
    return 0
