"""Atomic, verified, portable checkpoints.

A checkpoint is a standard ``.npz`` archive (``numpy.load(path)`` opens it) with

    state.json      the description of the state: format, version and one entry per leaf of
                    the state tree, in flattening order: its key path and either the array
                    member that holds it (with shape and dtype) or, for a Python scalar
                    (step, train_time, next_eval, ...), its type and value
    leaf_00000.npy  one ``.npy`` member per array leaf, written with ``allow_pickle=False``
    ...

and the archive comment ``pinnopt-checkpoint 2 sha256=<hex>``: the SHA-256 of every member's
stored bytes in archive order. Reading checks the zip structure, the members' CRC-32s and this
digest before decoding anything, and never unpickles: a checkpoint from someone else's run is
data, not code, and it does not depend on the private module paths of numpy or optax.

The tree structure itself (dicts, NamedTuples, optax states) is not stored: :func:`load`
rebuilds it from a *template*, the caller's freshly initialised state of the same run, after
checking that the number of leaves, their kinds, shapes and dtypes match the file.

Checkpoints are written to a temporary file, fsynced and renamed over the target, so a kill
at any moment leaves either the old or the new checkpoint, never a torn one. The previous
checkpoint is kept beside it (``*.prev``) as a fallback when the newest is corrupted.

Runs from before this format hold ``checkpoint.pkl`` (a pickle behind the magic
``b"PINNOPT1"``); :func:`load` still reads them, see :func:`_read_legacy`.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "pinnopt-checkpoint"
VERSION = 2
DESCRIPTION = "state.json"
LEGACY_SUFFIX = ".pkl"
LEGACY_MAGIC = b"PINNOPT1"
_SCALARS = {"bool": bool, "int": int, "float": float}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: equal states give equal files


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not belong to the run; the message is one
    line for the user."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is damaged (unreadable, or its checksum fails)."""


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


def _prev(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _legacy(path: Path) -> Path:
    return path.with_suffix(LEGACY_SUFFIX)


def _is_scalar(leaf: Any) -> bool:
    # Exact types: numpy scalars subclass float and int but are stored as arrays.
    return type(leaf) in (bool, int, float)


def _describe(leaf: Any) -> str:
    if _is_scalar(leaf):
        return type(leaf).__name__
    return f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"


# -- writing ------------------------------------------------------------------------------


def _encode(state: Any) -> bytes:
    """The checkpoint file's bytes for ``state``: a pytree whose leaves are arrays (jax or
    numpy; bool, integer, float or complex) or Python bools, ints and floats."""
    entries: list[dict[str, Any]] = []
    members: list[tuple[str, bytes]] = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = jax.tree_util.keystr(key_path)
        if _is_scalar(leaf):
            entries.append({"path": where, "type": type(leaf).__name__, "value": leaf})
            continue
        array = np.asarray(leaf)
        if array.dtype.kind not in "biufc":
            raise CheckpointError(f"cannot checkpoint {where}: {type(leaf).__name__} is not "
                                  f"an array of numbers or a Python scalar")
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        name = f"leaf_{len(members):05d}.npy"
        members.append((name, buffer.getvalue()))
        entries.append({"path": where, "member": name, "shape": list(array.shape),
                        "dtype": array.dtype.name})
    description = {"format": FORMAT, "version": VERSION, "leaves": entries}
    members.insert(0, (DESCRIPTION, json.dumps(description, indent=1).encode()))
    digest = hashlib.sha256()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, _ZIP_DATE), data)
            digest.update(data)
        archive.comment = f"{FORMAT} {VERSION} sha256={digest.hexdigest()}".encode()
    return out.getvalue()


def save(path: str | Path, state: Any) -> None:
    """Save ``state`` (see :func:`_encode`) to ``path`` atomically; an existing checkpoint
    there becomes ``path.prev``."""
    path = Path(path)
    data = _encode(state)
    if path.exists():
        os.replace(path, _prev(path))
    write_atomic(path, data)


def remove(path: str | Path) -> None:
    """Delete the checkpoint at ``path``, its ``.prev`` and an old-format pair beside it."""
    path = Path(path)
    for name in (path, _prev(path), _legacy(path), _prev(_legacy(path))):
        name.unlink(missing_ok=True)


# -- reading ------------------------------------------------------------------------------


def _read_npz(path: Path, raw: bytes) -> list[Any]:
    """The leaves stored in a checkpoint file of the current format, in flattening order."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            comment = archive.comment.decode("ascii", errors="replace")
            members = {info.filename: archive.read(info) for info in archive.infolist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        message = "checksum mismatch" if "CRC" in str(err) else f"not a readable archive: {err}"
        raise CorruptCheckpointError(f"{path} is corrupted ({message})") from None
    prefix = f"{FORMAT} {VERSION} sha256="
    if not comment.startswith(prefix):
        raise CorruptCheckpointError(f"{path} is corrupted or not a pinnopt checkpoint "
                                     f"(no format-{VERSION} checksum)")
    digest = hashlib.sha256()
    for data in members.values():
        digest.update(data)
    if digest.hexdigest() != comment[len(prefix):]:
        raise CorruptCheckpointError(f"{path} is corrupted (checksum mismatch)")
    try:
        entries = json.loads(members[DESCRIPTION])["leaves"]
        leaves = []
        for entry in entries:
            if "member" not in entry:
                leaves.append(_SCALARS[entry["type"]](entry["value"]))
                continue
            array = np.lib.format.read_array(io.BytesIO(members[entry["member"]]),
                                             allow_pickle=False)
            if list(array.shape) != entry["shape"] or array.dtype.name != entry["dtype"]:
                raise ValueError(f"{entry['member']} does not hold {entry['dtype']}"
                                 f"{entry['shape']}")
            leaves.append(array)
    except (KeyError, TypeError, ValueError) as err:
        # The digest matched, so the writer produced this: a bug or another program's file.
        raise CheckpointError(f"{path} has an invalid description ({type(err).__name__}: "
                              f"{err})") from None
    return leaves


class _Record(tuple):
    """Stands in for any class named in an old-format pickle (NamedTuple states of pinnopt
    and optax): it keeps the fields in order and runs none of the class's code."""

    __slots__ = ()

    def __new__(cls, *fields: Any) -> _Record:
        return super().__new__(cls, fields)


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickles the old format's content only: dicts, lists, tuples, scalars, numpy arrays,
    and NamedTuples of pinnopt and optax (as :class:`_Record`). Any other global is refused,
    so no function outside numpy's array reconstruction can be called."""

    _NUMPY = {
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"): ("multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"): ("multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._NUMPY:
            # numpy 2 pickles name numpy._core, numpy 1 numpy.core: use the one installed.
            where, attribute = self._NUMPY[(module, name)]
            if where == "numpy":
                return getattr(np, attribute)
            for package in ("numpy._core", "numpy.core"):
                try:
                    return getattr(importlib.import_module(f"{package}.{where}"), attribute)
                except (ImportError, AttributeError):
                    continue
        if module.split(".")[0] in ("pinnopt", "optax"):
            return _Record
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _plain(tree: Any) -> Any:
    """``tree`` with every :class:`_Record` turned into a tuple, so that it flattens into
    the same leaves, in the same order, as the NamedTuples it replaces."""
    if isinstance(tree, dict):
        return {key: _plain(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_plain(value) for value in tree]
    if isinstance(tree, tuple):
        return tuple(_plain(value) for value in tree)
    return tree


def _read_legacy(path: Path, raw: bytes) -> list[Any]:
    """The leaves of a checkpoint in the first format, for runs written before the ``.npz``
    format: ``b"PINNOPT1" + sha256(payload) + payload``, the payload a pickle of the state
    with numpy arrays. It is unpickled by :class:`_LegacyUnpickler`, which accepts only what
    that format contains; the next checkpoint of a resumed run is written in the new format."""
    digest, payload = raw[len(LEGACY_MAGIC):len(LEGACY_MAGIC) + 32], raw[len(LEGACY_MAGIC) + 32:]
    if len(digest) < 32 or hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpointError(f"{path} is corrupted (checksum mismatch)")
    try:
        state = _LegacyUnpickler(io.BytesIO(payload)).load()
    except Exception as err:  # noqa: BLE001 -- any failure of an old file gets one line
        raise CheckpointError(f"{path} is an old-format checkpoint that cannot be read "
                              f"({type(err).__name__}: {err}); start the run again") from None
    return jax.tree_util.tree_leaves(_plain(state))


def _rebuild(path: Path, leaves: list[Any], template: Any) -> Any:
    """``template``'s tree with ``leaves``, after checking that they match it one by one."""
    expected, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(leaves) != len(expected):
        raise CheckpointError(f"{path} holds {len(leaves)} leaves but this run's state has "
                              f"{len(expected)}: it was written by another method, network or "
                              f"configuration")
    restored = []
    for (key_path, want), got in zip(expected, leaves):
        if _describe(want) != _describe(got):
            raise CheckpointError(f"{path} does not match this run's state at "
                                  f"{jax.tree_util.keystr(key_path)}: the file holds "
                                  f"{_describe(got)}, the run expects {_describe(want)}")
        restored.append(got if _is_scalar(got) else jnp.asarray(got))
    return jax.tree_util.tree_unflatten(treedef, restored)


def _read(path: Path, template: Any) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorruptCheckpointError(f"{path} cannot be read ({err.strerror})") from None
    leaves = _read_legacy(path, raw) if raw.startswith(LEGACY_MAGIC) else _read_npz(path, raw)
    return _rebuild(path, leaves, template)


def load(path: str | Path, template: Any) -> tuple[Any, str | None]:
    """Load the checkpoint at ``path`` into the structure of ``template``.

    ``template`` is a state of the same run as freshly initialised (same method, network and
    dtype); only its tree structure, leaf kinds, shapes and dtypes are used. The files tried
    are ``path``, then ``path.prev``, then an old-format ``checkpoint.pkl`` pair beside it;
    when the first one present is corrupted, the next one is used.

    Returns the state (arrays as jax arrays) and a warning, or ``None``, saying that the
    fallback was used. Raises :class:`CheckpointError` with a one-line message when there is
    no checkpoint, when no usable one is left, or when the file does not match ``template``.
    """
    path = Path(path)
    present = [name for name in (path, _prev(path), _legacy(path), _prev(_legacy(path)))
               if name.exists()]
    if not present:
        raise CheckpointError(f"no checkpoint in {path.parent}")
    try:
        return _read(present[0], template), None
    except CorruptCheckpointError as err:
        if len(present) == 1:
            raise CheckpointError(f"{err}; no previous checkpoint to fall back to") from None
        return (_read(present[1], template),
                f"{err}; using the previous checkpoint {present[1].name} instead")
