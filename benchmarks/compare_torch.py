"""lumi's train step side by side with a plain PyTorch LLaMA of the same shape, in one process.

The PyTorch model below is written for this comparison: the same LLaMA as lumi_jax/model.py
(RMSNorm in float32, RoPE on adjacent pairs, grouped-query attention through PyTorch's fused
scaled_dot_product_attention, SwiGLU, a tied head), the same AdamW (β 0.9/0.95, weight decay on
matrices only) and the same global-norm clipping. Before timing, it is loaded with lumi's
initial weights and its logits are checked against lumi's forward pass (max difference printed
and recorded; it must be under 1e-4).

Then, round after round, each contestant runs `--steps` timed steps on the same batch shape:
PyTorch eager, torch.compile, and lumi's real jitted train step (step.jit_train_step). Rounds
alternate so that a change in the machine's load hits all three alike; the median over rounds
is reported with the spread.

    pip install -e '.[interop]'    # torch==2.13.0: a CPU wheel
    python benchmarks/compare_torch.py --workload tiny --rounds 5

fp32, both cores: torch.set_num_threads(2); lumi as `lumi train` runs it, one XLA device per core
(lumi_jax/cpu_devices.py; results recorded before 2026-11-30 used one device). Run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lumi_jax.cpu_devices import use_cpu_cores  # noqa: E402

use_cpu_cores()  # lumi as `lumi train` runs it: one XLA device per core (LUMI_CPU_DEVICES=1: one device)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lumi_jax import sharding as shard  # noqa: E402
from lumi_jax.config import TrainConfig, load_model_config  # noqa: E402
from lumi_jax.model import forward  # noqa: E402
from lumi_jax.optim import make_optimizer  # noqa: E402
from lumi_jax.step import initial_state, jit_train_step  # noqa: E402

WORKLOADS = {"tiny": ("tiny", 8, 256), "small": ("small", 4, 256)}


def torch_llama(config, torch):
    nn, F = torch.nn, torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps, self.scale = eps, nn.Parameter(torch.ones(dim))

        def forward(self, x):
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale).type_as(x)

    def rope(x, cos, sin):  # x (B, T, H, K), adjacent pairs as lumi rotates them
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).reshape(x.shape).type_as(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d, h, n, k, f = config.d_model, config.n_heads, config.kv_heads, config.head_dim, config.ffn_dim
            self.wq, self.wk, self.wv = nn.Linear(d, h * k, bias=False), nn.Linear(d, n * k, bias=False), nn.Linear(d, n * k, bias=False)
            self.wo = nn.Linear(h * k, d, bias=False)
            self.w1, self.w3, self.w2 = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)
            self.attention_norm, self.mlp_norm = RMSNorm(d, config.norm_eps), RMSNorm(d, config.norm_eps)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            h, n, k = config.n_heads, config.kv_heads, config.head_dim
            a = self.attention_norm(x)
            q = rope(self.wq(a).view(B, T, h, k), cos, sin).transpose(1, 2)
            kk = rope(self.wk(a).view(B, T, n, k), cos, sin).transpose(1, 2)
            v = self.wv(a).view(B, T, n, k).transpose(1, 2)
            if n != h:
                kk, v = kk.repeat_interleave(h // n, 1), v.repeat_interleave(h // n, 1)
            out = F.scaled_dot_product_attention(q, kk, v, is_causal=True)
            x = x + self.wo(out.transpose(1, 2).reshape(B, T, h * k))
            m = self.mlp_norm(x)
            return x + self.w2(F.silu(self.w1(m)) * self.w3(m))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(config.vocab_size, config.d_model)
            self.layers = nn.ModuleList([Block() for _ in range(config.n_layers)])
            self.final_norm = RMSNorm(config.d_model, config.norm_eps)

        def forward(self, tokens):
            T = tokens.shape[1]
            inverse = config.rope_theta ** (-torch.arange(0, config.head_dim, 2).float() / config.head_dim)
            angles = torch.arange(T).float()[:, None] * inverse
            cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
            x = self.embed(tokens)
            for layer in self.layers:
                x = layer(x, cos, sin)
            return self.final_norm(x) @ self.embed.weight.T  # the tied head

    return Llama()


def load_lumi_weights(model, params, torch):
    """lumi's kernels are (in, out); torch's Linear weights are (out, in)."""
    def put(module, array):
        module.data.copy_(torch.from_numpy(np.asarray(array, np.float32)))

    put(model.embed.weight, params["embed"]["embedding"])
    put(model.final_norm.scale, params["final_norm"]["scale"])
    for i, layer in enumerate(model.layers):
        p = params[f"layers_{i}"]
        for name in ("wq", "wk", "wv", "wo"):
            put(getattr(layer, name).weight, np.asarray(p["attention"][name]["kernel"]).T)
        for name in ("w1", "w2", "w3"):
            put(getattr(layer, name).weight, np.asarray(p["mlp"][name]["kernel"]).T)
        put(layer.attention_norm.scale, p["attention_norm"]["scale"])
        put(layer.mlp_norm.scale, p["mlp_norm"]["scale"])


def torch_step_fn(model, torch, compiled: bool):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    forward_fn = torch.compile(model) if compiled else model

    def step(inputs, targets):
        logits = forward_fn(inputs)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    return step


def timed(step, steps: int, sync) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        result = step()
    sync(result)
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contestant per round")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("needs PyTorch: pip install -e '.[interop]' (torch==2.13.0, a CPU wheel)") from None
    torch.set_num_threads(2)
    model_name, batch, context = WORKLOADS[args.workload]
    config = load_model_config(model_name)
    train_config = TrainConfig(steps=1000, batch_size=batch, context=context, lr=1e-3, warmup=10)
    mesh = shard.make_mesh(batch_rows=batch)
    state, shardings = initial_state(config, train_config, make_optimizer(train_config), mesh)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, config.vocab_size, size=(batch, context + 1), dtype=np.int64)

    # The same model: lumi's initial weights in the PyTorch module give the same logits.
    model = torch_llama(config, torch)
    load_lumi_weights(model, jax.device_get(state.params), torch)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(tokens[:2, :-1])).numpy()
    lumi_logits = np.asarray(jax.jit(forward, static_argnums=0)(config, state.params, jnp.asarray(tokens[:2, :-1])))
    logit_difference = float(np.abs(torch_logits - lumi_logits).max())
    print(f"max |logit difference| PyTorch vs lumi on the same weights: {logit_difference:.2e}")
    if logit_difference > 1e-4:
        raise SystemExit("the PyTorch model is not lumi's model; the comparison would mean nothing")

    inputs, targets = torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(tokens[:, 1:].copy())
    contestants = {"torch_eager": torch_step_fn(model, torch, compiled=False)}
    if not args.no_compile:
        contestants["torch_compile"] = torch_step_fn(torch_llama(config, torch), torch, compiled=True)
    batch_arrays = shard.put_batch({"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
                                    "weights": np.ones((batch, context), np.float32)}, mesh)
    lumi_step = jit_train_step(config, train_config, mesh, shardings)
    lumi = {"state": state}

    def lumi_once():
        lumi["state"], metrics = lumi_step(lumi["state"], batch_arrays, None)
        return metrics["loss"]

    runners = {name: (lambda fn=fn: fn(inputs, targets), lambda loss: loss.item()) for name, fn in contestants.items()}
    runners["lumi_jax"] = (lumi_once, lambda loss: jax.block_until_ready(loss))
    compile_s = {}
    for name, (once, sync) in runners.items():  # compile / warm up, timed apart
        started = time.perf_counter()
        sync(once())
        sync(once())
        compile_s[name] = round(time.perf_counter() - started, 2)
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, (once, sync) in runners.items():
            seconds[name].append(timed(once, args.steps, sync))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {batch * context / s[-1]:,.0f} tok/s" for n, s in seconds.items()),
              flush=True)
    tokens_per_s = {name: {"median": round(batch * context / float(np.median(s))),
                           "min": round(batch * context / max(s)), "max": round(batch * context / min(s))}
                    for name, s in seconds.items()}
    best_torch = max(v["median"] for k, v in tokens_per_s.items() if k != "lumi_jax")
    report = {
        "workload": {"model": model_name, "batch": batch, "context": context, "dtype": "float32"},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "lumi_devices": int(mesh.devices.size),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "jax": jax.__version__, "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "max_logit_difference": logit_difference,
        "compile_and_warmup_s": compile_s,
        "rounds": args.rounds, "steps_per_round": args.steps,
        "tokens_per_s": tokens_per_s,
        "lumi_over_best_torch": round(tokens_per_s["lumi_jax"]["median"] / best_torch, 3),
        "lumi_over_torch_eager": round(tokens_per_s["lumi_jax"]["median"] / tokens_per_s["torch_eager"]["median"], 3),
        "command": " ".join(["python", "benchmarks/compare_torch.py", *sys.argv[1:]]),
    }
    print(json.dumps(report["tokens_per_s"]), f"lumi / best PyTorch: {report['lumi_over_best_torch']}")
    out = args.out or REPO / "benchmarks" / "results" / f"compare_torch_{args.workload}_cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
