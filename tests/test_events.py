"""Importing your own Personalize-format event log: every malformed input is one clear line,
the outputs are all-or-nothing, and the input file is never touched."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from recsys.errors import StageError
from recsys.events import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    ImportParams,
    count_duplicates,
    import_events,
    read_interactions,
)
from tests.helpers import parse

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository-like directory holding copies of the fixtures under events/."""
    shutil.copytree(DATA, tmp_path / "events")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_import(name: str, unit: str = "auto", items: str | None = None, users: str | None = None):
    logs: list[str] = []
    cfg = ImportParams(
        Path("events") / name,
        Path("events") / items if items else None,
        Path("events") / users if users else None,
        unit,
    )
    import_events(cfg, logs.append)
    return logs


def rejected(name: str, unit: str = "auto", **kwargs: str) -> str:
    """Run a failing import; check it left inputs and previous outputs alone; return the line."""
    previous = {p: "previous run\n" for p in ("interactions", "items", "users")}
    Path("data").mkdir(exist_ok=True)
    for stem, text in previous.items():
        Path(f"data/{stem}.csv").write_text(text)
    inputs = [Path("events") / n for n in (name, *kwargs.values())]
    inputs = [p for p in inputs if p.exists()]
    before = [md5(p) for p in inputs]
    with pytest.raises(StageError) as err:
        run_import(name, unit, **kwargs)
    assert [md5(p) for p in inputs] == before
    for stem, text in previous.items():
        assert Path(f"data/{stem}.csv").read_text() == text
    assert sorted(os.listdir("data")) == ["interactions.csv", "items.csv", "users.csv"]
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- happy paths


def test_valid_log_writes_the_generate_contract(workdir: Path) -> None:
    before = md5(Path("events/events_valid.csv"))
    logs = run_import("events_valid.csv")
    assert md5(Path("events/events_valid.csv")) == before

    rows = read_rows(Path("data/interactions.csv"))
    header = Path("data/interactions.csv").read_text().splitlines()[0]
    assert header == ",".join(INTERACTION_COLUMNS)
    source = read_rows(Path("events/events_valid.csv"))
    assert [(r["USER_ID"], r["ITEM_ID"], r["EVENT_TYPE"], r["TIMESTAMP"]) for r in rows] == [
        (r["USER_ID"], r["ITEM_ID"], r["EVENT_TYPE"], r["TIMESTAMP"]) for r in source
    ]
    assert {r["DISCOUNT"] for r in rows} == {""}
    assert any("EVENT_VALUE" in line for line in logs)

    items = read_rows(Path("data/items.csv"))
    assert list(items[0]) == ITEM_COLUMNS
    assert sorted(r["ITEM_ID"] for r in items) == ["i,4", "i1", "i2", "i3"]
    assert {r["CATEGORY_L1"] for r in items} == {""}
    users = read_rows(Path("data/users.csv"))
    assert list(users[0]) == USER_COLUMNS
    assert sorted(r["USER_ID"] for r in users) == ["u1", "u2", "u3"]


def test_output_reads_back_like_confidence_does(workdir: Path) -> None:
    run_import("events_valid.csv")
    frame = pd.read_csv("data/interactions.csv", engine="pyarrow", dtype={"USER_ID": "category"})
    assert frame["TIMESTAMP"].dtype.kind == "i"
    assert len(frame) == 5


def test_headers_any_case_and_order_keep_discount(workdir: Path) -> None:
    logs = run_import("events_mixed_case.csv")
    rows = read_rows(Path("data/interactions.csv"))
    assert [r["DISCOUNT"] for r in rows] == ["Yes", "No", ""]
    assert [r["ITEM_ID"] for r in rows] == ["i1", "i2", "i1"]
    assert any("SESSION" in line for line in logs)


@pytest.mark.parametrize("name", ["events_bom.csv", "events_crlf.csv"])
def test_bom_and_windows_line_endings(workdir: Path, name: str) -> None:
    raw = (DATA / name).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") or b"\r\n" in raw  # the fixture is what it claims
    run_import(name)
    text = Path("data/interactions.csv").read_bytes()
    assert b"\r" not in text and b"\xef\xbb\xbf" not in text
    rows = read_rows(Path("data/interactions.csv"))
    assert [(r["USER_ID"], r["TIMESTAMP"]) for r in rows] == [
        ("u1", "1700000000"),
        ("u2", "1700000060"),
    ]


def test_gzip_compressed_log_matches_plain(workdir: Path) -> None:
    run_import("events_valid.csv")
    plain = Path("data/interactions.csv").read_bytes()
    with gzip.open("events/events_valid.csv.gz", "wb") as fh:
        fh.write(Path("events/events_valid.csv").read_bytes())
    run_import("events_valid.csv.gz")
    assert Path("data/interactions.csv").read_bytes() == plain


def test_gzip_suffix_must_match_content(workdir: Path) -> None:
    shutil.copy("events/events_valid.csv", "events/fake.csv.gz")
    assert "not gzip data" in rejected("fake.csv.gz")


def test_milliseconds_detected_and_converted(workdir: Path) -> None:
    logs = run_import("events_timestamp_ms.csv")
    rows = read_rows(Path("data/interactions.csv"))
    assert [r["TIMESTAMP"] for r in rows] == ["1700000000", "1700000060"]
    assert any("milliseconds" in line for line in logs)


def test_milliseconds_rejected_when_unit_is_seconds(workdir: Path) -> None:
    message = rejected("events_timestamp_ms.csv", unit="s")
    assert "events_timestamp_ms.csv: line 2:" in message
    assert "expected epoch seconds" in message


def test_seconds_rejected_when_unit_is_milliseconds(workdir: Path) -> None:
    assert "line 2:" in rejected("events_valid.csv", unit="ms")


def test_mixed_units_rejected(workdir: Path) -> None:
    message = rejected("events_timestamp_mixed.csv")
    assert "line 3:" in message and "one unit" in message


def test_duplicates_kept_and_counted(workdir: Path) -> None:
    logs = run_import("events_duplicates.csv")
    assert len(read_rows(Path("data/interactions.csv"))) == 5
    # rows 2 and 5 repeat row 1; the cart row and u2's row differ in one field
    assert any(line.startswith("import: 2 duplicate rows") for line in logs)


def test_count_duplicates_matches_pandas(workdir: Path) -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    frame = pd.DataFrame(
        {
            "USER_ID": rng.integers(0, 50, n).astype(str),
            "ITEM_ID": rng.integers(0, 20, n).astype(str),
            "EVENT_TYPE": rng.choice(["click", "cart"], n),
            "TIMESTAMP": rng.integers(0, 30, n) + 1_700_000_000,
        }
    )
    frame.to_csv("events/random.csv", index=False)
    table = read_interactions(Path("events/random.csv"), log=lambda _: None)
    expected = int(frame.duplicated().sum())
    assert 0 < expected < n
    assert count_duplicates(table) == expected


def test_metadata_files_fill_contract_columns(workdir: Path) -> None:
    logs = run_import("events_valid.csv", items="items.csv", users="users.csv")
    items = {r["ITEM_ID"]: r for r in read_rows(Path("data/items.csv"))}
    assert items["i1"]["CATEGORY_L1"] == "books" and items["i1"]["PRICE"] == "9.99"
    assert items["i9"]["CATEGORY_L1"] == "floral"  # catalogue item without events is kept
    assert items["i3"]["CATEGORY_L1"] == ""  # logged item without metadata is added
    assert list(items["i1"]) == ITEM_COLUMNS
    users = {r["USER_ID"]: r for r in read_rows(Path("data/users.csv"))}
    assert users["u2"]["PERSONA"] == "tools_floral_books" and users["u2"]["AGE"] == "45"
    assert users["u3"]["PERSONA"] == ""
    assert any("COLOR" in line for line in logs)


def test_users_file_keeps_every_attribute_column(workdir: Path) -> None:
    """Columns beyond the contract (a segment, a region) reach data/users.csv, upper-cased
    after the contract columns, for the cold start to condition on (issue 24)."""
    Path("events/users_segments.csv").write_text(
        "user_id,Segment,AGE,region\nu1,web,31,north\nu2,store,45,\n"
    )
    logs = run_import("events_valid.csv", users="users_segments.csv")
    rows = read_rows(Path("data/users.csv"))
    assert list(rows[0]) == [*USER_COLUMNS, "SEGMENT", "REGION"]
    users = {r["USER_ID"]: r for r in rows}
    assert users["u1"]["SEGMENT"] == "web" and users["u1"]["REGION"] == "north"
    assert users["u2"]["REGION"] == "" and users["u3"]["SEGMENT"] == ""  # u3: log only
    assert any("attribute columns kept: SEGMENT, REGION" in line for line in logs)


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("events_missing_column.csv", "line 1: missing column TIMESTAMP"),
        ("events_empty.csv", "empty file"),
        ("events_header_only.csv", "header only, no data rows"),
        ("events_timestamp_text.csv", "line 3: TIMESTAMP = '2023-11-14'"),
        ("events_timestamp_negative.csv", "line 4: TIMESTAMP = -5; expected epoch"),
        ("events_timestamp_empty.csv", "line 3: TIMESTAMP is empty; expected an integer"),
        ("events_timestamp_na.csv", "line 4: TIMESTAMP = 'NA'; expected an integer"),
        ("events_blank_user.csv", "line 3: USER_ID = ''; expected a non-blank"),
        ("events_blank_item.csv", "line 4: ITEM_ID = '  '; expected a non-blank"),
        ("events_ragged.csv", "line 3: 3 fields; expected 4"),
        ("events_bad_discount.csv", "line 3: DISCOUNT = 'true'; expected Yes, No"),
        ("no_such_file.csv", "not found"),
    ],
)
def test_bad_logs_rejected_with_one_line(workdir: Path, name: str, expected: str) -> None:
    message = rejected(name)
    assert message.startswith(f"events/{name}: ")
    assert expected in message


def test_unreadable_bytes_rejected(workdir: Path) -> None:
    header = b"USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP\n"
    latin1 = "u1,caf\xe9,click,1700000000\n".encode("latin-1")
    Path("events/latin1.csv").write_bytes(header + latin1)
    assert "column ITEM_ID is not UTF-8 text" in rejected("latin1.csv")
    rows = "".join(f"u{i},i{i % 50},click,{1700000000 + i}\n" for i in range(50_000))
    packed = gzip.compress(header + rows.encode())
    Path("events/truncated.csv.gz").write_bytes(packed[: len(packed) // 2])
    assert "cannot read" in rejected("truncated.csv.gz")
    for bad in ("1700000000.5", "99999999999999999999"):
        Path("events/bad_ts.csv").write_bytes(header + f"u1,i1,click,{bad}\n".encode())
        assert f"line 2: TIMESTAMP = '{bad}'" in rejected("bad_ts.csv")


def test_null_like_ids_are_ids(workdir: Path) -> None:
    """NA, null, NaN are real ids in a log (a user called "NA"), never missing values."""
    run_import("events_na_ids.csv")
    rows = read_rows(Path("data/interactions.csv"))
    assert [(r["USER_ID"], r["ITEM_ID"], r["EVENT_TYPE"]) for r in rows] == [
        ("NA", "null", "NaN"),
        ("null", "NA", "click"),
        ("NaN", "N/A", "click"),
    ]
    assert sorted(r["USER_ID"] for r in read_rows(Path("data/users.csv"))) == ["NA", "NaN", "null"]
    assert sorted(r["ITEM_ID"] for r in read_rows(Path("data/items.csv"))) == ["N/A", "NA", "null"]


def test_null_like_timestamps_rejected_with_one_line(workdir: Path) -> None:
    header = "USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP\nu1,i1,click,1700000000\n"
    for bad in ("null", "NaN", "N/A", "  "):
        Path("events/null_ts.csv").write_text(header + f"u1,i2,click,{bad}\n")
        what = "is empty" if not bad.strip() else f"= {bad!r}"
        assert f"line 3: TIMESTAMP {what}; expected an integer" in rejected("null_ts.csv")


def test_duplicate_catalogue_id_rejected(workdir: Path) -> None:
    message = rejected("events_valid.csv", items="items_duplicate.csv")
    assert message.startswith("events/items_duplicate.csv: line 4: ITEM_ID = 'i1'")


def test_blank_line_inside_log_is_a_blank_id(workdir: Path) -> None:
    text = (DATA / "events_valid.csv").read_text().replace("\nu2,i1", "\n\nu2,i1")
    Path("events/blank_line.csv").write_text(text)
    assert "line 4: ITEM_ID = ''" in rejected("blank_line.csv")


def test_large_line_numbers_are_exact(workdir: Path) -> None:
    """Threaded parsing cannot count lines; the reported line must still be the real one."""
    lines = ["USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP"]
    lines += [f"u{i % 97},i{i % 31},click,{1700000000 + i}" for i in range(300_000)]
    lines[250_001] = "u1,i1,click"
    Path("events/big.csv").write_text("\n".join(lines) + "\n")
    assert "line 250002: 3 fields" in rejected("big.csv")
    lines[250_001] = "u1,i1,click,soon"
    Path("events/big.csv").write_text("\n".join(lines) + "\n")
    assert "line 250002: TIMESTAMP = 'soon'" in rejected("big.csv")


def test_multi_block_log_round_trips_deterministically(workdir: Path) -> None:
    """Threaded parsing splits a big log into blocks; output is still the input, byte-stable."""
    rng = np.random.default_rng(5)
    n = 200_000
    frame = pd.DataFrame(
        {
            "EVENT_TYPE": rng.choice(["click", "cart", "purchase"], n),
            "user_id": np.char.add("user-", rng.integers(0, 30_000, n).astype(str)),
            "Item_Id": np.char.add("sku-", rng.integers(0, 3_000, n).astype(str)),
            "TIMESTAMP": 1_700_000_000 + np.arange(n),
        }
    )
    frame.to_csv("events/big.csv", index=False)
    run_import("big.csv")
    first = {p: Path(p).read_bytes() for p in ("data/interactions.csv", "data/users.csv")}
    run_import("big.csv")
    assert {p: Path(p).read_bytes() for p in first} == first
    out = pd.read_csv("data/interactions.csv", dtype=str, keep_default_na=False)
    assert out["USER_ID"].tolist() == frame["user_id"].tolist()
    assert out["ITEM_ID"].tolist() == frame["Item_Id"].tolist()
    assert out["EVENT_TYPE"].tolist() == frame["EVENT_TYPE"].tolist()
    assert out["TIMESTAMP"].astype(int).tolist() == frame["TIMESTAMP"].tolist()
    users = pd.read_csv("data/users.csv", dtype=str, keep_default_na=False)["USER_ID"]
    assert sorted(users) == sorted(set(frame["user_id"]))


def test_read_interactions_is_lean(workdir: Path) -> None:
    table = read_interactions(Path("events/events_duplicates.csv"), log=lambda _: None)
    assert table.column_names == INTERACTION_COLUMNS
    assert str(table.schema.field("USER_ID").type).startswith("dictionary")


# --------------------------------------------------------------------------- params


def read_params(values: dict) -> ImportParams:
    return parse(ImportParams.from_section, "generate", values)


def test_params_validation() -> None:
    cfg = read_params({"interactions_file": "events/log.csv.gz", "users_file": ""})
    assert cfg == ImportParams(Path("events/log.csv.gz"), None, None, "auto")
    bad = [
        ({"interactions_file": ""}, "generate.interactions_file is empty"),
        ({"interactions_file": "/abs/log.csv"}, "expected a path inside events/"),
        ({"interactions_file": "../log.csv"}, "expected a path inside events/"),
        ({"interactions_file": "events/../log.csv"}, "expected a path inside events/"),
        ({"interactions_file": "log.csv"}, "expected a path inside events/"),
        ({"interactions_file": "own/log.csv"}, "expected a path inside events/"),
        ({"interactions_file": "events/log.txt"}, "expected a .csv, .csv.gz or .parquet file"),
        ({"interactions_file": "a.csv", "timestamp_unit": "us"}, "one of auto, s, ms"),
        ({"interactions_file": "events/log.csv", "source": "x"}, "unknown param generate.source"),
    ]
    for values, expected in bad:
        with pytest.raises(StageError, match=expected):
            read_params(values)


def test_null_optional_paths_mean_no_file() -> None:
    """`items_file:` or `items_file: null` in YAML means no metadata file."""
    cfg = read_params({"interactions_file": "events/log.csv.gz", "items_file": None})
    assert cfg == ImportParams(Path("events/log.csv.gz"), None, None, "auto")


def test_a_link_out_of_the_repository_is_refused(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "outside.csv"
    shutil.copy("events/events_valid.csv", outside)
    os.symlink(outside, "events/link.csv")
    with pytest.raises(StageError, match="is a link to a file outside the repository"):
        read_params({"interactions_file": "events/link.csv"})


def test_a_link_into_the_dvc_cache_is_accepted(workdir: Path) -> None:
    """`dvc add events/log.csv` with `cache.type: symlink` leaves such a link."""
    cached = Path(".dvc/cache/files/md5/ab/cdef")
    cached.parent.mkdir(parents=True)
    shutil.copy("events/events_valid.csv", cached)
    os.symlink(Path("../.dvc/cache/files/md5/ab/cdef"), "events/log.csv")
    assert read_params({"interactions_file": "events/log.csv"}).interactions_file == Path(
        "events/log.csv"
    )


# --------------------------------------------------------------------------- CLI


def run_cli(workdir: Path, interactions: str, unit: str = "auto") -> subprocess.CompletedProcess:
    """Run the import as DVC would, in a fresh process from a repository-like directory."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the user's one-line change
    params["generate"].update(
        source="files",
        interactions_file=f"events/{interactions}",
        items_file="events/items.csv",
        users_file="",
        timestamp_unit=unit,
    )
    Path("params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.generate"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)


def test_cli_imports_and_rejects(workdir: Path) -> None:
    ok = run_cli(workdir, "events_timestamp_ms.csv")
    assert ok.returncode == 0, ok.stderr
    assert "milliseconds" in ok.stdout
    good = Path("data/interactions.csv").read_bytes()
    before = md5(Path("events/events_timestamp_text.csv"))

    bad = run_cli(workdir, "events_timestamp_text.csv")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "error: events/events_timestamp_text.csv: line 3: TIMESTAMP = '2023-11-14'; "
        "expected an integer (whole epoch seconds or milliseconds)"
    ]
    assert "Traceback" not in bad.stderr
    assert Path("data/interactions.csv").read_bytes() == good
    assert md5(Path("events/events_timestamp_text.csv")) == before

    strict = run_cli(workdir, "events_timestamp_ms.csv", unit="s")
    assert strict.returncode != 0 and "line 2:" in strict.stderr
