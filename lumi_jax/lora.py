"""LoRA: low-rank adapters on the attention and MLP matrices, trained while the base stays frozen.

For each target matrix W (d_in × d_out; a Flax kernel computes y = x W) LoRA learns
A (d_in × r) and B (r × d_out) and computes

    y = x W + (alpha / r) · (x A) B          A ~ N(0, 1/d_in),  B = 0 at the start,

so training starts exactly at the pretrained model and changes r·(d_in + d_out) numbers per
matrix instead of d_in·d_out. On save the update is merged, W' = W + (alpha / r) · A B, so a
LoRA run's checkpoint is an ordinary parameter tree that generation, evaluation and export read
like any other. Targets: wq, wk, wv, wo (attention) and w1, w2, w3 (SwiGLU); embeddings and norm
scales stay as they are.

The unmerged forward pass (`lora_forward`) wraps every target `nn.Dense` call with Flax's method
interceptor, so the model code knows nothing of LoRA.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lumi_jax.config import ModelConfig, TrainConfig, config_hash
from lumi_jax.errors import UserError
from lumi_jax.model import Transformer, example_segments

TARGET_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
SEPARATOR = "/"


def adapter_names(params: dict) -> list[str]:
    """'layers_0/attention/wq' and so on: the module paths of every target kernel."""
    names = []
    for path in traverse_util.flatten_dict(params):
        if path[-1] == "kernel" and path[-2] in TARGET_MATRICES:
            names.append(SEPARATOR.join(path[:-1]))
    return sorted(names)


def init_lora(params: dict, rank: int, rng: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """{module path: {"a": (d_in, r), "b": (r, d_out)}} with B = 0, so the model is unchanged."""
    if rank < 1:
        raise UserError(f"LoRA rank is {rank}; use a positive rank such as 4 or 8")
    flat = traverse_util.flatten_dict(params)
    adapters = {}
    for index, name in enumerate(adapter_names(params)):
        d_in, d_out = flat[(*name.split(SEPARATOR), "kernel")].shape
        if rank > min(d_in, d_out):
            raise UserError(f"LoRA rank {rank} is larger than the matrix {name} ({d_in}×{d_out}) allows; "
                            f"use a rank of at most {min(d_in, d_out)}")
        a = jax.random.normal(jax.random.fold_in(rng, index), (d_in, rank), jnp.float32) / math.sqrt(d_in)
        adapters[name] = {"a": a, "b": jnp.zeros((rank, d_out), jnp.float32)}
    return adapters


def lora_scale(rank: int, alpha: float | None) -> float:
    return (alpha if alpha is not None else rank) / rank


def merge(params: dict, adapters: dict, scale: float) -> dict:
    """The parameter tree with each adapter folded in: W + scale · A B."""
    flat = dict(traverse_util.flatten_dict(params))
    for name, adapter in adapters.items():
        key = (*name.split(SEPARATOR), "kernel")
        flat[key] = flat[key] + scale * (adapter["a"] @ adapter["b"])
    return traverse_util.unflatten_dict(flat)


def lora_forward(config: ModelConfig, params: dict, adapters: dict, scale: float, tokens_BT: jax.Array,
                 segments_BT: jax.Array | None = None) -> jax.Array:
    """Logits of the model with unmerged adapters: every target Dense adds scale · (x A) B.
    `segments_BT`: packed examples attend only to themselves (see Transformer)."""

    def add_adapter(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense):
            return next_fun(*args, **kwargs)
        adapter = adapters.get(SEPARATOR.join(module.path))
        y = next_fun(*args, **kwargs)
        if adapter is None:
            return y
        x = args[0]
        delta = (x @ adapter["a"].astype(x.dtype)) @ adapter["b"].astype(x.dtype)
        return y + (scale * delta).astype(y.dtype)

    with nn.intercept_methods(add_adapter):
        logits_BTV, _ = Transformer(config).apply({"params": params}, tokens_BT, segments_BT=segments_BT)
    return logits_BTV


def count_adapter_params(adapters: dict) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(adapters)))


# ---------------------------------------------------------------------------------------------
# Training the adapters (lumi sft --lora-rank R).


def train_lora(train_config: TrainConfig, model_config: ModelConfig, base_params: dict, data_path: str | Path,
               out_dir: str | Path, *, rank: int, alpha: float | None = None, init_from: str | None = None,
               show_progress: bool = True) -> dict[str, Any]:
    """Train adapters on `data_path` with the base frozen; save the MERGED parameters as an ordinary
    run in `out_dir` (config.json, tokenizer.model, checkpoints/, metrics.jsonl, summary.json).

    The loop is the plain one: the loader's batches (a pure function of seed and step), AdamW on the
    adapters only, validation loss at the end, one checkpoint at the end. A LoRA run does not resume:
    stopped early (time budget, Ctrl-C), it saves what it has.
    """
    from lumi_jax import train as full
    from lumi_jax.checkpoint import CheckpointStore
    from lumi_jax.data import loader
    from lumi_jax.metrics import MetricsLog, Stopwatch
    from lumi_jax.optim import make_optimizer

    stopwatch = Stopwatch(train_config.time_budget_minutes)
    train_config.validate("train config")
    model_config = dataclasses.replace(model_config, dtype=train_config.dtype)
    context = train_config.context or model_config.max_seq_len
    data_path, run_dir = Path(data_path), Path(out_dir)
    dataset = full.open_dataset(data_path, model_config, context)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: exists and is not empty; LoRA fine-tuning does not resume, choose a new --out")
    scale = lora_scale(rank, alpha)
    run_config = {
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": {"path": str(data_path), "tokenizer_sha256": dataset.tokenizer_sha256, "meta": dataset.meta},
        "versions": full.versions(),
        "init_from": init_from,
        "lora": {"rank": rank, "alpha": alpha if alpha is not None else rank, "targets": list(TARGET_MATRICES),
                 "merged": True},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    full.write_json_atomic(run_dir / "config.json", run_config)
    shutil.copyfile(dataset.tokenizer_path, run_dir / "tokenizer.model")

    base_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), base_params)
    adapters = init_lora(base_params, rank, jax.random.key(train_config.seed))
    optimizer = make_optimizer(train_config)
    opt_state = optimizer.init(adapters)

    train_split = dataset.split("train")
    separate_examples = train_split.example_starts is not None  # BOS-led instruction examples

    def loss_fn(adapters, inputs_BT, targets_BT, weights_BT):
        segments_BT = example_segments(inputs_BT) if separate_examples else None
        logits_BTV = lora_forward(model_config, base_params, adapters, scale, inputs_BT, segments_BT)
        nats_BT = full.token_nats(logits_BTV, targets_BT)
        return jnp.sum(nats_BT * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)

    @jax.jit
    def step_fn(adapters, opt_state, inputs_BT, targets_BT, weights_BT):
        loss, grads = jax.value_and_grad(loss_fn)(adapters, inputs_BT, targets_BT, weights_BT)
        updates, opt_state = optimizer.update(grads, opt_state, adapters)
        adapters = jax.tree.map(lambda p, u: p + u, adapters, updates)
        return adapters, opt_state, loss

    metrics_log = MetricsLog(run_dir, tensorboard=False)
    tokens_per_step = train_config.batch_size * context
    step, stop_reason, last_loss, step_times = 0, "completed", None, []
    with full.StopRequest() as stop:
        while step < train_config.steps:
            batch = loader.train_batch(train_split, seed=train_config.seed, step=step,
                                       batch_size=train_config.batch_size, context=context)
            started = time.perf_counter()
            adapters, opt_state, loss = step_fn(adapters, opt_state, batch.inputs, batch.targets, batch.weights)
            last_loss = float(loss)
            step_times.append(time.perf_counter() - started)
            step += 1
            if not math.isfinite(last_loss):
                raise UserError(f"LoRA fine-tuning diverged at step {step} (loss {last_loss}); lower --lr "
                                f"(now {train_config.lr:g}) and fine-tune into a new --out")
            if step % train_config.log_every == 0 or step == train_config.steps or step == 1:
                record = {"step": step, "loss": last_loss, "lr": float(full.learning_rate_schedule(train_config)(step)),
                          "tokens_per_s": tokens_per_step / step_times[-1], "step_time_s": step_times[-1],
                          "tokens": step * tokens_per_step, "elapsed_s": stopwatch.elapsed()}
                metrics_log.write(record)
                if show_progress:
                    print(f"lora step {step}/{train_config.steps} · loss {last_loss:.4f}", flush=True)
            if stop.signal_name is not None:
                stop_reason = "signal"
                break
            left = stopwatch.left()
            if left is not None and left < step_times[-1]:
                stop_reason = "time_budget"
                break

    merged = merge(base_params, adapters, scale)
    mesh = full.shard.make_mesh(train_config.mesh_data, train_config.mesh_fsdp)
    val_loss = None
    if train_config.eval_every:
        val_loss = full.evaluate_split(full.make_eval_step(model_config, separate_examples), merged, dataset.split("val"),
                                       train_config, context, mesh)
        metrics_log.write({"step": step, "val_loss": val_loss, "elapsed_s": stopwatch.elapsed()})
    # The checkpoint carries a fresh full-model optimizer state: `lumi train --out` on this run
    # would continue as full fine-tuning from the merged weights.
    identity_hash = config_hash({"model": run_config["model"],
                                 "train": {f: run_config["train"][f] for f in full.RESUME_LOCKED_FIELDS}})
    store = CheckpointStore(run_dir / "checkpoints", keep=train_config.keep_checkpoints)
    store.save(step, merged, make_optimizer(train_config).init(merged),
               {"step": step, "rng": np.asarray(jax.random.key_data(jax.random.key(train_config.seed))).tolist(),
                "loader": {"seed": train_config.seed, "next_step": step}, "config_hash": identity_hash,
                "tokenizer_sha256": dataset.tokenizer_sha256, "lora": run_config["lora"]})
    store.close()
    metrics_log.close()
    summary = {
        "steps": step, "target_steps": train_config.steps, "final_train_loss": last_loss, "final_val_loss": val_loss,
        "tokens_seen": step * tokens_per_step, "wall_time_s": stopwatch.elapsed(),
        "mean_step_time_s": float(np.mean(step_times)) if step_times else None, "stop_reason": stop_reason,
        "lora_params": count_adapter_params(adapters),
        "base_params": int(sum(leaf.size for leaf in jax.tree.leaves(base_params))),
    }
    full.write_json_atomic(run_dir / "summary.json", summary)
    if show_progress:
        print(f"{run_dir}: LoRA rank {rank} ({summary['lora_params']:,} trained of {summary['base_params']:,} "
              f"parameters), {stop_reason} at step {step}, train loss {last_loss}, val loss {val_loss}", flush=True)
    return summary
