"""Parameter counts, the memory estimate against XLA, conformance and the reference table."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import optax
import pytest

from lumi_jax import model
from lumi_jax.architecture import (
    REFERENCES,
    closed_form_params,
    conformance_checks,
    count_params,
    estimate_inference_memory,
    estimate_training_memory,
)
from lumi_jax.cli import main
from lumi_jax.config import ARCHITECTURES_DIR, load_model_config
from lumi_jax.model import forward, param_shapes

EXPECTED_PARAMS = {
    "micro": 131_392,
    "tiny": 6_163_712,
    "small": 41_689_600,
    "base": 109_529_856,
    "llama2-7b": 6_738_415_616,
    "tinyllama-1.1b": 1_100_048_384,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_exact_parameter_counts(name):
    config = load_model_config(name)
    counted = count_params(config)
    assert counted.total == EXPECTED_PARAMS[name] == closed_form_params(config)
    assert counted.embeddings == config.vocab_size * config.d_model
    assert counted.head == (0 if config.tie_embeddings else config.vocab_size * config.d_model)


def test_sizes_match_their_promises():
    assert 5.5e6 <= count_params(load_model_config("tiny")).total <= 6.5e6
    assert 40e6 <= count_params(load_model_config("small")).total <= 44e6
    assert count_params(load_model_config("micro")).total < 1e6
    for name in ("llama2-7b", "tinyllama-1.1b"):
        config = load_model_config(name)
        assert count_params(config).total == config.published_params


def test_reference_shapes_reproduce_their_published_counts():
    for reference in REFERENCES:
        computed = closed_form_params(reference.shape)
        assert abs(computed - reference.published_params) / reference.published_params < 0.02, reference.name


@pytest.mark.parametrize("name", ["llama2-7b", "tinyllama-1.1b", "tiny", "small"])
def test_real_llama_shapes_pass_conformance_without_warnings(name):
    assert all(check.status == "pass" for check in conformance_checks(load_model_config(name)))


def xla_train_step_bytes(config, batch, seq, head_chunk=0):
    """Peak bytes XLA reports for a compiled AdamW train step (arguments + outputs − aliased + temp);
    with `head_chunk`, the head fused with the loss (model.fused_head_nats)."""
    params = param_shapes(config)
    optimizer = optax.adamw(1e-3)
    opt_state = jax.eval_shape(optimizer.init, params)

    def loss_fn(p, tokens):
        if head_chunk:
            return forward(config, p, tokens[:, :-1], targets_BT=tokens[:, 1:], head_chunk=head_chunk).mean()
        logits = forward(config, p, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def step(p, state, tokens):
        grads = jax.grad(loss_fn)(p, tokens)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    stats = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile().memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


@pytest.mark.parametrize(("name", "batch", "seq"), [("micro", 8, 128), ("tiny", 8, 256)])
def test_training_memory_estimate_within_20_percent_of_xla(name, batch, seq):
    config = load_model_config(name)
    estimate = estimate_training_memory(config, batch, seq)["total"]
    measured = xla_train_step_bytes(config, batch, seq)
    assert 0.8 <= estimate / measured <= 1.2, f"estimate {estimate:,} vs XLA {measured:,}"


def test_training_memory_estimate_follows_the_fused_head(monkeypatch):
    """micro at 8 × 128 with the head fused 16 positions at a time: the estimate stays within 20%
    of XLA's plan, and the plan really shrinks, by at least one copy of the logits it no longer holds."""
    config = load_model_config("micro")
    monkeypatch.setattr(model, "FUSED_HEAD_ABOVE_BYTES", 0)
    monkeypatch.setattr(model, "FUSED_HEAD_POSITIONS", 16)
    estimate = estimate_training_memory(config, 8, 128)["total"]
    measured = xla_train_step_bytes(config, 8, 128, head_chunk=16)
    assert 0.8 <= estimate / measured <= 1.2, f"estimate {estimate:,} vs XLA {measured:,}"
    assert xla_train_step_bytes(config, 8, 128) - measured >= 8 * (128 - 16) * config.vocab_size * 4


def test_cli_json_report_and_skipping_non_model_json(tmp_path, capsys):
    (tmp_path / "recipe.json").write_text(json.dumps({"steps": 100}))
    (tmp_path / "micro.json").write_text((ARCHITECTURES_DIR / "micro.json").read_text())
    assert main(["architecture", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["params"]["total"] == EXPECTED_PARAMS["micro"]
    assert model["memory"]["training"]["float32"]["total"] > model["memory"]["training"]["float32"]["parameters"]
    assert model["memory"]["inference"]["kv_cache"] == 2 * 2 * 1 * 128 * 2 * 16 * 4
    assert any("recipe.json" in note for note in report["skipped"])
    assert {r["name"] for r in report["references"]} >= {"TinyLlama-1.1B", "LLaMA-2-7B", "llama2.c stories15M"}


@pytest.mark.parametrize("tied", [True, False])
def test_the_inference_estimate_counts_the_cpu_decoding_copies_exactly(tied):
    config = dataclasses.replace(load_model_config("micro"), tie_embeddings=tied)
    params = model.init_params(config, jax.random.key(0))
    added = (sum(leaf.nbytes for leaf in jax.tree.leaves(model.decoding_params(params, config)))
             - sum(leaf.nbytes for leaf in jax.tree.leaves(params)))
    with_copies = estimate_inference_memory(config, 1, 128, decoding_copies=True)
    assert with_copies["decoding_copies"] == added
    assert with_copies["total"] - estimate_inference_memory(config, 1, 128)["total"] == added


def test_cli_table_report_runs_for_every_shipped_config(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # rich folds cells to the terminal's width
    assert main(["architecture", str(ARCHITECTURES_DIR)]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED_PARAMS:
        assert name in out
    assert "6,163,712" in out and "LLaMA conformance" in out


def test_training_memory_estimate_keeps_no_scores_where_attention_is_fused(monkeypatch):
    """On a GPU training uses the fused kernel (model.fused_attention_wanted), which keeps one
    log-sum-exp per query row and head instead of the B·H·T·T scores and their softmax."""
    config = load_model_config("small")
    batch, seq = 4, 1024
    monkeypatch.setenv("LUMI_ATTENTION", "custom")
    materialised = estimate_training_memory(config, batch, seq)["activations"]
    monkeypatch.setenv("LUMI_ATTENTION", "fused")
    fused = estimate_training_memory(config, batch, seq)["activations"]
    scores_minus_lse = (2 * batch * config.n_heads * seq * seq - batch * config.n_heads * seq) * 4
    assert materialised - fused == config.n_layers * scores_minus_lse
