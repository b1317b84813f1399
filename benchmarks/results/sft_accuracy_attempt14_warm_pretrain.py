"""The scratch script that made attempt 14's pretrained run (kept as the record of what was measured).

A copy warm-up (synthetic rows: a random 64-token span, then the span again; the loss on the
repeat) of WARM_STEPS steps, then the prototype pretraining from the warmed parameters with a
fresh optimizer. `TrainConfig.copy_warmup_steps` (lumi_jax/copy_warmup.py) now does the same
inside `train` (same shapes, optimizer and lr; another random stream). Run from the repository
root: python benchmarks/results/sft_accuracy_attempt14_warm_pretrain.py 300
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, ".")
from lumi_jax.config import load_model_config, load_train_config  # noqa: E402
from lumi_jax.model import forward, init_params  # noqa: E402
from lumi_jax.train import train  # noqa: E402

WARM_STEPS, BATCH, HALF, LR = int(sys.argv[1]), 16, 64, 1e-3
cfg = load_model_config("tiny")
params = init_params(cfg, jax.random.key(0))
opt = optax.adamw(optax.warmup_constant_schedule(0, LR, 20), b1=0.9, b2=0.95, weight_decay=0.0)
state = opt.init(params)


def loss_fn(p, x):
    nats = optax.softmax_cross_entropy_with_integer_labels(forward(cfg, p, x[:, :-1]), x[:, 1:])
    return nats[:, HALF:].mean()


@jax.jit
def step(p, s, x):
    loss, grads = jax.value_and_grad(loss_fn)(p, x)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss


rng = np.random.default_rng(0)
started = time.time()
for i in range(WARM_STEPS):
    seq = rng.integers(3, cfg.vocab_size, size=(BATCH, HALF))
    x = jnp.asarray(np.concatenate([seq, seq, seq[:, :1]], axis=1), jnp.int32)
    params, state, loss = step(params, state, x)
    if i % 25 == 0 or i == WARM_STEPS - 1:
        print("warm-up", i, f"copy nats {float(loss):.3f} {time.time() - started:.0f}s", flush=True)
train(load_train_config("prototype"), cfg, "data/sft_v4_stories", "runs/sft_v4_pretrain", init_params=params,
      init_from=f"copy warm-up ({WARM_STEPS} steps of {BATCH} x {2 * HALF})", show_progress=True)
