"""generate reads a folder or glob of daily event files (CSV, gzip CSV, Parquet) in name
order, each checked on its own so an error names its file and line."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.errors import StageError
from recsys.events import ImportParams, interaction_files, read_all_interactions
from tests.helpers import parse

HEADER = "USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP\n"


def day_rows(day: int) -> list[tuple[str, str, str, int]]:
    return [(f"u{day}{j}", f"i{j}", "View", 1_717_200_000 + day * 86_400 + j) for j in range(3)]


def write_day(folder: Path, name: str, day: int) -> None:
    rows = day_rows(day)
    path = folder / name
    if name.endswith(".parquet"):
        columns = list(zip(*rows, strict=True))
        table = pa.table(
            {
                "user_id": pa.array(columns[0]),
                "item_id": pa.array(columns[1]),
                "event_type": pa.array(columns[2]),
                "timestamp": pa.array(columns[3], pa.int64()),
            }
        )
        pq.write_table(table, path)
        return
    text = HEADER + "".join(f"{u},{i},{e},{t}\n" for u, i, e, t in rows)
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """events/daily with three days in three formats, written newest first."""
    monkeypatch.chdir(tmp_path)
    daily = Path("events/daily")
    daily.mkdir(parents=True)
    write_day(daily, "2024-06-03.parquet", 3)
    write_day(daily, "2024-06-02.csv.gz", 2)
    write_day(daily, "2024-06-01.csv", 1)
    (daily / ".hidden").write_text("skipped")
    return daily


def users_of(table: pa.Table) -> list[str]:
    return table.column("USER_ID").to_pylist()


def test_a_folder_is_read_in_name_order_whatever_the_formats(shop: Path) -> None:
    names = [p.name for p in interaction_files(shop)]
    assert names == ["2024-06-01.csv", "2024-06-02.csv.gz", "2024-06-03.parquet"]
    table = read_all_interactions(shop, log=lambda _: None)
    assert users_of(table) == [r[0] for d in (1, 2, 3) for r in day_rows(d)]
    assert table.column("TIMESTAMP").to_pylist() == [r[3] for d in (1, 2, 3) for r in day_rows(d)]
    assert table.column_names == ["ITEM_ID", "USER_ID", "EVENT_TYPE", "TIMESTAMP", "DISCOUNT"]
    assert table.column("USER_ID").num_chunks == 1


def test_order_does_not_follow_modification_times(shop: Path) -> None:
    first = read_all_interactions(shop, log=lambda _: None)
    for age, path in enumerate(sorted(shop.iterdir())):
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    assert read_all_interactions(shop, log=lambda _: None).equals(first)


def test_a_glob_selects_files(shop: Path) -> None:
    table = read_all_interactions(Path("events/daily/2024-06-0[12].csv*"), log=lambda _: None)
    assert users_of(table) == [r[0] for d in (1, 2) for r in day_rows(d)]


def test_params_accept_a_folder_and_a_glob(shop: Path) -> None:
    for value in ("events/daily", "events/daily/*.parquet"):
        cfg = parse(ImportParams.from_section, "generate", {"interactions_file": value})
        assert cfg.interactions_file == Path(value)


def test_an_error_names_the_file_and_line(shop: Path) -> None:
    (shop / "2024-06-02.csv.gz").write_bytes(
        gzip.compress((HEADER + "u1,i1,View,1717200000\nu2,i2,View,soon\n").encode())
    )
    with pytest.raises(StageError, match=r"events/daily/2024-06-02.csv.gz: line 3: TIMESTAMP"):
        read_all_interactions(shop, log=lambda _: None)


def test_a_parquet_error_names_the_row(shop: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "USER_ID": ["a", None],
                "ITEM_ID": ["x", "y"],
                "EVENT_TYPE": ["View", "View"],
                "TIMESTAMP": [1, 2],
            }
        ),
        shop / "2024-06-03.parquet",
    )
    with pytest.raises(StageError, match=r"2024-06-03.parquet: row 2: USER_ID is null"):
        read_all_interactions(shop, log=lambda _: None)


@pytest.mark.parametrize(
    ("setup", "spec", "message"),
    [
        (
            lambda d: (d / "notes.txt").write_text("x"),
            "events/daily",
            "notes.txt: not an event file",
        ),
        (lambda d: None, "events/daily/*.json", "matches no file"),
        (lambda d: Path("events/empty").mkdir(), "events/empty", "empty folder"),
    ],
)
def test_bad_folders_are_one_line_errors(shop: Path, setup, spec: str, message: str) -> None:
    setup(shop)
    with pytest.raises(StageError, match=message):
        read_all_interactions(Path(spec), log=lambda _: None)
