"""Sharding: the mesh and partition rule, and 4 simulated devices training exactly like 1.

The 4-device half runs in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the device count is fixed at JAX start-up).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec

from lumi_jax import sharding as shard
from lumi_jax.config import TrainConfig
from lumi_jax.errors import UserError
from lumi_jax.metrics import read_metrics
from lumi_jax.train import train

pytestmark = pytest.mark.usefixtures("compilation_cache")  # compiled steps shared through the cache

CONFIG = TrainConfig(steps=8, batch_size=8, context=32, lr=3e-3, warmup=2, min_lr=3e-4,
                     eval_every=4, eval_batches=2, save_every=100, log_every=1)
REPO = Path(__file__).resolve().parent.parent

FOUR_DEVICE_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    from lumi_jax import sharding as shard
    from lumi_jax.config import TrainConfig, load_model_config
    from lumi_jax.errors import UserError
    from lumi_jax.metrics import read_metrics
    from lumi_jax.optim import make_optimizer
    from lumi_jax.step import initial_state
    from lumi_jax.train import train

    data, out, config = sys.argv[1], sys.argv[2], TrainConfig(**json.loads(sys.argv[3]))
    micro = load_model_config("micro")
    report = {"devices": jax.device_count()}
    for name, fsdp in (("data", 1), ("fsdp", 4)):
        layout = dataclasses.replace(config, mesh_fsdp=fsdp)
        train(layout, micro, data, f"{out}/{name}", show_progress=False)
        report[name] = read_metrics(f"{out}/{name}/metrics.jsonl")
    mesh = shard.make_mesh(0, 4)
    state, _ = initial_state(micro, config, make_optimizer(config), mesh)
    report["embedding_spec"] = str(state.params["embed"]["embedding"].sharding.spec)
    report["adam_moment_spec"] = str(jax.tree.leaves(state.opt_state)[1].sharding.spec)
    report["batch_6_devices"] = train(dataclasses.replace(config, batch_size=6), micro, data, f"{out}/six",
                                      show_progress=False)["devices"]
    report["batch_5_devices"] = train(dataclasses.replace(config, batch_size=5), micro, data, f"{out}/five",
                                      show_progress=False)["devices"]
    try:
        train(dataclasses.replace(config, batch_size=6, mesh_fsdp=4), micro, data, f"{out}/odd", show_progress=False)
    except UserError as error:
        report["odd_batch_error"] = str(error)
    print(json.dumps(report))
""")


def test_partition_rule_splits_the_largest_divisible_dimension():
    assert shard.leaf_spec((512, 64), fsdp=4) == PartitionSpec("fsdp", None)
    assert shard.leaf_spec((64, 192), fsdp=4) == PartitionSpec(None, "fsdp")
    assert shard.leaf_spec((64,), fsdp=4) == PartitionSpec()  # norm scales: too small to split
    assert shard.leaf_spec((1023, 7), fsdp=4) == PartitionSpec()  # nothing divides
    assert shard.leaf_spec((512, 64), fsdp=1) == PartitionSpec()


def test_mesh_that_does_not_fit_the_devices_is_refused():
    mesh = shard.make_mesh()
    shard.check_batch_divides(8, 2, mesh)  # one device: anything divides
    with pytest.raises(UserError, match="fsdp=3 does not divide"):
        shard.make_mesh(fsdp=3)


def test_four_devices_train_like_one_in_data_and_fsdp_layouts(micro_config, dataset_dir, tmp_path):
    one = tmp_path / "one"
    train(CONFIG, micro_config, dataset_dir, one, show_progress=False)
    reference = read_metrics(one / "metrics.jsonl")

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICE_SCRIPT, str(dataset_dir), str(tmp_path / "four"),
         json.dumps(dataclasses.asdict(CONFIG))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    for layout in ("data", "fsdp"):
        got = report[layout]
        assert [r["step"] for r in got] == [r["step"] for r in reference]
        for mine, theirs in zip(reference, got, strict=True):
            for key in ("loss", "grad_norm", "val_loss"):
                if key in mine:
                    assert theirs[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), (layout, mine["step"], key)
    assert "fsdp" in report["embedding_spec"]  # parameters really are split in the FSDP layout
    assert "fsdp" in report["adam_moment_spec"]  # and so are the optimizer moments
    # A data-parallel mesh takes the most devices that split the batch evenly; FSDP needs them all.
    assert report["batch_6_devices"] == {"platform": "cpu", "count": 3, "mesh": {"data": 3, "fsdp": 1}}
    assert report["batch_5_devices"] == {"platform": "cpu", "count": 1, "mesh": {"data": 1, "fsdp": 1}}
    assert "does not divide among 4 devices" in report["odd_batch_error"]
