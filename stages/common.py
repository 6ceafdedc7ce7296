"""Helpers every stage shares: params loading and validation, atomic and deterministic
writes, id maps, thread budgets, and the one-line error contract.

Stages raise `StageError` for anything the user can fix; `run_stage` turns it into a single
`error: ...` line on stderr and a non-zero exit, so the CLI never shows a traceback for bad
input and no output is replaced (every write goes to a temp file that is renamed at the end).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml

PARAMS_FILE = Path("params.yaml")

# The files each stage reads and writes, relative to the repository root. They are a public
# contract (dvc.yaml, users' scripts and services rely on them), so they are named once, here.
INTERACTIONS = Path("data/interactions.csv")
ITEMS = Path("data/items.csv")
USERS = Path("data/users.csv")
CONFIDENCE = Path("data/confidence.parquet")
MATRIX = Path("data/matrix.npz")
LAST_SEEN = Path("data/last_seen.npz")
USER_IDS = Path("data/user_ids.csv")
ITEM_IDS = Path("data/item_ids.csv")
TRAIN = Path("data/train.npz")
TEST = Path("data/test.npz")
MODEL = Path("models/als.npz")
TRAIN_LOSS = Path("metrics/train_loss.csv")
METRICS_JSON = Path("metrics/metrics.json")
RANKING_AT_K = Path("metrics/ranking_at_k.csv")
BUNDLE = Path("models/bundle")
BUNDLE_FORMAT = 1  # bumped when the bundle's layout changes, so old readers refuse new bundles
EXIT_USER_ERROR = 2
# Fixed zip timestamp: numpy/scipy stamp the wall clock into .npz members, which breaks
# byte-identical outputs (and so DVC's hashes) between two runs of the same params.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class StageError(Exception):
    """A problem the user can fix (bad param, malformed file); shown as one line."""


# --------------------------------------------------------------------------- running


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main()`, mapping user errors to one stderr line and exit code 2.

    All of the stage's writes form one transaction (`atomic_outputs`): they replace the
    previous outputs only once `main()` has succeeded, so a failure never leaves a mix of old
    and new files (say a new train.npz beside an old test.npz).
    """
    try:
        with atomic_outputs():
            main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted; previous outputs left untouched", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print("error: out of memory; try a smaller scale in params.yaml", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # disk full, a directory where a file should be, permissions
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"error: {where}{exc.strerror or exc}; previous outputs left untouched", file=sys.stderr
        )
        sys.exit(1)


# --------------------------------------------------------------------------- params


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently, so a
    second `als:` section would quietly replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(section: str, path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """Return one top-level section of params.yaml as a dict (errors name the file)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            params = yaml.load(fh, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run from the repository root") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise StageError(f"{path}:{where} not valid YAML ({problem})") from None
    if not isinstance(params, dict) or not isinstance(params.get(section), dict):
        raise StageError(f"{path}: missing section '{section}:' (a mapping of params)")
    return params[section]


class Params:
    """Typed, validated access to one params section; every error names `section.key`.

    Reading a key marks it used, and `check_unknown()` rejects keys nobody read, so a
    typo such as `als.factor` fails instead of being silently ignored.
    """

    def __init__(self, section: str, values: Mapping[str, Any]) -> None:
        self.section = section
        self.values = dict(values)
        self._read: set[str] = set()

    @classmethod
    def load(cls, section: str, path: Path | str = PARAMS_FILE) -> Params:
        return cls(section, load_params(section, path))

    def _name(self, key: str) -> str:
        return f"{self.section}.{key}"

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.values:
            return self.values[key]
        if default is _REQUIRED:
            raise StageError(f"params.yaml: missing {self._name(key)}")
        return default

    def _fail(self, key: str, value: Any, allowed: str) -> StageError:
        return StageError(f"params.yaml: {self._name(key)} = {value!r}; expected {allowed}")

    def int(
        self, key: str, default: Any = None, *, min: int | None = None, max: int | None = None
    ) -> int:
        value = self._get(key, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, value, f"an integer{_bounds(min, max)}")
        if (min is not None and value < min) or (max is not None and value > max):
            raise self._fail(key, value, f"an integer{_bounds(min, max)}")
        return value

    def float(
        self,
        key: str,
        default: Any = None,
        *,
        min: float | None = None,
        max: float | None = None,
        min_exclusive: bool = False,
        max_exclusive: bool = False,
    ) -> float:
        value = self._get(key, _REQUIRED if default is None else default)
        allowed = f"a number{_bounds(min, max, min_exclusive, max_exclusive)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, value, allowed)
        value = float(value)
        if not math.isfinite(value):
            raise self._fail(key, value, allowed)
        if min is not None and (value < min or (min_exclusive and value == min)):
            raise self._fail(key, value, allowed)
        if max is not None and (value > max or (max_exclusive and value == max)):
            raise self._fail(key, value, allowed)
        return value

    def bool(self, key: str, default: Any = None) -> bool:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, bool):
            raise self._fail(key, value, "true or false")
        return value

    def choice(self, key: str, choices: list[str], default: Any = None) -> str:
        value = self._get(key, _REQUIRED if default is None else default)
        if value not in choices:
            raise self._fail(key, value, "one of " + ", ".join(choices))
        return value

    def str(self, key: str, default: Any = None) -> str:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, value, "a non-empty string")
        return value

    def mapping(self, key: str, default: Any = None) -> dict[str, Any]:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, dict) or not value:
            raise self._fail(key, value, "a non-empty mapping")
        return dict(value)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.values) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise StageError(
                f"params.yaml: unknown param {self._name(unknown[0])}; known keys: {known}"
            )


_REQUIRED = object()


def _bounds(
    lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False
) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '<='} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


# --------------------------------------------------------------------------- atomic IO


# Open output transactions (see `atomic_outputs`): each holds (temp, final, replace) triples.
_PENDING: list[list[tuple[Path, Path, Callable[[Path, Path], None]]]] = []


def _discard(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, path: Path, replace: Callable[[Path, Path], None]) -> None:
    """Put a finished temp output in place now, or at the end of the open transaction."""
    if _PENDING:
        _PENDING[-1].append((tmp, path, replace))
    else:
        replace(tmp, path)


@contextlib.contextmanager
def atomic_outputs() -> Iterator[None]:
    """Hold back every atomic write of the block and rename them all only if it succeeds.

    Each output is still written to a temp file beside its target; the renames, which are
    atomic one by one, happen together at the end. On an error the temp files are removed
    and the previous outputs stay as they were.
    """
    _PENDING.append([])
    try:
        yield
    except BaseException:
        for tmp, _, _ in _PENDING.pop():
            _discard(tmp)
        raise
    batch = _PENDING.pop()
    if _PENDING:  # nested: the outer transaction decides
        _PENDING[-1].extend(batch)
        return
    for tmp, path, replace in batch:
        replace(tmp, path)


def _replace_file(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _replace_dir(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o755)
    old = path.parent / f".{path.name}.old"
    _discard(old)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    _discard(old)


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    The temp name keeps the real suffix (numpy appends `.npz` otherwise) and lives in the
    same directory, so the final `os.replace` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    except BaseException:
        _discard(tmp_path)
        raise
    _commit(tmp_path, path, _replace_file)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temp directory that replaces `path` (a directory) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, path, _replace_dir)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(table: Any, path: Path | str) -> None:
    """A pyarrow Table as plain CSV, atomically, quoting only if a value needs it (commas, quotes).

    Dictionary (categorical) columns are scanned through their dictionaries, so ids are
    never materialised per row; the same table always gives the same bytes.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    needs_quotes = False
    for column in table.columns:
        values = column.combine_chunks()
        if pa.types.is_dictionary(values.type):
            values = values.dictionary
        if pa.types.is_string(values.type) and len(values):
            needs_quotes |= pc.any(pc.match_substring_regex(values, r'[,"\r\n]')).as_py()
    style = "needed" if needs_quotes else "none"
    with atomic_path(path) as tmp:
        pacsv.write_csv(
            table,
            str(tmp),
            write_options=pacsv.WriteOptions(quoting_style=style, quoting_header="none"),
        )


def write_json(path: Path | str, obj: Any) -> None:
    """Atomic, stable JSON (sorted keys, trailing newline) so git diffs stay small."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path | str) -> Any:
    """Parsed JSON; a missing or broken file is a StageError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: not readable JSON ({exc})") from None


def write_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """Atomic, byte-deterministic, pickle-free `.npz` (same arrays -> same bytes).

    Object arrays are refused: they would need pickle to load.
    """
    with (
        atomic_path(path, suffix=".npz") as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf,
    ):
        for name, value in arrays.items():
            arr = np.asanyarray(value)
            if arr.dtype.hasobject:
                raise TypeError(f"{name}: object arrays need pickle; convert first")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def load_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Load every array of an `.npz` without pickle; a broken file is a StageError."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        # numpy's own message suggests allow_pickle=True, which we never want
        raise StageError(f"{path}: not a readable .npz file; re-run dvc repro") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise StageError(f"{path}: a single array, not an .npz archive; re-run dvc repro")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        raise StageError(f"{path}: not a readable .npz file; re-run dvc repro") from None


def save_csr(path: Path | str, matrix: sp.csr_matrix) -> None:
    """Write a CSR matrix readable by `scipy.sparse.load_npz`, deterministically."""
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    write_npz(
        path,
        indices=m.indices,
        indptr=m.indptr,
        format=np.array(b"csr"),
        shape=np.array(m.shape),
        data=m.data,
    )


def load_csr(path: Path | str) -> sp.csr_matrix:
    """Load a CSR matrix written by `save_csr` (or scipy's `save_npz`)."""
    try:
        matrix = sp.load_npz(path).tocsr()
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (ValueError, OSError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError):
        raise StageError(f"{path}: not a readable sparse matrix; re-run dvc repro") from None
    if not np.issubdtype(matrix.dtype, np.number):
        raise StageError(f"{path}: values of type {matrix.dtype}; expected numbers")
    return matrix


def load_factors(path: Path | str, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's float32 factors, checked: present, finite, and the training matrix's shape.

    NaN factors would otherwise give a plausible-looking but meaningless metrics file.
    """
    model = load_npz(path)
    for key in ("user_factors", "item_factors"):
        if key not in model:
            raise StageError(f"{path}: missing array '{key}'; re-run the train stage")
    users, items = model["user_factors"], model["item_factors"]
    expected = {"user_factors": n_users, "item_factors": n_items}
    for key, arr in (("user_factors", users), ("item_factors", items)):
        if arr.ndim != 2 or arr.shape[0] != expected[key]:
            raise StageError(
                f"{path}: {key} has shape {arr.shape}; expected {expected[key]} rows to "
                f"match {TRAIN} {(n_users, n_items)}; re-run dvc repro"
            )
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise StageError(f"{path}: {key} must hold finite floats; re-run the train stage")
    if users.shape[1] != items.shape[1]:
        raise StageError(
            f"{path}: user_factors has {users.shape[1]} factors, item_factors {items.shape[1]}"
        )
    return users.astype(np.float32, copy=False), items.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- id maps


def save_ids(path: Path | str, column: str, ids: np.ndarray) -> None:
    """Id map as a one-column CSV: line i+1 holds the external id of row/column i."""
    ids = np.asarray(ids).astype(str)
    text = column + "\n" + "".join(f"{_csv_field(x)}\n" for x in ids.tolist())
    write_text(path, text)


def load_ids(path: Path | str, column: str) -> np.ndarray:
    import pandas as pd  # local: keeps `import stages.common` light for the CLI

    try:
        # blank lines are ids too (row i is line i + 2), so none may be skipped
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise StageError(f"{path}: not a one-column id map; re-run dvc repro") from None
    if list(frame.columns) != [column]:
        raise StageError(f"{path}: expected a single column '{column}'")
    return frame[column].to_numpy(dtype=str)


def read_id_table(path: Path | str, key: str, wanted: list[str]) -> Any:
    """The `key` column and whichever `wanted` columns exist, all as strings.

    Metadata files (items, users) are optional extras for evaluation, so a missing `wanted`
    column is not an error; a missing key column is.
    """
    import pandas as pd

    try:
        header = pd.read_csv(path, nrows=0).columns
        if key not in header:
            raise StageError(f"{path}: missing column {key}")
        cols = [key] + [c for c in wanted if c in header]
        return pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the generate stage first (dvc repro)") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def aligned(frame: Any, key: str, column: str, ids: np.ndarray) -> np.ndarray:
    """`column` values in the order of `ids` (matrix order); "" where an id is not listed.

    A repeated id keeps its first row.
    """
    values = frame.drop_duplicates(key).set_index(key)[column]
    return values.reindex(np.asarray(ids, dtype=str)).fillna("").to_numpy(dtype=str)


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


# --------------------------------------------------------------------------- threads


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
        if not env.isdigit() or int(env) < 1:
            raise StageError(f"RECSYS_THREADS={env!r}; expected a positive integer")
        return int(env)
    return max(1, cpu_budget() // queue_workers())
