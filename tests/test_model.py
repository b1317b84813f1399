"""The Flax LLaMA: causality, RoPE, grouped-query attention, the KV cache, dtypes, learning."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lumi_jax import model
from lumi_jax.architecture import estimate_training_memory
from lumi_jax.config import load_model_config
from lumi_jax.model import (
    Transformer,
    apply_rope,
    forward,
    fused_head_chunk,
    init_cache,
    init_params,
    rope_angles,
    rope_tables,
    token_nats,
)


@pytest.fixture(scope="module")
def micro_params(micro_config):
    return init_params(micro_config, jax.random.key(0))


def random_tokens(config, batch, length, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, config.vocab_size)


def test_changing_later_tokens_leaves_earlier_logits_unchanged(micro_config, micro_params):
    tokens = random_tokens(micro_config, 2, 24)
    t = 11
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % micro_config.vocab_size)
    before = forward(micro_config, micro_params, tokens)
    after = forward(micro_config, micro_params, changed)
    np.testing.assert_array_equal(np.asarray(before[:, : t + 1]), np.asarray(after[:, : t + 1]))
    assert not np.allclose(before[:, t + 1:], after[:, t + 1:]), "later logits should see the change"


def test_rope_scores_depend_only_on_relative_position():
    head_dim = 16
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, head_dim))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, head_dim))

    def score(query_position, key_position):
        q_rot = apply_rope(q, *rope_tables(rope_angles(jnp.array([[query_position]]), head_dim, 10000.0)))
        k_rot = apply_rope(k, *rope_tables(rope_angles(jnp.array([[key_position]]), head_dim, 10000.0)))
        return float(jnp.sum(q_rot * k_rot))

    assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-4, abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)
    # A rotation keeps the vector's length.
    rotated = apply_rope(q, *rope_tables(rope_angles(jnp.array([[42]]), head_dim, 10000.0)))
    assert float(jnp.linalg.norm(rotated)) == pytest.approx(float(jnp.linalg.norm(q)), rel=1e-5)


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_heads(micro_config, micro_params):
    assert micro_config.kv_heads < micro_config.n_heads, "micro should exercise grouped-query attention"
    group = micro_config.n_heads // micro_config.kv_heads
    K = micro_config.head_dim
    mha_config = dataclasses.replace(micro_config, n_kv_heads=micro_config.n_heads)

    def repeat_heads(kernel):  # (D, N·K) -> (D, H·K): query head h reads kv head h // group
        D = kernel.shape[0]
        return jnp.repeat(kernel.reshape(D, -1, K), group, axis=1).reshape(D, -1)

    mha_params = jax.tree_util.tree_map(lambda x: x, micro_params)
    for i in range(micro_config.n_layers):
        attention = mha_params[f"layers_{i}"]["attention"]
        for name in ("wk", "wv"):
            attention[name] = {"kernel": repeat_heads(micro_params[f"layers_{i}"]["attention"][name]["kernel"])}
    tokens = random_tokens(micro_config, 2, 20)
    np.testing.assert_allclose(forward(micro_config, micro_params, tokens),
                               forward(mha_config, mha_params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("layout", ["trained", "decoding"])
def test_kv_cache_decoding_equals_the_full_forward_pass(micro_config, tied, layout):
    """Prefill then one token at a time, with the weights as trained or with decoding_params'
    joined projections and (tied) transposed head: the full pass's logits either way."""
    config = dataclasses.replace(micro_config, tie_embeddings=tied)
    params = init_params(config, jax.random.key(0))
    tokens = random_tokens(config, 2, 16)
    full = forward(config, params, tokens)
    decoding = model.decoding_params(params, config) if layout == "decoding" else params
    if layout == "decoding":
        assert (model.TIED_HEAD_DV in decoding) == tied
        assert "wq+wk+wv" in decoding["layers_0"]["attention"] and "w1+w3" in decoding["layers_1"]["mlp"]
        assert "wq+wk+wv" not in params["layers_0"]["attention"]  # the trained weights are untouched
    transformer = Transformer(config)
    cache = init_cache(config, batch_size=2, max_len=32)
    prefill, cache = transformer.apply({"params": decoding}, tokens[:, :10], cache, 0)
    pieces = [prefill]
    for t in range(10, 16):
        logits, cache = transformer.apply({"params": decoding}, tokens[:, t:t + 1], cache, t)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_bfloat16_forward_is_close_to_float32(micro_config, micro_params):
    tokens = random_tokens(micro_config, 2, 32)
    fp32 = forward(micro_config, micro_params, tokens)
    bf16 = forward(dataclasses.replace(micro_config, dtype="bfloat16"), micro_params, tokens)
    assert bf16.dtype == jnp.float32, "logits are float32 whatever the compute dtype"
    assert float(jnp.max(jnp.abs(fp32 - bf16))) < 0.05
    assert float(jnp.mean(jnp.argmax(fp32, -1) == jnp.argmax(bf16, -1))) > 0.9


def test_parameters_are_float32_and_untied_head_exists(micro_config):
    untied = dataclasses.replace(micro_config, tie_embeddings=False, dtype="bfloat16")
    params = init_params(untied, jax.random.key(0))
    assert "output" in params
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_micro_model_overfits_one_batch(micro_config, micro_params):
    tokens = random_tokens(micro_config, 4, 33, seed=3)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            logits = forward(micro_config, p, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params, state = micro_params, optimizer.init(micro_params)
    losses = []
    for _ in range(300):
        params, state, loss = step(params, state)
        losses.append(float(loss))
        if loss < 0.05:
            break
    assert losses[0] > 5.0, "an untrained model should be near log(vocab) = 6.2"
    assert losses[-1] < 0.05, f"loss after {len(losses)} steps: {losses[-1]:.3f}"


def test_attention_backward_equals_autodiff_of_the_plain_formulation():
    """The hand-written backward (model.causal_attention, one block) against autodiff of the textbook
    einsum, with grouped heads and a causal mask cut into two segments."""
    from lumi_jax.model import causal_attention

    B, N, G, T, K = 2, 2, 3, 12, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (B, N, G, T, K))
    k, v = jax.random.normal(keys[1], (B, N, T, K)), jax.random.normal(keys[2], (B, N, T, K))
    segments = jnp.array([[0] * 5 + [1] * 7, [0] * 12])
    mask = jnp.tril(jnp.ones((T, T), bool))[None] & (segments[:, :, None] == segments[:, None, :])
    cotangent = jax.random.normal(keys[3], (B, N, G, T, K))

    def plain(q, k, v):
        scores = jnp.einsum("bngtk,bnsk->bngts", q, k) / jnp.sqrt(K)
        weights = jax.nn.softmax(jnp.where(mask[:, None, None], scores, -jnp.inf), axis=-1)
        return jnp.einsum("bngts,bnsk->bngtk", weights, v)

    ours = jax.vjp(lambda q, k, v: causal_attention(q, k, v, mask, 1), q, k, v)
    reference = jax.vjp(plain, q, k, v)
    np.testing.assert_allclose(ours[0], reference[0], atol=1e-5)
    for mine, theirs in zip(ours[1](cotangent), reference[1](cotangent), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("blocks", [2, 5])
def test_the_causal_core_by_query_blocks_equals_the_whole_core(blocks):
    """Cutting a causal pass into query blocks (model.causal_attention) skips only masked
    tiles: the same outputs and gradients as one block, with segments and uneven blocks."""
    from lumi_jax.model import causal_attention

    B, N, G, T, K = 2, 2, 2, 12, 8
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (B, N, G, T, K))
    k, v = jax.random.normal(keys[1], (B, N, T, K)), jax.random.normal(keys[2], (B, N, T, K))
    segments = jnp.array([[0] * 5 + [1] * 7, [0] * 12])
    mask = jnp.tril(jnp.ones((T, T), bool))[None] & (segments[:, :, None] == segments[:, None, :])
    cotangent = jax.random.normal(keys[3], (B, N, G, T, K))

    whole = jax.vjp(lambda q, k, v: causal_attention(q, k, v, mask, 1), q, k, v)
    blocked = jax.vjp(lambda q, k, v: causal_attention(q, k, v, mask, blocks), q, k, v)
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)
    for mine, theirs in zip(blocked[1](cotangent), whole[1](cotangent), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=1e-5)


def test_causal_blocks_are_at_least_the_minimum_size_and_capped():
    from lumi_jax.model import MAX_CAUSAL_BLOCKS, MIN_CAUSAL_BLOCK, causal_blocks

    assert causal_blocks(16) == 1  # too short to cut
    assert causal_blocks(256) == 256 // MIN_CAUSAL_BLOCK
    assert causal_blocks(4096) == MAX_CAUSAL_BLOCKS


def test_a_wrong_causal_block_override_names_the_variable(monkeypatch):
    from lumi_jax.errors import UserError
    from lumi_jax.model import causal_blocks

    monkeypatch.setenv("LUMI_CAUSAL_BLOCKS", "four")
    with pytest.raises(UserError, match="LUMI_CAUSAL_BLOCKS='four'"):
        causal_blocks(256)
    monkeypatch.setenv("LUMI_CAUSAL_BLOCKS", "2")
    assert causal_blocks(256) == 2


def _layer_calls(config, params, tokens):
    """The layers' jit calls in the forward pass's jaxpr (flax names a lifted jit core_fn)."""
    jaxpr = jax.make_jaxpr(lambda p: forward(config, p, tokens))(params).jaxpr
    return [eqn for eqn in jaxpr.eqns if eqn.primitive.name in ("jit", "pjit") and eqn.params["name"] == "core_fn"]


def test_layers_share_one_trace_and_the_environment_is_part_of_its_key(micro_config, monkeypatch):
    config = dataclasses.replace(micro_config, n_layers=3)
    params = init_params(config, jax.random.key(0))
    tokens = jnp.zeros((1, 128), jnp.int32)
    calls = _layer_calls(config, params, tokens)
    assert len(calls) == config.n_layers
    assert all(call.params["jaxpr"] is calls[0].params["jaxpr"] for call in calls)  # traced once

    def attention_cores(call):  # query blocks in causal_attention (a custom_vjp): two products each
        (core,) = [eqn for eqn in call.params["jaxpr"].jaxpr.eqns if "custom_vjp" in eqn.primitive.name]
        return sum(eqn.primitive.name == "dot_general" for eqn in core.params["call_jaxpr"].jaxpr.eqns) // 2

    monkeypatch.setenv("LUMI_CAUSAL_BLOCKS", "1")
    assert attention_cores(_layer_calls(config, params, tokens)[0]) == 1
    monkeypatch.setenv("LUMI_CAUSAL_BLOCKS", "2")
    assert attention_cores(_layer_calls(config, params, tokens)[0]) == 2  # a new trace, not a stale one


@pytest.mark.parametrize("packed", [True, False])
def test_the_fused_attention_path_gives_the_same_logits_and_gradients(micro_config, monkeypatch, packed):
    """The accelerator path (jax.nn.dot_product_attention: a mask for packed segments, is_causal
    without them) against the CPU's custom core."""
    params = init_params(micro_config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, micro_config.vocab_size)
    segments = jnp.array([[0] * 6 + [1] * 10, [0] * 16]) if packed else None

    def loss(params):
        return jnp.mean(forward(micro_config, params, tokens, segments_BT=segments) ** 2)

    results = {}
    for choice in ("custom", "fused"):
        monkeypatch.setenv("LUMI_ATTENTION", choice)
        results[choice] = jax.value_and_grad(loss)(params)  # not jitted: each choice traces afresh
    np.testing.assert_allclose(results["custom"][0], results["fused"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results["custom"][1]), jax.tree.leaves(results["fused"][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("tied", [True, False])
def test_the_fused_head_and_loss_equal_the_plain_head_in_value_and_gradient(micro_config, tied):
    """Training's fused head (chunks of positions, logits recomputed in the backward pass) gives
    the plain head's per-position nats and parameter gradients, tied or untied, with segments."""
    config = dataclasses.replace(micro_config, tie_embeddings=tied)
    params = init_params(config, jax.random.key(0))
    tokens, targets = random_tokens(config, 3, 16, seed=2), random_tokens(config, 3, 16, seed=3)
    segments = jnp.array([[0] * 6 + [1] * 10, [0] * 16, [0] * 3 + [1] * 13])
    weights = jax.random.uniform(jax.random.key(4), (3, 16))

    def plain(params):
        return token_nats(forward(config, params, tokens, segments_BT=segments), targets)

    def fused(params):
        return forward(config, params, tokens, segments_BT=segments, targets_BT=targets, head_chunk=4)

    np.testing.assert_allclose(fused(params), plain(params), rtol=1e-5, atol=1e-6)
    grads = [jax.grad(lambda p, f=f: jnp.sum(f(p) * weights))(params) for f in (plain, fused)]
    assert jax.tree.structure(grads[0]) == jax.tree.structure(grads[1])
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_the_head_is_fused_only_where_the_logits_would_be_large(monkeypatch):
    tiny, small = load_model_config("tiny"), load_model_config("small")
    assert fused_head_chunk(tiny, 8, 256) == 0  # 32 MB of logits: the plain head
    assert fused_head_chunk(small, 4, 256) == 0
    assert fused_head_chunk(small, 32, 1024) == 128  # 4.2 GB: fused, 128 positions a chunk
    assert fused_head_chunk(small, 32, 1000) == 125  # a chunk divides the sequence
    fused = estimate_training_memory(small, 32, 1024)["activations"]
    monkeypatch.setattr(model, "FUSED_HEAD_ABOVE_BYTES", 1 << 62)  # never fuse
    plain = estimate_training_memory(small, 32, 1024)["activations"]
    # The memory estimate counts the logits of one chunk (three copies), not of every position.
    assert plain - fused == 3 * 32 * (1024 - 128) * small.vocab_size * 4
