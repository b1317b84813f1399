"""Where arrays live: a device mesh, the partition rule, and multi-host start-up.

The mesh has two axes over all devices (of all hosts):

    data  – each device group sees a different slice of the batch (data parallelism);
    fsdp  – the batch is split further, AND parameters / optimizer state are split along one
            dimension, gathered by XLA just in time for each matmul (fully sharded data parallel).

A batch (B, T) is split along B over both axes. A parameter or optimizer leaf is split along its
largest dimension that `fsdp` divides; leaves too small or indivisible stay replicated. One rule
for every leaf means AdamW's moments automatically follow their parameters. With one device
every sharding is trivial and the same code runs unchanged.

Several hosts: launch the same command on every host with JAX_COORDINATOR_ADDRESS=host:port,
JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i set (or under SLURM / Open MPI, which JAX detects),
and `initialize_distributed` calls `jax.distributed.initialize` before anything touches a device.
`lumi launch --processes N` does this on one machine (launch.py).

Several processes must also take the same decisions: every one runs the same steps and joins the
same saves, or the job deadlocks in a collective. A decision made from a signal or a clock (stop
now, the time budget, a schedule sized to the deadline) is agreed with `any_process` and
`from_process_0`; with one process both return their argument unchanged.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lumi_jax.errors import UserError

BATCH_AXES = ("data", "fsdp")


def initialize_distributed() -> bool:
    """Join a multi-host job when the environment describes one; return True if it did."""
    if jax.distributed.is_initialized():
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(name)]
        if missing:
            raise UserError(
                f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all three on "
                "every host (JAX_NUM_PROCESSES = number of hosts, JAX_PROCESS_ID = 0..N-1)"
            )
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
        return True
    cluster_sizes = (os.environ.get("SLURM_NTASKS"), os.environ.get("OMPI_COMM_WORLD_SIZE"))
    if any(size and int(size) > 1 for size in cluster_sizes):
        jax.distributed.initialize()  # JAX reads the SLURM / Open MPI variables itself
        return True
    return False


def any_process(flags: list[bool]) -> list[bool]:
    """Each flag True on every process when it is True on any of them, in one small collective
    (~2 ms between two local CPU processes): a stop request (a signal, the time budget) that
    reached only some processes stops them all at the same step."""
    if jax.process_count() == 1:
        return [bool(flag) for flag in flags]
    sharding, reduce_max = _flag_reduction()
    local = np.tile(np.asarray(flags, np.int32), (jax.local_device_count(), 1))
    return [bool(value) for value in np.asarray(reduce_max(jax.make_array_from_process_local_data(sharding, local)))]


@functools.cache
def _flag_reduction():
    """A row of flags per device, and the compiled max over them (replicated on every process)."""
    mesh = Mesh(np.asarray(jax.devices()), ("all",))
    return (NamedSharding(mesh, PartitionSpec("all")),
            jax.jit(lambda rows: rows.max(axis=0), out_shardings=NamedSharding(mesh, PartitionSpec())))


def from_process_0(values: list[float]) -> list[float]:
    """Process 0's `values` on every process (as float32): numbers read from a clock (step times,
    the time left) differ between processes, and a plan made from them must not."""
    if jax.process_count() == 1:
        return [float(value) for value in values]
    return [float(value) for value in multihost_utils.broadcast_one_to_all(np.asarray(values, np.float32))]


def sync_processes(name: str) -> None:
    """Wait until every process reaches the point named `name` (the same name everywhere); with
    one process, return at once."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def make_mesh(data: int = 0, fsdp: int = 1, batch_rows: int | None = None) -> Mesh:
    """A (data, fsdp) mesh; data=0 takes every device fsdp leaves.

    With `batch_rows` (the micro-batch), data=0 and one process, the mesh takes only the most
    devices that split the batch evenly: on a CPU shown as one device per core
    (cpu_devices.py), a batch of 6 on 4 devices trains on 3, and a batch of 5 on one.
    """
    count = jax.device_count()
    if fsdp < 1 or count % fsdp:
        raise UserError(f"mesh: fsdp={fsdp} does not divide the {count} devices; choose a divisor of {count}")
    devices = jax.devices()
    if not data and batch_rows and jax.process_count() == 1:
        used = max((n for n in range(fsdp, count + 1, fsdp) if batch_rows % n == 0), default=count)
        devices, count = devices[:used], used
    data = data or count // fsdp
    if data * fsdp != count:
        raise UserError(
            f"mesh: data={data} × fsdp={fsdp} = {data * fsdp} but there are {count} devices; "
            f"make the product {count} (or leave data out to use all devices)"
        )
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_divides(batch_size: int, grad_accum: int, mesh: Mesh) -> None:
    micro_batch = batch_size // grad_accum
    shards = batch_shards(mesh)
    if micro_batch % shards:
        raise UserError(
            f"batch: the micro-batch of {micro_batch} sequences (batch_size {batch_size} / grad_accum "
            f"{grad_accum}) does not divide among {shards} devices; use a batch size that is a multiple "
            f"of {shards * grad_accum}"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(B, T) arrays split along B over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def leaf_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Split the largest dimension `fsdp` divides; replicate small or indivisible leaves."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < 1024:
        return PartitionSpec()
    candidates = [axis for axis in range(len(shape)) if shape[axis] % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda a: shape[a])
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def state_shardings(abstract_tree, mesh: Mesh):
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs), by `leaf_spec`."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, leaf_spec(tuple(leaf.shape), fsdp)), abstract_tree)


def put_batch(arrays: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this host's rows of the global batch on its devices as one global array each.

    With one host the rows are the whole batch; with several, each host passes the rows
    its loader produced for its `process_index` and JAX stitches the global array together.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in arrays.items()
    }
