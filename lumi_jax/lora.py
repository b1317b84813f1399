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
interceptor, so the model code knows nothing of LoRA. `LoraTraining` is LoRA as a kind of "what
is trained" (step.py): the one training loop trains adapters as it trains whole models, with
accumulation, sharding, periodic evaluation and saves, the divergence guard and exact resume.
A LoRA checkpoint holds the merged parameters as `params` (what every reader loads) and the
adapters with their optimizer state as its resume item; the frozen base comes again from the
pretrained run (`init_from`) when a LoRA run resumes.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lumi_jax.config import ModelConfig
from lumi_jax.errors import UserError
from lumi_jax.model import Transformer, count_params

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


def nest(adapters: dict) -> dict:
    """{"layers_0/attention/wq": {"a", "b"}} -> {"layers_0": {"attention": {"wq": {"a", "b"}}}}."""
    return traverse_util.unflatten_dict({tuple(name.split(SEPARATOR)): value for name, value in adapters.items()})


def flatten(nested: dict) -> dict:
    """The inverse of `nest`."""
    adapters: dict[str, dict] = {}
    for path, value in traverse_util.flatten_dict(nested).items():
        adapters.setdefault(SEPARATOR.join(path[:-1]), {})[path[-1]] = value
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
                 segments_BT: jax.Array | None = None, scored_N: jax.Array | None = None,
                 remat: str = "off", targets_BT: jax.Array | None = None, head_chunk: int = 0) -> jax.Array:
    """Logits of the model with unmerged adapters: every target Dense adds scale · (x A) B.
    `segments_BT`, `scored_N`, `remat`, `targets_BT`, `head_chunk`: as for the plain model
    (model.Transformer)."""

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
        # share_layer_trace off: the adapters are closed over, so one layer's trace cannot serve all.
        model = Transformer(config, remat=remat, share_layer_trace=False)
        out, _ = model.apply({"params": params}, tokens_BT, scored_N=scored_N, segments_BT=segments_BT,
                             targets_BT=targets_BT, head_chunk=head_chunk)
    return out


@dataclasses.dataclass(frozen=True)
class LoraTraining:
    """Rank-r adapters are trained; the base parameters stay frozen (step.Trained)."""

    rank: int
    alpha: float | None = None

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.alpha)

    # The trained pytree is the adapters nested by module path (`nest`), so that checkpoint keys,
    # and the optimizer state's, are plain names with no "/" inside one key.

    def start(self, params, seed):
        return nest(init_lora(params, self.rank, jax.random.key(seed))), params

    def logits_fn(self, frozen):
        def logits(model_config, trained, tokens_BT, *, remat="off", scored_N=None, segments_BT=None,
                   targets_BT=None, head_chunk=0):
            return lora_forward(model_config, frozen, flatten(trained), self.scale, tokens_BT,
                                segments_BT=segments_BT, scored_N=scored_N, remat=remat,
                                targets_BT=targets_BT, head_chunk=head_chunk)
        return logits

    def model_params(self, trained, frozen):
        return merge(frozen, flatten(trained), self.scale)

    def resume_item(self, trained, opt_state):
        return {"adapters": trained, "opt_state": opt_state}

    def from_resume_item(self, params, item):
        return item["adapters"], item["opt_state"]

    def record(self):
        return {"rank": self.rank, "alpha": self.alpha if self.alpha is not None else self.rank,
                "targets": list(TARGET_MATRICES), "merged": True}

    def describe(self, state) -> str:
        return (f"LoRA rank {self.rank}: {count_params(state.params):,} trained of "
                f"{count_params(state.frozen):,} parameters")


