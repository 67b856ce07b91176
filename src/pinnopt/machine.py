"""Where benchmark results go, and the description of the machine recorded beside them.

Both :mod:`pinnopt.bench` (suites) and :mod:`pinnopt.speed` (the built-in ``taylor-speed``
benchmark) write ``machine.json`` with :func:`machine` into a directory named by
:func:`results_dir`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("benchmarks") / "results"


def results_dir(suite: str, quick: bool = False) -> Path:
    """The default results directory of a suite: ``benchmarks/results/<suite>[-quick]``."""
    return RESULTS_DIR / (suite + ("-quick" if quick else ""))


def machine() -> dict[str, Any]:
    """CPU, cores, accelerator, software versions and load of this machine.

    On a GPU the driver and CUDA versions reported by ``nvidia-smi`` are added when it is
    installed (``gpu_driver``, ``cuda``: the newest CUDA the driver supports), and what JAX
    itself loaded (:func:`jax_cuda_versions`); fields that cannot be found are left out.
    """
    import jax
    import jaxlib

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = jax.devices()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Cores this process may run on (fewer than "cores" when pinned with taskset).
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "device": str(devices[0]),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other processes on a shared machine distort timings: record how busy it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if devices[0].platform == "gpu":
        info.update(nvidia_versions())
        info.update(jax_cuda_versions())
    return info


def jax_cuda_versions() -> dict[str, str]:
    """What JAX runs on a CUDA GPU with: ``jax_cuda_plugin`` (the installed plugin package and
    its version) and the ``cuda_runtime`` and ``cudnn`` versions the plugin loaded (from
    ``jax._src.lib.cuda_versions``, a private module: left out when it is missing or changed)."""
    found = {}
    for package in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        try:
            found["jax_cuda_plugin"] = f"{package} {importlib.metadata.version(package)}"
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        cuda_versions = None
    for key, function in (("cuda_runtime", "cuda_runtime_get_version"),
                          ("cudnn", "cudnn_get_version")):
        try:
            number = int(getattr(cuda_versions, function)())
        except Exception:  # no plugin, a renamed function, or no GPU library loaded
            continue
        found[key] = _cuda_version(number) if key == "cuda_runtime" else _cudnn_version(number)
    return found


def _cuda_version(number: int) -> str:
    """CUDA's integer version (1000 · major + 10 · minor, e.g. 12080) as ``"12.8"``."""
    return f"{number // 1000}.{number % 1000 // 10}"


def _cudnn_version(number: int) -> str:
    """cuDNN's integer version as ``"major.minor.patch"``: 10000 · major + 100 · minor + patch
    from cuDNN 9 on (91900 is 9.19.0), 1000 · major + 100 · minor + patch before (8907)."""
    if number >= 90000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def nvidia_versions() -> dict[str, str]:
    """``gpu_driver`` and ``cuda`` (the CUDA version the driver supports) from ``nvidia-smi``;
    an empty dict without it."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for key, pattern in (("gpu_driver", r"Driver Version:\s*([\d.]+)"),
                         ("cuda", r"CUDA Version:\s*([\d.]+)")):
        match = re.search(pattern, text)
        if match:
            found[key] = match.group(1)
    return found
