"""One XLA device per CPU core, so that training on a CPU uses its cores as data-parallel devices.

XLA:CPU runs a program on a thread pool, but much of a small model's step (elementwise passes,
small matrix products, the attention core) runs on one thread at a time. Shown as N devices,
the cores each take a slice of every batch, as N GPUs would, through the same mesh and sharding
rule (lumi_jax/sharding.py): on two cores, micro's step ran ~13% faster and tiny's and small's a
few percent (benchmarks/cpu_devices.py, docs/benchmarks.md).

The device count is read once, when JAX starts its backends, from
`XLA_FLAGS=--xla_force_host_platform_device_count=N`; so `use_cpu_cores` runs at the start of a
`lumi` or `python -m lumi_jax.session` process, before anything touches a device. The flag only
shapes the CPU backend: on a machine with an accelerator JAX still trains on the accelerator.
It is left alone when:

- LUMI_CPU_DEVICES is set: a number N asks for N devices (1 turns the split off);
- XLA_FLAGS already says how many CPU devices there are (the user's choice, or `lumi launch`'s);
- the process is one of a multi-process job (its launcher decides its devices);
- JAX's backends have already started (too late: the count is fixed).

A mesh uses only as many of these devices as divide the batch (sharding.make_mesh), so a batch
of 5 sequences still trains, on one device.
"""

from __future__ import annotations

import os

from lumi_jax.errors import UserError

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
ENV = "LUMI_CPU_DEVICES"
MAX_DEVICES = 8  # beyond this, per-device slices of a small batch are too thin to pay for the split


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _in_multi_process_job(environ) -> bool:
    """The variables sharding.initialize_distributed joins a job by."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    sizes = (environ.get("SLURM_NTASKS", ""), environ.get("OMPI_COMM_WORLD_SIZE", ""))
    return any(size.isdigit() and int(size) > 1 for size in sizes)


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    return bool(xla_bridge.backends_are_initialized())


def wanted_devices(environ: dict[str, str] | os._Environ = os.environ) -> int | None:
    """How many CPU devices to ask for, or None to leave JAX's default (one) alone."""
    choice = environ.get(ENV, "").strip()
    if choice:
        try:
            count = int(choice)
        except ValueError:
            count = 0
        if count < 1:
            raise UserError(f"{ENV}={choice!r}; use a whole number of CPU devices ≥ 1 (1 turns the split off), "
                            "or unset it to use one device per core")
        return count if count > 1 else None
    if DEVICE_COUNT_FLAG in environ.get("XLA_FLAGS", ""):
        return None
    if _in_multi_process_job(environ):
        return None
    cores = min(usable_cores(), MAX_DEVICES)
    return cores if cores > 1 else None


def use_cpu_cores() -> int | None:
    """Ask XLA for one CPU device per usable core (see the module docstring); return the count
    asked for, or None when the default was left alone."""
    count = wanted_devices()
    if count is None or _backends_started():
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_COUNT_FLAG in flags:  # LUMI_CPU_DEVICES overrides an earlier count
        flags = " ".join(flag for flag in flags.split() if not flag.startswith(DEVICE_COUNT_FLAG))
    os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()
    return count
