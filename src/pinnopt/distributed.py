"""Data-parallel training over several devices and hosts with ``jax.sharding``.

A run on ``N`` devices puts them on a one-axis mesh (axis ``"points"``). Every residual
group's collocation points are split along that axis, ``N_g / N`` points per device; the
parameters and the method's state are replicated, except state entries that belong to points
(the pointwise multipliers of constrained training), which are split with their points. The
step function is the same as on one device: ``jit`` propagates the shardings (GSPMD) and
inserts the reductions over devices wherever a sum runs over points (the loss, gradients,
Gramians, Kronecker factors, Gramian–vector products, task gradients).

Uneven batches are refused rather than padded: padding would change every mean over points
unless each group carried a mask, so ``N_g`` must be a multiple of ``N``.

Several hosts: :func:`initialize` joins the processes of a run (``jax.distributed``) when the
environment describes one; the mesh then spans every process's devices. Every process draws
the same global batch from ``(seed, step)`` and contributes the slices its devices hold.
Files are written by process 0 only; every process runs every compiled computation (step,
evaluation, the gathering of sharded state for a checkpoint), so none waits for a collective
that another skipped.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pinnopt.config import ConfigError

AXIS = "points"

COORDINATOR_ENV = ("PINNOPT_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
NUM_PROCESSES_ENV = ("PINNOPT_NUM_PROCESSES", "JAX_NUM_PROCESSES")
PROCESS_ID_ENV = ("PINNOPT_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def initialize() -> bool:
    """Join a multi-process run if the environment describes one; returns whether it does.

    ``PINNOPT_COORDINATOR`` (``host:port`` of process 0), ``PINNOPT_NUM_PROCESSES`` and
    ``PINNOPT_PROCESS_ID`` (or JAX's ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``) start ``jax.distributed`` explicitly; a SLURM job step with more than
    one task is detected by ``jax.distributed`` itself. Must run before anything else uses
    JAX; calling it again is harmless.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator = _env(COORDINATOR_ENV)
    if coordinator:
        count, index = _env(NUM_PROCESSES_ENV), _env(PROCESS_ID_ENV)
        if count is None or index is None:
            raise ConfigError(
                f"{COORDINATOR_ENV[0]}={coordinator} is set, so {NUM_PROCESSES_ENV[0]} and "
                f"{PROCESS_ID_ENV[0]} must be set too")
        try:
            count_i, index_i = int(count), int(index)
        except ValueError:
            raise ConfigError(f"process count {count!r} and process id {index!r} must be "
                                   f"integers") from None
        jax.distributed.initialize(coordinator, count_i, index_i)
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        jax.distributed.initialize()
        return True
    return False


def is_main_process() -> bool:
    """Whether this process writes files (process 0)."""
    return jax.process_index() == 0


def resolve_devices(requested: int | None) -> int:
    """The number of devices of a run: ``requested``, or every device of every process."""
    available = jax.device_count()
    if requested is None:
        return available
    if requested < 1:
        raise ConfigError(f"devices={requested} must be at least 1")
    if requested > available:
        raise ConfigError(f"devices={requested} but only {available} "
                               f"{jax.devices()[0].platform} device(s) are available")
    if jax.process_count() > 1 and requested != available:
        raise ConfigError(f"devices={requested}: a run over {jax.process_count()} processes "
                               f"uses all {available} devices; leave devices unset")
    return requested


def check_divisible(point_counts: dict[str, int], devices: int) -> None:
    """Every group's point count must split evenly over the devices (no padding)."""
    for name, n in point_counts.items():
        if n % devices:
            raise ConfigError(
                f"group {name!r} has {n} points, which is not divisible by {devices} devices; "
                f"choose a multiple of {devices} (problem option n_{name} where it exists)")


class DataParallel:
    """Shardings and data movement of one run over ``devices`` devices.

    ``point_counts`` maps each residual group to its number of points ``N_g``: the batch and
    any state entry stored under a group's name with ``N_g`` rows are split along the mesh axis.
    """

    def __init__(self, devices: int, point_counts: dict[str, int]):
        check_divisible(point_counts, devices)
        self.devices = devices
        self.point_counts = dict(point_counts)
        self.mesh = Mesh(np.asarray(jax.devices()[:devices]), (AXIS,))
        self.points = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.multi_process = jax.process_count() > 1

    # -- shardings ------------------------------------------------------------------------
    def state_sharding(self, state: Any) -> Any:
        """Per leaf of a method state: split along points when the leaf sits under a residual
        group's name and has that group's ``N_g`` rows (pointwise multipliers), else replicated."""

        def choose(path, leaf):
            shape = np.shape(leaf)
            for key in path:
                name = getattr(key, "key", None)
                if name in self.point_counts and shape[:1] == (self.point_counts[name],):
                    return self.points
            return self.replicated

        return jax.tree_util.tree_map_with_path(choose, state)

    def batch_sharding(self, batch: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: self.points, batch)

    def replicate_sharding(self, tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: self.replicated, tree)

    # -- placing host data on the mesh ----------------------------------------------------
    def place(self, tree: Any, shardings: Any) -> Any:
        """Global arrays with the given shardings from values every process holds in full.

        Each process supplies only the slices its own devices hold, so this works across
        hosts as well as on one.
        """

        def put(value, sharding):
            host = np.asarray(value)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree_util.tree_map(put, tree, shardings)

    def place_batch(self, batch: Any) -> Any:
        return self.place(batch, self.batch_sharding(batch))

    def place_replicated(self, tree: Any) -> Any:
        return self.place(tree, self.replicate_sharding(tree))

    def place_state(self, state: Any) -> Any:
        return self.place(state, self.state_sharding(state))

    # -- back to the host -------------------------------------------------------------------
    def to_host(self, tree: Any) -> Any:
        """Numpy copies of global arrays, on every process (a collective when the arrays are
        split across processes: every process must call it)."""
        if self.multi_process:
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree_util.tree_map(np.asarray, tree)

    def agree(self, values: tuple[int, ...]) -> tuple[int, ...]:
        """Process 0's ``values`` on every process (decisions that must not diverge: stop,
        checkpoint); the identity in a single process."""
        if not self.multi_process:
            return values
        agreed = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64))
        return tuple(int(v) for v in np.asarray(agreed))

    def barrier(self, name: str) -> None:
        if self.multi_process:
            multihost_utils.sync_global_devices(name)


def data_parallel(devices: int | None, point_counts: dict[str, int]) -> DataParallel | None:
    """The :class:`DataParallel` of a run, or ``None`` for one device in one process (the plain
    single-device path, unchanged)."""
    count = resolve_devices(devices)
    if count == 1 and jax.process_count() == 1:
        return None
    return DataParallel(count, point_counts)
