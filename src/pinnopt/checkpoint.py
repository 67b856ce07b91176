"""Atomic, verified checkpoints.

A checkpoint is a pickled dict whose array leaves are numpy arrays, stored as

    b"PINNOPT1" + sha256(payload) (32 bytes) + payload

written to a temporary file, fsynced and renamed over the target, so a kill at any moment
leaves either the old or the new checkpoint, never a torn one. The previous checkpoint is
kept beside it (``*.prev``) as a fallback when the newest fails its checksum.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MAGIC = b"PINNOPT1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or corrupted."""


def _to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: np.asarray(a) if isinstance(a, jax.Array) else a, tree)


def _to_jax(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, tree)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (any picklable pytree; jax arrays become numpy) atomically."""
    path = Path(path)
    payload = pickle.dumps(_to_numpy(state), protocol=pickle.HIGHEST_PROTOCOL)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    write_atomic(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def _read(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 32:
        raise CheckpointError(f"{path} is not a pinnopt checkpoint")
    digest, payload = raw[len(MAGIC) : len(MAGIC) + 32], raw[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} is corrupted (checksum mismatch)")
    return _to_jax(pickle.loads(payload))


def load(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """Load a checkpoint, falling back to ``*.prev`` when the newest is corrupted.

    Returns the state and a warning (or ``None``) saying that the fallback was used.
    """
    path = Path(path)
    prev = path.with_name(path.name + ".prev")
    if not path.exists() and not prev.exists():
        raise CheckpointError(f"no checkpoint in {path.parent}")
    try:
        return _read(path), None
    except (CheckpointError, OSError, pickle.UnpicklingError, EOFError) as err:
        if not prev.exists():
            raise CheckpointError(f"{err}; no previous checkpoint to fall back to") from None
        return _read(prev), f"{err}; resumed from the previous checkpoint instead"
