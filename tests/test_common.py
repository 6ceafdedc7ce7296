"""The shared helpers every stage relies on (recsys.io, recsys.cli, ...): one-line errors and
all-or-nothing outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recsys.cli import run_stage
from recsys.errors import StageError
from recsys.families.als import AlsModel
from recsys.ids import read_id_table
from recsys.io import atomic_dir, load_csr, load_npz, map_npz, write_npz, write_text


@pytest.fixture
def in_tmp(tmp_path: Path) -> Path:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failing_stage_replaces_none_of_its_outputs(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_text("a.txt", "old a\n")
    write_text("b.txt", "old b\n")

    def stage() -> None:
        write_text("a.txt", "new a\n")
        with atomic_dir("bundle") as tmp:
            (tmp / "x").write_text("x")
        raise StageError("b.txt: something the user must fix")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: b.txt: something the user must fix\n"
    assert Path("a.txt").read_text() == "old a\n" and Path("b.txt").read_text() == "old b\n"
    assert not Path("bundle").exists()
    assert leftovers(in_tmp) == []  # no temp files left behind


def test_a_succeeding_stage_replaces_all_of_its_outputs(in_tmp: Path) -> None:
    write_text("a.txt", "old a\n")

    def stage() -> None:
        write_text("a.txt", "new a\n")
        assert Path("a.txt").read_text() == "old a\n"  # held back until the stage ends
        with atomic_dir("bundle") as tmp:
            (tmp / "x").write_text("x")

    run_stage(stage)
    assert Path("a.txt").read_text() == "new a\n"
    assert (in_tmp / "bundle" / "x").read_text() == "x"
    assert leftovers(in_tmp) == []


def test_os_errors_are_one_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("metrics").write_text("a file where a folder should be")

    def stage() -> None:
        write_text("metrics/metrics.json", "{}")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "metrics" in err


def test_unreadable_npz_files_are_stage_errors_without_pickle_advice(in_tmp: Path) -> None:
    np.save("single.npy", np.arange(3))
    os.replace("single.npy", "single.npz")
    Path("garbage.npz").write_bytes(b"not a zip at all")
    for name in ("single.npz", "garbage.npz"):
        for loader in (load_npz, load_csr):
            with pytest.raises(StageError) as info:
                loader(name)
            assert name in str(info.value) and "pickle" not in str(info.value)


def test_model_factors_must_be_finite_and_fit_the_matrix(in_tmp: Path) -> None:
    users = np.ones((4, 2), np.float32)
    items = np.ones((3, 2), np.float32)

    def load(path: str, shape: tuple[int, int]) -> AlsModel:
        return AlsModel.from_arrays(load_npz(path), path, shape, threads=1)

    hyper = {"regularization": np.float32(0.01), "alpha": np.float32(1.0)}  # ALS's EXTRA
    write_npz("ok.npz", user_factors=users, item_factors=items, **hyper)
    assert load("ok.npz", (4, 3)).user_factors.shape == (4, 2)
    with pytest.raises(StageError, match="ok.npz: user_factors has shape .* expected 5 rows"):
        load("ok.npz", (5, 3))
    items[1, 1] = np.nan
    write_npz("nan.npz", user_factors=users, item_factors=items, **hyper)
    with pytest.raises(StageError, match="nan.npz: item_factors must hold finite floats"):
        load("nan.npz", (4, 3))


def test_metadata_table_errors_name_the_file(in_tmp: Path) -> None:
    Path("users.csv").write_bytes(b"USER_ID,PERSONA\n1,\xff\xfe\n")
    with pytest.raises(StageError, match="users.csv: not a readable CSV"):
        read_id_table("users.csv", "USER_ID", ["PERSONA"])
    Path("items.csv").write_text("ID,CATEGORY_L1\n1,a\n")
    with pytest.raises(StageError, match="items.csv: missing column ITEM_ID"):
        read_id_table("items.csv", "ITEM_ID", ["CATEGORY_L1"])


def test_params_with_a_duplicate_section_are_refused(in_tmp: Path) -> None:
    from recsys.params import Section

    Path("params.yaml").write_text("als:\n  factors: 8\nals:\n  factors: 9\n")
    with pytest.raises(StageError, match=r"params.yaml: line 3: duplicate key"):
        Section.load("als")


def test_mapped_npz_reads_the_same_arrays_without_loading_them(tmp_path: Path) -> None:
    """The service maps the bundle's per-user arrays: same values as `load_npz`, backed by
    the file (a view of an np.memmap, read-only); compressed, truncated and non-npz files
    are refused."""
    arrays = {
        "items": np.arange(60, dtype=np.int32).reshape(20, 3),
        "scores": np.linspace(0, 1, 60, dtype=np.float32).reshape(20, 3),
        "user_ids": np.array(["u1", "u10", "u2"]),
        "flags": np.array([True, False, True]),
        "empty": np.empty((0, 3), dtype=np.int32),
        "scalar": np.array("als"),
    }
    path = tmp_path / "a.npz"
    write_npz(path, **arrays)
    mapped = map_npz(path)
    assert set(mapped) == set(arrays)
    for key, value in load_npz(path).items():
        np.testing.assert_array_equal(mapped[key], value)
        assert mapped[key].dtype == value.dtype
    assert isinstance(mapped["items"].base, np.memmap) and not mapped["items"].flags.writeable

    np.savez_compressed(tmp_path / "z.npz", items=arrays["items"])
    with pytest.raises(StageError, match="z.npz: not a readable .npz file .*not a stored .npy"):
        map_npz(tmp_path / "z.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:400])
    with pytest.raises(StageError, match="cut.npz: not a readable .npz file"):
        map_npz(tmp_path / "cut.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(StageError, match="text.npz: not a readable .npz file"):
        map_npz(tmp_path / "text.npz")


def test_streamed_npz_has_the_bytes_of_a_buffered_one(tmp_path: Path) -> None:
    """write_npz streams each array into the zip (no in-memory copy of 2.5 GB of factors at
    100x); the file is byte for byte what writing np.save's output with writestr gave, so
    no DVC hash changed."""
    import io
    import zipfile

    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {
        "ints": np.arange(10, dtype=np.int32).reshape(2, 5),
        "floats": a,
        "fortran": np.asfortranarray(a),
        "strided": a[:, ::2],
        "text": np.array(["a", "bcd"]),
        "flags": np.array([True, False]),
        "scalar": np.array("als"),
        "empty": np.empty((0, 3), dtype=np.int32),
    }
    reference = tmp_path / "reference.npz"
    with zipfile.ZipFile(reference, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    write_npz(tmp_path / "ours.npz", **arrays)
    assert (tmp_path / "ours.npz").read_bytes() == reference.read_bytes()
