"""Evaluation: validation loss, perplexity and bits per byte, baselines, samples, and reports.

    run + dataset ─► every validation window scored once ─► loss (nats/token), perplexity,
                                                            bits per byte, standard error
                 ─► the same targets under two baselines ─► uniform, unigram (train counts)
                 ─► samples for config/evaluation/prompts.json ─► distinct-n, repetition
                 ─► (fine-tuned runs) held-out exact match
                 ─► runs/NAME/eval.json, eval.md, a printed summary

Bits per byte make runs with different tokenizers comparable: a token's loss is spread over
the UTF-8 bytes of the text it stands for,

    bits per byte = (Σ nats over the scored tokens / ln 2) / (UTF-8 bytes those tokens encode).

Each token's byte count comes from the tokenizer itself (`token_byte_lengths`): a byte-fallback
piece is 1 byte, BOS/EOS/unk are 0, any other piece is its text's UTF-8 length. Over the whole
validation split this adds up to the dataset's `val_bytes` (a check that `evaluate` reports).

Baselines on the same targets: uniform (log V per token: a model that learned nothing) and
unigram (each token's add-one smoothed frequency in the training split: a model that learned
only which tokens are common). A trained model must beat both; `lumi assess` says by how much.

Sample statistics (over the generated tokens; the same statistics of real validation text of
the same length are reported next to them, so the numbers have a yardstick):
    distinct-n      unique n-grams / all n-grams, pooled over the samples (low: the model loops);
    repetition rate the share of a sample's 4-grams that already occurred earlier in that sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lumi_jax.config import REPO_ROOT, ModelConfig, read_json
from lumi_jax.data import loader as data_loader
from lumi_jax.data.instructions import held_out_examples
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, UNK_ID
from lumi_jax.errors import UserError
from lumi_jax.files import write_json_atomic, write_text_atomic
from lumi_jax.generate import Sampling, generate_ids
from lumi_jax.model import count_params
from lumi_jax.runs import latest_run, load_run
from lumi_jax.step import loss_sums

PROMPTS_PATH = REPO_ROOT / "config" / "evaluation" / "prompts.json"
EVAL_BATCH_SIZE = 8
QUICK_WINDOWS = 64  # --quick scores the first 64 validation windows (8 batches of 8)
SAMPLE_SETTINGS = Sampling(temperature=0.8, top_k=0, top_p=0.95)
SAMPLE_SEED = 0
SAMPLE_TOKENS = 64
QUICK_SAMPLE_TOKENS = 32
REPETITION_N = 4
EXACT_MATCH_EXAMPLES = 200
QUICK_EXACT_MATCH_EXAMPLES = 50
SCORING_SHARE = 0.5  # of a time-limited evaluation, for scoring windows; the rest is samples and exact match
LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------
# The arithmetic.


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """(Σ nats / ln 2) / bytes: the model's code length per byte of the text it scored."""
    if total_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of scored text")
    return total_nats / LN2 / total_bytes


_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes of text each token id stands for (SentencePiece writes a space as '▁')."""
    lengths = np.zeros(tokenizer.vocab_size, np.int64)
    for token_id in range(tokenizer.vocab_size):
        if token_id in (UNK_ID, BOS_ID, EOS_ID):
            continue
        piece = tokenizer.id_to_piece(token_id)
        lengths[token_id] = 1 if _BYTE_PIECE.match(piece) else len(piece.replace("\u2581", " ").encode("utf-8"))
    return lengths


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """log p(token) from training-split counts, add-one smoothed so no token has probability 0."""
    counts = np.zeros(vocab_size, np.int64)
    for start in range(0, len(train_tokens), chunk):
        counts += np.bincount(np.asarray(train_tokens[start:start + chunk], np.int64), minlength=vocab_size)
    return np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float | None:
    """Unique n-grams over all n-grams, pooled over the samples (None when there are none)."""
    grams = [tuple(ids[i:i + n]) for ids in samples for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(ids: Sequence[int], n: int = REPETITION_N) -> float | None:
    """The share of this sequence's n-grams that already occurred earlier in it."""
    seen, repeats, total = set(), 0, 0
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        repeats += gram in seen
        total += 1
        seen.add(gram)
    return repeats / total if total else None


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


# ---------------------------------------------------------------------------------------------
# Validation loss and baselines.


@functools.partial(jax.jit, static_argnames=("config",))
def _window_sums(params, batch, *, config: ModelConfig):
    """Per window: (Σ weight·nats, Σ weight), by training's own loss (step.loss_sums). Per-window
    sums give the loss and its spread; packed instruction examples carry their segments."""
    return loss_sums(params, config, batch, per_row=True)


def score_split(config: ModelConfig, params, split, tokenizer, *, context: int, max_windows: int | None,
                unigram_log_p: np.ndarray, batch_size: int = EVAL_BATCH_SIZE,
                deadline: float | None = None) -> dict[str, Any]:
    """Score the split's windows in order (all, or the first `max_windows`) with the model and the
    baselines; every target token counts once, weighted by the dataset's loss mask. Past
    `deadline` (a perf_counter time) it stops after the batch in hand, having scored at least
    QUICK_WINDOWS windows: a time-boxed session then reports the first windows, and says so."""
    byte_lengths = token_byte_lengths(tokenizer)
    max_batches = None if max_windows is None else -(-max_windows // batch_size)
    model_nats, unigram_nats, tokens, n_bytes = 0.0, 0.0, 0.0, 0
    window_nats: list[np.ndarray] = []
    window_tokens: list[np.ndarray] = []
    for batch in data_loader.validation_batches(split, batch_size=batch_size, context=context,
                                                max_batches=max_batches):
        nats_B, count_B = _window_sums(params, batch.arrays(), config=config)
        nats_B, count_B = np.asarray(nats_B, np.float64), np.asarray(count_B, np.float64)
        keep_B = count_B > 0  # rows of padding in the last batch
        window_nats.append(nats_B[keep_B])
        window_tokens.append(count_B[keep_B])
        model_nats += float(nats_B.sum())
        tokens += float(count_B.sum())
        weights = batch.weights.astype(np.float64)
        unigram_nats += float(-(unigram_log_p[batch.targets] * weights).sum())
        n_bytes += int((byte_lengths[batch.targets] * (weights > 0)).sum())
        if deadline is not None and time.perf_counter() > deadline and sum(map(len, window_nats)) >= QUICK_WINDOWS:
            break
    if tokens == 0:
        raise UserError(f"{split.dataset_path}: the {split.name} split has no scored tokens; prepare data with "
                        "a validation split (lumi prepare --val-fraction)")
    nats_W, tokens_W = np.concatenate(window_nats), np.concatenate(window_tokens)
    loss = model_nats / tokens
    # Standard error of the loss from the spread of per-window losses (windows weighted by size):
    # how far the number could move on another sample of text of this size.
    per_window_W = nats_W / tokens_W
    share_W = tokens_W / tokens_W.sum()
    spread = float(np.sqrt(np.sum(share_W * (per_window_W - loss) ** 2)))
    stderr = spread / math.sqrt(len(nats_W)) if len(nats_W) > 1 else None
    vocab = config.vocab_size
    return {
        "windows": int(len(nats_W)),
        "tokens": int(tokens),
        "bytes": n_bytes,
        "loss": loss,
        "loss_stderr": stderr,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bits_per_token": loss / LN2,
        "bits_per_byte": bits_per_byte(model_nats, n_bytes),
        "bytes_per_token": n_bytes / tokens,
        "baselines": {
            "uniform": {"loss": math.log(vocab), "bits_per_byte": bits_per_byte(math.log(vocab) * tokens, n_bytes)},
            "unigram": {"loss": unigram_nats / tokens, "bits_per_byte": bits_per_byte(unigram_nats, n_bytes)},
        },
    }


# ---------------------------------------------------------------------------------------------
# Samples.


def load_prompts(path: Path = PROMPTS_PATH) -> dict[str, list[str]]:
    data = read_json(path)
    prompts = {category: values for category, values in data.items() if not category.startswith("_")}
    if not prompts or not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in prompts.values()):
        raise UserError(f"{path}: expected {{category: [prompt strings]}}; fix the file")
    return prompts


def reference_statistics(split, length: int, windows: int) -> dict[str, float | None]:
    """Distinct-n and repetition of real validation text, in as many windows as there are samples,
    each as long as a sample (distinct-n falls as more text is pooled, so the sizes must match)."""
    total = len(split)
    if total < length:
        return {"distinct_1": None, "distinct_2": None, "repetition_rate": None}
    starts = np.linspace(0, total - length, num=windows, dtype=np.int64)
    texts = [np.asarray(split.tokens[s:s + length], np.int64).tolist() for s in starts]
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "repetition_rate": mean_or_none([repetition_rate(t) for t in texts])}


def sample_prompts(config: ModelConfig, params, tokenizer, prompts: dict[str, list[str]], *,
                   max_new_tokens: int, reference_split=None) -> dict[str, Any]:
    """Continue every prompt with the fixed sample settings; statistics over the new tokens."""
    flat = [(category, text) for category, texts in prompts.items() for text in texts]
    results = generate_ids(config, params, [tokenizer.encode(text, bos=True) for _, text in flat],
                           max_new_tokens=max_new_tokens, sampling=SAMPLE_SETTINGS, seed=SAMPLE_SEED)
    by_category: dict[str, list[dict]] = {}
    for (category, text), result in zip(flat, results, strict=True):
        by_category.setdefault(category, []).append({
            "prompt": text, "completion": tokenizer.decode(result.new_ids), "tokens": len(result.new_ids),
            "hit_eos": result.hit_eos, "repetition_rate": repetition_rate(result.new_ids)})
    generated = [r.new_ids for r in results]
    s = SAMPLE_SETTINGS
    report = {
        "settings": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "seed": SAMPLE_SEED,
                     "max_new_tokens": max_new_tokens, "repetition_n": REPETITION_N},
        "by_category": by_category,
        "distinct_1": distinct_n(generated, 1),
        "distinct_2": distinct_n(generated, 2),
        "repetition_rate": mean_or_none([repetition_rate(ids) for ids in generated]),
        "mean_tokens": float(np.mean([len(ids) for ids in generated])),
    }
    if reference_split is not None:
        report["reference_text"] = reference_statistics(reference_split, max_new_tokens, windows=len(flat))
    return report


# ---------------------------------------------------------------------------------------------
# Held-out exact match: greedy answers to the held-out prompts, compared after stripping.


def exact_match(model_config, params, tokenizer, examples: Sequence[dict], *, batch_size: int = 64) -> dict:
    """Greedy-decode each example's prompt (BOS + prompt, stop at EOS) and compare the stripped
    answer with the stripped expected response. Returns accuracy, counts, per-family accuracy and
    a few wrong answers to look at."""
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
    report = {
        "accuracy": sum(correct) / len(correct),
        "correct": sum(correct),
        "total": len(correct),
        "by_family": {family: sum(oks) / len(oks) for family, oks in sorted(by_family.items())},
        "wrong_samples": wrong[:5],
    }
    if all("candidates" in e for e in examples):
        report["baselines"] = trivial_baselines(examples)
    return report


def trivial_baselines(examples: Sequence[dict]) -> dict[str, dict[str, float]]:
    """What answerers that read no more than the prompt's surface score, overall and by family:
    `pick_from_prompt` picks uniformly among the answers the prompt offers (its expected score,
    exactly), `most_common_answer` says the task's most common training answer, and `best` is
    the better of the two: the bar a fine-tuned model must clear."""
    def scores(chosen: Sequence[dict]) -> dict[str, float]:
        pick = sum(1 / len(e["candidates"]) if e["response"].strip() in e["candidates"] else 0.0 for e in chosen)
        common = sum(e.get("most_common_answer", "").strip() == e["response"].strip() for e in chosen)
        values = {"pick_from_prompt": pick / len(chosen), "most_common_answer": common / len(chosen)}
        return {**values, "best": max(values.values())}

    families = sorted({e.get("family", "all") for e in examples})
    return {"all": scores(examples),
            **{family: scores([e for e in examples if e.get("family", "all") == family]) for family in families}}


# ---------------------------------------------------------------------------------------------
# A whole run.


def open_run_dataset(loaded, data_dir: str | Path | None):
    """The dataset to evaluate on (default: the one the run trained on), checked against the run."""
    stored = loaded.config.get("data", {}).get("path")
    if data_dir is None:
        if not stored:
            raise UserError(f"{loaded.path}/config.json names no dataset; pass --data data/NAME")
        # A relative path was relative to where training ran: usually the project root, which
        # holds runs/NAME, so also try it from there when evaluating from elsewhere.
        candidates = [Path(stored)]
        if not Path(stored).is_absolute():
            candidates.append(Path(loaded.path).resolve().parent.parent / stored)
        data_dir = next((c for c in candidates if c.is_dir()), Path(stored))
        if not data_dir.is_dir():
            raise UserError(f"{data_dir}: the run's dataset is not there (moved or deleted); pass --data "
                            "with a dataset prepared with the run's tokenizer")
    dataset = data_loader.TokenDataset(data_dir)
    if dataset.tokenizer_sha256 != loaded.tokenizer.sha256:
        raise UserError(f"{data_dir}: was tokenised with another tokenizer than the run {loaded.path} "
                        f"(sha256 {dataset.tokenizer_sha256[:12]} vs {loaded.tokenizer.sha256[:12]}); evaluate on "
                        f"the run's own data, or prepare this text with --tokenizer {loaded.path}/tokenizer.model")
    dataset.check_ids(loaded.model_config.vocab_size)  # an id outside the vocabulary would score as nan
    return Path(data_dir), dataset


def evaluate_loaded(loaded, data_dir: str | Path | None = None, *, quick: bool = False,
                    samples: bool = True, prompts_path: Path = PROMPTS_PATH,
                    time_limit_s: float | None = None) -> dict[str, Any]:
    """Evaluate an already loaded run (`lumi_jax.runs.load_run`); returns the eval.json content.

    `time_limit_s`: a session's evaluation must end on time. Scoring stops at SCORING_SHARE of
    it (after at least the quick windows; `whole_split` then says false), and the samples are
    the quick ones when less than a minute is left for them."""
    started = time.perf_counter()
    deadline = None if time_limit_s is None else started + SCORING_SHARE * time_limit_s
    data_dir, dataset = open_run_dataset(loaded, data_dir)
    # Scored in float32 whatever the training compute dtype: the reported number is the model's,
    # not bfloat16 rounding's (parameters are float32 in every checkpoint).
    config = dataclasses.replace(loaded.model_config, dtype="float32")
    context = min(loaded.train_config.context or config.max_seq_len, config.max_seq_len)
    val_split = dataset.split("val")
    unigram = unigram_log_probs(dataset.split("train").tokens, config.vocab_size)
    validation = score_split(config, loaded.params, val_split, loaded.tokenizer, context=context,
                             max_windows=QUICK_WINDOWS if quick else None, unigram_log_p=unigram, deadline=deadline)
    whole = validation["windows"] == -(-(len(val_split) - 1) // context)
    validation["whole_split"] = whole
    validation["context"] = context
    validation["dataset_val_bytes"] = int(dataset.meta["val_bytes"])
    baselines = validation.pop("baselines")
    report: dict[str, Any] = {
        "run": str(loaded.path),
        "step": loaded.step,
        "data": str(data_dir),
        "quick": quick,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {"name": config.name, "params": count_params(loaded.params), "vocab_size": config.vocab_size,
                  "compute_dtype": config.dtype},
        "validation": validation,
        "baselines": baselines,
        "gain_over_unigram_bits_per_byte": baselines["unigram"]["bits_per_byte"] - validation["bits_per_byte"],
        "samples": None,
        "exact_match": None,
    }
    hurried = time_limit_s is not None and started + time_limit_s - time.perf_counter() < 60
    if samples:
        report["samples"] = sample_prompts(config, loaded.params, loaded.tokenizer, load_prompts(prompts_path),
                                           max_new_tokens=QUICK_SAMPLE_TOKENS if quick or hurried else SAMPLE_TOKENS,
                                           reference_split=val_split)
    if dataset.meta.get("kind") == "instructions":
        examples = held_out_examples(data_dir)[:QUICK_EXACT_MATCH_EXAMPLES if quick or hurried else EXACT_MATCH_EXAMPLES]
        if examples:
            report["exact_match"] = exact_match(config, loaded.params, loaded.tokenizer, examples)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, *, quick: bool = False,
                 step: int | None = None, samples: bool = True, write: bool = True,
                 time_limit_s: float | None = None) -> dict[str, Any]:
    """Evaluate runs/NAME; with `write`, save runs/NAME/eval.json and eval.md. Returns the report."""
    loaded = load_run(run_dir, step=step)
    report = evaluate_loaded(loaded, data_dir, quick=quick, samples=samples, time_limit_s=time_limit_s)
    if write:
        write_json_atomic(Path(run_dir) / "eval.json", report)
        write_text_atomic(Path(run_dir) / "eval.md", render_markdown(report))
    return report


# ---------------------------------------------------------------------------------------------
# Reports.


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, model, unigram, uniform) rows shared by the markdown and the terminal summary."""
    v, b = report["validation"], report["baselines"]
    return [
        ("loss (nats/token)", _fmt(v["loss"]) + (f" ± {v['loss_stderr']:.3f}" if v["loss_stderr"] else ""),
         _fmt(b["unigram"]["loss"]), _fmt(b["uniform"]["loss"])),
        ("perplexity", _fmt(v["perplexity"], 1), _fmt(math.exp(b["unigram"]["loss"]), 1),
         _fmt(math.exp(b["uniform"]["loss"]), 1)),
        ("bits per byte", _fmt(v["bits_per_byte"]), _fmt(b["unigram"]["bits_per_byte"]),
         _fmt(b["uniform"]["bits_per_byte"])),
    ]


def render_markdown(report: dict[str, Any]) -> str:
    v = report["validation"]
    scope = "whole validation split" if v["whole_split"] else f"first {v['windows']} validation windows (--quick)"
    lines = [
        f"# Evaluation of {report['run']} (step {report['step']})",
        "",
        f"Model `{report['model']['name']}`, {report['model']['params']:,} parameters; data `{report['data']}`; "
        f"{scope}: {v['tokens']:,} tokens, {v['bytes']:,} bytes ({v['bytes_per_token']:.2f} bytes/token), "
        f"context {v['context']}. Made {report['created']} in {report['seconds']} s.",
        "",
        "| | model | unigram baseline | uniform baseline |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)],
        "",
        f"Gain over the unigram baseline: **{report['gain_over_unigram_bits_per_byte']:.3f} bits per byte**.",
    ]
    em = report.get("exact_match")
    if em:
        lines += ["", f"Held-out exact match: **{em['accuracy']:.1%}** ({em['correct']}/{em['total']})"]
        lines += [f"- {family}: {accuracy:.0%}" for family, accuracy in em.get("by_family", {}).items()]
    s = report.get("samples")
    if s:
        ref = s.get("reference_text") or {}
        st = s["settings"]
        lines += [
            "", "## Samples", "",
            f"Temperature {st['temperature']}, top-p {st['top_p']}, top-k {st['top_k'] or 'off'}, seed {st['seed']}, "
            f"up to {st['max_new_tokens']} new tokens.",
            "",
            "| | samples | real validation text |", "|---|---|---|",
            f"| distinct-1 | {_fmt(s['distinct_1'])} | {_fmt(ref.get('distinct_1'))} |",
            f"| distinct-2 | {_fmt(s['distinct_2'])} | {_fmt(ref.get('distinct_2'))} |",
            f"| repetition rate ({st['repetition_n']}-grams) | {_fmt(s['repetition_rate'])} | "
            f"{_fmt(ref.get('repetition_rate'))} |",
        ]
        for category, items in s["by_category"].items():
            lines += ["", f"### {category}", ""]
            for item in items:
                text = (item["prompt"] + "⟨" + item["completion"] + "⟩").replace("\n", "↵ ")
                lines.append(f"- {text}")
    return "\n".join(lines) + "\n"


def print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    v = report["validation"]
    console = Console()
    table = Table(title=f"{report['run']} · step {report['step']} · "
                        f"{'whole validation split' if v['whole_split'] else 'quick subset'} "
                        f"({v['tokens']:,} tokens)")
    for column in ("", "model", "unigram", "uniform"):
        table.add_column(column, justify="right" if column else "left")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(f"gain over unigram: [bold]{report['gain_over_unigram_bits_per_byte']:.3f}[/bold] bits per byte")
    em = report.get("exact_match")
    if em:
        console.print(f"held-out exact match: [bold]{em['accuracy']:.1%}[/bold] ({em['correct']}/{em['total']})")
    s = report.get("samples")
    if s:
        ref = s.get("reference_text") or {}
        console.print(f"samples: distinct-2 {_fmt(s['distinct_2'])} (real text {_fmt(ref.get('distinct_2'))}), "
                      f"repetition {_fmt(s['repetition_rate'])} (real text {_fmt(ref.get('repetition_rate'))})")
        for category, items in s["by_category"].items():
            item = items[0]
            console.print(f"[dim]{escape(category)}:[/dim] [bold]{escape(item['prompt'])}[/bold]"
                          f"{escape(item['completion'][:160])}", highlight=False)


# ---------------------------------------------------------------------------------------------
# `lumi evaluate`.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="the run directory (default: the latest run under runs/)")
    parser.add_argument("--data", help="the dataset (default: the one the run trained on); it must use the "
                        "run's tokenizer")
    parser.add_argument("--quick", action="store_true", help=f"score only the first {QUICK_WINDOWS} validation "
                        "windows and shorter samples")
    parser.add_argument("--step", type=int, help="the checkpoint step (default: the latest)")
    parser.add_argument("--no-samples", action="store_true", help="skip the prompt samples")
    parser.add_argument("--json", action="store_true", help="print eval.json instead of the summary")


def run(args: argparse.Namespace) -> int:

    run_dir = Path(args.run) if args.run else latest_run()
    report = evaluate_run(run_dir, args.data, quick=args.quick, step=args.step, samples=not args.no_samples)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_summary(report)
        print(f"wrote {run_dir / 'eval.json'} and {run_dir / 'eval.md'}")
    return 0
