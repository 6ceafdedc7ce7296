"""How a stage runs as a command: one transaction of outputs, one error line, one summary.

`run_stage(main)` is every stage's `__main__`: user errors become a single `error: ...` line
on stderr and exit code 2 (never a traceback), and all of the stage's writes replace the
previous outputs together, only if `main()` succeeds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from recsys.blas import check_override
from recsys.errors import EXIT_USER_ERROR, StageError
from recsys.io import atomic_outputs

T = TypeVar("T")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main()`, mapping user errors to one stderr line and a non-zero exit."""
    try:
        check_override()
        with atomic_outputs():
            main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print("error: out of memory; try a smaller scale in params.yaml", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # disk full, a directory where a file should be, permissions
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; no output was written", file=sys.stderr)
        sys.exit(1)


def status(message: str) -> None:
    """One line on stderr when it is a terminal: what a long stage is doing now."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def progress(steps: Iterable[T], total: int, label: str) -> Iterator[T]:
    """Yield `steps`, drawing a progress bar on a terminal only (logs stay quiet).

    For loops over batches or chunks, never over events or users.
    """
    if total <= 1 or not sys.stderr.isatty():
        yield from steps
        return
    from tqdm import tqdm  # a dependency of implicit

    yield from tqdm(steps, total=total, desc=label, leave=False, file=sys.stderr)
