"""Reading and writing the pipeline's files: atomic, deterministic, pickle-free.

Every write goes to a temp file beside its target and is renamed into place only when the
whole stage succeeds (`atomic_outputs`), so a failure never leaves a half-written or mixed
set of outputs. `.npz` files are byte-deterministic: numpy stamps the wall clock into the
zip, which would change DVC's hashes on every run of the same params.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError

# Fixed zip timestamp: numpy/scipy stamp the wall clock into .npz members.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


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
        textual = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        if textual and len(values):
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


@contextlib.contextmanager
def live_json(path: Path | str) -> Iterator[Callable[[Any], None]]:
    """Yield a `publish(obj)` that replaces `path` with JSON at once, outside the stage's
    output transaction, for progress that others watch while the stage runs (`dvc exp show`
    reads a queued experiment's metrics files as they change).

    If the block fails, `path` gets its previous bytes back (or goes, if it was new), so a
    failed stage leaves no progress record that looks like a finished run.
    """
    path = Path(path)
    previous = path.read_bytes() if path.is_file() else None

    def publish(obj: Any) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            _replace_file(Path(tmp), path)
        except BaseException:
            _discard(Path(tmp))
            raise

    try:
        yield publish
    except BaseException:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(previous)
        raise


def read_json(path: Path | str) -> Any:
    """Parsed JSON; a missing or broken file is a StageError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: not readable JSON ({exc})") from None


def write_npz(path: Path | str, **arrays: np.ndarray) -> str:
    """Atomic, byte-deterministic, pickle-free `.npz` (same arrays -> same bytes).

    Object arrays are refused: they would need pickle to load. Returns the file's md5.
    """
    with atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, value in arrays.items():
                arr = np.asanyarray(value)
                if arr.dtype.hasobject:
                    raise TypeError(f"{name}: object arrays need pickle; convert first")
                header, data = _npy_parts(arr)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                info.file_size = len(header) + data.nbytes  # as `writestr` sets it
                with zf.open(info, "w") as member:  # streamed: no in-memory copy
                    member.write(header)
                    member.write(data)
        return md5sum(tmp)


def _npy_parts(arr: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The `.npy` header `np.save` writes for `arr`, and its data as raw bytes in the
    header's order (C, or Fortran for a Fortran-ordered array), as a 1-D uint8 view."""
    fmt = np.lib.format
    header = io.BytesIO()
    description = fmt.header_data_from_array_1_0(arr)
    try:
        fmt.write_array_header_1_0(header, description)
    except ValueError:  # a header over 64 KiB needs format 2.0, as np.save decides
        header = io.BytesIO()
        fmt.write_array_header_2_0(header, description)
    ordered = arr.T if description["fortran_order"] else arr
    return header.getvalue(), np.ascontiguousarray(ordered).reshape(-1).view(np.uint8)


def md5sum(path: Path | str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def map_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Every array of an uncompressed `.npz` (as `write_npz` writes), memory-mapped read-only.

    The arrays stay in the file: the operating system loads pages on first touch and
    shares them between every process that maps the same file, so N service workers over a
    10M-user bundle hold one copy, not N. A compressed member cannot be mapped and is
    refused; a broken file is a StageError.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf, path.open("rb") as f:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename} is not a stored .npy")
                f.seek(info.header_offset)
                local = f.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError("bad local header")
                name_len, extra_len = (
                    int.from_bytes(local[26:28], "little"),
                    int.from_bytes(local[28:30], "little"),
                )
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename} holds objects")
                offset = f.tell()
                if offset + int(np.prod(shape)) * dtype.itemsize > f.seek(0, os.SEEK_END):
                    raise ValueError(f"member {info.filename} is truncated")
                key = info.filename[: -len(".npy")]
                if 0 in shape or not shape:  # nothing to map (or a scalar): read it
                    out[key] = np.lib.format.read_array(zf.open(info), allow_pickle=False)
                else:
                    mapped = np.memmap(
                        path, dtype=dtype, mode="r", offset=offset, shape=shape,
                        order="F" if fortran else "C",
                    )  # fmt: skip
                    # a plain ndarray over the mapping: np.memmap's subclass hooks cost
                    # microseconds on every slice of a request
                    out[key] = mapped.view(np.ndarray)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise StageError(f"{path}: not a readable .npz file ({exc}); re-run dvc repro") from None
    return out


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
