"""The training step and loop, in process: loss, label shift, accumulation, schedule, outputs, guards."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumi_jax import sharding as shard
from lumi_jax.checkpoint import CheckpointStore
from lumi_jax.config import TrainConfig
from lumi_jax.data import loader
from lumi_jax.model import forward
from lumi_jax.optim import learning_rate_schedule, make_optimizer
from lumi_jax.runs import load_run
from lumi_jax.step import initial_state, jit_train_step, make_eval_step
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")  # compiled steps shared through the cache

# One optimisation setting for every in-process step test, so they share compilations.
STEP_CONFIG = TrainConfig(steps=300, batch_size=8, context=32, lr=3e-3, warmup=4, min_lr=3e-4,
                          eval_every=0, save_every=10, log_every=1, eval_batches=2, grad_clip=1.0)


@pytest.fixture(scope="module")
def one_batch(dataset_dir):
    split = loader.TokenDataset(dataset_dir).split("train")
    return loader.train_batch(split, seed=0, step=0, batch_size=8, context=32)


@pytest.fixture(scope="module")
def stepper(micro_config):
    """(the step exactly as training jits it, for accumulation 1 and 4; a fresh-state maker)."""
    mesh = shard.make_mesh()
    optimizer = make_optimizer(STEP_CONFIG)

    def fresh():
        state, _ = initial_state(micro_config, STEP_CONFIG, optimizer, mesh)
        return state

    _, shardings = initial_state(micro_config, STEP_CONFIG, optimizer, mesh)
    steps = {accum: jit_train_step(micro_config, dataclasses.replace(STEP_CONFIG, grad_accum=accum),
                                   mesh, shardings)
             for accum in (1, 4)}
    return steps, fresh


def as_arrays(batch):
    return {"inputs": jnp.asarray(batch.inputs), "targets": jnp.asarray(batch.targets),
            "weights": jnp.asarray(batch.weights)}


def test_schedule_reaches_peak_at_end_of_warmup_and_floor_at_last_step():
    config = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr=1e-4)
    schedule = learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-5)
    assert float(schedule(100)) == pytest.approx(1e-4)


def test_weight_decay_shrinks_matrices_but_not_norm_scales():
    # Shaped like the model's leaves: kernels and embeddings are matrices, RMSNorm scales vectors.
    params = {"attention": {"wq": {"kernel": jnp.ones((4, 6))}}, "embed": {"embedding": jnp.ones((8, 4))},
              "attention_norm": {"scale": jnp.ones(4)}}
    optimizer = make_optimizer(TrainConfig(steps=10, warmup=0, lr=0.1, min_lr=0.1, weight_decay=0.5))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zero_grads, optimizer.init(params), params)
    # With zero gradients the only update is decay: -lr * wd * p on matrices, nothing on norms.
    assert np.allclose(updates["attention"]["wq"]["kernel"], -0.05)
    assert np.allclose(updates["embed"]["embedding"], -0.05)
    assert not np.any(updates["attention_norm"]["scale"])


def test_loader_targets_are_inputs_shifted_by_one(one_batch):
    assert np.array_equal(one_batch.targets[:, :-1], one_batch.inputs[:, 1:])


def test_loss_scores_position_t_against_the_given_target_without_shifting_again(micro_config, stepper,
                                                                               one_batch):
    params = stepper[1]().params
    inputs, targets = one_batch.inputs, one_batch.targets
    logits = np.asarray(jax.jit(forward, static_argnums=0)(micro_config, params, jnp.asarray(inputs)), np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = np.ones(targets.shape, np.float32)
    weights[:, ::3] = 0  # masked positions must not count
    nats, count = make_eval_step(micro_config)(params, {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
                                                         "weights": jnp.asarray(weights)})
    assert float(count) == weights.sum()
    assert float(nats) == pytest.approx(float((expected * weights).sum()), rel=1e-5)


def test_micro_model_overfits_one_batch_and_learns_the_next_token(micro_config, stepper, one_batch):
    steps, fresh = stepper
    state, batch = fresh(), as_arrays(one_batch)
    losses = []
    for _ in range(150):
        state, metrics = steps[1](state, batch, None)
        losses.append(float(metrics["loss"]))
    assert losses[0] > 5.5  # ~ln(512) at initialisation
    assert losses[-1] < 0.5
    # The trained model predicts, at position t, the token at t+1 of the same row.
    predicted = np.asarray(jax.jit(forward, static_argnums=0)(micro_config, state.params, batch["inputs"]).argmax(-1))
    assert (predicted[:, :-1] == one_batch.inputs[:, 1:]).mean() > 0.9


def test_gradient_accumulation_equals_the_whole_batch(stepper, one_batch):
    steps, fresh = stepper
    batch = as_arrays(one_batch)
    # Uneven weights (as in fine-tuning): the loss must still be the mean over the whole batch.
    weights = np.ones(one_batch.weights.shape, np.float32)
    weights[0, :20] = 0
    weights[5:, ::2] = 0
    batch["weights"] = jnp.asarray(weights)
    whole, whole_metrics = steps[1](fresh(), batch, None)
    accumulated, accumulated_metrics = steps[4](fresh(), batch, None)
    assert float(accumulated_metrics["loss"]) == pytest.approx(float(whole_metrics["loss"]), rel=1e-5)
    assert float(accumulated_metrics["grad_norm"]) == pytest.approx(float(whole_metrics["grad_norm"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_compute_with_remat_keeps_float32_master_parameters(micro_config, stepper, one_batch):
    steps, fresh = stepper
    batch = as_arrays(one_batch)
    _, fp32_metrics = steps[1](fresh(), batch, None)
    bf16_config = dataclasses.replace(STEP_CONFIG, dtype="bfloat16", remat="full")
    bf16_model = dataclasses.replace(micro_config, dtype="bfloat16")
    mesh = shard.make_mesh()
    optimizer = make_optimizer(bf16_config)
    state, shardings = initial_state(bf16_model, bf16_config, optimizer, mesh)
    state, metrics = jit_train_step(bf16_model, bf16_config, mesh, shardings)(state, batch, None)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim)
    assert float(metrics["loss"]) == pytest.approx(float(fp32_metrics["loss"]), rel=0.02)
    assert float(metrics["grad_norm"]) == pytest.approx(float(fp32_metrics["grad_norm"]), rel=0.1)


def test_every_remat_policy_computes_the_same_loss_and_gradients(micro_config, one_batch):
    """off, full and dots change what the backward pass keeps and recomputes, never the result."""
    from lumi_jax.model import init_params
    from lumi_jax.step import loss_sums

    params = init_params(micro_config, jax.random.key(0))
    batch = {name: jnp.asarray(value) for name, value in as_arrays(one_batch).items()}

    def mean_loss(p, remat):
        nats, count = loss_sums(p, micro_config, batch, remat=remat)
        return nats / count

    results = {remat: jax.jit(jax.value_and_grad(mean_loss), static_argnums=1)(params, remat)
               for remat in ("off", "full", "dots")}
    loss_off, grads_off = results["off"]
    for remat in ("full", "dots"):
        loss, grads = results[remat]
        assert float(loss) == pytest.approx(float(loss_off), rel=1e-6)
        for a, b in zip(jax.tree.leaves(grads_off), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def finished_run(micro_config, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "micro"
    config = dataclasses.replace(STEP_CONFIG, steps=300, eval_every=100, log_every=10, save_every=100,
                                 tensorboard=importlib.util.find_spec("tensorboardX") is not None)
    summary = train(config, micro_config, dataset_dir, out, show_progress=False)
    return out, summary


def test_training_writes_the_run_directory_contract(finished_run, dataset_dir):
    out, summary = finished_run
    config = json.loads((out / "config.json").read_text())
    assert set(config) >= {"model", "train", "data", "versions", "init_from"}
    assert config["data"]["tokenizer_sha256"] == loader.TokenDataset(dataset_dir).tokenizer_sha256
    assert config["init_from"] is None
    assert (out / "tokenizer.model").read_bytes() == (dataset_dir / "tokenizer.model").read_bytes()
    assert (out / "curves.png").stat().st_size > 1000
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert {"step", "loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "mfu"} <= set(train_lines[-1])
    assert [line["step"] for line in lines if "val_loss" in line] == [100, 200, 300]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["stop_reason"] == "completed" and saved["steps"] == 300
    assert saved["tokens_seen"] == 300 * 8 * 32
    assert saved["compile_time_s"] > 0 and saved["final_val_loss"] is not None
    # The loss falls clearly: from ~ln(512) = 6.2 to well below.
    assert train_lines[0]["loss"] > 5.5 and saved["final_train_loss"] < 4.5
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [100, 200, 300]
    meta = CheckpointStore(out / "checkpoints", read_only=True).read_meta(200)
    assert meta["step"] == 200 and meta["loader"] == {"seed": 0, "next_step": 200}
    assert meta["tokenizer_sha256"] == config["data"]["tokenizer_sha256"] and len(meta["rng"]) == 2
    assert meta["config"] == {"model": config["model"], "train": config["train"]}


def test_tensorboard_event_files_when_asked(finished_run):
    pytest.importorskip("tensorboardX")
    out, _ = finished_run
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_load_run_returns_the_final_parameters(finished_run, micro_config):
    out, _ = finished_run
    run = load_run(out)
    assert run.step == 300 and run.model_config == micro_config and run.train_config.steps == 300
    assert run.tokenizer.vocab_size == 512
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(run.params))
    assert load_run(out, step=200).step == 200


def test_time_budget_stops_cleanly_and_saves(micro_config, dataset_dir, tmp_path):
    # A budget of 60 ms is spent before the first step ends (start-up alone takes longer), so
    # training must stop right after step 1, save it, and say why.
    config = dataclasses.replace(STEP_CONFIG, time_budget_minutes=0.001)
    summary = train(config, micro_config, dataset_dir, tmp_path / "budget", show_progress=False)
    assert summary["stop_reason"] == "time_budget"
    assert summary["steps"] == 1
    assert "time budget of 0.001 min reached at step 1" in summary["message"]
    assert load_run(tmp_path / "budget").step == 1


def test_nan_guard_stops_names_the_step_and_keeps_a_usable_checkpoint(micro_config, dataset_dir, tmp_path):
    # lr 1000 with weight decay 0.1 multiplies the weights by -99 each step: they overflow.
    config = dataclasses.replace(STEP_CONFIG, steps=60, lr=1000.0, min_lr=1.0, warmup=1, save_every=2)
    summary = train(config, micro_config, dataset_dir, tmp_path / "nan", show_progress=False)
    assert summary["stop_reason"] == "nan"
    assert summary["steps"] < 60
    assert f"diverged at step {summary['steps'] + 1}" in summary["message"]
    assert "lower --lr" in summary["message"]
    run = load_run(tmp_path / "nan")
    assert run.step == summary["steps"]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(run.params))
