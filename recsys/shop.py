"""The synthetic shop: event log, items and users, imitating the reference retail shop.

This rebuilds the reference retail shop (the Retail Demo
Store data behind the article) from its published facts, in a few vectorised numpy passes
instead of a Python loop per event:

* Catalogue: 2,449 web products in 16 categories and 74 styles with the reference's exact
  counts per category and per style, plus the 16 convenience-store items in 4 categories and
  11 styles (2,465 items, 85 styles). 749 products carry a gender affinity, with the
  reference's F/M counts per category; 609 are promoted. Prices are lognormal per category,
  clipped to [1.10, 1858.99]. Ids are UUIDs drawn from the seed.
* Users: ids "1".."N", web users first, then `store_user_share` convenience-store users.
  Uniform gender, truncated-normal age (mean 32, sd 15, 18..100), a uniform discount
  persona, and a persona: web users one of 16 ordered category triples
  (`furniture_homedecor_housewares`), store users one of the reference's 9 `category:style`
  triples joined by `_` (`food service:pizza_cold dispensed:fountain-carbonated_salty
  snacks:nuts/seeds`).
* Picks: a user drawn uniformly with replacement; one of the persona's three slots with
  probability [0.6, 0.25, 0.15] x the slot category's catalogue share (renormalised); for a
  web user a product of that category whose gender affinity is empty or the user's. Each
  (category, gender) pool gets its own random affinity structure (`affinity_structure`):
  the first pick of a (user, category) fixes the clique of its later picks there, that
  product plus 4 at consecutive positions of a random cyclic order, so a clique crosses
  styles and M and F users of a category follow different cliques. A store user picks
  uniformly within the slot's style (1-3 items).
* Views: each pick writes 1-4 interaction sets (a View each) by the reference's balancing
  rule (`views_per_pick`): popular items (the store's) get 1-2, the long tail 3-4.
* Funnel: after every View each funnel type fires while its count is below int(share x
  Views so far), shares 8, 5, 2 and 1% (`funnel_views`): each type on its own rhythm, on the
  View's (user, product), a few seconds after it.
* DISCOUNT: Yes with probability 0.2 (discount_indifferent), 0.5 (all_discounts) or, for
  lower_priced_products, 0.5 below the catalogue's mean price and 0.2 above; funnel events
  inherit their View's value.
* Clock: starts `days` before `end_date` (00:00 UTC) and advances only on Views by a random
  step whose mean makes the log span 80% of the window (72 of 90 days, as the reference).

The row count is exactly `interactions`; rows are sorted by timestamp (ties in generation
order). At 100k users and 800k rows every figure of the reference's fidelity table is matched (event
mix, users active, items per user, co-occurrence spread, M/F clique overlap, funnel and
confidence shapes, held-out MAP of ALS, item-kNN and most popular): `recsys fidelity`
prints them, `tests/test_generate.py` checks what holds at 20k users.

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
# Funnel quotas as shares of the Views so far (AddToCart, ViewCart, StartCheckout, Purchase).
FUNNEL_SHARES = (0.08, 0.05, 0.02, 0.01)
FUNNEL_STEP_SECONDS = (1, 30)  # a funnel event lands this many seconds after the previous row
SLOT_WEIGHTS = np.array([0.6, 0.25, 0.15])
CLIQUE_WINDOW = 4  # a clique is its first product plus this many of a random cyclic order
BLOCK = 1 << 23  # elements per block where a step needs float temporaries
ACTIVE_SHARE = 0.8  # share of the `days` window the log spans (72 of 90 days)
PROMOTED_PRODUCTS = 609
PRICE_BOUNDS = (1.10, 1858.99)
PRICE_SIGMA = 0.65  # log-price spread within a category
AGE_MEAN, AGE_SD, AGE_BOUNDS = 32.0, 15.0, (18, 100)
DISCOUNT_PERSONAS = ["discount_indifferent", "all_discounts", "lower_priced_products"]
GENDERS = ["F", "M"]

# category -> (median price, {style: products}, (F, M) products with a gender affinity);
# the counts are the reference's.
WEB_CATEGORIES: dict[str, tuple[float, dict[str, int], tuple[int, int]]] = {
    "furniture": (196.0, {"chairs": 72, "dressers": 32, "sofas": 49, "tables": 92}, (0, 0)),
    "apparel": (54.0, {"jacket": 81, "scarf": 53, "shirt": 67, "socks": 30}, (115, 116)),
    "accessories": (
        50.0,
        {"backpack": 48, "bag": 21, "belt": 38, "glasses": 59, "handbag": 38, "watch": 24},
        (127, 80),
    ),
    "housewares": (46.0, {"bowls": 54, "consumable": 1, "kitchen": 160, "salon": 2}, (0, 0)),
    "seasonal": (39.0, {"christmas": 92, "easter": 42, "halloween": 46, "valentine": 37}, (0, 0)),
    "groceries": (
        13.0,
        {"bakery": 54, "dairy": 21, "fruits": 27, "meat": 31, "seafood": 21, "vegetables": 41},
        (0, 0),
    ),
    "homedecor": (
        86.0,
        {"bedroom": 1, "clock": 29, "cushion": 46, "decorative": 65, "lighting": 53},
        (1, 0),
    ),
    "footwear": (104.0, {"boot": 30, "formal": 79, "sandals": 31, "sneaker": 48}, (90, 98)),
    "instruments": (
        275.0,
        {"keys": 33, "microphone": 18, "percussion": 40, "strings": 61, "wind": 15},
        (0, 0),
    ),
    "floral": (
        60.0,
        {"arrangement": 36, "bouquet": 24, "centerpiece": 9, "plant": 42, "wreath": 16},
        (0, 0),
    ),
    "electronics": (
        196.0,
        {
            "cable": 12,
            "camera": 36,
            "computer": 6,
            "headphones": 16,
            "keyboard": 4,
            "speaker": 21,
            "television": 9,
        },  # fmt: skip
        (1, 0),
    ),
    "outdoors": (126.0, {"camping": 25, "fishing": 37, "kayaking": 12, "pet": 18}, (0, 0)),
    "jewelry": (150.0, {"bracelet": 37, "earrings": 23, "necklace": 30}, (71, 19)),
    "beauty": (41.0, {"bathing": 19, "grooming": 41}, (26, 5)),
    "tools": (
        95.0,
        {
            "axe": 2,
            "drill": 6,
            "hammer": 7,
            "knife": 3,
            "plier": 7,
            "saw": 13,
            "screwdriver": 3,
            "set": 8,
            "wrench": 10,
        },  # fmt: skip
        (0, 0),
    ),
    "books": (32.0, {"cooking": 15, "travel": 20}, (0, 0)),
}
# Convenience store: category -> style -> (item name, price); 16 items in 11 styles.
STORE_ITEMS: dict[str, dict[str, tuple[tuple[str, float], ...]]] = {
    "cold dispensed": {
        "fountain-carbonated": (("Cola fountain drink", 1.69),),
        "fountain-non-carbonated": (("Iced tea fountain drink", 1.59), ("Lemonade", 1.79)),
    },
    "food service": {
        "nachos": (("Nachos with cheese", 3.49),),
        "other cuisine": (("Chicken burrito", 4.99),),
        "pizza": (("Pepperoni pizza slice", 2.99),),
        "sandwiches/wraps": (("Turkey club wrap", 4.49),),
        "seafood": (("Fish and chips", 5.99),),
        "soup and salad": (
            ("Chicken noodle soup", 3.29),
            ("Garden salad", 3.99),
            ("Tomato soup", 2.99),
        ),  # fmt: skip
    },
    "hot dispensed": {"hot chocolate": (("Hot chocolate", 1.10),)},
    "salty snacks": {
        "nuts/seeds": (("Salted peanuts", 1.79), ("Sunflower seeds", 1.29), ("Trail mix", 2.49)),
        "potato chips": (("Potato chips", 1.99),),
    },
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
    ("food service:seafood", "cold dispensed:fountain-non-carbonated", "salty snacks:nuts/seeds"),
    ("food service:pizza", "cold dispensed:fountain-carbonated", "salty snacks:nuts/seeds"),
    (
        "food service:other cuisine",
        "food service:sandwiches/wraps",
        "cold dispensed:fountain-non-carbonated",
    ),
    (
        "food service:other cuisine",
        "food service:soup and salad",
        "cold dispensed:fountain-non-carbonated",
    ),
    ("food service:pizza", "cold dispensed:fountain-carbonated", "salty snacks:potato chips"),
    ("food service:nachos", "cold dispensed:fountain-carbonated", "salty snacks:nuts/seeds"),
    ("food service:nachos", "hot dispensed:hot chocolate", "salty snacks:potato chips"),
    (
        "food service:seafood",
        "food service:soup and salad",
        "cold dispensed:fountain-non-carbonated",
    ),
    (
        "food service:pizza",
        "cold dispensed:fountain-carbonated",
        "cold dispensed:fountain-carbonated",
    ),
]
CATEGORIES = list(WEB_CATEGORIES) + list(STORE_ITEMS)
STYLES = [f"{c}:{s}" for c, (_, styles, _) in WEB_CATEGORIES.items() for s in styles] + [
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
    and GENDER are categoricals over `CATEGORIES` and `GENDERS` (NaN = no affinity). Style
    sizes, gender-affinity counts per category and the promoted count are the reference's;
    which products of a category carry an affinity is drawn at random.
    """
    style_index = {s: i for i, s in enumerate(STYLES)}
    cat_codes, style_codes, medians, names, genders = [], [], [], [], []
    for c, (median, styles, (n_female, n_male)) in WEB_CATEGORIES.items():
        sizes = list(styles.values())
        count = sum(sizes)
        style_codes.append(np.repeat([style_index[f"{c}:{s}"] for s in styles], sizes))
        cat_codes.append(np.full(count, CATEGORIES.index(c)))
        medians.append(np.full(count, median))
        names.append(np.repeat(np.array(list(styles), dtype=object), sizes))
        affinity = np.repeat(np.array([0, 1, -1], dtype=np.int8), [n_female, n_male, 0])
        gender = np.full(count, -1, dtype=np.int8)
        gender[rng.permutation(count)[: affinity.size]] = affinity
        genders.append(gender)
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
    gender = np.concatenate([*genders, np.full(store_cat.size, -1, dtype=np.int8)])
    n = category.size

    promoted = np.zeros(n, dtype=bool)
    promoted[rng.choice(n, PROMOTED_PRODUCTS, replace=False)] = True
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
class Pools:
    """Products a pick may land on, per (web category, gender) or store style.

    `items[offset[k] : offset[k] + length[k]]` is pool k. Web pools carry an affinity
    structure: `clique[offset[k] + s]` lists, as positions in pool k, the products a user
    whose first pick there was position s picks from later: column 0 is s itself, columns
    1.. its window of the pool's random cyclic order; `clique_size` is 4 when s lies inside
    its own window (then only the window counts), else 5. Store pools have none (size 0):
    every pick is uniform over the style. `base[persona, slot]` + `gender_step[persona]` x
    gender is the pool of a persona's slot; `weights[persona]` are its slot probabilities.
    """

    items: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    clique: np.ndarray
    clique_size: np.ndarray
    base: np.ndarray
    gender_step: np.ndarray
    weights: np.ndarray


def affinity_structure(n: int, rng: np.random.Generator) -> np.ndarray:
    """Clique rows of one pool of `n` products: n x (1 + CLIQUE_WINDOW) pool positions.

    The reference builds a band of CLIQUE_WINDOW rolled identity matrices, shuffles its rows,
    transposes, shuffles the rows again and adds the identity. Row s then marks s plus
    CLIQUE_WINDOW products at consecutive positions of a random cyclic order (the inverse of
    the first shuffle), and the window row s gets is a random one, each window going to
    exactly one row (the second shuffle). This draws the same two permutations directly.
    """
    if n <= CLIQUE_WINDOW:
        raise ValueError(f"a pool of {n} products is too small for a clique")
    order = rng.permutation(n)
    window_start = rng.permutation(n)
    window = order[(window_start[:, None] + np.arange(CLIQUE_WINDOW)) % n]
    return np.column_stack([np.arange(n), window])


def _pools(catalogue: pd.DataFrame, rng: np.random.Generator) -> Pools:
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

    # one independent structure per web pool, even where the M and F pools hold the same
    # products; store pools are single styles of 1-3 items, picked uniformly
    n_web_pools = 2 * len(WEB_CATEGORIES)
    clique = np.zeros((items.size, 1 + CLIQUE_WINDOW), dtype=np.int64)
    clique_size = np.zeros(items.size, dtype=np.int64)
    for k in range(n_web_pools):
        rows = affinity_structure(int(length[k]), rng)
        at = slice(offset[k], offset[k] + length[k])
        clique[at] = rows
        clique_size[at] = np.where((rows[:, 1:] == rows[:, :1]).any(axis=1), 4, 5)

    n_p = len(PERSONAS)
    base = np.zeros((n_p, 3), dtype=np.int64)
    slot_cat = np.zeros((n_p, 3), dtype=np.int64)
    for p, name in enumerate(WEB_PERSONAS):
        cats = [CATEGORIES.index(c) for c in name.split("_")]
        slot_cat[p], base[p] = cats, [2 * c for c in cats]
    for j, slots in enumerate(STORE_PERSONAS):
        p = len(WEB_PERSONAS) + j
        slot_cat[p] = [CATEGORIES.index(s.split(":")[0]) for s in slots]
        base[p] = [n_web_pools + store_styles.index(STYLES.index(s)) for s in slots]
    weights = SLOT_WEIGHTS * share[slot_cat]
    weights /= weights.sum(axis=1, keepdims=True)
    gender_step = (np.arange(n_p) < len(WEB_PERSONAS)).astype(np.int64)
    return Pools(items, offset, length, clique, clique_size, base, gender_step, weights)


def event_counts(n_rows: int) -> tuple[int, tuple[int, ...]]:
    """Views and funnel counts (AddToCart..Purchase) summing exactly to `n_rows`.

    The funnel counts are the quotas after the last View that keeps the total within
    `n_rows`; the 1-3 rows a total can fall short by become extra Views at the end.
    """
    total_share = 1 + sum(FUNNEL_SHARES)
    views = int(n_rows / total_share) + 2
    while views > 0 and views + sum(int(s * views) for s in FUNNEL_SHARES) > n_rows:
        views -= 1
    funnel = tuple(int(s * views) for s in FUNNEL_SHARES)
    return n_rows - sum(funnel), funnel


def funnel_views(n_views: int) -> list[np.ndarray]:
    """For each funnel type, the 0-based Views it follows.

    After every View the reference writes a funnel event of a type while that type's count
    is below int(share x Views so far), each type checked on its own: with shares below 1
    that is exactly the Views where int(share x v) steps up, a fixed rhythm per type.
    """
    out = []
    for share in FUNNEL_SHARES:
        parts, level = [], 0.0
        for lo in range(0, n_views, BLOCK):  # blocks: 8 bytes per View, not 40
            levels = np.floor(share * np.arange(lo + 1, min(lo + BLOCK, n_views) + 1.0))
            parts.append(lo + np.flatnonzero(np.diff(levels, prepend=level) > 0))
            level = levels[-1]
        out.append(np.concatenate(parts) if parts else np.empty(0, dtype=np.int64))
    return out


def views_per_pick(product: np.ndarray) -> np.ndarray:
    """Interaction sets (Views) per pick, the reference's balancing rule, counted in picks.

    1, plus 1 for each of: the product's count x 2 < the largest count; its count < the
    average count over the products picked so far; its count equals the smallest count
    over the products picked so far. Counts include the current pick.

    The smallest count: after pick t it is >= c exactly when every product picked by t has
    had its c-th pick by t. Ordering products by their first pick, that is a running max, per
    c, of the times of the c-th picks over a prefix of products, so one sort answers all.
    """
    n = product.size
    if n >= 2**31 - 1:
        raise ValueError(f"{n:,} picks; expected fewer than 2**31")
    views = np.ones(n, dtype=np.int8)
    if n == 0:
        return views
    # int32 per pick where values fit, and every temporary freed as soon as it is used:
    # at 100x (30M picks) this step is the generate stage's peak
    # product ids fit 16 bits (2,465 products): numpy's stable sort is then a linear radix
    # sort, not an n log n one
    small = product.astype(np.int16) if product.max() < 2**15 else product
    order = np.argsort(small, kind="stable")
    del small
    sorted_prod = product[order]
    group_start = np.flatnonzero(np.r_[True, sorted_prod[1:] != sorted_prod[:-1]])
    del sorted_prod
    sizes = np.diff(np.r_[group_start, n])
    count = np.empty(n, dtype=np.int32)
    count[order] = np.arange(1, n + 1, dtype=np.int32) - np.repeat(
        group_start.astype(np.int32), sizes
    )
    del order, group_start, sizes
    first = count == 1
    distinct = np.cumsum(first, dtype=np.int32)  # products picked so far, current included
    views += 2 * count < np.maximum.accumulate(count)
    views += count.astype(np.int64) * distinct < np.arange(1, n + 1)  # below the average

    entry = np.empty(int(product.max()) + 1, dtype=np.int32)
    entry[product[first]] = np.arange(distinct[-1], dtype=np.int32)
    del first
    e = entry[product]  # rank of this pick's product by first pick
    by_count = np.lexsort((e, count)).astype(np.int32)  # by count, products in entry order
    k_sorted = count[by_count]
    # first position of each count in k_sorted: a histogram, linear where a searchsorted
    # per pick would be n log n of cache misses
    first_at = np.zeros(int(k_sorted[-1]) + 2, dtype=np.int64)
    np.cumsum(np.bincount(k_sorted), out=first_at[1:])
    in_prefix = e[by_count] == np.arange(n) - first_at[k_sorted]
    del e  # in_prefix: products 0..j all reached this count
    wide = k_sorted.astype(np.int64) * n
    reached = np.maximum.accumulate(wide + by_count)
    reached -= wide
    del wide, by_count
    idx = first_at[count].astype(np.int32)
    idx += distinct - 1
    del distinct
    ok = idx < first_at[count + 1]
    del k_sorted, count
    safe = np.minimum(idx, n - 1)
    del idx
    views += ok & in_prefix[safe] & (reached[safe] <= np.arange(n))
    return views


def simulate(
    catalogue: pd.DataFrame,
    users: pd.DataFrame,
    n_rows: int,
    start: int,
    days: int,
    rng_structure: np.random.Generator,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The event log: exactly `n_rows` rows sorted by TIMESTAMP (see the module docstring).

    ITEM_ID, USER_ID, EVENT_TYPE and DISCOUNT are categoricals over the catalogue ids, user
    ids, `EVENT_TYPES` and No/Yes; TIMESTAMP is int64 epoch seconds.
    """
    pools = _pools(catalogue, rng_structure)
    persona = users["PERSONA"].cat.codes.to_numpy().astype(np.int8)
    ugender = users["GENDER"].cat.codes.to_numpy().astype(np.int8)
    n_views, funnel = event_counts(n_rows)

    product, user, views = _pick_run(pools, persona, ugender, n_views, rng)
    last = product.size - 1
    pick = np.repeat(np.arange(last + 1, dtype=np.int32), views)
    del views

    # clock: advances on Views only, by integer milliseconds so runs are bit-identical
    mean_ms = ACTIVE_SHARE * days * 86_400_000 / n_views
    view_ts = np.cumsum(rng.integers(0, int(2 * mean_ms) + 1, n_views))
    view_ts //= 1000
    view_ts += start
    # a tiny log has few, wide steps: keep it inside the window all the same
    np.minimum(view_ts, start + days * 86_400 - 3600, out=view_ts)

    price = catalogue["PRICE"].to_numpy()
    cheap = price[product] < price.mean()
    p_yes = np.array([[0.2, 0.2], [0.5, 0.5], [0.2, 0.5]])  # [discount persona, cheap]
    dpersona = users["DISCOUNT_PERSONA"].cat.codes.to_numpy().astype(np.int8)
    pick_p = p_yes[dpersona[user], cheap.astype(np.int64)]
    view_disc = rng.random(n_views) < pick_p[pick]
    del pick_p, cheap

    # funnel: each type on its own rhythm after the Views of the main run (extra Views that
    # only round the row count have none), a few seconds after its View, in funnel order.
    # Rows ordered by (View, type): the key View x 8 + type is unique, so a sort orders them.
    after = [a[:k] for a, k in zip(funnel_views(n_views), funnel, strict=True)]
    key = np.concatenate(
        [np.arange(n_views, dtype=np.int64) * 8]
        + [a.astype(np.int64) * 8 + t for t, a in enumerate(after, start=1)]
    )
    del after
    key.sort(kind="stable")  # five sorted runs: a merge, linear (the keys are unique)
    src, etype = (key >> 3).astype(np.int32), (key & 7).astype(np.int8)
    del key
    lo, hi = FUNNEL_STEP_SECONDS
    ts = rng.integers(lo, hi + 1, src.size)
    ts[etype == 0] = 0
    np.cumsum(ts, out=ts)  # seconds since the first row ...
    ts -= np.maximum.accumulate(np.where(etype == 0, ts, 0))  # ... since the row's View
    ts += view_ts[src]
    del view_ts
    order = np.argsort(ts, kind="stable")
    ts, src, etype = ts[order], src[order], etype[order]
    del order
    disc = view_disc[src].astype(np.int8)
    del view_disc
    row_pick = pick[src]
    del src, pick
    return pd.DataFrame(
        {
            "ITEM_ID": pd.Categorical.from_codes(product[row_pick], catalogue["ITEM_ID"]),
            "USER_ID": pd.Categorical.from_codes(user[row_pick], users["USER_ID"]),
            "EVENT_TYPE": pd.Categorical.from_codes(etype, EVENT_TYPES),
            "TIMESTAMP": ts,
            "DISCOUNT": pd.Categorical.from_codes(disc, ["No", "Yes"]),
        }
    )


def _pick_run(
    pools: Pools, persona: np.ndarray, ugender: np.ndarray, n_views: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(product, user, views) of the picks that write exactly `n_views` Views, in time order."""
    n_picks = n_views // 2 + 16
    while True:
        product, user = _picks(pools, persona, ugender, n_picks, rng)
        views = views_per_pick(product)
        done = np.cumsum(views)
        if done[-1] >= n_views:
            break
        n_picks = int(n_picks * 1.5) + 16  # rarely: an unusual shop with few views per pick
    last = int(np.searchsorted(done, n_views))  # the pick that reaches n_views
    views = views[: last + 1]
    views[-1] -= done[last] - n_views
    return product[: last + 1], user[: last + 1], views


def _picks(
    pools: Pools,
    persona: np.ndarray,
    gender: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` picks in time order: (product, user) index arrays."""
    if n >= 2**31 - 1 or persona.size >= 2**31 - 1:
        raise ValueError(f"{n:,} picks of {persona.size:,} users; expected fewer than 2**31")
    # int32 per pick where values fit (the draws stay as numpy makes them, so the streams
    # do not change), temporaries freed as soon as they are used
    user = rng.integers(0, persona.size, n).astype(np.int32)
    p = persona[user]
    cum = np.cumsum(pools.weights, axis=1)
    u = rng.random(n)
    slot = (u >= cum[p, 0]).astype(np.int8)
    slot += u >= cum[p, 1]
    del u
    pool = pools.base[p, slot].astype(np.int32)
    pool += pools.gender_step[p] * gender[user]
    del p
    uniform = (rng.random(n) * pools.length[pool]).astype(np.int32)
    draw = rng.random(n)

    # the first pick of each (user, category) fixes the clique of all later ones; a web
    # persona's slots are distinct categories, so (user, slot) is (user, category)
    key = user.astype(np.int64) * 3 + slot
    del slot
    order = np.argsort(key, kind="stable").astype(np.int32)
    key = key[order]
    first = np.r_[True, key[1:] != key[:-1]]
    del key
    head = order[np.maximum.accumulate(np.where(first, np.arange(n, dtype=np.int32), 0))]
    at = pools.offset[pool[head]] + uniform[head]  # the first pick's clique row
    del head
    size = pools.clique_size[at]
    column = (draw[order] * size).astype(np.int32) + (size == CLIQUE_WINDOW)
    del draw
    member = pools.clique[at, np.minimum(column, CLIQUE_WINDOW)]
    del at, column
    rel = np.empty(n, dtype=np.int32)
    rel[order] = np.where(first | (size == 0), uniform[order], member)
    del order, first, size, member, uniform
    rel += pools.offset[pool]
    return pools.items[rel], user


# --------------------------------------------------------------------------- outputs


def build_shop(settings: ShopParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(catalogue, users, events) of the synthetic shop; independent random streams for the
    catalogue, the users, the affinity structure and the events, so e.g. changing
    `interactions` leaves the catalogue, the users and every clique unchanged."""
    rng_items, rng_users, rng_structure, rng_events = (
        np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(4)
    )
    catalogue = build_catalogue(rng_items)
    users = build_users(rng_users, settings.users, settings.store_user_share)
    status(f"generate: simulating {settings.interactions:,} events...")
    events = simulate(
        catalogue,
        users,
        settings.interactions,
        settings.start,
        settings.days,
        rng_structure,
        rng_events,
    )
    return catalogue, users, events


@dataclass(frozen=True)
class ShopState:
    """What the generator fixed for one seed, beyond the tables: the oracle's knowledge.

    `pools` holds every (category, gender) pool's affinity structure and every persona's
    slot pools and weights; `persona` and `gender` are each user's codes (into `PERSONAS`,
    `GENDERS`); `n_picks` is the number of picks the event log was drawn from. Item and user
    indices are rows of the catalogue and users tables `build_shop` returns.
    """

    pools: Pools
    persona: np.ndarray
    gender: np.ndarray
    n_picks: int


def shop_state(settings: ShopParams) -> ShopState:
    """Replay `build_shop`'s random streams up to the picks and keep the generator's state.

    The same seeds in the same order as `build_shop`, so the state is the one behind its
    tables; the picks themselves are dropped (only their count is kept).
    """
    rng_items, rng_users, rng_structure, rng_events = (
        np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(4)
    )
    catalogue = build_catalogue(rng_items)
    users = build_users(rng_users, settings.users, settings.store_user_share)
    pools = _pools(catalogue, rng_structure)
    persona = users["PERSONA"].cat.codes.to_numpy().astype(np.int8)
    gender = users["GENDER"].cat.codes.to_numpy().astype(np.int8)
    n_views, _ = event_counts(settings.interactions)
    product, _, _ = _pick_run(pools, persona, gender, n_views, rng_events)
    return ShopState(pools, persona, gender, int(product.size))


def write_outputs(catalogue: pd.DataFrame, users: pd.DataFrame, events: pd.DataFrame) -> None:
    """Write the three tables; none replaces its previous version unless all were written."""
    items = catalogue.assign(PRICE=[f"{p:.2f}" for p in catalogue["PRICE"].tolist()])
    status(f"generate: writing {INTERACTIONS}, {ITEMS}, {USERS}...")
    with atomic_outputs():
        for frame, path in ((events, INTERACTIONS), (items, ITEMS), (users, USERS)):
            write_csv(pa.Table.from_pandas(frame, preserve_index=False), path)
