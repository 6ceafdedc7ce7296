"""Two-stage reranking (`model.type: rerank`): candidate generators, then LightGBM LambdaRank.

Stage one: a configurable list of generators (families of this package, plus
`category_popular`: the items most used in the categories the user has used, and
`cooccurrence`: for each of the user's items, the share of its users who also used the
candidate, summed over the user's items of the candidate's category) each propose
their top `candidates` items for a user; the union is the user's candidate list. Stage two:
a LightGBM `lambdarank` model orders the candidates from features of each (user, item) pair:
every generator's score for the item (not only the generators that proposed it), its rank
in their lists and its gap to their best score, the item's popularity, gender pool and
price, how the item matches the user's history (items of its category and style, of its
gender, price relative to the user's, history size) and, where the training pairs' first
event times are given, what followed the user's first item in the item's category among the
other users whose first item there was the same (the lead item: on our shop, the first pick
in a category fixes the clique the later picks come from). Item metadata and the order of a
user's items are what no single family uses; the ranker is where they enter.

Leakage: the ranker's labels come from a validation split carved out of the training pairs
(`validation_fraction`, seeded): the generators are fitted on the rest (the inner train),
the ranker learns which of their candidates are the validation pairs, and the generators are
then refitted on the whole train for scoring. `fit` never sees the test pairs, nor their
times: `first_seen` holds the training pairs' only.

Determinism: the carve and the ranker's user sample are seeded, LightGBM runs with
`deterministic` and `force_col_wise` (each feature's histogram is summed by one thread, so
the thread count does not change the trees), and the thread count line is dropped from the
saved text model. The file holds every generator's arrays (`<generator>__<array>`), the
item features and the LightGBM text model as bytes: no pickle. The serving copy leaves out
the factor generators' user factors; sessions are scored from the session's items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.families.als import AlsModel
from recsys.families.base import (
    Family,
    Progress,
    batches,
    binary,
    dense_scores,
    require,
    top_k_dense,
)
from recsys.families.bpr import BprModel
from recsys.families.ease import EaseModel
from recsys.families.factors import FactorFamily
from recsys.families.itemknn import ItemKnnModel
from recsys.families.lmf import LmfModel
from recsys.families.popular import PopularModel
from recsys.families.rp3beta import Rp3betaModel
from recsys.params import Section

# Families that can generate candidates (Spark's ALS needs a cluster: not here).
FAMILY_GENERATORS: dict[str, type[Family]] = {
    cls.type: cls
    for cls in (EaseModel, Rp3betaModel, ItemKnnModel, AlsModel, BprModel, LmfModel, PopularModel)
}
CATEGORY_POPULAR = "category_popular"
COOCCURRENCE = "cooccurrence"
# built from the model's own arrays (no params, nothing fitted apart)
OWN_GENERATORS = (CATEGORY_POPULAR, COOCCURRENCE)
GENERATORS = (*FAMILY_GENERATORS, *OWN_GENERATORS)
SEP = "__"  # generator name / its array name in the model file
# Per-pair features besides each generator's score, rank and gap (see `_features`).
PAIR_FEATURES = (
    "proposed_by", "item_users", "item_gender", "item_log_price", "history", "categories",
    "in_category", "category_share", "in_style", "same_gender", "other_gender",
    "price_vs_user", "price_vs_category",
    "linked", "follows_max", "follows_sum", "leads_max", "follows_max_category",
    "follows_sum_category", "category_follows", "linked_category", "user_gender",
    "follows_gender_sum_category", "follows_gender_max",
    "lead_follows", "lead_follows_gender", "lead_users",
    "leads_to_max", "leads_to_sum", "leads_to_max_gender", "leads_to_sum_gender",
)  # fmt: skip
GENDERS = ("F", "M")  # item GENDER values with a pool of their own; anything else is none


@dataclass(frozen=True)
class RerankParams:
    """`rerank:` params: the generators and their knobs, N, the carve and the ranker's."""

    generators: tuple[str, ...]
    candidates: int
    validation_fraction: float
    carves: int
    ranker_users: int
    trees: int
    learning_rate: float
    leaves: int
    min_child_samples: int
    seed: int
    # generator -> its parsed params section (families only), e.g. {"ease": EaseParams(...)}
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_section(cls, s: Section) -> RerankParams:
        raw = s.choices("generators", list(GENERATORS))
        settings: dict[str, Any] = {}
        for name, family in FAMILY_GENERATORS.items():
            values = s.raw(name, None)
            if values is None:
                if name in raw and not family.OPTIONAL_SECTION:
                    raise StageError(
                        f"params.yaml: missing rerank.{name} (the {name} generator's params, "
                        f"as in the {name}: section)"
                    )
                values = {}
            if not isinstance(values, dict):
                raise StageError(
                    f"params.yaml: rerank.{name} = {values!r}; expected a mapping of {name} params"
                )
            if name in raw or values:  # every given section is validated, used or not
                sub = Section(f"rerank.{name}", values)
                parsed = family.Params.from_section(sub)
                sub.check_unknown()
                if name in raw:
                    settings[name] = parsed
        return cls(
            generators=tuple(raw),
            candidates=s.int("candidates", min=1, max=1000),
            validation_fraction=s.float(
                "validation_fraction", min=0.0, max=1.0, min_exclusive=True, max_exclusive=True
            ),  # fmt: skip
            carves=s.int("carves", min=1, max=20),
            ranker_users=s.int("ranker_users", min=0, hint=" (0: every user)"),
            trees=s.int("trees", min=1, max=10_000),
            learning_rate=s.float("learning_rate", min=0.0, max=1.0, min_exclusive=True),
            leaves=s.int("leaves", min=2, max=4096),
            min_child_samples=s.int("min_child_samples", min=1),
            seed=s.int("seed", min=0, max=2**31 - 1),
            settings=settings,
        )


# ---------------------------------------------------------------------- item features


@dataclass(frozen=True)
class ItemFeatures:
    """Per item column: category, style and gender-pool codes (0 = unknown / none) and the
    log price (NaN where unknown). From the catalogue, so the same for every split."""

    category: np.ndarray
    style: np.ndarray
    gender: np.ndarray
    log_price: np.ndarray

    @classmethod
    def empty(cls, n_items: int) -> ItemFeatures:
        """No catalogue (users' own logs without one): every item alike."""
        zeros = np.zeros(n_items, dtype=np.int32)
        return cls(zeros, zeros, zeros, np.full(n_items, np.nan, dtype=np.float32))

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], n_items: int) -> ItemFeatures:
        """From catalogue columns aligned to the item columns (CATEGORY_L1, CATEGORY_L2,
        GENDER, PRICE; missing ones are unknown)."""
        import pandas as pd

        def codes(values: np.ndarray | None) -> np.ndarray:
            if values is None:
                return np.zeros(n_items, dtype=np.int32)
            values = np.asarray(values, dtype=str)
            found, labels = pd.factorize(values, sort=True)  # sorted: order-independent codes
            blank = np.asarray(labels == "", dtype=bool)
            shift = np.cumsum(~blank) * ~blank  # "" -> 0, the others 1..
            return shift[found].astype(np.int32)

        category = columns.get("CATEGORY_L1")
        style = columns.get("CATEGORY_L2")
        if category is not None and style is not None:  # a style is within its category
            style = np.char.add(np.char.add(np.asarray(category, dtype=str), ":"),
                                np.asarray(style, dtype=str))  # fmt: skip
            style[np.asarray(columns["CATEGORY_L2"], dtype=str) == ""] = ""
        gender = np.zeros(n_items, dtype=np.int32)
        if "GENDER" in columns:
            g = np.asarray(columns["GENDER"], dtype=str)
            for code, name in enumerate(GENDERS, start=1):
                gender[g == name] = code
        price = np.full(n_items, np.nan, dtype=np.float32)
        if "PRICE" in columns:
            numbers = pd.to_numeric(pd.Series(columns["PRICE"]), errors="coerce").to_numpy(
                np.float64
            )
            ok = np.isfinite(numbers) & (numbers >= 0)
            price[ok] = np.log1p(numbers[ok]).astype(np.float32)
        return cls(codes(category), codes(style), gender, price)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "item_category": self.category, "item_style": self.style,
            "item_gender": self.gender, "item_log_price": self.log_price,
        }  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], path: Path | str, n_items: int):
        keys = ("item_category", "item_style", "item_gender", "item_log_price")
        require(arrays, path, *keys)
        for key in keys:
            arr = arrays[key]
            if arr.shape != (n_items,):
                raise StageError(
                    f"{path}: {key} has shape {arr.shape}; expected ({n_items},); re-run dvc repro"
                )
        for key in keys[:3]:
            if arrays[key].dtype.kind not in "iu" or (arrays[key] < 0).any():
                raise StageError(f"{path}: {key} must hold codes >= 0; re-run dvc repro")
        if arrays["item_log_price"].dtype.kind != "f":
            raise StageError(f"{path}: item_log_price must hold floats; re-run dvc repro")
        return cls(*(np.asarray(arrays[k]) for k in keys[:3]),
                   arrays["item_log_price"].astype(np.float32))  # fmt: skip


ITEM_COLUMNS = ["CATEGORY_L1", "CATEGORY_L2", "GENDER", "PRICE"]


def load_item_features(items_path: Path | str, item_ids: np.ndarray) -> ItemFeatures:
    """The catalogue's features aligned to the item columns (`data/item_ids.csv` order)."""
    from recsys.ids import aligned, read_id_table

    frame = read_id_table(items_path, "ITEM_ID", ITEM_COLUMNS)
    columns = {c: aligned(frame, "ITEM_ID", c, item_ids) for c in ITEM_COLUMNS if c in frame}
    return ItemFeatures.from_columns(columns, len(item_ids))


def _one_hot(codes: np.ndarray) -> sp.csr_matrix:
    """items x codes indicator matrix."""
    n = codes.size
    return sp.csr_matrix(
        (np.ones(n, dtype=np.float32), (np.arange(n), codes)), shape=(n, int(codes.max()) + 1)
    )


# ---------------------------------------------------------------------- the model


class RerankModel(Family):
    """Generators (fitted families) + item features + a LightGBM LambdaRank text model."""

    type = "rerank"
    Params = RerankParams
    USER_ARRAYS = (
        *(
            f"{name}{SEP}user_factors"
            for name, cls in FAMILY_GENERATORS.items()
            if issubclass(cls, FactorFamily)
        ),
        "leads_indptr",
        "leads_indices",
    )
    # train passes `items=` (the catalogue's features) and `first_seen=` (the pairs' order)
    ITEM_FEATURES: ClassVar[bool] = True

    def __init__(
        self,
        generators: dict[str, Family | None],
        items: ItemFeatures,
        users_per_item: np.ndarray,
        cooccurrence: sp.csr_matrix,
        category_pairs: np.ndarray,
        candidates: int,
        rankers: list[str],
        threads: int,
        lead_cooccurrence: sp.csr_matrix | None = None,
        leads: sp.csr_matrix | None = None,
    ) -> None:
        self.generators = generators  # name -> fitted family (None: OWN_GENERATORS)
        self.items = items
        self.users_per_item = np.asarray(users_per_item, dtype=np.int64)
        # distinct users of both items, items x items (diagonal: of the item), sorted CSR
        self.cooccurrence = cooccurrence
        self._pair_keys = _keys(cooccurrence)
        n = cooccurrence.shape[1]
        # users whose lead (first item) in a category is the row item and who used the column
        # item (diagonal: whose lead it is), three stacked blocks as `cooccurrence`; empty
        # when the pairs' order was not given
        if lead_cooccurrence is None:
            lead_cooccurrence = sp.csr_matrix((3 * n, n), dtype=np.float32)
        self.lead_cooccurrence = lead_cooccurrence
        self._lead_keys = _keys(lead_cooccurrence)
        # each known user's lead pairs (users x items, 1 per used category); None when the
        # order was not given, and in the serving copy (sessions have no order)
        self.leads = leads
        # the cooccurrence generator: share of t's users who use j, t and j of one category
        both = sp.csr_matrix(cooccurrence[:n])
        t = np.repeat(np.arange(n), np.diff(both.indptr))
        keep = (items.category[t] == items.category[both.indices]) & (t != both.indices)
        own = np.maximum(both.diagonal(), 1).astype(np.float32)
        self._follows = sp.csr_matrix(
            (both.data[keep] / own[t[keep]], (t[keep], both.indices[keep])), shape=(n, n)
        )
        # distinct users of both categories, categories x categories
        self.category_pairs = np.asarray(category_pairs, dtype=np.float32)
        self.candidates = int(candidates)
        self.rankers = list(rankers)  # LightGBM text models, one per carve
        self.threads = threads
        self.losses: list[float] = []
        self._boosters: list[Any] = []
        self._category_hot = _one_hot(items.category)
        self._style_hot = _one_hot(items.style)
        self._gender_hot = _one_hot(items.gender)
        priced = np.isfinite(items.log_price)
        self._price = np.where(priced, items.log_price, 0).astype(np.float32)
        self._priced = priced.astype(np.float32)

    @staticmethod
    def iterations(params: RerankParams) -> int:
        return params.carves + 1  # a ranker per carve, then the final generators

    @property
    def n_items(self) -> int:
        return int(self.users_per_item.size)

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        train: sp.csr_matrix,
        params: RerankParams,
        threads: int,
        on_iteration: Progress | None = None,
        items: ItemFeatures | None = None,
        first_seen: sp.csr_matrix | None = None,
    ) -> RerankModel:
        """Generators on the inner train, the ranker on the carved-out validation pairs,
        then the generators again on all of `train` (see the module docstring).
        `first_seen`: each training pair's first event time (`train`'s sparsity; see
        `first_seen`), or None when the order is unknown (the lead features are missing)."""
        train = sp.csr_matrix(train, dtype=np.float32)
        train.sort_indices()
        if first_seen is not None:
            first_seen = sp.csr_matrix(first_seen)
            first_seen.sort_indices()
        n_items = train.shape[1]
        items = items if items is not None else ItemFeatures.empty(n_items)
        if items.category.shape != (n_items,):
            raise StageError(
                f"item features for {items.category.size} items; the training matrix has "
                f"{n_items}; re-run dvc repro"
            )
        if first_seen is not None and (
            first_seen.shape != train.shape
            or not np.array_equal(first_seen.indptr, train.indptr)
            or not np.array_equal(first_seen.indices, train.indices)
        ):
            raise StageError("first_seen must hold a time for each training pair, and only those")
        rankers = []
        for i in range(params.carves):  # each carve's ranker; their scores are averaged
            seed = params.seed + i
            inner, valid = carve(train, params.validation_fraction, seed)
            first = cls._fit_generators(inner, params, items, threads, [], first_seen)
            users = ranker_users(inner, valid, params.ranker_users, seed)
            rankers.append(first._fit_ranker(inner, valid, users, params, seed, threads))
            if on_iteration is not None:
                on_iteration(i + 1, None)
        model = cls._fit_generators(train, params, items, threads, rankers, first_seen)
        if on_iteration is not None:
            on_iteration(params.carves + 1, None)
        return model

    @classmethod
    def _fit_generators(
        cls, train: sp.csr_matrix, params: RerankParams, items: ItemFeatures, threads: int,
        rankers: list[str], first_seen: sp.csr_matrix | None,
    ) -> RerankModel:  # fmt: skip
        generators: dict[str, Family | None] = {}
        for name in params.generators:
            if name in OWN_GENERATORS:
                generators[name] = None
            else:
                generators[name] = FAMILY_GENERATORS[name].fit(
                    train, params.settings[name], threads
                )
        x = binary(train)
        counts = np.bincount(x.indices, minlength=train.shape[1])
        used = (x @ _one_hot(items.category)) > 0
        categories = np.asarray((used.T.astype(np.float32) @ used.astype(np.float32)).todense())
        pairs = cooccurrence(x, items.gender)
        leads = None if first_seen is None else lead_pairs(x, first_seen, items.category)
        return cls(
            generators, items, counts, pairs, categories, params.candidates, rankers, threads,
            lead_cooccurrence(x, leads, items), leads,
        )  # fmt: skip

    def _fit_ranker(
        self,
        inner: sp.csr_matrix,
        valid: sp.csr_matrix,
        users: np.ndarray,
        params: RerankParams,
        seed: int,
        threads: int,
    ) -> str:
        """LightGBM LambdaRank on the candidates of `users`, labelled by `valid`."""
        import lightgbm as lgb

        blocks, labels, groups = [], [], []
        for part in batches(users.size, self.n_items * len(self.generators)):
            chunk = users[part]
            rows, cols, feats = self._candidates(inner[chunk], chunk)
            label = np.asarray(valid[chunk[rows], cols]).ravel() != 0
            sizes = np.bincount(rows, minlength=chunk.size)
            positives = np.bincount(rows, weights=label, minlength=chunk.size)
            keep_user = positives > 0  # a list with no positive teaches LambdaRank nothing
            keep = keep_user[rows]
            blocks.append(feats[keep])
            labels.append(label[keep].astype(np.int32))
            groups.append(sizes[keep_user])
        features = np.concatenate(blocks) if blocks else np.zeros((0, len(self.feature_names)))
        label = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        group = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        if group.size == 0:
            raise StageError(
                "rerank: no validation pair is among the generators' candidates, so the ranker "
                "has nothing to learn; expected more data, a larger rerank.candidates or "
                "rerank.validation_fraction"
            )
        config = {
            "objective": "lambdarank",
            "learning_rate": params.learning_rate,
            "num_leaves": params.leaves,
            "min_child_samples": params.min_child_samples,
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": threads,
            "verbose": -1,
        }
        data = lgb.Dataset(
            features, label=label, group=group, feature_name=list(self.feature_names),
            params={"verbose": -1}, free_raw_data=True,
        )  # fmt: skip
        booster = lgb.train(config, data, num_boost_round=params.trees)
        return _portable(booster.model_to_string())

    # ------------------------------------------------------------------ candidates, features

    @property
    def feature_names(self) -> list[str]:
        per = [f"{g}_{what}" for g in self.generators for what in ("score", "rank", "gap")]
        return per + list(PAIR_FEATURES)

    def _scores(self, name: str, rows: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        """One generator's scores over all items for a block of users (rows: their items);
        -inf where it has none. Known users of a factor model use their fitted factors."""
        model = self.generators[name]
        if name == COOCCURRENCE:
            return dense_scores(binary(rows) @ self._follows, -np.inf)
        if model is None:  # category_popular: items of the user's categories, popular first
            counts = np.asarray(binary(rows) @ self._category_hot.toarray())
            scale = self.users_per_item.max(initial=0) + 1.0
            block = counts[:, self.items.category] + (self.users_per_item / scale)[None, :]
            return block.astype(np.float32)
        if isinstance(model, FactorFamily) and users is not None and model.user_factors.shape[0]:
            block = model.user_factors[users] @ model.item_factors.T
        else:
            block = model.score_session(rows)
        block = np.asarray(block, dtype=np.float32)
        return np.where(np.isfinite(block), block, -np.inf).astype(np.float32, copy=False)

    def _candidates(
        self, rows: sp.csr_matrix, users: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The union of every generator's top `candidates` per row (its own items left out)
        and their features: (row, item, features), rows ascending, items ascending in a row."""
        rows = sp.csr_matrix(rows)
        n_rows, n_items = rows.shape
        seen_r = np.repeat(np.arange(n_rows), np.diff(rows.indptr))
        seen = (seen_r, rows.indices)
        scores, tops = [], []
        for name in self.generators:
            block = self._scores(name, rows, users)
            block[seen] = -np.inf
            ids, vals = top_k_dense(block, min(self.candidates, n_items))
            scores.append(block)
            tops.append((ids, vals))
        # union: every proposed (row, item) once
        keys = np.concatenate(
            [(np.arange(n_rows)[:, None] * n_items + ids)[ids >= 0] for ids, _ in tops]
        ).astype(np.int64)
        keys, proposed = np.unique(keys, return_counts=True)
        r, c = np.divmod(keys, n_items)
        columns = []
        for block, (ids, vals) in zip(scores, tops, strict=True):
            value = block[r, c]
            value = np.where(np.isfinite(value), value, np.nan)
            # position in this generator's list (NaN: not proposed by it)
            own = (np.arange(n_rows)[:, None] * n_items + ids).ravel()
            pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).ravel()
            ok = ids.ravel() >= 0
            own, pos = own[ok], pos[ok]
            order = np.argsort(own, kind="stable")
            own, pos = own[order], pos[order]
            at = np.searchsorted(own, keys)
            hit = (at < own.size) & (own[np.minimum(at, own.size - 1)] == keys)
            rank = np.where(hit, pos[np.minimum(at, max(own.size - 1, 0))], np.nan)
            best = vals[:, 0][r]
            columns += [value, rank, best - value]
        columns += self._pair_features(rows, r, c, proposed)
        columns += self._lead_features(rows, self._row_leads(rows, users), r, c)
        feats = np.column_stack(columns).astype(np.float32)
        return r, c, feats

    def _pair_features(
        self, rows: sp.csr_matrix, r: np.ndarray, c: np.ndarray, proposed: np.ndarray
    ) -> list[np.ndarray]:
        """The PAIR_FEATURES columns: the item, and how it matches the row's history."""
        x = binary(rows)
        history = np.asarray(x.sum(axis=1)).ravel()
        in_cat = np.asarray((x @ self._category_hot).todense())
        in_style = np.asarray((x @ self._style_hot).todense())
        in_gender = np.asarray((x @ self._gender_hot).todense())
        if in_gender.shape[1] < 3:
            in_gender = np.pad(in_gender, ((0, 0), (0, 3 - in_gender.shape[1])))
        price_sum = x @ self._price
        priced = x @ self._priced
        cat_price = np.asarray((x @ self._category_hot.multiply(self._price[:, None])).todense())
        cat_priced = np.asarray((x @ self._category_hot.multiply(self._priced[:, None])).todense())
        cat, style, gender = self.items.category[c], self.items.style[c], self.items.gender[c]
        price = self.items.log_price[c]
        hist = history[r]
        n_cat = in_cat[r, cat]
        gendered = gender > 0
        other = np.where(gender == 1, 2, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            user_price = price_sum[r] / priced[r]
            user_cat_price = cat_price[r, cat] / cat_priced[r, cat]
            share = n_cat / hist
        return [
            proposed.astype(np.float32),
            self.users_per_item[c] / np.float32(max(1, self.users_per_item.sum())),  # a share:
            # the same scale on the inner train as on the whole
            gender,
            price,
            hist,
            (in_cat > 0).sum(axis=1)[r],
            n_cat,
            share,
            in_style[r, style],
            np.where(gendered, in_gender[r, gender], np.nan),
            np.where(gendered, in_gender[r, other], np.nan),
            price - user_price,
            price - user_cat_price,
            *self._links(x, r, c),
            self._category_links(in_cat)[r, cat],
        ]

    def _category_links(self, in_cat: np.ndarray) -> np.ndarray:
        """Per row and category: the largest share of the users of one of the row's
        categories who also use that category (a persona's categories come together)."""
        used = in_cat > 0
        share = self.category_pairs / np.maximum(np.diag(self.category_pairs), 1)[:, None]
        out = np.zeros(in_cat.shape, dtype=np.float32)
        for code in range(share.shape[0]):  # a few dozen categories, not users
            hit = used[:, code]
            out[hit] = np.maximum(out[hit], share[code])
        return out

    def _links(self, x: sp.csr_matrix, r: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
        """How the candidate co-occurs with each of the row's items t: the share of t's users
        who also have it ("follows" t), and of its users who have t ("leads"); max and sum
        over t, and over t of the candidate's category (the shop's cliques live in one
        category). The pairs times the (short) histories, never items x items."""
        n_items = self.n_items
        counts = np.diff(x.indptr)[r]
        pair = np.repeat(np.arange(r.size), counts)
        first = np.repeat(x.indptr[r] - np.cumsum(counts) + counts, counts)
        t = x.indices[np.arange(pair.size) + first].astype(np.int64)
        cand = c[pair].astype(np.int64)
        both = self._pairs(t, cand)
        own = np.maximum(self.users_per_item, 1).astype(np.float32)
        follows = both / own[t]
        leads = both / own[cand]
        same = self.items.category[t] == self.items.category[cand]
        # the same within the row's gender pool (block 1: F, 2: M)
        gender = user_genders(x, self.items.gender)
        g = gender[r][pair]
        both_g = self._pairs(g * n_items + t, cand)
        own_g = np.maximum(self._pairs(g * n_items + t, t), 1)
        follows_g = np.where(g > 0, both_g / own_g, 0)

        has = counts > 0
        starts = (np.cumsum(counts) - counts)[has]

        def reduce(values: np.ndarray, how: Any) -> np.ndarray:
            out = np.zeros(r.size, dtype=np.float32)
            if starts.size:  # `pair` is grouped by candidate: one segment per pair
                out[has] = how.reduceat(values.astype(np.float32), starts)
            return out

        return [
            reduce((both > 0).astype(np.float32), np.add),
            reduce(follows, np.maximum),
            reduce(follows, np.add),
            reduce(leads, np.maximum),
            reduce(np.where(same, follows, 0), np.maximum),
            reduce(np.where(same, follows, 0), np.add),
            reduce(((both > 0) & same).astype(np.float32), np.add),
            gender[r].astype(np.float32),
            np.where(gender[r] > 0, reduce(np.where(same, follows_g, 0), np.add), np.nan),
            np.where(gender[r] > 0, reduce(follows_g, np.maximum), np.nan),
        ]

    def _pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Entries (rows, cols) of the stacked co-occurrence matrix (0 where not stored)."""
        return _entries(self.cooccurrence, self._pair_keys, rows, cols)

    def _row_leads(self, rows: sp.csr_matrix, users: np.ndarray | None) -> sp.csr_matrix | None:
        """The rows' lead pairs among their items: known users' from the fit (None for
        sessions, or when the order was not given)."""
        if self.leads is None or users is None:
            return None
        return sp.csr_matrix(self.leads[users].multiply(binary(rows)), dtype=np.float32)

    def _lead_features(
        self, rows: sp.csr_matrix, leads: sp.csr_matrix | None, r: np.ndarray, c: np.ndarray
    ) -> list[np.ndarray]:
        """The lead features of PAIR_FEATURES. With s the row's lead in the candidate's
        category: the share of the users led by s who used the candidate (overall and in
        the row's gender pool) and the share of all leads that s is; and for the candidate
        as a lead, the share of the users it led who used each of the row's items of its
        category (max and sum, overall and in the gender pool). NaN where unknown."""
        n, size = self.n_items, r.size
        missing = np.full(size, np.nan, dtype=np.float32)
        if self.lead_cooccurrence.nnz == 0:  # fitted without the pairs' order
            return [missing] * 7
        x = binary(rows)
        category = self.items.category
        gender = user_genders(x, self.items.gender)[r].astype(np.int64)
        lookup = self.lead_cooccurrence, self._lead_keys

        def share(block: np.ndarray, lead: np.ndarray, item: np.ndarray) -> np.ndarray:
            rows_at = block * n + lead
            own = _entries(*lookup, rows_at, lead)
            return _entries(*lookup, rows_at, item) / np.maximum(own, 1)

        out = [missing, missing, missing]
        if leads is not None:
            lead_of = np.full((x.shape[0], int(category.max(initial=0)) + 1), -1, np.int64)
            coo = leads.tocoo()
            lead_of[coo.row, category[coo.col]] = coo.col
            s = lead_of[r, category[c]]
            has = s >= 0
            s = np.where(has, s, 0)
            total = max(1.0, float(self.lead_cooccurrence[:n].diagonal().sum()))
            out = [
                np.where(has, share(np.zeros_like(s), s, c), np.nan),
                np.where(has & (gender > 0), share(gender, s, c), np.nan),
                np.where(has, _entries(*lookup, s, s) / total, np.nan),
            ]
        # the candidate as a lead: over the row's items t of its category
        counts = np.diff(x.indptr)[r]
        pair = np.repeat(np.arange(size), counts)
        first = np.repeat(x.indptr[r] - np.cumsum(counts) + counts, counts)
        t = x.indices[np.arange(pair.size) + first].astype(np.int64)
        cand = c[pair].astype(np.int64)
        same = category[t] == category[cand]
        g = gender[pair]
        to = np.where(same, share(np.zeros_like(cand), cand, t), 0)
        to_g = np.where(same & (g > 0), share(g, cand, t), 0)
        has_rows = counts > 0
        starts = (np.cumsum(counts) - counts)[has_rows]

        def reduce(values: np.ndarray, how: Any) -> np.ndarray:
            result = np.zeros(size, dtype=np.float32)
            if starts.size:
                result[has_rows] = how.reduceat(values.astype(np.float32), starts)
            return result

        gendered = gender > 0
        return out + [
            reduce(to, np.maximum),
            reduce(to, np.add),
            np.where(gendered, reduce(to_g, np.maximum), np.nan),
            np.where(gendered, reduce(to_g, np.add), np.nan),
        ]

    def _predict(self, feats: np.ndarray) -> np.ndarray:
        """The mean of the carves' rankers' scores."""
        if not self._boosters:
            import lightgbm as lgb

            self._boosters = [lgb.Booster(model_str=text) for text in self.rankers]
        if feats.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        total = np.zeros(feats.shape[0], dtype=np.float64)
        for booster in self._boosters:
            total += booster.predict(feats, num_threads=self.threads)
        return (total / len(self._boosters)).astype(np.float32)

    def _ranked_block(
        self, rows: sp.csr_matrix, users: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, c, feats = self._candidates(rows, users)
        return r, c, self._predict(feats)

    # ------------------------------------------------------------------ scoring

    def recommend(
        self, users: np.ndarray, train: sp.csr_matrix, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(users, dtype=np.int64)
        ids = np.full((users.size, k), -1, dtype=np.int32)
        scores = np.full((users.size, k), np.nan, dtype=np.float32)
        for part in batches(users.size, self.n_items * len(self.generators)):
            chunk = users[part]
            r, c, s = self._ranked_block(train[chunk], chunk)
            # best first; ties to the lower item (c ascending within a row already)
            order = np.lexsort((c, -s, r))
            r, c, s = r[order], c[order], s[order]
            starts = np.searchsorted(r, np.arange(chunk.size))
            pos = np.arange(r.size) - starts[r]
            take = pos < k
            out_ids = ids[part]
            out_scores = scores[part]
            out_ids[r[take], pos[take]] = c[take]
            out_scores[r[take], pos[take]] = s[take]
        return ids, scores

    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        """Ranker scores for each session's candidates (from the session's items); NaN
        for every other item."""
        rows = sp.csr_matrix(rows)
        out = np.full(rows.shape, np.nan, dtype=np.float32)
        for part in batches(rows.shape[0], self.n_items * len(self.generators)):
            r, c, s = self._ranked_block(rows[part], None)
            out[part][r, c] = s
        return out

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first family generator's similar items (the ranker orders users' lists,
        not item neighbours); popularity within the category for `category_popular` alone."""
        for model in self.generators.values():
            if model is not None:
                return model.similar_items(item, n)
        same = self.items.category == self.items.category[item]
        scores = np.where(same, self.users_per_item, -1).astype(np.float32)
        from recsys.families.base import top_n_of

        return top_n_of(scores, n, np.array([item]))

    # ------------------------------------------------------------------ save / load

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "generators": np.array(list(self.generators)),
            "candidates": np.array(self.candidates, dtype=np.int64),
            "users_per_item": self.users_per_item,
            # the text models, NUL-separated (LightGBM's text never holds NUL)
            "ranker": np.frombuffer("\0".join(self.rankers).encode(), dtype=np.uint8),
            "cooccurrence_data": self.cooccurrence.data,
            "cooccurrence_indices": self.cooccurrence.indices,
            "cooccurrence_indptr": self.cooccurrence.indptr,
            "category_pairs": self.category_pairs,
            "lead_cooccurrence_data": self.lead_cooccurrence.data,
            "lead_cooccurrence_indices": self.lead_cooccurrence.indices,
            "lead_cooccurrence_indptr": self.lead_cooccurrence.indptr,
        }
        if self.leads is not None:  # USER_ARRAYS: not in the serving copy
            out["leads_indptr"] = self.leads.indptr
            out["leads_indices"] = self.leads.indices
        out |= self.items.arrays()
        for name, model in self.generators.items():
            if model is not None:
                out |= {f"{name}{SEP}{k}": v for k, v in model.arrays().items()}
        return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], path: Path | str, shape: tuple[int | None, int],
        threads: int,
    ) -> RerankModel:  # fmt: skip
        require(arrays, path, "generators", "candidates", "users_per_item", "ranker")
        n_items = shape[1]
        names = [str(g) for g in np.atleast_1d(arrays["generators"]).tolist()]
        if not names or any(g not in GENERATORS for g in names):
            raise StageError(f"{path}: unknown generators {names}; re-run the train stage")
        counts = arrays["users_per_item"]
        if counts.shape != (n_items,) or counts.dtype.kind not in "iu":
            raise StageError(f"{path}: users_per_item must be {n_items} counts; re-run dvc repro")
        generators: dict[str, Family | None] = {}
        for name in names:
            if name in OWN_GENERATORS:
                generators[name] = None
                continue
            prefix = f"{name}{SEP}"
            own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            generators[name] = FAMILY_GENERATORS[name].from_arrays(own, path, shape, threads)
        ranker = arrays["ranker"]
        if ranker.dtype != np.uint8 or ranker.ndim != 1 or ranker.size == 0:
            raise StageError(f"{path}: ranker must be LightGBM text models as bytes")
        rankers = ranker.tobytes().decode().split("\0")
        items = ItemFeatures.from_arrays(arrays, path, n_items)
        pairs, lead_pairs_ = (
            _stored_csr(arrays, path, name, (3 * n_items, n_items))
            for name in ("cooccurrence", "lead_cooccurrence")
        )
        leads = None
        if shape[0] is not None and "leads_indptr" in arrays:  # known users' lead pairs
            require(arrays, path, "leads_indices")
            indices = arrays["leads_indices"]
            data = np.ones(indices.shape, dtype=np.float32)
            try:
                leads = sp.csr_matrix((data, indices, arrays["leads_indptr"]), shape=shape)
                leads.check_format(full_check=True)
            except (ValueError, TypeError):
                raise StageError(f"{path}: invalid lead pairs; re-run dvc repro") from None
        require(arrays, path, "category_pairs")
        categories = arrays["category_pairs"]
        size = int(items.category.max(initial=0)) + 1
        if categories.shape != (size, size) or not np.isfinite(categories).all():
            raise StageError(
                f"{path}: category_pairs must be {size} x {size} counts; re-run dvc repro"
            )
        return cls(generators, items, counts, pairs, categories, int(arrays["candidates"]),
                   rankers, threads, lead_pairs_, leads)  # fmt: skip


# ---------------------------------------------------------------------- helpers


def _stored_csr(
    arrays: dict[str, np.ndarray], path: Path | str, name: str, shape: tuple[int, int]
) -> sp.csr_matrix:
    """The saved CSR matrix `name` (`<name>_data`, `_indices`, `_indptr`), checked."""
    keys = (f"{name}_data", f"{name}_indices", f"{name}_indptr")
    require(arrays, path, *keys)
    try:
        matrix = sp.csr_matrix(tuple(arrays[k] for k in keys), shape=shape)
        matrix.check_format(full_check=True)
    except (ValueError, TypeError):
        raise StageError(f"{path}: invalid {name} matrix; re-run dvc repro") from None
    if not matrix.has_sorted_indices:
        raise StageError(f"{path}: {name} indices must be sorted; re-run dvc repro")
    return matrix


def carve(train: sp.csr_matrix, fraction: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(inner train, validation): `fraction` of the training pairs, uniformly at random
    (seeded), as the random mask holds out test pairs."""
    n_valid = int(round(fraction * train.nnz))
    if n_valid == 0 or n_valid == train.nnz:
        raise StageError(
            f"params.yaml: rerank.validation_fraction = {fraction} carves {n_valid} of "
            f"{train.nnz} training pairs; expected pairs on both sides"
        )
    rng = np.random.default_rng(seed)
    held = np.zeros(train.nnz, dtype=bool)
    held[rng.choice(train.nnz, size=n_valid, replace=False)] = True
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))

    def part(mask: np.ndarray) -> sp.csr_matrix:
        indptr = np.zeros(train.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[mask], minlength=train.shape[0]), out=indptr[1:])
        return sp.csr_matrix(
            (train.data[mask], train.indices[mask], indptr), shape=train.shape, dtype=np.float32
        )

    return part(~held), part(held)


def user_genders(x: sp.csr_matrix, item_gender: np.ndarray) -> np.ndarray:
    """Each row's gender pool as its items show it: 1 (F) or 2 (M) where the row has more
    items of that gender than of the other, else 0."""
    counts = np.asarray((x @ _one_hot(item_gender)).todense())
    counts = np.pad(counts, ((0, 0), (0, max(0, 3 - counts.shape[1]))))
    return np.where(counts[:, 1] > counts[:, 2], 1, np.where(counts[:, 2] > counts[:, 1], 2, 0))


def cooccurrence(x: sp.csr_matrix, item_gender: np.ndarray) -> sp.csr_matrix:
    """Distinct users of each pair of items (binary `x`): three items x items blocks stacked
    (all users, users of the F pool, of the M pool: a category's ungendered items follow
    other cliques for F and M users), float32 CSR with sorted indices."""
    gender = user_genders(x, item_gender)
    blocks = [x.T @ x] + [x[gender == g].T @ x[gender == g] for g in (1, 2)]
    pairs = sp.csr_matrix(sp.vstack(blocks), dtype=np.float32)
    pairs.sum_duplicates()
    pairs.sort_indices()
    return pairs


def ranker_users(inner: sp.csr_matrix, valid: sp.csr_matrix, limit: int, seed: int) -> np.ndarray:
    """Users the ranker learns from: those with inner-train history and validation pairs,
    a seeded sample of `limit` of them (0: all), ascending."""
    users = np.flatnonzero((np.diff(inner.indptr) > 0) & (np.diff(valid.indptr) > 0))
    if 0 < limit < users.size:
        rng = np.random.default_rng(seed + 1)
        users = np.sort(rng.choice(users, size=limit, replace=False))
    return users


def _portable(text: str) -> str:
    """The text model without its `num_threads` line: the trees do not depend on it, and
    the file must not either."""
    return re.sub(r"^\[num_threads: \d+\]\n", "", text, flags=re.MULTILINE)


def _keys(matrix: sp.csr_matrix) -> np.ndarray:
    """Row * columns + column of each stored entry of a CSR matrix with sorted indices
    (ascending: a lookup table for `_entries`)."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def _entries(
    matrix: sp.csr_matrix, keys: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Entries (rows, cols) of `matrix` (0 where not stored); `keys` is `_keys(matrix)`."""
    at, ok = _find(keys, rows.astype(np.int64) * matrix.shape[1] + cols)
    out = np.zeros(at.size, dtype=np.float32)
    out[ok] = matrix.data[at[ok]]
    return out


def _find(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each of `wanted` in the sorted `keys`; a position is valid
    only where found."""
    at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
    found = keys[at] == wanted if keys.size else np.zeros(np.shape(wanted), dtype=bool)
    return at, found


def first_seen(
    events: Any, train: sp.csr_matrix, user_ids: np.ndarray, item_ids: np.ndarray
) -> sp.csr_matrix:
    """Each training pair's first event time, in `train`'s sparsity (int64): the order in
    which users came to their training items. `events` is the event log as
    `recsys.confidence.load_events` reads it (USER_ID, ITEM_ID, TIMESTAMP); the events of
    any other pair, the held-out ones included, are read past and never used."""
    from recsys.ids import codes, dictionary

    train = sp.csr_matrix(train)
    train.sort_indices()

    def positions(column: str, ids: np.ndarray) -> np.ndarray:
        at, found = _find(ids, np.asarray(dictionary(events[column]).to_pylist(), dtype=str))
        return np.where(found, at, -1)[codes(events[column])]

    users = positions("USER_ID", np.asarray(user_ids, dtype=str))
    cols = positions("ITEM_ID", np.asarray(item_ids, dtype=str))
    times = events["TIMESTAMP"].to_numpy().astype(np.int64, copy=False)
    at, found = _find(_keys(train), users.astype(np.int64) * train.shape[1] + cols)
    ok = (users >= 0) & (cols >= 0) & found
    out = np.full(train.nnz, np.iinfo(np.int64).max, dtype=np.int64)  # no event: last
    np.minimum.at(out, at[ok], times[ok])
    return sp.csr_matrix((out, train.indices.copy(), train.indptr.copy()), shape=train.shape)


def lead_pairs(x: sp.csr_matrix, first_seen: sp.csr_matrix, category: np.ndarray) -> sp.csr_matrix:
    """Each row's lead pairs: in every category the row used, its item seen first (ties:
    the lower item). `x` is the (inner) training matrix or a part of it, `first_seen` the
    whole train's times (`first_seen`); users x items, 1 at the leads, float32."""
    x = binary(x)
    rows = np.repeat(np.arange(x.shape[0], dtype=np.int64), np.diff(x.indptr))
    cols = x.indices.astype(np.int64)
    times = _entries_int(first_seen, rows, cols)
    cat = category[cols]
    order = np.lexsort((cols, times, cat, rows))
    r, k = rows[order], cat[order]
    lead = np.ones(order.size, dtype=bool)
    lead[1:] = (r[1:] != r[:-1]) | (k[1:] != k[:-1])
    keep = order[lead]
    return sp.csr_matrix(
        (np.ones(keep.size, dtype=np.float32), (rows[keep], cols[keep])), shape=x.shape
    )


def _entries_int(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Integer entries (rows, cols) that `matrix` stores (every one must be)."""
    at, found = _find(_keys(matrix), rows * matrix.shape[1] + cols)
    if not found.all():
        raise StageError("first_seen lacks a time for a training pair")
    return matrix.data[at].astype(np.int64)


def lead_cooccurrence(
    x: sp.csr_matrix, leads: sp.csr_matrix | None, items: ItemFeatures
) -> sp.csr_matrix:
    """Users whose lead in a category is the row item and who used the column item of that
    category (diagonal: the users it leads), three stacked items x items blocks as in
    `cooccurrence` (all users, the F pool's, the M pool's); float32 CSR, sorted indices.
    Empty without leads."""
    n = x.shape[1]
    if leads is None:
        return sp.csr_matrix((3 * n, n), dtype=np.float32)
    x = binary(x)
    gender = user_genders(x, items.gender)
    blocks = []
    for g in (None, 1, 2):
        pick = slice(None) if g is None else gender == g
        block = sp.coo_matrix(leads[pick].T @ x[pick])
        keep = items.category[block.row] == items.category[block.col]
        blocks.append(
            sp.csr_matrix((block.data[keep], (block.row[keep], block.col[keep])), shape=(n, n))
        )
    pairs = sp.csr_matrix(sp.vstack(blocks), dtype=np.float32)
    pairs.sum_duplicates()
    pairs.sort_indices()
    return pairs
