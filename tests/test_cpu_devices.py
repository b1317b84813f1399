"""One CPU device per core: when lumi asks for it, when it leaves JAX alone, and a real run on two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lumi_jax import cpu_devices
from lumi_jax.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FLAG = cpu_devices.DEVICE_COUNT_FLAG


@pytest.fixture
def cores(monkeypatch):
    def set_cores(count):
        monkeypatch.setattr(cpu_devices, "usable_cores", lambda: count)
    return set_cores


def test_one_device_per_usable_core_up_to_a_cap(cores):
    cores(2)
    assert cpu_devices.wanted_devices({}) == 2
    cores(1)
    assert cpu_devices.wanted_devices({}) is None  # one core: nothing to split
    cores(64)
    assert cpu_devices.wanted_devices({}) == cpu_devices.MAX_DEVICES


def test_the_user_and_launchers_decide_first(cores):
    cores(4)
    assert cpu_devices.wanted_devices({"LUMI_CPU_DEVICES": "3"}) == 3
    assert cpu_devices.wanted_devices({"LUMI_CPU_DEVICES": "1"}) is None  # the split turned off
    assert cpu_devices.wanted_devices({"XLA_FLAGS": f"--xla_foo=1 {FLAG}=2"}) is None
    assert cpu_devices.wanted_devices({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}) is None
    assert cpu_devices.wanted_devices({"SLURM_NTASKS": "4"}) is None
    assert cpu_devices.wanted_devices({"SLURM_NTASKS": "1"}) == 4  # a one-task allocation is one process
    for bad in ("0", "two", "-1"):
        with pytest.raises(UserError, match="LUMI_CPU_DEVICES"):
            cpu_devices.wanted_devices({"LUMI_CPU_DEVICES": bad})


def test_too_late_once_jax_has_started(cores, monkeypatch):
    import jax

    jax.devices()  # this test process has started its backends
    cores(4)
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    monkeypatch.delenv("LUMI_CPU_DEVICES", raising=False)
    assert cpu_devices.use_cpu_cores() is None
    assert os.environ["XLA_FLAGS"] == "--xla_foo=1"


def lumi_train(tmp_path: Path, dataset_dir: Path, name: str, batch: int, **env_changes: str):
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "LUMI_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", **env_changes)
    out = tmp_path / name
    result = subprocess.run(
        [sys.executable, "-m", "lumi_jax.cli", "train", "--model", "micro", "--data", str(dataset_dir),
         "--out", str(out), "--steps", "6", "--warmup", "1", "--batch-size", str(batch), "--context", "32",
         "--eval-every", "3", "--eval-batches", "1", "--log-every", "1", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result, out


def test_lumi_train_splits_the_batch_over_the_cores_it_is_given(tmp_path, dataset_dir):
    two, two_dir = lumi_train(tmp_path, dataset_dir, "two", 4, LUMI_CPU_DEVICES="2")
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((two_dir / "summary.json").read_text())["devices"]["count"] == 2
    one, one_dir = lumi_train(tmp_path, dataset_dir, "one", 4, LUMI_CPU_DEVICES="1")
    assert one.returncode == 0, one.stderr[-2000:]
    assert json.loads((one_dir / "summary.json").read_text())["devices"]["count"] == 1
    # The same run on two devices: the same losses up to float32 summation order.
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)] for run in (one_dir, two_dir)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_a_bad_device_count_is_one_line_and_exit_2(tmp_path, dataset_dir):
    result, out = lumi_train(tmp_path, dataset_dir, "bad", 4, LUMI_CPU_DEVICES="many")
    assert result.returncode == 2
    assert "LUMI_CPU_DEVICES" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
