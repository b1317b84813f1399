"""LoRA: adapters on the right matrices, a no-op at the start, and merging equal to the unmerged pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumi_jax import lora
from lumi_jax.errors import UserError
from lumi_jax.model import forward, init_params, token_nats

RANK = 4
# Jitted once per shape: eager op-by-op dispatch would dominate the test time.
jit_forward = jax.jit(forward, static_argnums=0)
jit_lora_forward = jax.jit(lora.lora_forward, static_argnums=(0, 3))


@pytest.fixture(scope="module")
def params(micro_config):
    return jax.jit(init_params, static_argnums=0)(micro_config, jax.random.key(0))


@pytest.fixture(scope="module")
def tokens_BT(micro_config):
    return jax.random.randint(jax.random.key(1), (2, 16), 0, micro_config.vocab_size)


def trained_adapters(params):
    """Adapters as after some training: B no longer zero (at init the merge would trivially match)."""
    adapters = lora.init_lora(params, RANK, jax.random.key(2))
    return {name: {"a": adapter["a"], "b": 0.05 * jax.random.normal(jax.random.key(i), adapter["b"].shape)}
            for i, (name, adapter) in enumerate(adapters.items())}


def test_adapters_cover_attention_and_mlp_matrices(micro_config, params):
    names = lora.adapter_names(params)
    assert len(names) == micro_config.n_layers * 7
    assert "layers_0/attention/wq" in names and "layers_1/mlp/w2" in names
    assert not any("embed" in name or "norm" in name for name in names)
    adapters = lora.init_lora(params, RANK, jax.random.key(0))
    wk = adapters["layers_0/attention/wk"]
    assert wk["a"].shape == (micro_config.d_model, RANK)
    assert wk["b"].shape == (RANK, micro_config.kv_heads * micro_config.head_dim)


def test_fresh_adapters_leave_the_model_unchanged(micro_config, params, tokens_BT):
    adapters = lora.init_lora(params, RANK, jax.random.key(0))
    np.testing.assert_array_equal(jit_lora_forward(micro_config, params, adapters, 2.0, tokens_BT),
                                  jit_forward(micro_config, params, tokens_BT))


def test_merged_weights_equal_the_unmerged_forward(micro_config, params, tokens_BT):
    adapters = trained_adapters(params)
    scale = lora.lora_scale(RANK, alpha=8.0)
    unmerged = jit_lora_forward(micro_config, params, adapters, scale, tokens_BT)
    merged = jit_forward(micro_config, lora.merge(params, adapters, scale), tokens_BT)
    base = jit_forward(micro_config, params, tokens_BT)
    assert float(jnp.max(jnp.abs(unmerged - base))) > 1e-2  # the adapters really change the output
    np.testing.assert_allclose(merged, unmerged, atol=2e-5, rtol=1e-5)


def test_merge_touches_only_target_kernels(params):
    merged = lora.merge(params, trained_adapters(params), 1.0)
    assert not np.array_equal(merged["layers_0"]["mlp"]["w1"]["kernel"], params["layers_0"]["mlp"]["w1"]["kernel"])
    np.testing.assert_array_equal(merged["embed"]["embedding"], params["embed"]["embedding"])
    np.testing.assert_array_equal(merged["final_norm"]["scale"], params["final_norm"]["scale"])


def test_a_rank_too_large_is_a_user_error(micro_config, params):
    with pytest.raises(UserError, match="larger than the matrix"):
        lora.init_lora(params, micro_config.d_model + 1, jax.random.key(0))
    with pytest.raises(UserError, match="positive rank"):
        lora.init_lora(params, 0, jax.random.key(0))


def test_the_fused_head_sees_the_adapters(micro_config, params, tokens_BT):
    """With adapters, the fused head and loss (large vocabularies) gives the plain head's losses."""
    adapters, scale = trained_adapters(params), lora.lora_scale(RANK, alpha=8.0)
    targets_BT = jnp.roll(tokens_BT, -1, axis=1)
    plain = token_nats(jit_lora_forward(micro_config, params, adapters, scale, tokens_BT), targets_BT)
    fused = lora.lora_forward(micro_config, params, adapters, scale, tokens_BT, targets_BT=targets_BT, head_chunk=4)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)
