"""Text generation: a prefill, then one compiled decoding loop over a fixed-size KV cache.

    prompts ─► left-pad to a bucket P ─► prefill (one call, T = P) ─► while_loop of T = 1 calls
                                          writes cache slots 0..P-1     writes slot P + i, samples token i + 1

Everything from the prefill to the last token is ONE jitted function (`_decode`). Its shapes are
bucketed — batch rows, prompt length and new tokens each rounded up to a power of two — so calls
with similar prompts reuse the compiled function, and the number of new tokens, the sampling
settings, the seed and the end-of-sequence id are traced values that never recompile anything.

Batched prompts of different lengths are left-padded: the padding slots are hidden from
attention by the key mask, and RoPE depends only on the distance between positions, so a padded
row computes exactly what it would alone. A row stops at EOS (its later tokens are discarded);
the loop stops when every row has stopped or the token budget is spent.

Sampling, in order: temperature, then top-k (keep the k most likely), then top-p (keep the
smallest set of most likely tokens whose probability reaches p), then a categorical draw.
Greedy decoding (`greedy=True` or temperature 0) takes the arg-max of the raw logits.

Streaming: with `on_token`, the loop calls back to the host after every token (an ordered
`io_callback`), so text appears as it is made; without it nothing leaves the device until the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from lumi_jax.config import ModelConfig
from lumi_jax.data import template
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID
from lumi_jax.errors import UserError
from lumi_jax.model import Transformer, decoding_params, init_cache
from lumi_jax.runs import latest_run, load_run

MIN_PROMPT_BUCKET = 8
DEFAULT_NEW_TOKENS = 128
MIN_NEW_TOKENS_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    greedy: bool = False

    def validate(self) -> None:
        if not 0 <= self.temperature <= 100:
            raise UserError(f"temperature is {self.temperature}; use a value in [0, 100], "
                            "e.g. 0.8 (0 means greedy)")
        if self.top_k < 0:
            raise UserError(f"top-k is {self.top_k}; use 0 (off) or a positive number of tokens")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p is {self.top_p}; use a probability mass in (0, 1], e.g. 0.95 (1 is off)")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


GREEDY = Sampling(temperature=0.0, top_k=0, top_p=1.0, greedy=True)


@dataclasses.dataclass(frozen=True)
class Generated:
    """One prompt's result: the new token ids (EOS excluded) and why generation stopped."""

    prompt_ids: list[int]
    new_ids: list[int]
    hit_eos: bool


# ---------------------------------------------------------------------------------------------
# Sampling: pure functions of (logits, settings), shared by the loop and the tests.


BISECTION_STEPS = 40  # halvings of the value range: far below float32 resolution of any gap


def _largest_threshold(values_BV: jax.Array, keeps_enough) -> jax.Array:
    """The largest t (per row) with keeps_enough(values >= t) still true, by bisection.

    Finding a top-k or top-p cut this way costs a few dozen passes over V values, where a sort
    of the vocabulary at every decoding step costs several times more on a CPU.
    """
    low_B1 = jnp.min(values_BV, axis=-1, keepdims=True)  # keeps everything: always enough
    high_B1 = jnp.max(values_BV, axis=-1, keepdims=True)

    def halve(_, bounds):
        low, high = bounds
        middle = (low + high) / 2
        enough = keeps_enough(values_BV >= middle)
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

    low_B1, high_B1 = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (low_B1, high_B1))
    # The top value itself may be the answer (e.g. top-k 1): bisection only approaches it.
    return jnp.where(keeps_enough(values_BV >= high_B1), high_B1, low_B1)


def filter_logits(logits_BV: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Scale by temperature, then set every token outside top-k and top-p to -inf.

    top-k keeps the k largest logits; top-p then keeps the smallest set of most likely tokens
    whose probabilities (renormalised over what top-k kept) sum to at least p. Tokens tied with
    the last kept one are kept too. top_k 0 and top_p ≥ 1 switch the filters off, and a filter
    that is off costs nothing (`lax.cond` runs only the branch in use).
    """
    V = logits_BV.shape[-1]
    logits_BV = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)

    def keep_top_k(logits_BV):
        kth_B1 = _largest_threshold(logits_BV, lambda kept_BV: jnp.sum(kept_BV, axis=-1, keepdims=True) >= top_k)
        return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)

    def keep_top_p(logits_BV):
        probs_BV = jax.nn.softmax(logits_BV, axis=-1)
        cut_B1 = _largest_threshold(
            probs_BV, lambda kept_BV: jnp.sum(jnp.where(kept_BV, probs_BV, 0.0), axis=-1, keepdims=True) >= top_p)
        return jnp.where(probs_BV >= cut_B1, logits_BV, -jnp.inf)

    def unchanged(logits_BV):
        return logits_BV

    logits_BV = jax.lax.cond((top_k > 0) & (top_k < V), keep_top_k, unchanged, logits_BV)
    return jax.lax.cond(top_p < 1.0, keep_top_p, unchanged, logits_BV)


DRAW_BLOCK = 256  # tokens per block of the two-level inverse CDF in `draw`


def draw(logits_BV: jax.Array, key: jax.Array) -> jax.Array:
    """One token per row, drawn with probability softmax(logits) — by inverse CDF, with one
    uniform number per row.

    `jax.random.categorical` adds Gumbel noise to every logit: V random numbers per token, the
    costliest part of sampling over a 32,000-token vocabulary on a CPU (~0.6 ms a token, more
    than all the filters). Here one uniform u is placed on the cumulative weights instead.
    The cumulation is two-level: over blocks of DRAW_BLOCK tokens, then within the chosen
    block, so a float32 running sum spans ~V/256 + 256 terms and not V, and the rounding that
    would bend the odds of rare tokens late in the vocabulary stays ~100× smaller. A token of
    weight 0 (-inf logit: filtered out) is never drawn.
    """
    B, V = logits_BV.shape
    R = DRAW_BLOCK
    weights_BV = jnp.exp(logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True))
    weights_BCR = jnp.pad(weights_BV, ((0, 0), (0, -V % R))).reshape(B, -1, R)
    block_BC = jnp.sum(weights_BCR, axis=-1)
    ends_BC = jnp.cumsum(block_BC, axis=-1)
    u_B1 = jax.random.uniform(key, (B, 1)) * ends_BC[:, -1:]

    def first_after(ends, u, weights):
        """The first index whose cumulative end exceeds u; rounding can push u past the last
        end, so the answer is capped at the last index of positive weight."""
        index = jnp.sum(ends <= u, axis=-1)
        last_positive = weights.shape[-1] - 1 - jnp.argmax(weights[..., ::-1] > 0, axis=-1)
        return jnp.minimum(index, last_positive)

    block_B = first_after(ends_BC, u_B1, block_BC)
    inner_BR = jnp.take_along_axis(weights_BCR, block_B[:, None, None], axis=1)[:, 0]
    start_B1 = jnp.take_along_axis(ends_BC - block_BC, block_B[:, None], axis=-1)
    within_B = first_after(jnp.cumsum(inner_BR, axis=-1), u_B1 - start_B1, inner_BR)
    return (block_B * R + within_B).astype(jnp.int32)


def sample_tokens(logits_BV, key, temperature, top_k, top_p, greedy) -> jax.Array:
    """The next token of each row: arg-max when greedy, else a draw from the filtered logits.

    A `lax.cond` runs only the branch in use: greedy decoding pays nothing for the filters.
    """
    def filtered_draw(logits_BV):
        return draw(filter_logits(logits_BV, temperature, top_k, top_p), key)

    return jax.lax.cond(greedy | (temperature == 0), arg_max, filtered_draw, logits_BV).astype(jnp.int32)


def arg_max(values_BV: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (the first largest value; a NaN counts as the largest), as
    two plain reductions: XLA:CPU ran jnp.argmax's paired value-and-index reduction over a
    32,000-token vocabulary in ~140 µs at every decoding step; with these, the whole choice of
    token takes ~35 µs (benchmarks/decode_profile.py)."""
    top_B1 = jnp.max(values_BV, axis=-1, keepdims=True)
    V = values_BV.shape[-1]
    is_top_BV = (values_BV == top_B1) | jnp.isnan(values_BV)
    return jnp.min(jnp.where(is_top_BV, jnp.arange(V), V), axis=-1)


# ---------------------------------------------------------------------------------------------
# The compiled decoder.

# The host-side listener of the streaming callback; one slot, so the compiled loop never changes.
_stream_listener: Callable[[int, np.ndarray], None] | None = None


def _forward_stream(step, tokens_B) -> None:
    if _stream_listener is not None:
        _stream_listener(int(step), np.asarray(tokens_B))


# The weights of the last call with their decoding layouts (model.decoding_params), and the
# arrays they were made from: calls that each decode a few tokens (evaluation, chat) reuse them
# instead of copying ~60 MB of weights each time (llama2.c's 15M shape).
_decoding_layout: tuple[list, Any] | None = None


def with_decoding_layout(params: Any, config: ModelConfig) -> Any:
    """`params` with model.decoding_params' copies, on a CPU: there decoding streams the weights
    from memory one matrix-vector product at a time, and those layouts were measured faster
    (docs/benchmarks.md). They hold as much again as the joined weights and a tied head, while
    this process keeps them; `lumi architecture` counts them. Elsewhere `params` as they are: on
    an accelerator the copies would cost scarce memory for a gain not measured there."""
    global _decoding_layout
    if jax.default_backend() != "cpu":
        return params
    leaves = jax.tree.leaves(params)
    if (_decoding_layout is None or len(_decoding_layout[0]) != len(leaves)
            or any(a is not b for a, b in zip(_decoding_layout[0], leaves, strict=True))):
        _decoding_layout = (leaves, decoding_params(params, config))
    return _decoding_layout[1]


@functools.partial(jax.jit, static_argnames=("config", "new_tokens_bucket", "stream"))
def _decode(params, prompt_BP, prompt_mask_BP, row_done_B, max_new_tokens, key, temperature, top_k, top_p,
            greedy, eos_id, *, config: ModelConfig, new_tokens_bucket: int, stream: bool):
    """Prefill the left-padded prompts, then decode up to `max_new_tokens` (≤ the bucket).

    Returns (new tokens (B, bucket), count written). A row's tokens after its EOS are EOS.
    """
    B, P = prompt_BP.shape
    N = new_tokens_bucket
    model = Transformer(config)
    cache = init_cache(config, B, P + N)
    key_mask_BS = jnp.concatenate([prompt_mask_BP, jnp.ones((B, N), bool)], axis=1)

    def next_token(logits_BV, key, done_B):
        token_B = sample_tokens(logits_BV, key, temperature, top_k, top_p, greedy)
        token_B = jnp.where(done_B, eos_id, token_B)
        return token_B, done_B | (token_B == eos_id)

    # The prefill needs only each row's last logits: the head over every prompt position would
    # be P times the work (scored_N takes flat positions b·P + P − 1).
    last_B = jnp.arange(B) * P + P - 1
    logits_BV, cache = model.apply({"params": params}, prompt_BP, cache, 0, key_mask_BS, scored_N=last_B)
    key, step_key = jax.random.split(key)
    first_B, done_B = next_token(logits_BV, step_key, row_done_B)
    out_BN = jnp.full((B, N), eos_id, jnp.int32).at[:, 0].set(first_B)
    if stream:
        io_callback(_forward_stream, None, 0, first_B, ordered=True)

    def keep_going(state):
        i, _cache, _out, done_B, _key = state
        return (i + 1 < max_new_tokens) & ~jnp.all(done_B)

    def decode_one(state):
        i, cache, out_BN, done_B, key = state
        # Finished rows hold the EOS id, which may lie outside the vocabulary (-1: "never stop").
        token_B1 = jnp.clip(jax.lax.dynamic_slice_in_dim(out_BN, i, 1, axis=1), 0, config.vocab_size - 1)
        logits_B1V, cache = model.apply({"params": params}, token_B1, cache, P + i, key_mask_BS)
        key, step_key = jax.random.split(key)
        token_B, done_B = next_token(logits_B1V[:, 0], step_key, done_B)
        out_BN = jax.lax.dynamic_update_slice_in_dim(out_BN, token_B[:, None], i + 1, axis=1)
        if stream:
            io_callback(_forward_stream, None, i + 1, token_B, ordered=True)
        return i + 1, cache, out_BN, done_B, key

    count, _cache, out_BN, _done, _key = jax.lax.while_loop(
        keep_going, decode_one, (jnp.int32(0), cache, out_BN, done_B, key))
    return out_BN, count + 1


def bucket(n: int, smallest: int, largest: int | None = None) -> int:
    """The power of two ≥ n (at least `smallest`), capped at `largest` when n fits under it."""
    size = smallest
    while size < n:
        size *= 2
    return size if largest is None or n > largest else min(size, largest)


def compiled_count() -> int:
    """How many shape buckets the decoder has compiled in this process (for tests and benchmarks)."""
    return _decode._cache_size()


def _fit_prompt(ids: list[int], room: int) -> list[int]:
    """The prompt's last `room` ids; a leading BOS stays (as lumi_jax.sft cuts over-long examples)."""
    if len(ids) <= room:
        return ids
    if ids[0] == BOS_ID and room > 1:
        return [BOS_ID, *ids[len(ids) - room + 1:]]
    return ids[len(ids) - room:]


def generate_ids(
    config: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    seed: int = 0,
    eos_id: int = EOS_ID,
    on_token: Callable[[int, np.ndarray], None] | None = None,
    new_tokens_bucket: int | None = None,
) -> list[Generated]:
    """Continue each prompt (token ids, normally starting with BOS) by up to `max_new_tokens`.

    A prompt longer than the context leaves room for the new tokens by keeping its last
    `max_seq_len - max_new_tokens` ids (after its BOS, which stays). `on_token(step, tokens_B)` streams each step's tokens
    (rows in prompt order; the batch may carry extra padding rows at the end).
    `new_tokens_bucket` pins the compiled cache room (default: max_new_tokens rounded up to a
    power of two), so calls with different token budgets can share one compilation.
    """
    sampling.validate()
    if not prompts:
        return []
    if not 1 <= max_new_tokens < config.max_seq_len:
        raise UserError(f"max new tokens is {max_new_tokens}; use 1 to {config.max_seq_len - 1} "
                        f"(model '{config.name}' has a context of {config.max_seq_len})")
    room = config.max_seq_len - max_new_tokens
    kept = [_fit_prompt(list(map(int, p)), room) for p in prompts]
    if any(len(p) == 0 for p in kept):
        raise UserError("an empty prompt has nothing to continue; start prompts with BOS (the text "
                        "functions do this)")
    if any(not 0 <= t < config.vocab_size for p in kept for t in p):
        raise UserError(f"a prompt has token ids outside 0..{config.vocab_size - 1}; encode it with the "
                        "run's own tokenizer")
    rows = bucket(len(kept), 1)
    P = bucket(max(map(len, kept)), MIN_PROMPT_BUCKET, config.max_seq_len)
    N = bucket(max_new_tokens, MIN_NEW_TOKENS_BUCKET, config.max_seq_len)
    if new_tokens_bucket is not None:
        if new_tokens_bucket < max_new_tokens:
            raise ValueError(f"new_tokens_bucket {new_tokens_bucket} is smaller than max_new_tokens {max_new_tokens}")
        N = new_tokens_bucket

    prompt_BP = np.full((rows, P), BOS_ID, np.int32)
    mask_BP = np.zeros((rows, P), bool)
    for row, ids in enumerate(kept):
        prompt_BP[row, P - len(ids):] = ids
        mask_BP[row, P - len(ids):] = True
    mask_BP[len(kept):, -1] = True  # padding rows: one visible BOS, so their softmax is well defined
    row_done_B = np.arange(rows) >= len(kept)  # padding rows are finished from the start

    global _stream_listener
    _stream_listener = on_token
    try:
        out_BN, count = _decode(
            with_decoding_layout(params, config), prompt_BP, mask_BP, row_done_B, np.int32(max_new_tokens), jax.random.key(seed),
            np.float32(sampling.temperature), np.int32(sampling.top_k), np.float32(sampling.top_p),
            np.bool_(sampling.is_greedy), np.int32(eos_id),
            config=config, new_tokens_bucket=N, stream=on_token is not None)
        out_BN = np.asarray(out_BN)[:, : int(count)]
        jax.effects_barrier()  # every streamed token has reached the listener
    finally:
        _stream_listener = None

    results = []
    for row, ids in enumerate(kept):
        new = out_BN[row].tolist()
        hit_eos = eos_id in new
        results.append(Generated(ids, new[: new.index(eos_id)] if hit_eos else new, hit_eos))
    return results


# ---------------------------------------------------------------------------------------------
# Text in, text out.


class TextStreamer:
    """Prints one row's text as its tokens arrive, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer, row: int = 0, eos_id: int = EOS_ID, file=None):
        self.tokenizer, self.row, self.eos_id = tokenizer, row, eos_id
        self.file = file or sys.stdout
        self.ids: list[int] = []
        self.printed = 0
        self.finished = self.reader_gone = False

    def __call__(self, _step: int, tokens_B: np.ndarray) -> None:
        token = int(tokens_B[self.row])
        if self.finished or token == self.eos_id:
            self.finished = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a byte-fallback character that is not complete yet
            return
        try:
            self.file.write(text[self.printed:])
            self.file.flush()
        except BrokenPipeError:  # the reader has gone (`| head`): stop printing; the CLI exits quietly
            self.finished = self.reader_gone = True
            return
        self.printed = len(text)


def generate_text(
    config: ModelConfig,
    params: Any,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    stream_to=None,
) -> list[str]:
    """The continuation of each prompt as text (BOS is prepended; generation stops at EOS).

    `stream_to` (a file such as sys.stdout) prints the first prompt's continuation as it is made.
    """
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but model '{config.name}' has "
                        f"vocab_size {config.vocab_size}; use the run's own tokenizer.model")
    prompt_ids = [tokenizer.encode(text, bos=True) for text in prompts]
    streamer = TextStreamer(tokenizer, file=stream_to) if stream_to is not None else None
    results = generate_ids(config, params, prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling,
                           seed=seed, on_token=streamer)
    return [tokenizer.decode(result.new_ids) for result in results]


# ---------------------------------------------------------------------------------------------
# `lumi generate`.


def inference_config(config: ModelConfig) -> ModelConfig:
    """The run's compute dtype, except on a CPU, where bfloat16 is emulated and only slower."""
    if config.dtype != "float32" and jax.default_backend() == "cpu":
        return dataclasses.replace(config, dtype="float32")
    return config


def read_prompts_file(path: Path) -> list[str]:
    """A .json file (a list of strings, or {category: [strings]}) or a text file, one prompt a line."""
    if not path.is_file():
        raise UserError(f"{path}: no such prompts file; give a text file (one prompt a line) or a JSON list")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not UTF-8 text; give a text file (one prompt a line) or a JSON list") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: invalid JSON at line {error.lineno} ({error.msg}); fix the syntax") from None
        if isinstance(data, dict):
            data = [p for values in data.values() if isinstance(values, list) for p in values]
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise UserError(f"{path}: expected a JSON list of prompt strings, or {{category: [strings]}}")
        prompts = data
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path}: has no prompts; write one prompt a line")
    return prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="the run directory (default: the latest run under runs/)")
    parser.add_argument("--step", type=int, help="the checkpoint step to use (default: the latest)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several; default: none, "
                        "the model starts from BOS)")
    source.add_argument("--prompts", type=Path, metavar="FILE", help="a text file, one prompt a line, or a "
                        "JSON list (config/evaluation/prompts.json works)")
    source.add_argument("--chat", action="store_true", help="fine-tuned runs: apply the instruction "
                        "template and answer each line typed (Ctrl-D ends)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate per prompt (default "
                        f"{DEFAULT_NEW_TOKENS}, or half the model's context when that is shorter)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="keep the smallest set with this much "
                        "probability (1: off)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")


def _print_results(prompts: Sequence[str], completions: Sequence[str]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    for prompt, completion in zip(prompts, completions, strict=True):
        console.rule()
        console.print(f"[bold]{escape(prompt)}[/bold]{escape(completion)}", highlight=False)


def _chat_loop(loaded, config: ModelConfig, sampling: Sampling, args) -> int:
    """Multi-turn chat in the fine-tuning template: each answer is asked with the whole history
    (its oldest tokens drop out first when it outgrows the context)."""
    print("chat with the model; an empty line or Ctrl-D ends", file=sys.stderr)
    messages: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):  # end of input or Ctrl-C: the chat ends
            print(file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        prompt_ids = [loaded.tokenizer.encode(template.format_chat_prompt(messages), bos=True)]
        streamer = TextStreamer(loaded.tokenizer, file=sys.stdout)
        (result,) = generate_ids(config, loaded.params, prompt_ids,
                                 max_new_tokens=args.max_new_tokens, sampling=sampling,
                                 seed=args.seed + len(messages), on_token=streamer)
        print(flush=True)
        messages.append({"role": "assistant", "content": loaded.tokenizer.decode(result.new_ids)})


def run(args: argparse.Namespace) -> int:

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy)
    sampling.validate()
    if args.batch_size < 1:
        raise UserError(f"--batch-size is {args.batch_size}; use a positive number of prompts")
    loaded = load_run(args.run or latest_run(), step=args.step)
    config = inference_config(loaded.model_config)
    if args.max_new_tokens is None:  # micro's context is 128: the default must leave room for the prompt
        args.max_new_tokens = min(DEFAULT_NEW_TOKENS, config.max_seq_len // 2)
    if not 1 <= args.max_new_tokens < config.max_seq_len:  # checked before the prompt is echoed, not glued to it
        raise UserError(f"--max-new-tokens is {args.max_new_tokens}; use 1 to {config.max_seq_len - 1} "
                        f"(model '{config.name}' has a context of {config.max_seq_len})")
    if args.chat:
        return _chat_loop(loaded, config, sampling, args)
    prompts = read_prompts_file(args.prompts) if args.prompts else (args.prompt or [""])
    if len(prompts) == 1:
        print(prompts[0], end="", flush=True)
        generate_text(config, loaded.params, loaded.tokenizer, prompts,
                      max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, stream_to=sys.stdout)
        print(flush=True)
        return 0
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start:start + args.batch_size]
        completions = generate_text(config, loaded.params, loaded.tokenizer, chunk,
                                    max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed + start)
        _print_results(chunk, completions)
    return 0
