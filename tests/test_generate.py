"""Tests of the synthetic shop: catalogue facts, users, simulation mechanics and statistics,
byte-identical outputs, and one-line errors for bad params."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from recsys import fidelity
from recsys import shop as gen
from recsys.errors import StageError
from recsys.params import load
from recsys.paths import INTERACTIONS, ITEMS, USERS
from stages import generate as stage
from stages.generate import GenerateParams
from tests.helpers import parse

ROOT = Path(__file__).resolve().parents[1]

# The reference shop's published figures (docs: reference shop facts), not the module's tables.
REFERENCE_COUNTS = {
    "furniture": 245, "apparel": 231, "accessories": 228, "housewares": 217, "seasonal": 217,
    "groceries": 195, "homedecor": 194, "footwear": 188, "instruments": 167, "floral": 127,
    "electronics": 104, "outdoors": 92, "jewelry": 90, "beauty": 60, "tools": 59, "books": 35,
    "food service": 8, "salty snacks": 4, "cold dispensed": 3, "hot dispensed": 1,
}  # fmt: skip
# gender-affinity products per (category, gender), and two categories' styles
REFERENCE_GENDERED = {
    ("accessories", "F"): 127, ("accessories", "M"): 80, ("apparel", "F"): 115,
    ("apparel", "M"): 116, ("beauty", "F"): 26, ("beauty", "M"): 5, ("electronics", "F"): 1,
    ("footwear", "F"): 90, ("footwear", "M"): 98, ("homedecor", "F"): 1, ("jewelry", "F"): 71,
    ("jewelry", "M"): 19,
}  # fmt: skip
REFERENCE_ACCESSORY_STYLES = {
    "backpack": 48, "bag": 21, "belt": 38, "glasses": 59, "handbag": 38, "watch": 24,
}  # fmt: skip
REFERENCE_FOOD_SERVICE = {
    "nachos": 1, "other cuisine": 1, "pizza": 1, "sandwiches/wraps": 1, "seafood": 1,
    "soup and salad": 3,
}  # fmt: skip
REFERENCE_SHARES = {  # event mix at 100k users / 800k rows, percent of rows
    "View": 86.2, "AddToCart": 6.9, "ViewCart": 4.3, "StartCheckout": 1.7, "Purchase": 0.86,
}  # fmt: skip
SMALL = {
    "source": "synthetic",
    "seed": 3,
    "users": 2000,
    "interactions": 16000,
    "days": 30,
    "end_date": "2024-06-30",
    "store_user_share": 0.1,
}


def read_settings(values: dict) -> gen.ShopParams:
    """The synthetic shop's params from a `generate:` section, as the stage reads them."""
    params = parse(GenerateParams.from_section, "generate", values)
    assert params.files is None and params.shop is not None
    return params.shop


def shop(users: int, rows: int, seed: int = 11) -> tuple[pd.DataFrame, ...]:
    values = {**SMALL, "seed": seed, "users": users, "interactions": rows}
    return gen.build_shop(read_settings(values))


@pytest.fixture(scope="module")
def mid_shop() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A fifth of the article's scale: big enough for its statistics to be stable."""
    return shop(20_000, 160_000)


# --------------------------------------------------------------------------- catalogue


def test_catalogue_matches_reference_counts() -> None:
    cat = gen.build_catalogue(np.random.default_rng(0))
    assert list(cat.columns) == [
        "ITEM_ID", "PRICE", "CATEGORY_L1", "CATEGORY_L2", "PRODUCT_DESCRIPTION", "GENDER",
        "PROMOTED",
    ]  # fmt: skip
    assert len(cat) == 2465
    assert cat["CATEGORY_L1"].astype(str).value_counts().to_dict() == REFERENCE_COUNTS
    styles = cat[["CATEGORY_L1", "CATEGORY_L2"]].astype(str).drop_duplicates()
    assert len(styles) == 85
    gendered = cat["GENDER"].notna()
    assert gendered.sum() == 749
    by_category = (
        cat[gendered].groupby([cat["CATEGORY_L1"].astype(str), cat["GENDER"].astype(str)]).size()
    )
    assert by_category.to_dict() == REFERENCE_GENDERED
    style_sizes = cat.groupby(
        [cat["CATEGORY_L1"].astype(str), cat["CATEGORY_L2"].astype(str)]
    ).size()
    assert style_sizes.loc["accessories"].to_dict() == REFERENCE_ACCESSORY_STYLES
    assert style_sizes.loc["food service"].to_dict() == REFERENCE_FOOD_SERVICE
    assert (cat["PROMOTED"] == "Y").sum() == 609
    assert cat["ITEM_ID"].is_unique
    assert all(str(uuid.UUID(i)) == i for i in cat["ITEM_ID"].head(50))
    price = cat["PRICE"]
    assert price.min() >= 1.10 and price.max() <= 1858.99
    assert 60 <= price.median() <= 85 and 100 <= price.mean() <= 135
    assert not cat["PRODUCT_DESCRIPTION"].str.contains('[,"\n]').any()


def test_catalogue_ids_follow_the_seed() -> None:
    a = gen.build_catalogue(np.random.default_rng(1))
    b = gen.build_catalogue(np.random.default_rng(1))
    c = gen.build_catalogue(np.random.default_rng(2))
    pd.testing.assert_frame_equal(a, b)
    assert not set(a["ITEM_ID"]) & set(c["ITEM_ID"])


def test_users_web_first_then_store() -> None:
    users = gen.build_users(np.random.default_rng(0), 1000, 0.1)
    assert users["USER_ID"].tolist() == [str(i) for i in range(1, 1001)]
    seg = users["SEGMENT"].astype(str).to_numpy()
    assert (seg[:900] == "web").all() and (seg[900:] == "store").all()
    persona = users["PERSONA"].astype(str).to_numpy()
    assert set(persona[:900]) <= set(gen.WEB_PERSONAS)
    assert all(p.count(":") == 3 for p in persona[900:])
    assert users["AGE"].between(18, 100).all()
    assert 28 <= users["AGE"].mean() <= 38
    assert set(users["GENDER"].astype(str)) == {"F", "M"}


@pytest.mark.parametrize("n_rows", [1, 2, 7, 116, 999, 12_345, 800_000, 8_000_001])
def test_event_counts_sum_exactly_within_quotas(n_rows: int) -> None:
    views, funnel = gen.event_counts(n_rows)
    assert views + sum(funnel) == n_rows
    assert all(f <= share * views for f, share in zip(funnel, gen.FUNNEL_SHARES, strict=True))
    assert list(funnel) == sorted(funnel, reverse=True)


# --------------------------------------------------------------------------- mechanics


def test_rows_sorted_and_funnel_follows_a_view(mid_shop) -> None:
    cat, users, ev = mid_shop
    assert len(ev) == 160_000
    ts = ev["TIMESTAMP"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    start = int(pd.Timestamp(SMALL["end_date"], tz="UTC").timestamp()) - SMALL["days"] * 86400
    assert ts.min() >= start and ts.max() < start + SMALL["days"] * 86400
    # every funnel event follows a View of its pair, within a minute (NaN compares False,
    # so a funnel event on a pair without a View fails too)
    pair = ev["USER_ID"].cat.codes.astype(np.int64) * len(cat) + ev["ITEM_ID"].cat.codes
    first_ts = (
        ev.assign(PAIR=pair).groupby(["PAIR", "EVENT_TYPE"], observed=True)["TIMESTAMP"].min()
    )
    first_ts = first_ts.unstack()
    for after in gen.EVENT_TYPES[1:]:
        has = first_ts[after].notna()
        assert (first_ts.loc[has, "View"] <= first_ts.loc[has, after]).all(), after
    counts = ev["EVENT_TYPE"].value_counts()
    assert list(counts[gen.EVENT_TYPES]) == sorted(counts[gen.EVENT_TYPES], reverse=True)


def test_picks_respect_gender_and_the_store_personas(mid_shop) -> None:
    cat, users, ev = mid_shop
    u = ev["USER_ID"].cat.codes.to_numpy()
    i = ev["ITEM_ID"].cat.codes.to_numpy()
    item_gender = cat["GENDER"].cat.codes.to_numpy()[i]
    user_gender = users["GENDER"].cat.codes.to_numpy()[u]
    assert ((item_gender < 0) | (item_gender == user_gender)).all()
    store_user = users["SEGMENT"].astype(str).to_numpy()[u] == "store"
    store_item = np.isin(cat["CATEGORY_L1"].astype(str).to_numpy()[i], list(gen.STORE_ITEMS))
    assert (store_user == store_item).all()
    # a store user picks only items of the styles its persona names (gender ignored)
    style = (cat["CATEGORY_L1"].astype(str) + ":" + cat["CATEGORY_L2"].astype(str)).to_numpy()
    persona = users["PERSONA"].astype(str).to_numpy()[u[store_user]]
    picked = style[i[store_user]]
    allowed = {p: set(p.split("_")) for p in set(persona.tolist())}
    assert all(s in allowed[p] for p, s in set(zip(persona.tolist(), picked.tolist(), strict=True)))
    assert len(set(picked.tolist())) == 11  # every store style is somebody's
    assert len(set(style[i[store_user]].tolist())) <= 16


def test_a_first_item_leads_to_at_most_five_items(mid_shop) -> None:
    """Within a (user, category), every item comes from the first item's clique: the first
    item plus a window of 4, one clique per product and gender pool."""
    cat, users, ev = mid_shop
    u = ev["USER_ID"].cat.codes.to_numpy().astype(np.int64)
    i = ev["ITEM_ID"].cat.codes.to_numpy().astype(np.int64)
    c = cat["CATEGORY_L1"].cat.codes.to_numpy()[i]
    web = users["SEGMENT"].astype(str).to_numpy()[u] == "web"
    frame = pd.DataFrame({"u": u, "i": i, "c": c, "g": users["GENDER"].cat.codes.to_numpy()[u]})
    frame = frame[web]  # rows in time order: a group's first row is its first pick
    first = frame.groupby(["u", "c"])["i"].transform("first")
    reach = frame.assign(first=first).groupby(["first", "g"])["i"].nunique()
    assert reach.max() <= 5
    assert (reach >= 4).mean() > 0.4  # the windows are reached, not just the first item
    # ... while the same first item leads M and F users to different windows: up to 9
    pooled = frame.assign(first=first).groupby("first")["i"].nunique()
    assert pooled.max() <= 9 and (pooled > 5).mean() > 0.2


def test_cliques_cross_styles_and_differ_between_genders(mid_shop) -> None:
    """The reference's per-(category, gender) random structure, measured at 20k users."""
    cat, users, ev = mid_shop
    figures = fidelity.cooccurrence(fidelity.log_from_frames(ev, cat, users))
    assert figures["single_style_groups"] == pytest.approx(0.25, abs=0.04)  # bands: 100%
    assert figures["mf_link_overlap"] < 0.1  # a shared clique for M and F gives 0.93


def test_affinity_structure_is_one_random_cyclic_order() -> None:
    """Each row is its product plus 4 consecutive products of one cyclic order, and every
    window of that order goes to exactly one row, as in the reference's construction."""
    n = 37
    rows = gen.affinity_structure(n, np.random.default_rng(5))
    assert rows.shape == (n, 5)
    assert (rows[:, 0] == np.arange(n)).all()
    window = rows[:, 1:]
    successor = np.full(n, -1)
    for a, b in zip(window[:, :-1].ravel().tolist(), window[:, 1:].ravel().tolist(), strict=True):
        assert successor[a] in (-1, b)  # consecutive in one order, whichever row says it
        successor[a] = b
    cycle, item = [], 0
    for _ in range(n):
        cycle.append(item)
        item = successor[item]
    assert item == 0 and sorted(cycle) == list(range(n))  # one cycle through every product
    position = np.empty(n, dtype=int)
    position[cycle] = np.arange(n)
    assert sorted(position[window[:, 0]].tolist()) == list(range(n))  # each window once
    # independent structures: another draw gives other cliques for the same products
    other = gen.affinity_structure(n, np.random.default_rng(6))
    assert (np.sort(other, axis=1) != np.sort(rows, axis=1)).any(axis=1).mean() > 0.8


def brute_force_views(products: list[int]) -> list[int]:
    """The reference's balancing rule, one pick at a time."""
    counts: dict[int, int] = {}
    out = []
    for p in products:
        counts[p] = counts.get(p, 0) + 1
        c, values = counts[p], list(counts.values())
        out.append(1 + (c * 2 < max(values)) + (c < sum(values) / len(values)) + (c == min(values)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_views_per_pick_follow_the_balancing_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = [3, 10, 40, 200, 7, 1][seed]
    weights = rng.random(n_items) ** 3 + 0.01  # skewed, so every rule fires
    products = rng.choice(n_items, 3000, p=weights / weights.sum())
    got = gen.views_per_pick(products)
    assert got.tolist() == brute_force_views(products.tolist())
    assert set(got.tolist()) <= {1, 2, 3, 4}


@pytest.mark.parametrize("n_views", [1, 12, 13, 100, 101, 9999])
def test_funnel_fires_on_its_own_rhythm(n_views: int) -> None:
    """After each View a type fires while its count < int(share x Views so far)."""
    got = gen.funnel_views(n_views)
    for share, views in zip(gen.FUNNEL_SHARES, got, strict=True):
        expected, fired = [], 0
        for v in range(1, n_views + 1):
            if fired < int(share * v):
                fired += 1
                expected.append(v - 1)
        assert views.tolist() == expected


def test_funnel_events_are_not_nested(mid_shop) -> None:
    """Each funnel type keeps its own rhythm (every 12.5th, 20th, 50th, 100th View), so most
    ViewCarts and StartCheckouts share no View with the step before them, and a third of
    the pairs carry a funnel event (nested funnels on random Views gave a fifth)."""
    cat, users, ev = mid_shop
    pair = ev["USER_ID"].cat.codes.astype(np.int64) * len(cat) + ev["ITEM_ID"].cat.codes
    kinds = pd.crosstab(pair, ev["EVENT_TYPE"].astype(str)) > 0
    assert (~kinds.loc[kinds["ViewCart"], "AddToCart"]).mean() > 0.5
    assert (~kinds.loc[kinds["StartCheckout"], "ViewCart"]).mean() > 0.3  # half share Views
    assert (kinds.drop(columns="View").any(axis=1)).mean() == pytest.approx(0.325, abs=0.02)


def test_discount_follows_discount_persona(mid_shop) -> None:
    cat, users, ev = mid_shop
    views = ev[ev["EVENT_TYPE"] == "View"]
    u = views["USER_ID"].cat.codes.to_numpy()
    price = cat["PRICE"].to_numpy()[views["ITEM_ID"].cat.codes.to_numpy()]
    persona = users["DISCOUNT_PERSONA"].astype(str).to_numpy()[u]
    yes = (views["DISCOUNT"] == "Yes").to_numpy()
    cheap = price < cat["PRICE"].mean()
    for mask, p in [
        (persona == "discount_indifferent", 0.2),
        (persona == "all_discounts", 0.5),
        ((persona == "lower_priced_products") & cheap, 0.5),
        ((persona == "lower_priced_products") & ~cheap, 0.2),
    ]:
        assert yes[mask].mean() == pytest.approx(p, abs=0.02)


# --------------------------------------------------------------------------- statistics


def test_statistics_match_reference(mid_shop) -> None:
    """The reference's figures at 100k/800k, checked at 20k/160k where they are stable."""
    cat, users, ev = mid_shop
    shares = ev["EVENT_TYPE"].value_counts(normalize=True) * 100
    for event, ref in REFERENCE_SHARES.items():
        assert shares[event] == pytest.approx(ref, abs=1.0), event

    u = ev["USER_ID"].cat.codes.to_numpy().astype(np.int64)
    i = ev["ITEM_ID"].cat.codes.to_numpy().astype(np.int64)
    assert np.unique(u).size / len(users) == pytest.approx(0.942, abs=0.015)
    assert np.unique(i).size >= 0.99 * len(cat)

    pairs, inverse = np.unique(u * len(cat) + i, return_inverse=True)
    per_user = np.bincount(pairs // len(cat))
    per_user = per_user[per_user > 0]
    assert per_user.mean() == pytest.approx(2.54, abs=0.15)
    assert np.median(per_user) == 2
    assert (per_user == 1).mean() == pytest.approx(0.23, abs=0.03)
    weight = ev["EVENT_TYPE"].cat.codes.to_numpy() + 1  # View 1 .. Purchase 5
    confidence = np.bincount(inverse, weights=weight)
    assert np.median(confidence) == 3
    assert confidence.mean() == pytest.approx(4.15, abs=0.2)

    store = users["SEGMENT"].astype(str).to_numpy() == "store"
    assert store.mean() == pytest.approx(0.10, abs=0.001)
    assert store[u].mean() == pytest.approx(0.05, abs=0.01)

    # web rows by persona slot: about 58 / 25 / 16 %
    persona = users["PERSONA"].astype(str).to_numpy()[u[~store[u]]]
    category = cat["CATEGORY_L1"].astype(str).to_numpy()[i[~store[u]]]
    slot_of = pd.Series(persona).str.split("_", expand=True).to_numpy()
    slot_share = (slot_of == category[:, None]).mean(axis=0) * 100
    assert slot_share == pytest.approx([58, 25, 16], abs=2.5)


# --------------------------------------------------------------------------- main / CLI


def run_main(tmp: Path, params: dict, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump({"generate": params}))
    monkeypatch.chdir(tmp)
    stage.main()
    return {name: (tmp / name).read_bytes() for name in (INTERACTIONS, ITEMS, USERS)}


def test_main_is_byte_identical_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_main(tmp_path / "a", SMALL, monkeypatch)
    again = run_main(tmp_path / "b", SMALL, monkeypatch)
    other = run_main(tmp_path / "c", {**SMALL, "seed": 4}, monkeypatch)
    assert first == again
    for name in first:
        assert first[name] != other[name], name

    ev = pd.read_csv(tmp_path / "a" / INTERACTIONS, dtype={"USER_ID": str})
    assert list(ev.columns) == ["ITEM_ID", "USER_ID", "EVENT_TYPE", "TIMESTAMP", "DISCOUNT"]
    assert len(ev) == SMALL["interactions"]
    assert set(ev["EVENT_TYPE"]) == set(gen.EVENT_TYPES)
    assert set(ev["DISCOUNT"]) == {"Yes", "No"}
    items = pd.read_csv(tmp_path / "a" / ITEMS, dtype=str, keep_default_na=False)
    assert set(ev["ITEM_ID"]) <= set(items["ITEM_ID"])
    assert items["PRICE"].str.fullmatch(r"\d+\.\d\d").all()
    users = pd.read_csv(tmp_path / "a" / USERS, dtype={"USER_ID": str})
    assert list(users.columns[:4]) == ["USER_ID", "AGE", "GENDER", "PERSONA"]
    assert set(ev["USER_ID"]) <= set(users["USER_ID"])


def test_settings_ignore_the_files_keys_and_refuse_unquoted_dates(tmp_path: Path) -> None:
    values = {**SMALL, "interactions_file": "events.csv", "timestamp_unit": "ms"}
    settings = read_settings(values)
    assert settings.start == int(pd.Timestamp("2024-05-31", tz="UTC").timestamp())
    # params.yaml is read as DVC reads it: an unquoted date is a date, which DVC cannot
    # record in dvc.lock, so it is refused in one line that shows the quoted form
    text = yaml.safe_dump({"generate": values}).replace("'2024-06-30'", "2024-06-30")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(
        StageError, match=r'generate.end_date = 2024-06-30 is an unquoted date.*"2024-06-30"'
    ):
        load(GenerateParams.from_section, "generate", tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("users", 0, "generate.users"),
        ("interactions", "many", "generate.interactions"),
        ("store_user_share", 1.5, "generate.store_user_share"),
        ("end_date", "2024-13-01", "generate.end_date"),
        ("days", 2.5, "generate.days"),
        ("user", 5, "unknown param generate.user"),
    ],
)
def test_bad_settings_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(StageError, match=message):
        read_settings({**SMALL, key: value})


def test_files_source_dispatches_to_the_importer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`source: files` re-imports a log through recsys/events.py; typos still fail first."""
    synthetic = run_main(tmp_path, SMALL, monkeypatch)
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "log.csv").write_bytes(synthetic[INTERACTIONS])
    files = {**SMALL, "source": "files", "interactions_file": "events/log.csv", "users_file": ""}

    with pytest.raises(StageError, match="unknown param generate.user;"):
        run_main(tmp_path, {**files, "user": 5}, monkeypatch)
    assert (tmp_path / INTERACTIONS).read_bytes() == synthetic[INTERACTIONS]

    imported = run_main(tmp_path, files, monkeypatch)
    ev = pd.read_csv(io.BytesIO(imported[INTERACTIONS]), dtype=str)
    assert list(ev.columns) == ["ITEM_ID", "USER_ID", "EVENT_TYPE", "TIMESTAMP", "DISCOUNT"]
    assert len(ev) == SMALL["interactions"]


def cli_copy(tmp: Path, params: dict) -> Path:
    """A minimal project (the generate stage and the package) with existing outputs."""
    (tmp / "stages").mkdir(parents=True)
    for name in ("__init__.py", "generate.py"):
        shutil.copy2(ROOT / "stages" / name, tmp / "stages" / name)
    shutil.copytree(ROOT / "recsys", tmp / "recsys", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp / "params.yaml").write_text(yaml.safe_dump({"generate": params}))
    (tmp / "data").mkdir()
    for name in (INTERACTIONS, ITEMS, USERS):
        (tmp / name).write_text("previous\n")
    return tmp


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            {"users": -3},
            "error: params.yaml: generate.users = -3; expected an integer in [1, 50000000]",
        ),
        (
            {"source": "files", "interactions_file": "own/log.csv"},
            "error: params.yaml: generate.interactions_file = 'own/log.csv'; expected a path "
            "inside events/ (e.g. events/interactions.csv.gz), which dvc.yaml tracks",
        ),
    ],
)
def test_cli_bad_params_one_line_outputs_untouched(
    tmp_path: Path, update: dict, message: str
) -> None:
    repo = cli_copy(tmp_path, {**SMALL, **update})
    proc = subprocess.run(
        [sys.executable, "-m", "stages.generate"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip() == message
    for name in (INTERACTIONS, ITEMS, USERS):
        assert (repo / name).read_text() == "previous\n"
