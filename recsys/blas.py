"""One BLAS kernel on every x86-64 machine, so results do not depend on the CPU.

numpy and scipy ship OpenBLAS built for many CPUs at once (DYNAMIC_ARCH) and pick a kernel
when they load; kernels round differently, so the same params gave another `models/als.npz`
and metrics differing in the fifth decimal on another CPU. `pin_kernel()` runs from
`recsys/__init__.py`, before numpy or scipy load in a stage process, and sets
`OPENBLAS_CORETYPE` to `PINNED_KERNEL`, which every x86-64 CPU runs. `RECSYS_BLAS_KERNEL`
overrides it: another OpenBLAS core name, or `native` to keep OpenBLAS's own choice (faster
on a new CPU, but no longer byte-identical to other machines).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

PINNED_KERNEL = "Haswell"
OVERRIDE = "RECSYS_BLAS_KERNEL"
NATIVE = "native"


def pin_kernel() -> str | None:
    """Set OPENBLAS_CORETYPE for this process (x86-64 only); return the kernel asked for.

    Too late once numpy or scipy is loaded: OpenBLAS reads the variable when it loads. The
    stages import this package before either, so every stage process is pinned.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    wanted = os.environ.get(OVERRIDE, "").strip() or PINNED_KERNEL
    if wanted.lower() == NATIVE:
        return None
    if "numpy" not in sys.modules and "scipy" not in sys.modules:
        os.environ["OPENBLAS_CORETYPE"] = wanted
    return wanted


def describe() -> dict[str, Any]:
    """The platform numerical results depend on: CPU architecture, BLAS kernels, versions.

    Recorded in the bundle so that a reproduction that differs can say whether the
    platform differs.
    """
    from importlib import metadata

    import numpy  # noqa: F401  (load both OpenBLAS builds so threadpoolctl sees them)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    blas = sorted(
        {
            f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')}"
            for info in threadpool_info()
            if info.get("user_api") == "blas"
        }
    )
    return {
        "machine": platform.machine(),
        "blas": blas,
        "libraries": {
            name: metadata.version(name) for name in ("implicit", "numpy", "scipy", "pandas")
        },
    }
