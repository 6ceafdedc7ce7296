"""The synthetic shop: event log, items and users, imitating the reference retail shop.

This rebuilds the reference retail shop (the Retail Demo
Store data behind the article) from its published facts, in a few vectorised numpy passes
instead of a Python loop per event:

* Catalogue: 2,449 web products in 16 categories with the reference's exact per-category
  counts, plus 16 convenience-store items in 4 categories (20 categories, 2,465 items, 85
  styles). Apparel, footwear, beauty, jewelry and accessories carry a gender affinity on
  749 products. Prices are lognormal per category, clipped to [1.10, 1858.99]. Ids are
  UUIDs drawn from the seed.
* Users: ids "1".."N", web users first, then `store_user_share` convenience-store users.
  Uniform gender, truncated-normal age (mean 32, sd 15, 18..100), a uniform discount
  persona, and a persona: web users one of 16 ordered category triples
  (`furniture_homedecor_housewares`), store users one of 9 `category:style` triples joined
  by `_` (`food service:pizza_cold dispensed:fountain-carbonated_salty snacks:nuts/seeds`).
* Picks: a user drawn uniformly with replacement; one of the persona's three slots with
  probability [0.6, 0.25, 0.15] x the slot category's catalogue share (renormalised); a
  product of that category whose gender affinity is empty or the user's. The first pick of
  a (user, category) anchors an affinity clique of 4-5 neighbouring products of the same
  style; later picks of that pair come only from the clique. Store slots are a style, so
  their clique is the whole (tiny) style.
* Views: each pick writes 1-4 Views, one more for each of "the product has fewer than half
  the picks of the most picked product so far", "fewer than the average so far" and "the
  fewest so far". Popular items (the store's) get 1-2, the long tail 3-4, which balances
  coverage as in the reference. Counting picks, not views, keeps every pick's view count
  a function of earlier picks only, so the whole loop becomes sorts and scans.
* Funnel: global quotas of AddToCart 8%, ViewCart 5%, StartCheckout 2% and Purchase 1% of
  Views, nested (every Purchase follows a StartCheckout, ...) and placed after random Views
  of the same user and product, a few seconds apart.
* DISCOUNT: Yes with probability 0.2 (discount_indifferent), 0.5 (all_discounts) or, for
  lower_priced_products, 0.5 below the catalogue's mean price and 0.2 above; funnel events
  inherit their View's value.
* Clock: starts `days` before `end_date` (00:00 UTC) and advances only on Views by a random
  step whose mean makes the log span 80% of the window (72 of 90 days, as the reference).

The row count is exactly `interactions`; rows are sorted by timestamp (ties in generation
order). At 100k users and 800k rows the statistics match the reference (event mix, ~94% of
users active, ~2.5 distinct items per user, 58/25/16% of web rows in persona categories 1/2/3,
store users 10% of users and ~5% of rows); `tests/test_generate.py` checks them.

With `generate.source: files` the stage imports your own logs instead (`recsys.events`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.special import ndtr, ndtri

from recsys.cli import status
from recsys.errors import StageError
from recsys.io import atomic_outputs, write_csv
from recsys.params import Section
from recsys.paths import INTERACTIONS, ITEMS, USERS

EVENT_TYPES = ["View", "AddToCart", "ViewCart", "StartCheckout", "Purchase"]
# Global funnel quotas, as shares of all Views (AddToCart, ViewCart, StartCheckout, Purchase).
FUNNEL_SHARES = (0.08, 0.05, 0.02, 0.01)
FUNNEL_STEP_SECONDS = (1, 30)  # each funnel step lands this many seconds after the previous
SLOT_WEIGHTS = np.array([0.6, 0.25, 0.15])
CLIQUE_SIZES = (4, 5)
ACTIVE_SHARE = 0.8  # share of the `days` window the log spans (72 of 90 days)
GENDERED_PRODUCTS = 749
PRICE_BOUNDS = (1.10, 1858.99)
PRICE_SIGMA = 0.65  # log-price spread within a category
AGE_MEAN, AGE_SD, AGE_BOUNDS = 32.0, 15.0, (18, 100)
DISCOUNT_PERSONAS = ["discount_indifferent", "all_discounts", "lower_priced_products"]
GENDERS = ["F", "M"]

# category -> (products, median price, styles); the product counts are the reference's.
WEB_CATEGORIES: dict[str, tuple[int, float, tuple[str, ...]]] = {
    "furniture": (245, 196.0, ("sofa", "chair", "table", "bed", "bookcase", "desk", "dresser")),
    "apparel": (231, 54.0, ("shirt", "jacket", "pants", "dress", "sweater", "socks")),
    "accessories": (228, 50.0, ("backpack", "handbag", "belt", "wallet", "sunglasses", "hat")),
    "housewares": (217, 46.0, ("kitchen", "bathroom", "cleaning", "storage", "dining")),
    "seasonal": (217, 39.0, ("christmas", "halloween", "easter", "summer")),
    "groceries": (195, 13.0, ("fruits", "vegetables", "dairy", "bakery", "snacks", "beverages")),
    "homedecor": (194, 86.0, ("lighting", "rugs", "wall art", "vases", "bedding")),
    "footwear": (188, 104.0, ("sneakers", "boots", "sandals", "formal shoes")),
    "instruments": (167, 275.0, ("guitars", "keyboards", "drums", "wind", "strings")),
    "floral": (127, 60.0, ("bouquets", "plants", "wreaths", "arrangements")),
    "electronics": (104, 196.0, ("headphones", "speakers", "cameras", "computers")),
    "outdoors": (92, 126.0, ("camping", "fishing", "cycling", "hiking")),
    "jewelry": (90, 150.0, ("necklaces", "bracelets", "earrings", "rings")),
    "beauty": (60, 41.0, ("makeup", "fragrance", "skincare", "haircare")),
    "tools": (59, 95.0, ("power tools", "hand tools", "gardening", "measuring")),
    "books": (35, 32.0, ("fiction", "cooking", "travel", "children")),
}
GENDER_CATEGORIES = ("apparel", "footwear", "beauty", "jewelry", "accessories")
# Convenience store: category -> style -> (item name, price); 16 items.
STORE_ITEMS: dict[str, dict[str, tuple[tuple[str, float], ...]]] = {
    "food service": {
        "pizza": (("Pepperoni pizza slice", 3.49), ("Cheese pizza slice", 2.99)),
        "roller grill": (("Hot dog", 1.99), ("Beef taquito", 1.49), ("Sausage roll", 2.29)),
        "sandwiches": (("Turkey sandwich", 4.99), ("Ham and cheese sandwich", 4.49)),
        "bakery": (("Glazed donut", 1.29),),
    },
    "salty snacks": {
        "chips": (("Potato chips", 1.99), ("Tortilla chips", 2.19)),
        "nuts/seeds": (("Salted peanuts", 1.79), ("Sunflower seeds", 1.10)),
    },
    "cold dispensed": {
        "fountain-carbonated": (("Cola fountain drink", 1.69), ("Lemon-lime fountain drink", 1.69)),
        "fountain-noncarbonated": (("Iced tea fountain drink", 1.59),),
    },
    "hot dispensed": {"coffee": (("Fresh brewed coffee", 1.39),)},
}
WEB_PERSONAS = [
    "furniture_homedecor_housewares",
    "apparel_footwear_accessories",
    "instruments_books_electronics",
    "floral_beauty_jewelry",
    "groceries_seasonal_tools",
    "outdoors_instruments_groceries",
    "housewares_floral_seasonal",
    "tools_housewares_apparel",
    "electronics_outdoors_footwear",
    "seasonal_furniture_floral",
    "homedecor_electronics_outdoors",
    "accessories_groceries_books",
    "footwear_jewelry_furniture",
    "books_apparel_homedecor",
    "beauty_accessories_instruments",
    "housewares_tools_beauty",
]
STORE_PERSONAS = [
    ("food service:pizza", "cold dispensed:fountain-carbonated", "salty snacks:nuts/seeds"),
    ("salty snacks:nuts/seeds", "hot dispensed:coffee", "cold dispensed:fountain-carbonated"),
    ("cold dispensed:fountain-noncarbonated", "food service:roller grill", "salty snacks:chips"),
    ("cold dispensed:fountain-noncarbonated", "food service:sandwiches", "salty snacks:nuts/seeds"),
    ("cold dispensed:fountain-carbonated", "food service:sandwiches", "salty snacks:nuts/seeds"),
    ("salty snacks:chips", "hot dispensed:coffee", "food service:bakery"),
    ("hot dispensed:coffee", "salty snacks:chips", "food service:sandwiches"),
    ("food service:pizza", "hot dispensed:coffee", "salty snacks:nuts/seeds"),
    ("hot dispensed:coffee", "salty snacks:nuts/seeds", "food service:roller grill"),
]
CATEGORIES = list(WEB_CATEGORIES) + list(STORE_ITEMS)
STYLES = [f"{c}:{s}" for c, (_, _, styles) in WEB_CATEGORIES.items() for s in styles] + [
    f"{c}:{s}" for c, styles in STORE_ITEMS.items() for s in styles
]
PERSONAS = WEB_PERSONAS + ["_".join(p) for p in STORE_PERSONAS]
ADJECTIVES = (
    "Classic", "Modern", "Essential", "Premium", "Everyday", "Deluxe", "Compact", "Vintage",
    "Natural", "Bold", "Soft", "Sturdy", "Elegant", "Handmade", "Lightweight", "Signature",
)  # fmt: skip


@dataclass(frozen=True)
class ShopParams:
    """The synthetic shop's `generate.*` params (`source: synthetic`)."""

    seed: int
    users: int
    interactions: int
    days: int
    end_date: dt.date
    store_user_share: float

    KEYS = ("seed", "users", "interactions", "days", "end_date", "store_user_share")

    @classmethod
    def from_section(cls, s: Section) -> ShopParams:
        text = s.str("end_date")
        try:
            end_date = dt.date.fromisoformat(text)
        except ValueError:
            raise StageError(
                f"params.yaml: generate.end_date = {text!r}; expected a date YYYY-MM-DD"
            ) from None
        return cls(
            seed=s.int("seed", min=0),
            users=s.int("users", min=1, max=50_000_000),
            interactions=s.int("interactions", min=1, max=500_000_000),
            days=s.int("days", min=1, max=36_500),
            end_date=end_date,
            store_user_share=s.float("store_user_share", 0.1, min=0.0, max=1.0),
        )

    @property
    def start(self) -> int:
        """Epoch seconds of the clock's start: `days` before `end_date` 00:00 UTC."""
        end = dt.datetime.combine(self.end_date, dt.time(), tzinfo=dt.UTC)
        return int(end.timestamp()) - self.days * 86400


# --------------------------------------------------------------------------- catalogue


def build_catalogue(rng: np.random.Generator) -> pd.DataFrame:
    """The 2,465-item catalogue: web categories first, then the store; rows grouped by style.

    Columns follow data/items.csv; CATEGORY_L2 is the style within CATEGORY_L1. CATEGORY_L1
    and GENDER are categoricals over `CATEGORIES` and `GENDERS` (NaN = no affinity).
    """
    cat_codes, style_codes, medians, names = [], [], [], []
    style_index = {s: i for i, s in enumerate(STYLES)}
    for c, (count, median, styles) in WEB_CATEGORIES.items():
        # every style gets at least one product, the rest split at random
        sizes = 1 + rng.multinomial(count - len(styles), np.full(len(styles), 1 / len(styles)))
        codes = np.repeat([style_index[f"{c}:{s}"] for s in styles], sizes)
        style_codes.append(codes)
        cat_codes.append(np.full(count, CATEGORIES.index(c)))
        medians.append(np.full(count, median))
        names.append(np.repeat(np.array(styles, dtype=object), sizes))
    n_web = sum(len(c) for c in cat_codes)

    log_price = np.log(np.concatenate(medians)) + PRICE_SIGMA * rng.standard_normal(n_web)
    price = np.clip(np.exp(log_price), *PRICE_BOUNDS)
    # shop prices end in .99 above two dollars
    price = np.where(price >= 2, np.floor(price) + 0.99, np.round(price, 2))
    price = np.clip(price, *PRICE_BOUNDS)
    adjectives = np.array(ADJECTIVES, dtype=object)[rng.integers(0, len(ADJECTIVES), n_web)]
    web_desc = adjectives + " " + np.concatenate(names)

    store_rows = [
        (CATEGORIES.index(c), style_index[f"{c}:{s}"], p, name)
        for c, styles in STORE_ITEMS.items()
        for s, items in styles.items()
        for name, p in items
    ]
    store_cat, store_style, store_price, store_desc = map(np.array, zip(*store_rows, strict=True))
    category = np.concatenate([*cat_codes, store_cat])
    style = np.concatenate([*style_codes, store_style])
    n = category.size

    gender = np.full(n, -1, dtype=np.int8)
    can = np.flatnonzero(np.isin(category, [CATEGORIES.index(c) for c in GENDER_CATEGORIES]))
    chosen = np.sort(rng.choice(can, GENDERED_PRODUCTS, replace=False))
    gender[chosen] = rng.integers(0, 2, chosen.size)

    promoted = rng.random(n) < 0.05
    raw = rng.bytes(16 * n)
    ids = [str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)) for i in range(n)]
    return pd.DataFrame(
        {
            "ITEM_ID": ids,
            "PRICE": np.concatenate([price, store_price.astype(float)]),
            "CATEGORY_L1": pd.Categorical.from_codes(category, CATEGORIES),
            "CATEGORY_L2": [STYLES[i].split(":", 1)[1] for i in style.tolist()],
            "PRODUCT_DESCRIPTION": np.concatenate([web_desc, store_desc.astype(object)]),
            "GENDER": pd.Categorical.from_codes(gender, GENDERS),
            "PROMOTED": np.where(promoted, "Y", "N"),
        }
    )


# --------------------------------------------------------------------------- users


def build_users(rng: np.random.Generator, n_users: int, store_share: float) -> pd.DataFrame:
    """Users "1".."N": web users first, then `round(N * store_share)` store users.

    PERSONA is a categorical over `PERSONAS` (16 web, then 9 store); SEGMENT is web/store.
    """
    n_store = int(round(n_users * store_share))
    n_web = n_users - n_store
    lo, hi = (np.array(AGE_BOUNDS, dtype=float) - AGE_MEAN) / AGE_SD
    # truncated normal by inverse CDF: uniform between the bounds' normal quantiles
    q = ndtr(lo) + rng.random(n_users) * (ndtr(hi) - ndtr(lo))
    age = np.clip(np.floor(AGE_MEAN + AGE_SD * ndtri(q)), *AGE_BOUNDS).astype(np.int64)
    gender = rng.integers(0, 2, n_users)
    persona = np.concatenate(
        [
            rng.integers(0, len(WEB_PERSONAS), n_web),
            len(WEB_PERSONAS) + rng.integers(0, len(STORE_PERSONAS), n_store),
        ]
    )
    discount = rng.integers(0, len(DISCOUNT_PERSONAS), n_users)
    segment = np.repeat(np.array([0, 1], dtype=np.int8), [n_web, n_store])
    return pd.DataFrame(
        {
            "USER_ID": np.arange(1, n_users + 1).astype(str),
            "AGE": age,
            "GENDER": pd.Categorical.from_codes(gender, GENDERS),
            "PERSONA": pd.Categorical.from_codes(persona, PERSONAS),
            "DISCOUNT_PERSONA": pd.Categorical.from_codes(discount, DISCOUNT_PERSONAS),
            "SEGMENT": pd.Categorical.from_codes(segment, ["web", "store"]),
        }
    )


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class _Pools:
    """Products a pick may land on, per (web category, gender) or store style.

    `items[offset[k] : offset[k] + length[k]]` is pool k in catalogue (style) order;
    `block_start`/`block_len` give, per pool position, its style's run inside the pool, so
    a clique stays within one style. `base[persona, slot]` + `gender_step[persona]` x gender
    is the pool of a persona's slot; `weights[persona]` are its slot probabilities.
    """

    items: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    block_start: np.ndarray
    block_len: np.ndarray
    base: np.ndarray
    gender_step: np.ndarray
    weights: np.ndarray


def _pools(catalogue: pd.DataFrame) -> _Pools:
    category = catalogue["CATEGORY_L1"].cat.codes.to_numpy()
    style_key = catalogue["CATEGORY_L1"].astype(str) + ":" + catalogue["CATEGORY_L2"].astype(str)
    style = pd.Categorical(style_key, categories=STYLES).codes.astype(np.int64)
    if (style < 0).any():
        raise ValueError("catalogue has a style outside STYLES")
    gender = catalogue["GENDER"].cat.codes.to_numpy()
    share = np.bincount(category, minlength=len(CATEGORIES)) / len(catalogue)
    members = []
    for c in range(len(WEB_CATEGORIES)):  # pool 2c + g: category c, gender g or none
        for g in range(len(GENDERS)):
            members.append(np.flatnonzero((category == c) & ((gender < 0) | (gender == g))))
    store_styles = [STYLES.index(f"{c}:{s}") for c, ss in STORE_ITEMS.items() for s in ss]
    members += [np.flatnonzero(style == s) for s in store_styles]
    length = np.array([m.size for m in members])
    if (length == 0).any():
        raise AssertionError("empty product pool")  # catalogue construction bug
    items = np.concatenate(members)
    offset = np.concatenate([[0], np.cumsum(length)[:-1]])
    # runs of equal style inside each pool (pools never share a boundary run)
    pool_of = np.repeat(np.arange(length.size), length)
    run_key = pool_of * len(STYLES) + style[items]
    starts = np.flatnonzero(np.r_[True, run_key[1:] != run_key[:-1]])
    run_len = np.diff(np.r_[starts, items.size])
    pos_run = np.repeat(np.arange(starts.size), run_len)
    block_start = starts[pos_run] - offset[pool_of]
    block_len = run_len[pos_run]

    n_p = len(PERSONAS)
    base = np.zeros((n_p, 3), dtype=np.int64)
    slot_cat = np.zeros((n_p, 3), dtype=np.int64)
    for p, name in enumerate(WEB_PERSONAS):
        cats = [CATEGORIES.index(c) for c in name.split("_")]
        slot_cat[p], base[p] = cats, [2 * c for c in cats]
    for j, slots in enumerate(STORE_PERSONAS):
        p = len(WEB_PERSONAS) + j
        slot_cat[p] = [CATEGORIES.index(s.split(":")[0]) for s in slots]
        base[p] = [2 * len(WEB_CATEGORIES) + store_styles.index(STYLES.index(s)) for s in slots]
    weights = SLOT_WEIGHTS * share[slot_cat]
    weights /= weights.sum(axis=1, keepdims=True)
    gender_step = (np.arange(n_p) < len(WEB_PERSONAS)).astype(np.int64)
    return _Pools(items, offset, length, block_start, block_len, base, gender_step, weights)


def event_counts(n_rows: int) -> tuple[int, tuple[int, ...]]:
    """Views and funnel counts (AddToCart..Purchase) summing exactly to `n_rows`.

    Funnel counts are the quotas (floor of share x Views); when no View count hits
    `n_rows` exactly, the 1-3 rows left over become extra Views.
    """
    total_share = 1 + sum(FUNNEL_SHARES)
    views = int(n_rows / total_share) + 2
    while views > 0 and views + sum(int(s * views) for s in FUNNEL_SHARES) > n_rows:
        views -= 1
    funnel = tuple(int(s * views) for s in FUNNEL_SHARES)
    return n_rows - sum(funnel), funnel


def _views_per_pick(product: np.ndarray, n_items: int) -> np.ndarray:
    """1-4 Views per pick: +1 each when, counting earlier picks only, the product has fewer
    than half the picks of the top product, fewer than the average, and the fewest."""
    n = product.size
    order = np.argsort(product, kind="stable")
    sorted_prod = product[order]
    group_start = np.flatnonzero(np.r_[True, sorted_prod[1:] != sorted_prod[:-1]])
    sizes = np.diff(np.r_[group_start, n])
    rank = np.arange(n) - np.repeat(group_start, sizes)
    before = np.empty(n, dtype=np.int64)  # picks of the same product before this one
    before[order] = rank
    top = np.r_[0, np.maximum.accumulate(before + 1)[:-1]]
    average = np.arange(n) / n_items
    # fewest: all products have >= k picks from pick T[k-1] on; T[k] = max over products of
    # the time of their k-th pick, known for k below the final minimum count
    counts = np.bincount(product, minlength=n_items)
    k_max = int(counts.min())
    reach = np.full(k_max, -1, dtype=np.int64)
    if k_max:
        mask = rank < k_max
        np.maximum.at(reach, rank[mask], order[mask])
    fewest = np.searchsorted(reach, np.arange(n), side="left")
    return 1 + (2 * before < top) + (before < average) + (before <= fewest)


def simulate(
    catalogue: pd.DataFrame,
    users: pd.DataFrame,
    n_rows: int,
    start: int,
    days: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The event log: exactly `n_rows` rows sorted by TIMESTAMP (see the module docstring).

    ITEM_ID, USER_ID, EVENT_TYPE and DISCOUNT are categoricals over the catalogue ids, user
    ids, `EVENT_TYPES` and No/Yes; TIMESTAMP is int64 epoch seconds.
    """
    pools = _pools(catalogue)
    n_items = len(catalogue)
    persona = users["PERSONA"].cat.codes.to_numpy().astype(np.int64)
    ugender = users["GENDER"].cat.codes.to_numpy().astype(np.int64)
    n_views, funnel = event_counts(n_rows)

    n_picks = n_views // 2 + 16
    while True:
        product, user = _picks(pools, persona, ugender, n_picks, rng)
        views = _views_per_pick(product, n_items)
        done = np.cumsum(views)
        if done[-1] >= n_views:
            break
        n_picks = int(n_picks * 1.5) + 16  # rarely: an unusual shop with few views per pick
    last = int(np.searchsorted(done, n_views))  # the pick that reaches n_views
    views = views[: last + 1]
    views[-1] -= done[last] - n_views
    product, user = product[: last + 1], user[: last + 1]
    pick = np.repeat(np.arange(last + 1), views)

    # clock: advances on Views only, by integer milliseconds so runs are bit-identical
    mean_ms = ACTIVE_SHARE * days * 86_400_000 / n_views
    steps = rng.integers(0, int(2 * mean_ms) + 1, n_views)
    # a tiny log has few, wide steps: keep it inside the window all the same
    view_ts = np.minimum(start + np.cumsum(steps) // 1000, start + days * 86_400 - 3600)

    price = catalogue["PRICE"].to_numpy()
    cheap = price[product] < price.mean()
    p_yes = np.array([[0.2, 0.2], [0.5, 0.5], [0.2, 0.5]])  # [discount persona, cheap]
    dpersona = users["DISCOUNT_PERSONA"].cat.codes.to_numpy().astype(np.int64)
    pick_p = p_yes[dpersona[user], cheap.astype(np.int64)]
    view_disc = rng.random(n_views) < pick_p[pick]

    # funnel: random Views, nested (the first ViewCart-quota AddToCarts also ViewCart, ...)
    chosen = rng.choice(n_views, funnel[0], replace=False)
    lo, hi = FUNNEL_STEP_SECONDS
    delay = np.cumsum(rng.integers(lo, hi + 1, (chosen.size, len(funnel))), axis=1)
    src = np.concatenate([np.arange(n_views)] + [chosen[:k] for k in funnel])
    etype = np.repeat(np.arange(len(EVENT_TYPES), dtype=np.int8), [n_views, *funnel])
    ts = np.concatenate(
        [view_ts] + [view_ts[chosen[:k]] + delay[:k, j] for j, k in enumerate(funnel)]
    )
    order = np.lexsort((etype, src, ts))
    src, etype, ts = src[order], etype[order], ts[order]
    row_pick = pick[src]
    return pd.DataFrame(
        {
            "ITEM_ID": pd.Categorical.from_codes(product[row_pick], catalogue["ITEM_ID"]),
            "USER_ID": pd.Categorical.from_codes(user[row_pick], users["USER_ID"]),
            "EVENT_TYPE": pd.Categorical.from_codes(etype, EVENT_TYPES),
            "TIMESTAMP": ts.astype(np.int64),
            "DISCOUNT": pd.Categorical.from_codes(view_disc[src].astype(np.int8), ["No", "Yes"]),
        }
    )


def _picks(
    pools: _Pools,
    persona: np.ndarray,
    gender: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` picks in time order: (product, user) index arrays."""
    user = rng.integers(0, persona.size, n)
    p = persona[user]
    cum = np.cumsum(pools.weights, axis=1)[p]
    u = rng.random(n)
    slot = (u >= cum[:, 0]).astype(np.int64) + (u >= cum[:, 1])
    pool = pools.base[p, slot] + pools.gender_step[p] * gender[user]
    anchor = (rng.random(n) * pools.length[pool]).astype(np.int64)
    size = rng.integers(CLIQUE_SIZES[0], CLIQUE_SIZES[1] + 1, n)
    draw = rng.random(n)

    # the first pick of each (user, slot) anchors the clique of all later ones
    key = user * 3 + slot
    order = np.argsort(key, kind="stable")
    ks = key[order]
    first = np.r_[True, ks[1:] != ks[:-1]]
    head = order[np.maximum.accumulate(np.where(first, np.arange(n), 0))]
    a, pl = anchor[head], pool[head]
    at = pools.offset[pl] + a
    bstart, blen = pools.block_start[at], pools.block_len[at]
    width = np.minimum(size[head], blen)
    member = bstart + (a - bstart + (draw[order] * width).astype(np.int64)) % blen
    rel = np.empty(n, dtype=np.int64)
    rel[order] = np.where(first, a, member)
    return pools.items[pools.offset[pool] + rel], user


# --------------------------------------------------------------------------- outputs


def build_shop(settings: ShopParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(catalogue, users, events) of the synthetic shop; independent streams per table, so
    e.g. changing `interactions` leaves the catalogue and users unchanged."""
    rng_items, rng_users, rng_events = (
        np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(3)
    )
    catalogue = build_catalogue(rng_items)
    users = build_users(rng_users, settings.users, settings.store_user_share)
    status(f"generate: simulating {settings.interactions:,} events...")
    events = simulate(
        catalogue, users, settings.interactions, settings.start, settings.days, rng_events
    )
    return catalogue, users, events


def write_outputs(catalogue: pd.DataFrame, users: pd.DataFrame, events: pd.DataFrame) -> None:
    """Write the three tables; none replaces its previous version unless all were written."""
    items = catalogue.assign(PRICE=[f"{p:.2f}" for p in catalogue["PRICE"].tolist()])
    status(f"generate: writing {INTERACTIONS}, {ITEMS}, {USERS}...")
    with atomic_outputs():
        for frame, path in ((events, INTERACTIONS), (items, ITEMS), (users, USERS)):
            write_csv(pa.Table.from_pandas(frame, preserve_index=False), path)
