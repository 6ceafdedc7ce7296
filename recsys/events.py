"""Bring your own events: import a real interaction log (Amazon Personalize schema) in place
of the synthetic shop, so every later stage runs unchanged on production data.

`generate` dispatches `generate.source: files` here. The log is validated strictly before
anything is written, because a silently mangled id or a timestamp in the wrong unit would
only surface much later as a quietly worse model. Any problem is one `StageError` line that
names the file, the line (1-based, header = line 1) or column, and what was expected; the
three outputs are then left exactly as they were, and the input files are only ever read.

Outputs are the same files the synthetic generator writes:
- `data/interactions.csv`: ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT, rows in input order,
  TIMESTAMP in epoch seconds, DISCOUNT empty when the log has none. EVENT_VALUE and any other
  column are dropped (and named in the log): confidence comes from `confidence.weights` per
  EVENT_TYPE, and keeping the public contract to exactly five columns keeps readers simple.
- `data/items.csv`, `data/users.csv`: the contract columns; values from the optional metadata
  files where given, empty otherwise, plus a row for every id that appears only in the log.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import re
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.errors import StageError
from recsys.ids import check_id_length, has_control_characters
from recsys.io import atomic_outputs, write_csv
from recsys.params import Section
from recsys.paths import EVENTS_DIR, INTERACTIONS, ITEMS, USERS

Log = Callable[[str], None]

REQUIRED = ("USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP")
INTERACTION_COLUMNS = ["ITEM_ID", "USER_ID", "EVENT_TYPE", "TIMESTAMP", "DISCOUNT"]
ITEM_COLUMNS = [
    "ITEM_ID",
    "PRICE",
    "CATEGORY_L1",
    "CATEGORY_L2",
    "PRODUCT_DESCRIPTION",
    "GENDER",
    "PROMOTED",
]
USER_COLUMNS = ["USER_ID", "AGE", "GENDER", "PERSONA"]
# The users file's other columns (SEGMENT, REGION, AGE_BAND, ...) are kept too, upper-cased
# after these: the cold start conditions on whichever of them `coldstart.columns` names.
DISCOUNT_VALUES = ("Yes", "No", "")
TIMESTAMP_UNITS = ["auto", "s", "ms"]
# 1e11 s is the year 5138 and 1e11 ms is March 1973: no real log straddles the boundary.
MS_THRESHOLD = 10**11
MS_LIMIT = 10**14  # above this even milliseconds are past the year 5138 (microseconds?)
CSV_SUFFIXES = (".csv", ".csv.gz")
LOG_SUFFIXES = (*CSV_SUFFIXES, ".parquet")  # what a folder or glob of daily files may hold
_GZIP_MAGIC = b"\x1f\x8b"
# Reading is bounded, so a hostile file is refused early instead of read for minutes:
MAX_HEADER_BYTES = 64 * 1024  # line 1 (and below Python csv's 128 KiB field limit)
# Decompressed / compressed size: CSV logs compress 5-15x (the synthetic log ~5x, sorted
# ~10x), a gzip bomb ~1000x. The first GZIP_FREE_BYTES are allowed at any ratio, so a small
# file of repeated lines is not refused.
MAX_GZIP_RATIO = 100
GZIP_FREE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ImportParams:
    """The `files` source's `generate.*` params (`source: files`)."""

    interactions_file: Path
    items_file: Path | None
    users_file: Path | None
    timestamp_unit: str

    KEYS = ("interactions_file", "items_file", "users_file", "timestamp_unit")

    @classmethod
    def from_section(cls, s: Section) -> ImportParams:
        unit = s.choice("timestamp_unit", TIMESTAMP_UNITS, "auto")
        paths = {key: _events_path(s, key) for key in cls.KEYS[:3]}
        if paths["interactions_file"] is None:
            raise StageError(
                "params.yaml: generate.interactions_file is empty; expected the path of your "
                "event log (.csv, .csv.gz or .parquet, or a folder or glob of them) inside "
                f"{EVENTS_DIR}/"
            )
        return cls(
            interactions_file=paths["interactions_file"],
            items_file=paths["items_file"],
            users_file=paths["users_file"],
            timestamp_unit=unit,
        )


def _events_path(s: Section, key: str) -> Path | None:
    """An input file path, which must lie inside `events/`.

    `events/` is a dependency of `generate` in dvc.yaml, so editing any file there re-runs
    the pipeline; a file anywhere else would be invisible to `dvc status`.
    """
    if s.values.get(key) is None:  # `items_file:` or `items_file: null` means no file
        s.ignore((key,))
        return None
    value = s.str(key, "", empty=True)
    if not value.strip():
        return None
    posix = PurePosixPath(value.replace("\\", "/"))
    inside = (
        not posix.is_absolute()
        and ".." not in posix.parts
        and len(posix.parts) > 1
        and posix.parts[0] == EVENTS_DIR.name
    )
    if not inside:
        raise StageError(
            f"params.yaml: generate.{key} = {value!r}; expected a path inside {EVENTS_DIR}/ "
            f"(e.g. {EVENTS_DIR}/interactions.csv.gz), which dvc.yaml tracks"
        )
    path = Path(*posix.parts)
    many = key == "interactions_file" and (_is_glob(value) or path.is_dir())
    suffixes = LOG_SUFFIXES if key == "interactions_file" else CSV_SUFFIXES
    if not many and not value.endswith(suffixes):
        what = (
            "a .csv, .csv.gz or .parquet file, a folder or a glob"
            if key == "interactions_file"
            else "a .csv or .csv.gz"
        )
        raise StageError(f"params.yaml: generate.{key} = {value!r}; expected {what}")
    # DVC follows links when it hashes events/; one into the repository (DVC's own
    # symlink cache after `dvc add`) is tracked, one out of it is not.
    if path.exists() and not path.resolve().is_relative_to(Path.cwd().resolve()):
        raise StageError(
            f"params.yaml: generate.{key} = {value!r} is a link to a file outside the "
            f"repository; expected the file itself inside {EVENTS_DIR}/"
        )
    return path


# --------------------------------------------------------------------------- reading


def _is_glob(value: str) -> bool:
    return any(c in value for c in "*?[")


def _loc(path: Path, row: int) -> str:
    """Where row `row` (0-based, -1 = the header) of an input is: a CSV's 1-based line
    (header = line 1), or a Parquet file's 1-based row (its column names for -1)."""
    if path.name.endswith(".parquet"):
        return "schema" if row < 0 else f"row {row + 1}"
    return f"line {row + 2}"


def interaction_files(spec: Path) -> list[Path]:
    """The files `generate.interactions_file` names, in the order they are read.

    A file is itself; a folder means every .csv, .csv.gz and .parquet file directly in it
    (dot files skipped, anything else refused); a glob (`events/daily/*.csv.gz`) the files
    it matches. Order is by path, compared as text, so daily files named by date
    (2024-06-01.csv.gz, ...) are read oldest first and the same folder always gives the
    same `data/interactions.csv`, whatever order the filesystem lists them in.
    """
    text = spec.as_posix()
    if _is_glob(text):
        found = [p for p in Path().glob(text) if not p.is_dir()]
        if not found:
            raise StageError(f"params.yaml: generate.interactions_file = {text!r} matches no file")
    elif spec.is_dir():
        found = [p for p in spec.iterdir() if not p.name.startswith(".")]
        odd = sorted(p.as_posix() for p in found if not p.name.endswith(LOG_SUFFIXES))
        if odd:
            raise StageError(
                f"{odd[0]}: not an event file; expected only .csv, .csv.gz or .parquet files "
                f"in {text}/"
            )
        if not found:
            raise StageError(
                f"{text}: empty folder; expected daily .csv, .csv.gz or .parquet files"
            )
    else:
        return [spec]
    return sorted(found, key=lambda p: p.as_posix())


def _check_regular(path: Path) -> None:
    """Refuse anything but a regular file (links followed) before opening it: a FIFO would
    block forever, a device such as /dev/zero never ends."""
    try:
        mode = path.stat()
    except FileNotFoundError:
        raise StageError(f"{path}: not found") from None
    except OSError as exc:
        raise StageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode.st_mode):
        raise StageError(f"{path}: is a directory; expected a .csv or .csv.gz file")
    if not stat.S_ISREG(mode.st_mode):
        kinds = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}  # fmt: skip
        kind = kinds.get(stat.S_IFMT(mode.st_mode), "not a regular file")
        raise StageError(f"{path}: is {kind}; expected a regular .csv or .csv.gz file")


class _BoundedGzip:
    """Gzip decompression that stops as soon as the output outgrows MAX_GZIP_RATIO times the
    compressed bytes read so far: a gzip bomb is refused after GZIP_FREE_BYTES, not gigabytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.open("rb")
        self.gzip = gzip.GzipFile(fileobj=self.raw, mode="rb")
        self.out_bytes = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.gzip.read(size if size is not None and size >= 0 else 1 << 20)
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip data
            raise StageError(f"{self.path}: cannot read ({_first_line(exc)})") from None
        self.out_bytes += len(data)
        compressed = self.raw.tell()
        if self.out_bytes > GZIP_FREE_BYTES and self.out_bytes > MAX_GZIP_RATIO * compressed:
            raise StageError(
                f"{self.path}: {compressed:,} compressed bytes expand to over "
                f"{self.out_bytes:,}, more than {MAX_GZIP_RATIO}:1; expected a CSV log "
                "(this looks like a gzip bomb)"
            )
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.gzip.close()
        self.raw.close()
        self.closed = True


def _open(path: Path) -> pa.NativeFile:
    """Open a regular, possibly gzip-compressed CSV; the suffix must match the content.

    Gzip data is decompressed through `_BoundedGzip`, which refuses a bomb early.
    """
    _check_regular(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
    except FileNotFoundError:
        raise StageError(f"{path}: not found") from None
    except IsADirectoryError:
        raise StageError(f"{path}: is a directory; expected a .csv or .csv.gz file") from None
    gzipped = magic == _GZIP_MAGIC
    if path.name.endswith(".gz") and not gzipped:
        raise StageError(f"{path}: not gzip data; expected a gzip file (the name ends in .gz)")
    if gzipped and not path.name.endswith(".gz"):
        raise StageError(f"{path}: is gzip-compressed; expected plain CSV (or name it .csv.gz)")
    if not gzipped:
        return pa.input_stream(str(path))
    return pa.PythonFile(_BoundedGzip(path), mode="r")


def read_header(path: Path) -> list[str]:
    """Column names of line 1 (BOM and CR stripped), read without loading the file.

    At most MAX_HEADER_BYTES are read: a longer line 1 is not a header.
    """
    data = b""
    try:
        with _open(path) as stream:
            while b"\n" not in data and len(data) <= MAX_HEADER_BYTES:
                chunk = stream.read(1 << 16)
                if not chunk:
                    break
                data += chunk
    except (OSError, EOFError, gzip.BadGzipFile, pa.ArrowException) as exc:
        raise StageError(f"{path}: cannot read ({_first_line(exc)})") from None
    raw = data.split(b"\n", 1)[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise StageError(
            f"{path}: line 1 is longer than {MAX_HEADER_BYTES:,} bytes; expected a header "
            "line naming the columns (is this a CSV file?)"
        )
    raw = raw.rstrip(b"\r")
    try:
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StageError(f"{path}: line 1: header is not UTF-8 text; expected UTF-8") from None
    if not line.strip():
        raise StageError(
            f"{path}: empty file or blank line 1; expected a header line naming the columns"
        )
    try:
        return next(csv.reader([line]))
    except csv.Error as exc:
        raise StageError(f"{path}: line 1: not a CSV header ({exc})") from None


def map_columns(path: Path, header: list[str], required: tuple[str, ...]) -> dict[str, str]:
    """Map upper-cased, trimmed column names to their raw spelling; check the required ones."""
    mapping: dict[str, str] = {}
    for raw in header:
        name = raw.strip().upper()
        if not name:
            raise StageError(f"{path}: {_loc(path, -1)}: a column has no name; expected a name")
        if name in mapping:
            raise StageError(
                f"{path}: {_loc(path, -1)}: column {name} appears twice; expected it once"
            )
        mapping[name] = raw
    missing = [c for c in required if c not in mapping]
    if missing:
        raise StageError(
            f"{path}: {_loc(path, -1)}: missing column {missing[0]}; expected columns "
            f"{', '.join(required)} (any order, any case)"
        )
    return mapping


def _read_table(path: Path, columns: dict[str, pa.DataType], header: list[str]) -> pa.Table:
    """Parse only `columns` (raw name -> type) of a CSV, mapping parse errors to one line."""
    bad_rows: list[tuple[int | None, str, int, int]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "error"

    def read(threads: bool, types: dict[str, pa.DataType]) -> pa.Table:
        with _open(path) as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=threads),
                # blank lines stay rows (of empty ids) so row i is always line i + 2
                parse_options=pacsv.ParseOptions(
                    ignore_empty_lines=False, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(types),
                    column_types=types,
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )

    try:
        return read(True, columns)
    except pa.ArrowInvalid as exc:
        if bad_rows:
            number, text, expected, actual = bad_rows[0]
            if number is None:  # threaded parsing cannot count lines: find it serially
                bad_rows.clear()
                with contextlib.suppress(pa.ArrowInvalid):
                    read(False, {n: pa.string() for n in columns})
                number = bad_rows[0][0] if bad_rows else None
            where = f"line {number}" if number else f"row {text[:60]!r}"
            raise StageError(
                f"{path}: {where}: {actual} fields; expected {expected} as in the header"
            ) from None
        message = _first_line(exc)
        if "invalid UTF8" in message:
            column = re.search(r"column #(\d+)", message)
            where = f"column {header[int(column.group(1))].strip()}" if column else "a column"
            raise StageError(
                f"{path}: {where} is not UTF-8 text; expected UTF-8 (re-save the file as UTF-8)"
            ) from None
        for name, dtype in columns.items():
            if pa.types.is_integer(dtype) and f"to {dtype}" in message:
                _raise_non_integer(path, name, read(True, {name: pa.string()}).column(0))
        raise StageError(f"{path}: cannot parse as CSV ({message})") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise StageError(f"{path}: cannot read ({_first_line(exc)})") from None


def _raise_non_integer(path: Path, name: str, values: pa.ChunkedArray) -> None:
    ok = pc.match_substring_regex(values, r"^-?[0-9]{1,18}$")  # 19+ digits overflow int64
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if bad.size:
        row = int(bad[0])
        raise _bad_integer(path, row, name, values[row].as_py())


def _bad_integer(path: Path, row: int, name: str, raw: str) -> StageError:
    what = "is empty" if not raw.strip() else f"= {raw!r}"
    return StageError(
        f"{path}: {_loc(path, row)}: {name.strip().upper()} {what}; expected an integer "
        "(whole epoch seconds or milliseconds)"
    )


def _raise_null_timestamp(path: Path, header: list[str], name: str, values: pa.Array) -> None:
    """Name the first TIMESTAMP that CSV parsing read as null ("", NA, null, NaN, ...)."""
    row = _first_row(values.is_null().to_numpy(zero_copy_only=False))
    raw = _read_table(path, {name: pa.string()}, header).column(0)[row].as_py()
    raise _bad_integer(path, row, name, raw)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _dictionary(table: pa.Table, name: str) -> pa.DictionaryArray:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks else pa.array([], pa.string()).dictionary_encode()


def _check_ids(path: Path, name: str, ids: pa.DictionaryArray) -> None:
    """Reject blank, space-padded or control-character ids: they would silently become
    different ids (or one id) later."""
    values = ids.dictionary
    blank = pc.equal(pc.utf8_trim_whitespace(values), "").to_numpy(zero_copy_only=False)
    padded = pc.not_equal(pc.utf8_trim_whitespace(values), values).to_numpy(zero_copy_only=False)
    control = has_control_characters(values)
    checks = (
        (blank, "a non-blank value"),
        (padded & ~blank, "no leading/trailing spaces"),
        (control, "no control characters (NUL, tab, newline, ...)"),
    )
    for bad, expected in checks:
        if bad.any():
            row = int(np.flatnonzero(bad[ids.indices.to_numpy()])[0])
            raise StageError(
                f"{path}: {_loc(path, row)}: {name} = {ids[row].as_py()!r}; expected {expected}"
            )


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def to_seconds(path: Path, ts: np.ndarray, unit: str, log: Log) -> np.ndarray:
    """Epoch seconds from raw timestamps: reject negatives, detect or enforce the unit."""
    negative = ts < 0
    if negative.any():
        row = _first_row(negative)
        raise StageError(
            f"{path}: {_loc(path, row)}: TIMESTAMP = {ts[row]}; expected epoch time >= 0"
        )
    too_big = ts >= MS_LIMIT
    if too_big.any():
        row = _first_row(too_big)
        raise StageError(
            f"{path}: {_loc(path, row)}: TIMESTAMP = {ts[row]}; expected epoch seconds or "
            "milliseconds (this is past the year 5000 even in milliseconds)"
        )
    in_ms = ts >= MS_THRESHOLD
    if unit == "s":
        if in_ms.any():
            row = _first_row(in_ms)
            raise StageError(
                f"{path}: {_loc(path, row)}: TIMESTAMP = {ts[row]} looks like milliseconds; "
                "expected epoch seconds (generate.timestamp_unit: s; use ms or auto to convert)"
            )
        return ts
    if unit == "ms":
        if (~in_ms).any():
            row = _first_row(~in_ms)
            raise StageError(
                f"{path}: {_loc(path, row)}: TIMESTAMP = {ts[row]} looks like seconds; expected "
                "epoch milliseconds (generate.timestamp_unit: ms; use s or auto)"
            )
        log("import: TIMESTAMP converted from milliseconds to epoch seconds")
        return ts // 1000
    if not in_ms.any():
        return ts
    if not in_ms.all():
        ms_row, s_row = _first_row(in_ms), _first_row(~in_ms)
        raise StageError(
            f"{path}: {_loc(path, s_row)}: TIMESTAMP = {ts[s_row]} looks like seconds but "
            f"{_loc(path, ms_row)} holds milliseconds ({ts[ms_row]}); expected one unit throughout"
        )
    log("import: TIMESTAMP detected as milliseconds (auto); converted to epoch seconds")
    return ts // 1000


def read_interactions(path: Path, unit: str = "auto", log: Log = print) -> pa.Table:
    """Load and validate a Personalize interactions CSV into the `data/interactions.csv` layout.

    Only the needed columns are parsed, ids as dictionaries (one copy per distinct string),
    so peak memory stays near 90 bytes a row (scripts/bench_import.py) instead of the
    several hundred that Python string objects would take.
    """
    if path.name.endswith(".parquet"):
        names, table = _read_parquet(path)
        header: list[str] = []
    else:
        header = read_header(path)
        names = map_columns(path, header, REQUIRED)
        ids = pa.dictionary(pa.int32(), pa.string())
        types = {names[c]: ids for c in ("ITEM_ID", "USER_ID", "EVENT_TYPE")}
        types[names["TIMESTAMP"]] = pa.int64()
        if "DISCOUNT" in names:
            types[names["DISCOUNT"]] = ids
        table = _read_table(path, types, header)
    ignored = [names[c] for c in names if c not in INTERACTION_COLUMNS]
    if table.num_rows == 0:
        raise StageError(f"{path}: header only, no data rows; expected at least one event")
    table = table.unify_dictionaries().combine_chunks()
    pa.default_memory_pool().release_unused()  # per-block dictionaries are garbage now
    columns = {c: _dictionary(table, names[c]) for c in ("ITEM_ID", "USER_ID", "EVENT_TYPE")}
    for name, values in columns.items():
        _check_ids(path, name, values)
        if name != "EVENT_TYPE":
            check_id_length(path, name, values.dictionary, values.indices.to_numpy())
    ts_column = table.column(names["TIMESTAMP"]).chunk(0)
    if ts_column.null_count:
        _raise_null_timestamp(path, header, names["TIMESTAMP"], ts_column)
    ts = ts_column.to_numpy()
    seconds = to_seconds(path, ts, unit, log)
    n = table.num_rows
    if "DISCOUNT" in names:
        discount = _dictionary(table, names["DISCOUNT"])
        allowed = np.isin(discount.dictionary.to_numpy(zero_copy_only=False), DISCOUNT_VALUES)
        bad = ~allowed[discount.indices.to_numpy()]
        if bad.any():
            row = _first_row(bad)
            raise StageError(
                f"{path}: {_loc(path, row)}: DISCOUNT = {discount[row].as_py()!r}; "
                "expected Yes, No or empty"
            )
    else:
        discount = _empty(n)
    out = pa.table(
        {
            "ITEM_ID": columns["ITEM_ID"],
            "USER_ID": columns["USER_ID"],
            "EVENT_TYPE": columns["EVENT_TYPE"],
            "TIMESTAMP": pa.array(seconds, pa.int64()),
            "DISCOUNT": discount,
        }
    )
    duplicates = count_duplicates(out)
    log(
        f"import: {path}: {n:,} events, {_distinct(columns['USER_ID']):,} users, "
        f"{_distinct(columns['ITEM_ID']):,} items; event types: {_event_summary(out)}"
    )
    if duplicates:
        log(
            f"import: {duplicates:,} duplicate rows (same user, item, event type and timestamp) "
            "kept: each counts in the confidence sum"
        )
    if ignored:
        log(f"import: columns not used: {', '.join(ignored)}")
    return out


def read_all_interactions(spec: Path, unit: str = "auto", log: Log = print) -> pa.Table:
    """Every file `spec` names (`interaction_files`), each validated on its own so an error
    names its file and line, concatenated in that order into one table."""
    files = interaction_files(spec)
    tables = [read_interactions(path, unit, log) for path in files]
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    log(f"import: {len(files)} files, {table.num_rows:,} events in all, read in name order")
    return table


def _read_parquet(path: Path) -> tuple[dict[str, str], pa.Table]:
    """(column map, table) of a Parquet log in the layout `_read_table` gives a CSV: ids
    and DISCOUNT dictionary-encoded text, TIMESTAMP int64 (a Parquet timestamp column is
    taken as epoch seconds); a null id or a non-text id column is refused, naming it."""
    import pyarrow.parquet as pq

    _check_regular(path)
    try:
        schema = pq.read_schema(path)
        names = map_columns(path, list(schema.names), REQUIRED)
        wanted = [names[c] for c in (*REQUIRED, "DISCOUNT") if c in names]
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as exc:
        raise StageError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    columns = {}
    for name in wanted:
        column = table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if name == names["TIMESTAMP"]:
            if pa.types.is_timestamp(column.type):
                column = pc.cast(column, pa.timestamp("s")).cast(pa.int64())
            elif not pa.types.is_integer(column.type):
                raise StageError(
                    f"{path}: column {name} is {column.type}; expected integer epoch seconds "
                    "or milliseconds, or a timestamp"
                )
            if column.null_count:
                row = _first_row(column.is_null().to_numpy(zero_copy_only=False))
                raise _bad_integer(path, row, name, "")
            columns[name] = column.cast(pa.int64())
            continue
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise StageError(f"{path}: column {name} is {column.type}; expected text")
        if column.null_count:
            row = _first_row(column.is_null().to_numpy(zero_copy_only=False))
            raise StageError(f"{path}: {_loc(path, row)}: {name} is null; expected a value")
        columns[name] = column.cast(pa.string()).dictionary_encode()
    return names, pa.table(columns)


def _distinct(ids: pa.DictionaryArray) -> int:
    return int(np.count_nonzero(np.bincount(ids.indices.to_numpy(), minlength=len(ids.dictionary))))


def _event_summary(table: pa.Table) -> str:
    counts = table.column("EVENT_TYPE").value_counts()
    pairs = sorted(
        ((v["values"].as_py(), v["counts"].as_py()) for v in counts), key=lambda x: (-x[1], x[0])
    )
    return ", ".join(f"{name} {count:,}" for name, count in pairs)


def count_duplicates(table: pa.Table) -> int:
    """Rows equal to an earlier row in user, item, event type and timestamp."""
    ids = [table.column(c).combine_chunks() for c in ("USER_ID", "ITEM_ID", "EVENT_TYPE")]
    sizes = [max(1, len(a.dictionary)) for a in ids]
    ts = table.column("TIMESTAMP").to_numpy()
    if sizes[0] * sizes[1] * sizes[2] < 2**62:
        # one int64 key for the three ids: sorting two keys is ~3x faster than four
        key = ids[0].indices.to_numpy().astype(np.int64)
        for a, size in zip(ids[1:], sizes[1:], strict=True):
            key *= size
            key += a.indices.to_numpy()
        keys = [key, ts]
    else:
        keys = [a.indices.to_numpy() for a in ids] + [ts]
    order = np.lexsort(keys[::-1])
    same = np.ones(len(order) - 1, dtype=bool)
    for key in keys:
        ordered = key[order]
        same &= ordered[1:] == ordered[:-1]
        del ordered
    return int(np.count_nonzero(same))


def read_catalogue(path: Path, id_column: str, columns: list[str], log: Log = print) -> pa.Table:
    """Load an items or users metadata CSV: unique non-blank ids, contract columns as text."""
    header = read_header(path)
    names = map_columns(path, header, (id_column,))
    wanted = [c for c in columns if c in names]
    table = _read_table(path, {names[c]: pa.string() for c in wanted}, header)
    if table.num_rows == 0:
        raise StageError(f"{path}: header only, no data rows; expected one row per {id_column}")
    table = table.rename_columns(wanted)
    ids = table.column(id_column).combine_chunks().dictionary_encode()
    _check_ids(path, id_column, ids)
    check_id_length(path, id_column, ids.dictionary, ids.indices.to_numpy())
    first = np.zeros(len(ids), dtype=bool)
    first[np.unique(ids.indices.to_numpy(), return_index=True)[1]] = True
    if not first.all():
        row = _first_row(~first)
        raise StageError(
            f"{path}: line {row + 2}: {id_column} = {ids[row].as_py()!r} appears again; "
            "expected one row per id"
        )
    unused = [names[c] for c in names if c not in columns]
    if unused:
        log(f"import: {path}: columns not used: {', '.join(unused)}")
    return table


def complete_catalogue(
    table: pa.Table | None, id_column: str, columns: list[str], used: pa.DictionaryArray, log: Log
) -> pa.Table:
    """Contract columns for every id: metadata rows first, then ids seen only in the log."""
    counts = np.bincount(used.indices.to_numpy(), minlength=len(used.dictionary))
    used_ids = used.dictionary.filter(pa.array(counts > 0))
    known = (
        table.column(id_column).combine_chunks() if table is not None else pa.array([], pa.string())
    )
    extra = pc.filter(used_ids, pc.invert(pc.is_in(used_ids, value_set=known)))
    extra = extra.take(pc.sort_indices(extra))
    if table is not None and len(extra):
        log(f"import: {len(extra):,} {id_column} values of the log have no metadata row")
    rows = len(known) + len(extra)
    out = {}
    for name in columns:
        if name == id_column:
            out[name] = pa.concat_arrays([known, extra.cast(pa.string())])
        elif table is not None and name in table.column_names:
            out[name] = pa.concat_arrays(
                [table.column(name).combine_chunks(), pa.array([""] * len(extra), pa.string())]
            )
        else:
            out[name] = _empty(rows)
    return pa.table(out)


def _empty(n: int) -> pa.DictionaryArray:
    """`n` empty strings at 4 bytes each (a column the source does not have)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([""]))


# --------------------------------------------------------------------------- writing


def import_events(cfg: ImportParams, log: Log = print) -> None:
    """Validate every input first, then replace the three outputs together."""
    events = read_all_interactions(cfg.interactions_file, cfg.timestamp_unit, log)
    items = users = None
    if cfg.items_file is not None:
        items = read_catalogue(cfg.items_file, "ITEM_ID", ITEM_COLUMNS, log)
    user_columns = USER_COLUMNS
    if cfg.users_file is not None:
        header = map_columns(cfg.users_file, read_header(cfg.users_file), ("USER_ID",))
        extra = [c for c in header if c not in USER_COLUMNS]
        if extra:
            log(f"import: {cfg.users_file}: attribute columns kept: {', '.join(extra)}")
        user_columns = USER_COLUMNS + extra
        users = read_catalogue(cfg.users_file, "USER_ID", user_columns, log)
    items = complete_catalogue(
        items, "ITEM_ID", ITEM_COLUMNS, events.column("ITEM_ID").chunk(0), log
    )
    users = complete_catalogue(
        users, "USER_ID", user_columns, events.column("USER_ID").chunk(0), log
    )
    with atomic_outputs():  # all three are renamed only after all three were written
        for table, out in ((events, INTERACTIONS), (items, ITEMS), (users, USERS)):
            write_csv(table, out)
    log(
        f"import: wrote {INTERACTIONS} ({events.num_rows:,} rows), "
        f"{ITEMS} ({items.num_rows:,}), {USERS} ({users.num_rows:,})"
    )
