"""`--recipe auto`: the model shape, vocabulary, batch, context, learning rate and length chosen
from the text's size, the time budget and this machine's measured speed.

    corpus bytes ──► vocabulary (about one id per 500 bytes of text: 1 MB → 2048, 4 MB → 8192)
    budget ─┐
    speed ──┴──► tokens the budget buys per candidate shape ──► the largest shape that still sees
                 TOKENS_PER_PARAM tokens per parameter (at most MAX_EPOCHS passes over the text)
    passes ──► a length cap: training stops after MAX_EPOCHS passes, even with budget left
    width ──► learning rate (LR_WIDTH / √d_model, capped): wider layers take smaller steps

Throughput is measured, not assumed: a few timed steps of each candidate shape on this machine,
cached in ~/.cache/lumi_jax/throughput.json (keyed by shape, batch, device and JAX version), so
only the first auto recipe on a machine pays for the measurement. The length is the budget's:
the schedule is WSD sized to the deadline (optim.py), and `steps` is only an upper bound, unless
MAX_EPOCHS passes over the text come first: then the run ends there, with budget left.

Every choice is recorded with its reason in the run's config.json (`auto_recipe`). The constants
are defaults set from the recipe study (benchmarks/recipe_study.py, docs/recipe-study.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from lumi_jax import sharding as shard
from lumi_jax.config import ModelConfig, TrainConfig
from lumi_jax.files import write_json_atomic
from lumi_jax.model import count_params, param_shapes
from lumi_jax.optim import make_optimizer
from lumi_jax.step import initial_state, jit_train_step

# (d_model, n_layers, n_heads): head size 32, SwiGLU at LLaMA's 8/3·d; the last is tiny's shape.
CANDIDATE_SHAPES = ((64, 2, 2), (96, 3, 3), (128, 4, 4), (192, 4, 6), (256, 6, 8))
# Minutes on a CPU are far below Chinchilla's regime (20 tokens per parameter, Hoffmann et al.,
# 2022): in the recipe study's 2-minute row (benchmarks/results/recipe_study.json) the best
# shapes saw 1-3 tokens per parameter, and the 20-token rule chose a model 0.08 bits per byte
# worse than the grid's best. Both constants below were then set from that row, on the same
# held-out text: a fit, to be confirmed on other text (docs/recipe-study.md).
TOKENS_PER_PARAM = 2
# Passes over the text: the shape must see TOKENS_PER_PARAM tokens within them, and training stops
# at them. Repeated data is worth nearly as much as new for ~4 passes (Muennighoff et al., 2023),
# but these small models kept gaining beyond: in the study's 5-minute row the best point made ~9
# passes over 1 MB, while ~22 passes in the 15-minute row ended 0.26 bits per byte worse on the
# held-out text (docs/recipe-study.md). Set from those rows: in-sample, like the constants above.
MAX_EPOCHS = 8
BYTES_PER_VOCAB_ID = 500  # vocabulary ≈ corpus bytes / 500 (1 MB → 2048), a power of two in [512, 32000]
LR_WIDTH, LR_MAX, LR_MIN = 0.024, 3e-3, 3e-4
TRAINING_SHARE = 0.85  # of the budget, for update steps (the rest: compiling, evaluating, saving)
MEASURE_STEPS = 5
CACHE_ENV = "LUMI_THROUGHPUT_CACHE"


def vocab_for_corpus(corpus_bytes: int) -> int:
    """A power of two near corpus_bytes / BYTES_PER_VOCAB_ID, in [512, 32000] (below 512 the 256 byte
    pieces, the special ids and the template markers leave too few merges): a small text cannot
    fill a large vocabulary (rare pieces get no training), a large one compresses better with one."""
    wanted = max(corpus_bytes, 1) / BYTES_PER_VOCAB_ID
    return int(min(32000, max(512, 2 ** round(math.log2(max(wanted, 1))))))


def batch_shape(budget_s: float) -> tuple[int, int]:
    """(sequences, context): short budgets want many small updates; longer ones longer context."""
    if budget_s < 10 * 60:
        return 8, 128
    return 16, 256


def learning_rate(d_model: int) -> float:
    return float(min(LR_MAX, max(LR_MIN, LR_WIDTH / math.sqrt(d_model))))


def candidate_config(d_model: int, n_layers: int, n_heads: int, vocab_size: int, context: int) -> ModelConfig:
    return ModelConfig(name=f"auto-d{d_model}-l{n_layers}", vocab_size=vocab_size, d_model=d_model,
                       n_layers=n_layers, n_heads=n_heads, max_seq_len=context,
                       description="chosen by --recipe auto (lumi_jax/auto_recipe.py)")


# ---------------------------------------------------------------------------------------------
# Measured throughput, cached per machine.


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "lumi_jax" / "throughput.json"


def throughput_key(config: ModelConfig, batch: int, context: int) -> str:
    device = jax.devices()[0]
    return (f"{device.platform}:{device.device_kind}:{jax.device_count()}|jax {jax.__version__}|"
            f"d{config.d_model} l{config.n_layers} h{config.n_heads} v{config.vocab_size} b{batch} t{context}")


def measure_tokens_per_s(config: ModelConfig, batch: int, context: int) -> float:
    """Tokens per second of the real train step at this shape, after compiling it."""
    train_config = TrainConfig(steps=100, batch_size=batch, context=context, warmup=1)
    mesh = shard.make_mesh(batch_rows=batch)
    optimizer = make_optimizer(train_config)
    state, shardings = initial_state(config, train_config, optimizer, mesh)
    step = jit_train_step(config, train_config, mesh, shardings)
    tokens = jax.random.randint(jax.random.key(0), (batch, context + 1), 3, config.vocab_size)
    batch_arrays = shard.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                    "weights": jnp.ones((batch, context), jnp.float32)}, mesh)
    state, metrics = step(state, batch_arrays, None)  # compiles
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(MEASURE_STEPS):
        state, metrics = step(state, batch_arrays, None)
    jax.block_until_ready(metrics)
    return MEASURE_STEPS * batch * context / (time.perf_counter() - started)


def measured_throughputs(configs: list[ModelConfig], batch: int, context: int, time_limit_s: float,
                         log) -> dict[str, float]:
    """{config name: tokens/s}, from the cache or measured now, smallest first, until the time
    limit: a shape not measured in time is not chosen (a larger one would not fit anyway)."""
    path = cache_path()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    found: dict[str, float] = {}
    started = time.perf_counter()
    for config in configs:
        key = throughput_key(config, batch, context)
        if key not in cache:
            if time.perf_counter() - started > time_limit_s:
                break
            cache[key] = measure_tokens_per_s(config, batch, context)
            log(f"measured {config.name}: {cache[key]:,.0f} tokens/s at {batch}×{context}")
        found[config.name] = cache[key]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cache)
    except OSError:
        pass  # a read-only home: measure again next time
    return found


# ---------------------------------------------------------------------------------------------
# The choice.


def choose(corpus_bytes: int, budget_s: float, *, vocab_size: int | None = None, bytes_per_token: float | None = None,
           measure_limit_s: float | None = None, log=print) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """(model config, train config, the reasons) for `corpus_bytes` of text and `budget_s` seconds.
    `vocab_size` fixes the vocabulary (a dataset already prepared); `bytes_per_token` is the
    tokenizer's compression when known (about 4 bytes for BPE on English otherwise)."""
    vocab = vocab_size or vocab_for_corpus(corpus_bytes)
    batch, context = batch_shape(budget_s)
    corpus_tokens = corpus_bytes / (bytes_per_token or (2.5 if vocab <= 512 else 3.5 if vocab <= 4096 else 4.0))
    configs = [candidate_config(d, layers, heads, vocab, context) for d, layers, heads in CANDIDATE_SHAPES]
    measuring_started = time.perf_counter()
    speeds = measured_throughputs(configs, batch, context, measure_limit_s if measure_limit_s is not None
                                  else 0.1 * budget_s, log)
    budget_s -= time.perf_counter() - measuring_started  # measuring is paid from the budget
    chosen, why = configs[0], ""
    rows = []
    for config in configs:
        if config.name not in speeds:
            continue
        tokens = speeds[config.name] * TRAINING_SHARE * budget_s
        usable = min(tokens, MAX_EPOCHS * corpus_tokens)  # passes beyond MAX_EPOCHS teach little
        params = count_params(param_shapes(config))
        rows.append({"model": config.name, "params": params, "tokens_per_s": round(speeds[config.name]),
                     "tokens_in_budget": int(tokens), "tokens_per_param": round(usable / params, 1)})
        if usable >= TOKENS_PER_PARAM * params or config is configs[0]:
            chosen = config
            why = (f"the largest candidate that sees ≥ {TOKENS_PER_PARAM} tokens per parameter in the budget "
                   f"({usable / params:.0f}, of {tokens:,.0f} tokens at {speeds[config.name]:,.0f} tokens/s, "
                   f"at most {MAX_EPOCHS} passes over ~{corpus_tokens:,.0f} tokens of text)")
    lr = learning_rate(chosen.d_model)
    budget_steps = int(2 * speeds[chosen.name] * budget_s / (batch * context)) + 10
    passes_steps = max(1, math.ceil(MAX_EPOCHS * corpus_tokens / (batch * context)))
    steps_bound = min(budget_steps, passes_steps)
    train_config = TrainConfig(
        steps=steps_bound, batch_size=batch, context=context, lr=lr, min_lr=lr / 10,
        warmup=min(100, steps_bound // 20), schedule="wsd", time_budget_minutes=budget_s / 60,
        eval_every=0, save_every=max(50, steps_bound // 10), log_every=10,
        description="chosen by --recipe auto")
    reasons = {
        "corpus_bytes": corpus_bytes, "budget_s": round(budget_s, 1),
        "vocab_size": f"{vocab}: " + ("the dataset's tokenizer" if vocab_size else
                                      f"about one id per {BYTES_PER_VOCAB_ID} bytes of text, a power of two"),
        "model": f"{chosen.name}: {why}",
        "batch": f"{batch} × {context} tokens: " + ("short budgets want many small updates" if context == 128
                                                     else "a longer budget affords longer context"),
        "lr": f"{lr:.2g}: {LR_WIDTH} / √{chosen.d_model} (capped to [{LR_MIN}, {LR_MAX}]); min_lr lr/10",
        "steps": ("sized to the budget by the time-aware WSD schedule; `steps` is only an upper bound"
                  if steps_bound == budget_steps else
                  f"{steps_bound}: {MAX_EPOCHS} passes over ~{corpus_tokens:,.0f} tokens of text, which the budget "
                  "outlasts; the run ends early, since more passes over the same text made held-out loss worse "
                  "(docs/recipe-study.md)"),
        "candidates": rows,
    }
    return chosen, train_config, reasons
