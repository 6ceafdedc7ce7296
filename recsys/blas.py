"""One BLAS kernel on every x86-64 machine, so results do not depend on the CPU.

numpy and scipy ship OpenBLAS built for many CPUs at once (DYNAMIC_ARCH) and pick a kernel
when they load; kernels round differently, so the same params gave another `models/als.npz`
and metrics differing in the fifth decimal on another CPU. `pin_kernel()` runs from
`recsys/__init__.py`, before numpy or scipy load in a stage process, and sets
`OPENBLAS_CORETYPE` to `PINNED_KERNEL` (AVX2 + FMA: every x86-64 CPU since 2013 and every
CI runner). A CPU without those gets `FALLBACK_KERNEL` (SSE4.2, which numpy itself needs)
instead of a crash; its results are then its own, and the bundle's platform record says so.
`RECSYS_BLAS_KERNEL` overrides both: another OpenBLAS core name, or `native` to leave
OpenBLAS alone (faster on a new CPU, but no longer byte-identical to other machines).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

PINNED_KERNEL = "Haswell"
FALLBACK_KERNEL = "Nehalem"
OVERRIDE = "RECSYS_BLAS_KERNEL"
NATIVE = "native"
# OpenBLAS core names for x86-64 (it silently ignores an unknown one, so we check).
KNOWN = {
    "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn",
    "dunnington", "nehalem", "atom", "sandybridge", "haswell", "zen", "skylakex",
    "cooperlake", "sapphirerapids", "athlon", "opteron", "barcelona", "bobcat", "bulldozer",
    "piledriver", "steamroller", "excavator", "nano",
}  # fmt: skip


def _openblas_loaded() -> bool:
    """Whether numpy or scipy (each with its OpenBLAS) is loaded: after that, OpenBLAS has read
    its environment variables and changing them does nothing."""
    return "numpy" in sys.modules or "scipy" in sys.modules


def pin_kernel() -> str | None:
    """Set OPENBLAS_CORETYPE for this process (x86-64 only); return the kernel asked for.

    Too late once numpy or scipy is loaded: OpenBLAS reads the variable when it loads. The
    stages import this package before either, so every stage process is pinned.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    wanted = os.environ.get(OVERRIDE, "").strip() or _default_kernel()
    if wanted.lower() == NATIVE:
        return None
    if not _openblas_loaded():
        os.environ["OPENBLAS_CORETYPE"] = wanted
    return wanted


def one_blas_thread() -> None:
    """Start OpenBLAS with a pool of one thread unless `OPENBLAS_NUM_THREADS` says otherwise.

    Every BLAS call in this package runs inside `threadpool_limits(1, "blas")` (implicit's
    own threads do the parallel work, and BLAS threads on top would oversubscribe), yet
    OpenBLAS starts a pool of one thread per core when numpy and scipy load, and those idle
    threads spin before they sleep: CPU time each process pays for nothing
    (`python scripts/bench_startup.py` prints it). Like `pin_kernel()`, only effective
    before numpy or scipy load.
    """
    if not _openblas_loaded():
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def check_override() -> None:
    """Refuse a `RECSYS_BLAS_KERNEL` OpenBLAS would silently ignore (a typo)."""
    from recsys.errors import StageError

    wanted = os.environ.get(OVERRIDE, "").strip()
    if wanted and wanted.lower() not in KNOWN | {NATIVE}:
        raise StageError(
            f"{OVERRIDE}={wanted!r}; expected native or an OpenBLAS core name such as "
            f"{PINNED_KERNEL} or {FALLBACK_KERNEL}"
        )


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as Linux reports them; empty where it does not."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return frozenset(next((line for line in fh if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def widest_kernel(flags: frozenset[str]) -> str:
    """The most capable OpenBLAS x86-64 kernel these flags can run.

    Forcing a kernel the CPU lacks (SkylakeX on an AVX2-only CPU) dies with SIGILL, so
    anything that compares kernels picks among the ones this CPU runs.
    """
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return PINNED_KERNEL
    if "avx" in flags:
        return "Sandybridge"
    return FALLBACK_KERNEL


def _default_kernel() -> str:
    """`PINNED_KERNEL` unless the CPU visibly lacks its instructions (Linux tells)."""
    flags = cpu_flags()
    if flags and not {"avx2", "fma"} <= flags:
        return FALLBACK_KERNEL
    return PINNED_KERNEL


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
