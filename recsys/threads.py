"""The thread policy every numeric stage shares with parallel DVC queue workers.

`dvc queue start -j 2` on 2 cores runs two experiments at once; if each used every core,
both would oversubscribe the machine. A stage's thread count never changes its outputs,
so it is a runtime knob (`runtime.threads`, `RECSYS_THREADS`), not a pipeline param.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from recsys.errors import StageError
from recsys.params import Section, load


@dataclass(frozen=True)
class RuntimeParams:
    """`runtime:` knobs that change speed, never outputs (no stage declares them in dvc.yaml)."""

    threads: int = 0  # 0: share the cores with parallel DVC workers automatically

    @classmethod
    def from_section(cls, s: Section) -> RuntimeParams:
        return cls(threads=s.int("threads", 0, min=0, max=1024))


def stage_threads() -> int:
    """Threads for this stage's numeric work: `runtime.threads`, else the shared policy."""
    return worker_threads(load(RuntimeParams.from_section, "runtime", optional=True).threads)


def cpu_budget() -> int:
    """Cores this process may use (respects affinity masks / cgroup-pinned CPUs)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def queue_workers() -> int:
    """How many `dvc exp queue-worker` processes serve the queue this stage runs under.

    `dvc queue start -j N` spawns N worker processes named `dvc-exp-<repo-hash>-<n>@localhost`;
    a stage they run is their descendant. Outside a queue this is 1.
    """
    import psutil  # a DVC dependency; imported here so plain stages do not pay for it

    try:
        proc = psutil.Process()
        node = None
        for parent in proc.parents():
            cmd = parent.cmdline()
            if "queue-worker" in cmd:
                node = cmd[cmd.index("queue-worker") + 1]
                break
        if node is None:
            return 1
        prefix = node.rsplit("-", 1)[0] + "-"
        count = 0
        for other in psutil.process_iter(["cmdline"]):
            cmd = other.info.get("cmdline") or []
            if "queue-worker" in cmd and any(arg.startswith(prefix) for arg in cmd):
                count += 1
        return max(1, count)
    except (psutil.Error, ValueError, IndexError):
        return 1


def worker_threads(requested: int = 0) -> int:
    """Threads for this stage's numeric work, shared fairly with parallel DVC workers.

    `requested` > 0 wins (params), then the `RECSYS_THREADS` environment variable, then the
    cores this process may use divided by the number of live queue workers, so that
    `dvc queue start -j 2` on 2 cores gives each experiment one thread instead of four.
    """
    if requested > 0:
        return requested
    env = os.environ.get("RECSYS_THREADS", "").strip()
    if env:
        if not (env.isascii() and env.isdigit()) or not 1 <= int(env) <= 1024:
            raise StageError(f"RECSYS_THREADS={env!r}; expected an integer in [1, 1024]")
        return int(env)
    return max(1, cpu_budget() // queue_workers())
