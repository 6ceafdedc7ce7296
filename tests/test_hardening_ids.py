"""Ids holding control characters (issue 20 item 4): `u1` and `u1\\0` were two users in the
log and one in the bundle (numpy's fixed-width ids drop trailing NULs), so `u1\\0` got
`u1`'s list and its own row was unreachable. Refused where ids enter, naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.confidence import load_events
from recsys.errors import StageError
from recsys.events import read_catalogue, read_interactions

HEADER = "ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT\n"


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    body = "".join(f"{i},{u},View,{1700000000 + n},No\n" for n, (i, u) in enumerate(rows))
    path.write_bytes((HEADER + body).encode())
    return path


@pytest.mark.parametrize("bad", ["u1\x00", "u\x01x", "u1\x7f", "a\x85b", '"u\nx"', "u\tx"])
def test_import_refuses_a_control_character_naming_the_line(tmp_path: Path, bad: str) -> None:
    path = write_rows(tmp_path / "log.csv", [("a", "u1"), ("b", "u2"), ("c", bad)])
    with pytest.raises(StageError) as exc:
        read_interactions(path, log=lambda _: None)
    message = str(exc.value)
    assert message.startswith(f"{path}: line 4: USER_ID = "), message
    assert "control characters" in message and "\n" not in message
    write_rows(path, [("a", "u1"), ("b", "u2"), ("c", "u 1é")])  # ordinary ids still pass
    assert read_interactions(path, log=lambda _: None).num_rows == 3


def test_confidence_refuses_a_hand_edited_nul(tmp_path: Path) -> None:
    """data/interactions.csv can be edited by hand: the confidence stage checks too."""
    path = write_rows(tmp_path / "interactions.csv", [("a", "u1"), ("b", "u1"), ("i\x00", "u1")])
    with pytest.raises(StageError) as exc:
        load_events(path)
    assert str(exc.value).startswith(f"{path}: line 4: ITEM_ID = 'i\\x00'; expected no control")


def test_catalogue_refuses_a_control_character(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(b"ITEM_ID,PRICE\na,1\nb\x00,2\n")
    with pytest.raises(StageError, match=r"line 3: ITEM_ID = 'b\\x00'; expected no control"):
        read_catalogue(path, "ITEM_ID", ["ITEM_ID", "PRICE"], log=lambda _: None)
