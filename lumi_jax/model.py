"""The LLaMA model in Flax Linen, one short file.

    tokens ─► embed ─► N × [ x + Attention(RMSNorm(x)) ; x + SwiGLU(RMSNorm(x)) ] ─► RMSNorm ─► head

Shape suffixes name the axes: B batch, T query time, S key time (the KV cache's length),
D model width, H query heads, N key/value heads, G query heads per key/value head (H = N·G),
K head size, F SwiGLU width, V vocabulary.

Parameters are float32 and form a plain nested dict (`model.init(...)["params"]`); the compute
dtype (`config.dtype`, float32 or bfloat16) applies to activations and matmuls. RMSNorm,
softmax and the logits are always computed in float32.

RoPE layout. We rotate *adjacent pairs* (dimensions 2i and 2i+1 of each head form one complex
number), as Meta's original LLaMA code and llama2.c do. Hugging Face's LLaMA rotates *halves*
(dimension i pairs with i + K/2). To export wq/wk to the Hugging Face layout, permute the output
rows of each head: new index j*2+p (p∈{0,1}) moves to p*(K/2)+j, i.e. for a kernel of shape
(D, H·K): `w.reshape(D, H, K//2, 2).transpose(0, 1, 3, 2).reshape(D, H*K)`. Values (wv) and
the other matrices need no permutation.

The KV cache is an explicit pytree (`init_cache`), passed in and returned, so decoding stays a
pure function that jit compiles once: each layer holds k and v of shape (B, S, N, K), the new
tokens are written at `cache_index`, and queries attend to every slot up to their own.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lumi_jax.config import ModelConfig
from lumi_jax.errors import UserError

Cache = list[dict[str, jax.Array]]  # one {"k": k_BSNK, "v": v_BSNK} per layer


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _dense(features: int, name: str, config: ModelConfig, std: float) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,  # LLaMA has no biases anywhere
        dtype=compute_dtype(config),
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(stddev=std),
        name=name,
    )


def _project(x: jax.Array, features: int, name: str, config: ModelConfig, std: float) -> jax.Array:
    """x·W by a bias-free nn.Dense, x's leading axes flattened into one for the product. Same sums;
    but with a 2-D x, XLA:CPU lays out the backward's weight-gradient products without first
    transposing the (B·T, F) gradients, which it does for a 3-D x (docs/benchmarks.md)."""
    return _dense(features, name, config, std)(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], features)


# Decoding reads every weight once per token, in matrix-vector products bound by how fast the
# weights stream from memory. `decoding_params` adds, next to the trained weights, copies laid out
# for that (docs/benchmarks.md, decoding): each group of projections of one input joined side by
# side (one wider product streams faster than several narrow ones), and a tied head as (D, V).
PROJECTION_GROUPS = {"attention": ("wq", "wk", "wv"), "mlp": ("w1", "w3")}
TIED_HEAD_DV = "tied_head_DV"


def joined_name(names) -> str:
    return "+".join(names)


def decoding_params(params: dict, config: ModelConfig) -> dict:
    """`params` plus the decoding layouts above (the originals untouched, so training code and
    checkpoints never see them). The model uses them when it runs with a cache."""
    out = dict(params)
    for i in range(config.n_layers):
        layer = dict(out[f"layers_{i}"])
        for group_name, names in PROJECTION_GROUPS.items():
            group = dict(layer[group_name])
            group[joined_name(names)] = {"kernel": jnp.concatenate([group[n]["kernel"] for n in names], axis=1)}
            layer[group_name] = group
        out[f"layers_{i}"] = layer
    if config.tie_embeddings:
        out[TIED_HEAD_DV] = jnp.transpose(params["embed"]["embedding"])
    return out


def projections(module: nn.Module, x: jax.Array, kernels: list[tuple[str, int, float]], one_product: bool) -> list[jax.Array]:
    """x·W for each (name, features, init std) in `kernels`: one bias-free nn.Dense per name.

    `one_product` (decoding): one product with the kernels side by side, the same sums, from the
    joined kernel of decoding_params when there is one (else joined here). It reads the kernels
    directly, so a method interceptor on nn.Dense (LoRA's, lora.py) does not see it: decoding
    runs on merged weights.
    """
    if not one_product or module.is_initializing():
        return [_project(x, features, name, module.config, std) for name, features, std in kernels]
    dtype = compute_dtype(module.config)
    weights = module.variables["params"]
    names = [name for name, _, _ in kernels]
    joined = (weights[joined_name(names)]["kernel"] if joined_name(names) in weights
              else jnp.concatenate([weights[name]["kernel"] for name in names], axis=1))
    out = x.astype(dtype) @ joined.astype(dtype)
    return jnp.split(out, list(itertools.accumulate(features for _, features, _ in kernels))[:-1], axis=-1)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · scale, in float32 whatever the compute dtype."""

    eps: float

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        scale_D = self.param("scale", nn.initializers.ones, (x_BTD.shape[-1],), jnp.float32)
        x32_BTD = x_BTD.astype(jnp.float32)
        inverse_rms_BT1 = jax.lax.rsqrt(jnp.mean(x32_BTD**2, axis=-1, keepdims=True) + self.eps)
        return (x32_BTD * inverse_rms_BT1 * scale_D).astype(x_BTD.dtype)


def rope_angles(positions_BT: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """Rotation angle of each adjacent pair at each position: positions · theta^(-2i/K)."""
    inverse_frequency_P = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    return positions_BT.astype(jnp.float32)[..., None] * inverse_frequency_P  # (B, T, K/2)


def rope_tables(angles_BTP: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of the angles: computed once per forward pass and shared by every layer."""
    return jnp.cos(angles_BTP), jnp.sin(angles_BTP)


def apply_rope(x_BTHK: jax.Array, cos_BTP: jax.Array, sin_BTP: jax.Array) -> jax.Array:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by their angle (see the module docstring)."""
    B, T, H, K = x_BTHK.shape
    pairs = x_BTHK.astype(jnp.float32).reshape(B, T, H, K // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos_BTP[:, :, None, :], sin_BTP[:, :, None, :]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(B, T, H, K).astype(x_BTHK.dtype)


# ---------------------------------------------------------------------------------------------
# The attention core for training and scoring (no cache): heads-major, with its own backward.
#
# XLA:CPU runs autodiff's backward of the (B, T, H, K) einsum formulation slowly (~43 ms per
# layer of tiny against ~18 ms for PyTorch's fused attention; ../shared/probes). Laid out heads
# first, the four matmuls are plain batched matmuls, and the backward below is the textbook one
# (flash attention's, without tiling): it keeps the softmax P from the forward pass and needs
# one row sum, dS = P ⊙ (dP − rowsum(dO ⊙ O)), instead of differentiating through the softmax.


def _attention_forward(q_BNGTK, k_BNSK, v_BNSK, mask_BTS):
    scale = 1.0 / math.sqrt(q_BNGTK.shape[-1])
    scores = jnp.einsum("bngtk,bnsk->bngts", q_BNGTK, k_BNSK, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_BTS[:, None, None], scores, jnp.finfo(jnp.float32).min)
    p_BNGTS = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bngts,bnsk->bngtk", p_BNGTS.astype(v_BNSK.dtype), v_BNSK, preferred_element_type=jnp.float32)
    return out.astype(q_BNGTK.dtype), p_BNGTS


def _attention_grads(q, k, v, out, p, d_out):
    scale = 1.0 / math.sqrt(q.shape[-1])
    f32 = jnp.float32
    d_out = d_out.astype(f32)
    dv = jnp.einsum("bngts,bngtk->bnsk", p, d_out)
    dp = jnp.einsum("bngtk,bnsk->bngts", d_out, v, preferred_element_type=f32)
    row = jnp.sum(d_out * out.astype(f32), axis=-1, keepdims=True)  # rowsum(P ⊙ dP) = dO · O
    ds = p * (dp - row) * scale  # masked positions have P = 0, so their dS is 0
    dq = jnp.einsum("bngts,bnsk->bngtk", ds, k, preferred_element_type=f32)
    dk = jnp.einsum("bngts,bngtk->bnsk", ds, q, preferred_element_type=f32)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)



# A causal pass never attends above the diagonal, so the core runs one query block at a time
# against the keys up to that block's end: with 4 blocks, 10 of the 16 score tiles. On this CPU
# (benchmarks/attention_blocks.py, results/attention_blocks_*.json) 4 blocks of 64 made tiny's
# step ~6% faster and left small's (4 × 256) unchanged to ~5% slower; 2 blocks of 128 gave tiny
# less and slowed small by ~8%. Each block adds matmuls to compile, hence at most 8 of them.
CAUSAL_BLOCK_ENV = "LUMI_CAUSAL_BLOCKS"  # an integer: override the number of query blocks (benchmarks)
MIN_CAUSAL_BLOCK, MAX_CAUSAL_BLOCKS = 64, 8


def causal_blocks(seq_len: int) -> int:
    """How many query blocks a causal pass of `seq_len` tokens is cut into: blocks of at least
    MIN_CAUSAL_BLOCK positions, at most MAX_CAUSAL_BLOCKS of them (each is its own matmuls)."""
    override = os.environ.get(CAUSAL_BLOCK_ENV)
    if override:
        if not override.isdigit() or int(override) < 1:
            raise UserError(f"{CAUSAL_BLOCK_ENV}={override!r} is not a number of blocks: set a positive integer, "
                            "or unset it for the default")
        return min(int(override), seq_len)
    return max(1, min(MAX_CAUSAL_BLOCKS, seq_len // MIN_CAUSAL_BLOCK))


def _block_bounds(T: int, blocks: int) -> list[tuple[int, int]]:
    bounds = [round(T * i / blocks) for i in range(blocks + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q_BNGTK, k_BNTK, v_BNTK, mask_BTT, blocks: int):
    """softmax(q kᵀ / √K, masked) v, for query groups G sharing each of N key/value heads and a
    mask that is causal (or stricter: segments inside it), computed
    block row by block row against the keys up to the block's end. Its backward adds each
    block's key and value gradients into one buffer in place (autodiff of the slices would pad
    every block's gradients to full length, then add them)."""
    return _causal_attention_fwd(q_BNGTK, k_BNTK, v_BNTK, mask_BTT, blocks)[0]


def _causal_attention_fwd(q, k, v, mask_BTT, blocks):
    outs, probabilities = [], []
    for start, end in _block_bounds(q.shape[-2], blocks):
        out, p = _attention_forward(q[..., start:end, :], k[..., :end, :], v[..., :end, :], mask_BTT[:, start:end, :end])
        outs.append(out)
        probabilities.append(p)
    out = outs[0] if blocks == 1 else jnp.concatenate(outs, axis=-2)
    return out, (q, k, v, out, probabilities)


def _causal_attention_bwd(blocks, residuals, d_out):
    q, k, v, out, probabilities = residuals
    dq_blocks, dk, dv = [], jnp.zeros_like(k), jnp.zeros_like(v)
    for (start, end), p in zip(_block_bounds(q.shape[-2], blocks), probabilities, strict=True):
        rows = slice(start, end)
        dq_i, dk_i, dv_i = _attention_grads(q[..., rows, :], k[..., :end, :], v[..., :end, :], out[..., rows, :], p,
                                            d_out[..., rows, :])
        dq_blocks.append(dq_i)
        dk, dv = dk.at[..., :end, :].add(dk_i), dv.at[..., :end, :].add(dv_i)
    dq = dq_blocks[0] if blocks == 1 else jnp.concatenate(dq_blocks, axis=-2)
    return dq, dk, dv, None


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)

ATTENTION_ENV = "LUMI_ATTENTION"  # "fused" or "custom": override the choice by platform (for tests)


def fused_attention_wanted() -> bool:
    """JAX's dot_product_attention (cuDNN's fused kernel on a GPU, never materialising the scores)
    on accelerators; the heads-major core with its own backward on a CPU, where XLA has no
    fused kernel and the core above measured faster."""
    choice = os.environ.get(ATTENTION_ENV)
    if choice in ("fused", "custom"):
        return choice == "fused"
    return jax.default_backend() == "gpu"


class Attention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads (N key/value heads, H ≥ N).
    `fused`: JAX's fused kernel (fused_attention_wanted); otherwise the custom core in
    `query_blocks` blocks (causal_blocks). Both are fields, not read here from the environment,
    because a traced layer is reused for every layer with the same fields (Transformer)."""

    config: ModelConfig
    fused: bool = False
    query_blocks: int = 1

    @nn.compact
    def __call__(self, x_BTD, rope, mask_BTS, layer_cache=None, cache_index=None):
        c = self.config
        H, N, K = c.n_heads, c.kv_heads, c.head_dim
        B, T, _ = x_BTD.shape
        std = 0.02
        q_BTD, k_BTD, v_BTD = projections(self, x_BTD, [("wq", H * K, std), ("wk", N * K, std), ("wv", N * K, std)],
                                          one_product=layer_cache is not None)
        q_BTHK, k_BTNK, v_BTNK = q_BTD.reshape(B, T, H, K), k_BTD.reshape(B, T, N, K), v_BTD.reshape(B, T, N, K)

        q_BTHK = apply_rope(q_BTHK, *rope)
        k_BTNK = apply_rope(k_BTNK, *rope)
        G = H // N
        # Residual projections start smaller so the residual stream's variance stays ~1 in depth.
        out_std = 0.02 / math.sqrt(2 * c.n_layers)

        if layer_cache is None and self.fused:  # a GPU: cuDNN's fused kernel
            # Plain causal (mask None): is_causal lets the kernel skip the tiles above the diagonal
            # and never build a mask; packed segments need the mask.
            out_BTHK = (jax.nn.dot_product_attention(q_BTHK, k_BTNK, v_BTNK, is_causal=True) if mask_BTS is None
                        else jax.nn.dot_product_attention(q_BTHK, k_BTNK, v_BTNK, mask=mask_BTS[:, None]))
            out_BTD = out_BTHK.reshape(B, T, H * K).astype(compute_dtype(c))
            return _project(out_BTD, c.d_model, "wo", c, out_std), None
        if layer_cache is None:  # training and scoring: heads first, the custom backward
            if mask_BTS is None:
                mask_BTS = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), dtype=bool)), (B, T, T))
            q_BNGTK = q_BTHK.reshape(B, T, N, G, K).transpose(0, 2, 3, 1, 4)
            k_BNSK, v_BNSK = k_BTNK.transpose(0, 2, 1, 3), v_BTNK.transpose(0, 2, 1, 3)
            out_BNGTK = causal_attention(q_BNGTK, k_BNSK, v_BNSK, mask_BTS, self.query_blocks)
            out_BTD = out_BNGTK.transpose(0, 3, 1, 2, 4).reshape(B, T, H * K).astype(compute_dtype(c))
            return _project(out_BTD, c.d_model, "wo", c, out_std), None

        # Decoding with a cache: write this call's keys and values into it, then attend to every
        # slot (the mask hides those not yet written). The cache keeps batch and heads as one
        # axis, keys as (K, S) and values as (S, K): the layouts its two products read, so XLA
        # neither transposes nor copies it at each step, and updates it in place.
        S = layer_cache["v"].shape[1]
        k_XKS = jax.lax.dynamic_update_slice(
            layer_cache["k"], k_BTNK.transpose(0, 2, 3, 1).reshape(B * N, K, T).astype(layer_cache["k"].dtype),
            (0, 0, cache_index))
        v_XSK = jax.lax.dynamic_update_slice(
            layer_cache["v"], v_BTNK.transpose(0, 2, 1, 3).reshape(B * N, T, K).astype(layer_cache["v"].dtype),
            (0, cache_index, 0))
        q_XQK = q_BTHK.reshape(B, T, N, G, K).transpose(0, 2, 3, 1, 4).reshape(B * N, G * T, K)
        scores_XQS = jnp.einsum("xqk,xks->xqs", q_XQK, k_XKS.astype(q_XQK.dtype))
        scores_BNGTS = scores_XQS.reshape(B, N, G, T, S).astype(jnp.float32) / math.sqrt(K)
        scores_BNGTS = jnp.where(mask_BTS[:, None, None, :, :], scores_BNGTS, jnp.finfo(jnp.float32).min)
        weights_XQS = jax.nn.softmax(scores_BNGTS, axis=-1).astype(v_XSK.dtype).reshape(B * N, G * T, S)
        out_XQK = jnp.einsum("xqs,xsk->xqk", weights_XQS, v_XSK)
        out_BTD = out_XQK.reshape(B, N, G, T, K).transpose(0, 3, 1, 2, 4).reshape(B, T, H * K).astype(compute_dtype(c))
        new_cache = {"k": k_XKS, "v": v_XSK}
        return _project(out_BTD, c.d_model, "wo", c, out_std), new_cache


class SwiGLU(nn.Module):
    """w2( silu(w1 x) ⊙ w3 x ): the gated MLP of LLaMA."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, one_product: bool = False):
        c = self.config
        gate_BTF, up_BTF = projections(self, x_BTD, [("w1", c.ffn_dim, 0.02), ("w3", c.ffn_dim, 0.02)], one_product)
        return _project(nn.silu(gate_BTF) * up_BTF, c.d_model, "w2", c, 0.02 / math.sqrt(2 * c.n_layers))


class Block(nn.Module):
    config: ModelConfig
    fused_attention: bool = False
    query_blocks: int = 1

    @nn.compact
    def __call__(self, x_BTD, rope, mask_BTS, layer_cache=None, cache_index=None):
        c = self.config
        attention_out, new_cache = Attention(c, self.fused_attention, self.query_blocks, name="attention")(
            RMSNorm(c.norm_eps, name="attention_norm")(x_BTD), rope, mask_BTS, layer_cache, cache_index
        )
        x_BTD = x_BTD + attention_out
        x_BTD = x_BTD + SwiGLU(c, name="mlp")(RMSNorm(c.norm_eps, name="mlp_norm")(x_BTD),
                                              one_product=layer_cache is not None)
        return x_BTD, new_cache


# What a rematerialised block keeps for its backward pass. full: nothing but its input (everything
# recomputed); dots: the outputs of the matmuls without batch dimensions, i.e. the projections
# x·W (the costly part), while attention scores, norms and activations are recomputed.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
PLAIN_BLOCK_CLASSES = {"off": Block} | {name: nn.remat(Block, policy=policy) for name, policy in REMAT_POLICIES.items()}
# nn.jit: the layers share one traced function (their fields and shapes are the same), so tracing,
# autodiff and lowering happen once instead of n_layers times, a shorter start for every jitted
# step (benchmarks/compile_time.py); XLA inlines the calls, so the step runs the same. Made once,
# here, so that its trace cache lasts across calls; what the environment chooses (fused
# attention, query blocks) is a field of the layer, so it is part of that cache's key.
BLOCK_CLASSES = {name: nn.jit(block_class) for name, block_class in PLAIN_BLOCK_CLASSES.items()}


class Transformer(nn.Module):
    """The whole model. `remat` ("off", "full", "dots") says what each block keeps for the
    backward pass and what it recomputes (REMAT_POLICIES)."""

    config: ModelConfig
    remat: str = "off"
    # The layers share one traced function (BLOCK_CLASSES). A method interceptor that closes over
    # arrays (LoRA's adapters, lora.py) must turn this off: the shared trace cannot see them.
    share_layer_trace: bool = True

    @nn.compact
    def __call__(
        self,
        tokens_BT: jax.Array,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
        key_mask_BS: jax.Array | None = None,
        scored_N: jax.Array | None = None,
        segments_BT: jax.Array | None = None,
        targets_BT: jax.Array | None = None,
        head_chunk: int = 0,
    ) -> tuple[jax.Array, Cache | None]:
        """Return float32 logits (B, T, V) and the updated cache (None when no cache is given).

        `scored_N` (flat positions b·T + t) asks for the logits of those positions only, as
        (N, V): the head is ~1/6 of tiny's work, and fine-tuning scores only the answer tokens.
        `segments_BT` (no cache): a token attends only to earlier tokens of its own segment, so
        examples packed into one row stay independent, as each is when answered alone. The ids
        come from the data pipeline (data/loader.py); the model knows nothing of tokenizers.

        Without a cache: a causal pass over the T tokens at positions 0..T-1 (training, scoring).
        With a cache of S slots: the T tokens sit at slots cache_index..cache_index+T-1 and
        attend to every written slot up to their own; `key_mask_BS` can hide slots (the left
        padding of a batch of prompts). RoPE depends only on relative position, so a row's
        left padding shifts its positions without changing what it computes.
        `targets_BT` with `head_chunk` (no cache, no scored_N): return −log p(target) (B, T) from
        the fused head and loss instead of logits (fused_head_nats).
        """
        c = self.config
        B, T = tokens_BT.shape
        embed = nn.Embed(
            c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(stddev=0.02),
            dtype=compute_dtype(c), param_dtype=jnp.float32, name="embed",
        )
        x_BTD = embed(tokens_BT)

        if cache is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
            mask_BTS = None  # plain causal: each attention core applies it its own way
            if segments_BT is not None:
                causal_TT = jnp.tril(jnp.ones((T, T), dtype=bool))
                mask_BTS = causal_TT[None] & (segments_BT[:, :, None] == segments_BT[:, None, :])
            cache_index = None
        else:
            S = cache[0]["v"].shape[1]
            positions_BT = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
            mask_BTS = jnp.arange(S)[None, None, :] <= positions_BT[:, :, None]
            if key_mask_BS is not None:
                mask_BTS = mask_BTS & key_mask_BS[:, None, :]

        rope = rope_tables(rope_angles(positions_BT, c.head_dim, c.rope_theta))  # once, for every layer
        # Not at init: nn.jit derives the layers' random keys differently, and a seed must keep
        # giving the weights it gave before.
        shared = self.share_layer_trace and not self.is_initializing()
        block_class = (BLOCK_CLASSES if shared else PLAIN_BLOCK_CLASSES)[self.remat]
        fused = cache is None and fused_attention_wanted()
        query_blocks = 1 if cache is not None else causal_blocks(T)
        new_cache: Cache = []
        for i in range(c.n_layers):
            layer_cache = None if cache is None else cache[i]
            x_BTD, layer_new_cache = block_class(c, fused, query_blocks, name=f"layers_{i}")(
                x_BTD, rope, mask_BTS, layer_cache, cache_index
            )
            new_cache.append(layer_new_cache)

        x_BTD = RMSNorm(c.norm_eps, name="final_norm")(x_BTD)
        if scored_N is not None:
            x_BTD = x_BTD.reshape(B * T, c.d_model)[scored_N]  # (N, D); the head maps any leading shape
        # The head accumulates in float32 whatever the compute dtype: bfloat16 logits would lose
        # the differences between likely tokens before the softmax sees them.
        if c.tie_embeddings and cache is not None and TIED_HEAD_DV in self.variables["params"]:
            # decoding_params' layout of the embedding
            head_DV = self.variables["params"][TIED_HEAD_DV].astype(x_BTD.dtype)
        elif c.tie_embeddings:
            head_DV = None
            head_VD = embed.embedding.astype(x_BTD.dtype)
        else:
            head_DV = OutputHead(c.vocab_size, name="output")(c.d_model).astype(x_BTD.dtype)

        def head(x_D):
            if head_DV is None:
                return jnp.einsum("...d,vd->...v", x_D, head_VD, preferred_element_type=jnp.float32)
            return jnp.einsum("...d,dv->...v", x_D, head_DV, preferred_element_type=jnp.float32)

        if targets_BT is not None:
            return fused_head_nats(x_BTD, head, targets_BT, head_chunk), None
        return head(x_BTD).astype(jnp.float32), (None if cache is None else new_cache)


class OutputHead(nn.Module):
    """The untied output matrix (D, V), held where nn.Dense would hold it (params["output"]["kernel"]),
    so the plain head and the fused head-and-loss read the same parameter."""

    vocab_size: int

    @nn.compact
    def __call__(self, d_model: int) -> jax.Array:
        return self.param("kernel", nn.initializers.normal(stddev=0.02), (d_model, self.vocab_size), jnp.float32)


def token_nats(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """−log p(target) at every position, in float32: logsumexp(logits) − logit[target]."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BTV, axis=-1) - target_logit_BT


# Above this size of one micro-batch's float32 logits, training fuses the head with the loss and
# computes both a chunk of positions at a time (fused_head_nats).
FUSED_HEAD_ABOVE_BYTES = 1 << 30
FUSED_HEAD_POSITIONS = 128  # positions per row in a chunk, at most


def fused_head_chunk(config: ModelConfig, batch: int, seq: int) -> int:
    """Positions per row in each chunk of the fused head and loss, or 0 for the plain head.

    The plain head's float32 logits, their softmax and their gradient are B·T·V·4 bytes each: for
    small or base at 32 × 1024 tokens, 4 GB apiece, the largest activations of the step. Fused,
    they shrink to B·chunk·V, for one more pass of the head in the backward pass; so the fused
    head is used only where the logits would be large (above FUSED_HEAD_ABOVE_BYTES)."""
    if batch * seq * config.vocab_size * 4 <= FUSED_HEAD_ABOVE_BYTES:
        return 0
    return max(c for c in range(1, min(seq, FUSED_HEAD_POSITIONS) + 1) if seq % c == 0)


def fused_head_nats(x_BTD: jax.Array, head, targets_BT: jax.Array, chunk: int) -> jax.Array:
    """−log p(target) at every position, (B, T) float32, never holding more than B·chunk·V logits.

    The positions are cut into T/chunk chunks along T (the batch axis stays whole, so a batch
    split over devices stays split); `lax.map` runs the head and the loss chunk by chunk, and
    `jax.checkpoint` makes the backward pass recompute each chunk's logits instead of keeping
    them. The same values as the plain head up to float32 rounding (tests/test_model.py)."""
    B, T, D = x_BTD.shape
    if chunk <= 0 or T % chunk:
        raise ValueError(f"head chunk {chunk} must divide the sequence length {T}")
    x_NBCD = x_BTD.reshape(B, T // chunk, chunk, D).swapaxes(0, 1)
    targets_NBC = targets_BT.reshape(B, T // chunk, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_nats(x_BCD, targets_BC):
        return token_nats(head(x_BCD), targets_BC)

    nats_NBC = jax.lax.map(lambda pair: chunk_nats(*pair), (x_NBCD, targets_NBC))
    return nats_NBC.swapaxes(0, 1).reshape(B, T)


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype: Any = None) -> Cache:
    """An empty KV cache of S = max_len slots: per layer, keys of shape (B·N, K, S) and values of
    shape (B·N, S, K), the layouts that decoding's two products read (Attention)."""
    dtype = dtype or compute_dtype(config)
    rows = batch_size * config.kv_heads
    return [{"k": jnp.zeros((rows, config.head_dim, max_len), dtype),
             "v": jnp.zeros((rows, max_len, config.head_dim), dtype)} for _ in range(config.n_layers)]


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
    """Float32 parameters as a plain nested dict."""
    model = Transformer(config)
    dummy_BT = jnp.zeros((1, min(8, config.max_seq_len)), dtype=jnp.int32)
    return model.init(rng, dummy_BT)["params"]


def param_shapes(config: ModelConfig) -> dict:
    """The parameter pytree as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))


def count_params(params: Any) -> int:
    """The number of parameters in a pytree (arrays or ShapeDtypeStructs): embeddings and head included."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def forward(config: ModelConfig, params: dict, tokens_BT: jax.Array, remat: str = "off",
            scored_N: jax.Array | None = None, segments_BT: jax.Array | None = None,
            targets_BT: jax.Array | None = None, head_chunk: int = 0) -> jax.Array:
    """Logits (B, T, V) for a causal pass: the function training and scoring use. With
    `targets_BT` and `head_chunk`, −log p(target) (B, T) from the fused head and loss instead."""
    out, _ = Transformer(config, remat=remat).apply({"params": params}, tokens_BT, scored_N=scored_N,
                                                    segments_BT=segments_BT, targets_BT=targets_BT,
                                                    head_chunk=head_chunk)
    return out
