"""Where benchmark results go, and the description of the machine recorded beside them.

Both :mod:`pinnopt.bench` (suites) and :mod:`pinnopt.speed` (the built-in ``taylor-speed``
benchmark) write ``machine.json`` with :func:`machine` into a directory named by
:func:`results_dir`.
"""

from __future__ import annotations

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
    installed; fields that cannot be found are left out.
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
    return info


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
