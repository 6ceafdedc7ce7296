"""Cold start: what a user with no training item is shown, from what the shop knows of them.

A newcomer has no history for a model to rank from, but the users file often says who they
are (segment, persona, gender, ...). The attribute-aware strategy ranks items by popularity
among training users who share the newcomer's attributes, backing off smoothly to broader
groups: `coldstart.columns` lists users-file columns from broad to narrow (e.g. SEGMENT, then
PERSONA), and each prefix of them is one level of groups. A group's score of an item is

    p_group(i) = (users_in_group_with(i) + m * p_parent(i)) / (users_in_group + m)

with `m = coldstart.smoothing` and the root's p the overall share of users with the item: a
small group leans on its parent, a large one speaks for itself. Groups with fewer than
`coldstart.min_support` training users are not kept at all, so their members get the
parent's list. A newcomer gets the list of the deepest group their attributes reach; an
unknown or missing value stops the descent there (values the shop has never seen are not
an error, they back off).

Two other strategies stay available: `popular` (one list, most distinct users first) and
`apportioned` (the static list of `recsys.fallback`). Every strategy is the same object, a
table of groups with one ranked list each (one group for the two static ones), so the
bundle, the service and the evaluation serve all three alike. Computed from the training
matrix only, with no randomness: the same inputs give the same lists, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import FieldError, StageError
from recsys.fallback import binary_pairs, build_fallback
from recsys.params import Section
from recsys.ranking import popularity_ranking

STRATEGIES = ("attributes", "popular", "apportioned")
MAX_VALUE_LENGTH = 200  # characters of one attribute value (service input)
_SEP = "\x1f"  # joins a group's values into one key; never inside a value (see `clean`)
_BLOCK_CELLS = 1 << 23  # dense groups x items cells scored at once (64 MB of float64)


@dataclass(frozen=True)
class ColdStartParams:
    """`coldstart:` params."""

    strategy: str = "attributes"
    columns: tuple[str, ...] = ("SEGMENT", "PERSONA")
    smoothing: float = 20.0
    min_support: int = 20

    @classmethod
    def from_section(cls, s: Section) -> ColdStartParams:
        strategy = s.choice("strategy", list(STRATEGIES), "attributes")
        raw = s.values.get("columns", list(cls.columns))
        s.ignore(("columns",))
        if (
            not isinstance(raw, list)
            or not all(isinstance(c, str) and c.strip() for c in raw)
            or len({c.strip() for c in raw}) != len(raw)
            or "USER_ID" in [c.strip() for c in raw]
        ):
            raise StageError(
                f"params.yaml: coldstart.columns = {raw!r}; expected a list of distinct "
                "users-file column names (not USER_ID), broad to narrow, e.g. [SEGMENT, PERSONA]"
            )
        return cls(
            strategy=strategy,
            columns=tuple(c.strip() for c in raw),
            smoothing=s.float("smoothing", 20.0, min=0.0),
            min_support=s.int("min_support", 20, min=1),
        )


def replace_strategy(params: ColdStartParams, strategy: str) -> ColdStartParams:
    """`params` with another strategy (evaluate scores all three side by side)."""
    from dataclasses import replace

    return replace(params, strategy=strategy)


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, distinct cleaned values): -1 where unknown (blank). Values are
    stripped and lose any group-key separator; only the distinct values are cleaned, so a
    column of 10M users costs one factorisation."""
    import pandas as pd

    raw_codes, raw_labels = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    cleaned = np.array(
        [str(v).strip().replace(_SEP, " ") for v in raw_labels.tolist()], dtype=object
    )  # distinct values: a few dozen
    labels, relabel = np.unique(np.append(cleaned, ""), return_inverse=True)
    blank = int(np.flatnonzero(labels == "")[0])
    codes = np.where(raw_codes >= 0, relabel[:-1][np.maximum(raw_codes, 0)], blank)
    codes = np.where(codes == blank, -1, codes)
    codes = codes - (codes > blank)  # drop "" from the labels
    return codes.astype(np.int64), np.delete(labels, blank).astype(str)


@dataclass
class ColdStart:
    """Groups of users (by attribute prefix) and one ranked item list per group.

    Row 0 is the root (everyone); `keys[g, :level[g]]` are group g's values of
    `columns[:level[g]]`; `lists[g]` its item column indices, best first.
    """

    strategy: str
    columns: tuple[str, ...]
    keys: np.ndarray  # (groups, len(columns)) unicode, "" past the group's level
    level: np.ndarray  # (groups,) int8
    lists: np.ndarray  # (groups, size) int32
    users: np.ndarray  # (groups,) int64: training users behind each group
    _index: dict[tuple[str, ...], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {
            tuple(self.keys[g, : self.level[g]].tolist()): g for g in range(self.level.size)
        }  # groups: a few hundred at most, built once per load

    def arrays(self) -> dict[str, np.ndarray]:
        """The pickle-free arrays of `coldstart.npz` (see `from_arrays`)."""
        return {
            "strategy": np.array(self.strategy),
            "columns": np.array(self.columns, dtype=str).reshape(-1),
            "keys": self.keys,
            "level": self.level,
            "lists": self.lists,
            "users": self.users,
        }

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray], n_items: int) -> ColdStart:
        """Rebuild from `arrays()`; a StageError names any array that does not fit."""
        try:
            keys, level, lists = a["keys"], a["level"], a["lists"]
            out = cls(
                strategy=str(a["strategy"]),
                columns=tuple(np.asarray(a["columns"]).tolist()),
                keys=keys,
                level=level,
                lists=lists,
                users=a["users"],
            )
        except KeyError as exc:
            raise StageError(f"coldstart.npz: missing array {exc}; re-run export") from None
        groups = level.shape[0] if level.ndim == 1 else -1
        ok = (
            groups >= 1
            and keys.shape == (groups, len(out.columns))
            and lists.ndim == 2
            and lists.shape[0] == groups
            and lists.shape[1] >= 1
            and int(level[0]) == 0
            and int(level.max()) <= len(out.columns)
            and int(lists.min()) >= 0
            and int(lists.max()) < n_items
        )
        if not ok:
            raise StageError("coldstart.npz: inconsistent arrays; re-run export")
        return out

    @property
    def size(self) -> int:
        return int(self.lists.shape[1])

    def group_of(self, attributes: Mapping[str, str]) -> int:
        """Row of the deepest group `attributes` reach (0, the root, if none)."""
        group, path = 0, []
        for column in self.columns:
            value = str(attributes.get(column, "")).strip().replace(_SEP, " ")
            if not value:
                break
            path.append(value)
            found = self._index.get(tuple(path))
            if found is None:
                break
            group = found
        return group

    def groups_of(self, attributes: Mapping[str, np.ndarray], n_users: int) -> np.ndarray:
        """`group_of` for many users at once: one attribute array per column (absent
        columns count as unknown), aligned rows in, int64 group rows out. Resolved once per
        distinct combination of values (a few hundred), then broadcast to the users."""
        if not self.columns:
            return np.zeros(n_users, dtype=np.int64)
        codes, labels = [], []
        for column in self.columns:
            col = attributes.get(column)
            c, lab = factorize(np.full(n_users, "") if col is None else col)
            codes.append(c)
            labels.append(lab)
        combos, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
        resolved = np.array(
            [
                self.group_of(
                    {col: (labels[j][code] if code >= 0 else "") for j, (col, code) in
                     enumerate(zip(self.columns, combo.tolist(), strict=True))}
                )
                for combo in combos
            ],
            dtype=np.int64,
        )  # fmt: skip
        return resolved[inverse.reshape(-1)]

    def describe(self, group: int) -> dict[str, str]:
        """The attributes that define `group` (empty for the root)."""
        depth = int(self.level[group])
        return dict(zip(self.columns[:depth], self.keys[group, :depth].tolist(), strict=True))


def static(strategy: str, ranking: np.ndarray, users: int) -> ColdStart:
    """A one-group model serving `ranking` to everyone (`popular`, `apportioned`)."""
    return ColdStart(
        strategy=strategy,
        columns=(),
        keys=np.zeros((1, 0), dtype="<U1"),
        level=np.zeros(1, dtype=np.int8),
        lists=np.asarray(ranking, dtype=np.int32).reshape(1, -1),
        users=np.array([users], dtype=np.int64),
    )


def build_coldstart(
    train: sp.spmatrix,
    attributes: Mapping[str, np.ndarray],
    params: ColdStartParams,
    size: int,
    item_categories: np.ndarray | None = None,
) -> ColdStart:
    """The cold-start model of `params.strategy` from the training matrix.

    `attributes` maps users-file columns to one value per training row ("" = unknown);
    columns it lacks are skipped (their levels are not built). `item_categories` feeds the
    apportioned list only. Lists hold `min(size, items)` items; ties go to the lower item
    index, so the result is deterministic.
    """
    if size <= 0:
        raise ValueError(f"cold-start list size must be >= 1, got {size}")
    train = sp.csr_matrix(train)
    n_users, n_items = train.shape
    size = min(size, n_items)
    active = np.diff(binary_pairs(train).indptr) > 0
    if params.strategy == "apportioned":
        return static("apportioned", build_fallback(train, item_categories, size), active.sum())
    if params.strategy == "popular":
        return static("popular", popularity_ranking(train)[:size], active.sum())
    columns = tuple(c for c in params.columns if c in attributes)
    return _attribute_model(train, {c: attributes[c] for c in columns}, columns, params, size)


def _attribute_model(
    train: sp.csr_matrix,
    attributes: Mapping[str, np.ndarray],
    columns: tuple[str, ...],
    params: ColdStartParams,
    size: int,
) -> ColdStart:
    """Groups level by level (each a prefix of `columns`), counts of distinct users per
    group and item, then `_rank_groups`. Only users with a training item count."""
    binary = binary_pairs(train).astype(np.float64)  # counts of distinct users
    n_users = binary.shape[0]
    reached = np.diff(binary.indptr) > 0
    counts: list[Any] = [np.asarray(binary.sum(axis=0)).ravel()]  # level 0: the root
    support = [np.array([reached.sum()], dtype=np.int64)]
    keys: list[np.ndarray] = [np.full((1, len(columns)), "", dtype=object)]
    parents = [np.zeros(1, dtype=np.int64)]
    path = np.zeros(n_users, dtype=np.int64)  # each user's group at the previous level
    level_labels: list[np.ndarray] = []
    level_codes: list[np.ndarray] = []
    for depth, column in enumerate(columns, start=1):
        code, labels = factorize(attributes[column])
        if code.shape != (n_users,):
            raise ValueError(f"{column}: {code.shape} values; expected ({n_users},)")
        level_codes.append(code)
        level_labels.append(labels)
        reached &= code >= 0
        rows = np.flatnonzero(reached)
        pair = path[rows] * (labels.size + 1) + code[rows]
        uniq, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        n_in = np.bincount(inverse, minlength=uniq.size)
        kept = n_in >= params.min_support
        if not kept.any():
            break
        new_code = np.cumsum(kept) - 1  # label -> kept group index
        first_user = rows[first][kept]
        parents.append(path[first_user])
        member = kept[inverse]
        onehot = sp.csr_matrix(
            (np.ones(int(member.sum())), (new_code[inverse[member]], rows[member])),
            shape=(int(kept.sum()), n_users),
        )
        counts.append(onehot @ binary)
        support.append(n_in[kept].astype(np.int64))
        group_keys = np.full((first_user.size, len(columns)), "", dtype=object)
        for j in range(depth):
            group_keys[:, j] = level_labels[j][level_codes[j][first_user]]
        keys.append(group_keys)
        next_path = np.full(n_users, -1, dtype=np.int64)
        next_path[rows[member]] = new_code[inverse[member]]
        reached &= next_path >= 0
        path = np.where(reached, next_path, path)
    return _rank_groups(counts, support, parents, keys, columns, params.smoothing, size)


def _rank_groups(
    counts: list[Any],
    support: list[np.ndarray],
    parents: list[np.ndarray],
    keys: list[np.ndarray],
    columns: tuple[str, ...],
    smoothing: float,
    size: int,
) -> ColdStart:
    """Score every group (the smoothed back-off chain, closed form) and keep its top `size`.

    Unrolled, a group at depth L scores `sum_j beta_j * counts_j / users_j` over its
    ancestors j (itself included) with `w_j = users_j / (users_j + m)`,
    `beta_j = w_j * prod_{i>j} (1 - w_i)` and the root's `beta_0` taking the rest. Groups
    are scored in blocks of dense rows, so memory is bounded whatever the catalogue.
    """
    n_items = counts[0].shape[0]
    weight = [np.ones(1)] + [s / (s + smoothing) for s in support[1:]]
    lists, levels, users, all_keys = [], [], [], []
    # ancestors[d][j]: each depth-d group's ancestor at depth j
    ancestors: list[list[np.ndarray]] = [[np.zeros(1, dtype=np.int64)]]
    for depth in range(1, len(counts)):
        above = ancestors[depth - 1]
        ancestors.append([a[parents[depth]] for a in above] + [np.arange(support[depth].size)])
    for depth in range(len(counts)):
        n_groups = support[depth].size
        beta = np.ones((n_groups, depth + 1))
        for j in range(depth, 0, -1):
            w = weight[j][ancestors[depth][j]]
            beta[:, j] *= w
            beta[:, :j] *= (1.0 - w)[:, None]
        step = max(1, _BLOCK_CELLS // max(n_items, 1))
        for start in range(0, n_groups, step):  # blocks of groups, not users
            block = slice(start, min(start + step, n_groups))
            root = counts[0] / max(int(support[0][0]), 1)
            score = beta[block, :1] * root[None, :]
            for j in range(1, depth + 1):
                anc = ancestors[depth][j][block]
                scale = beta[block, j] / support[j][anc]
                score += sp.diags(scale) @ counts[j][anc].toarray()
            order = np.argsort(-score, axis=1, kind="stable")[:, :size]
            lists.append(order.astype(np.int32))
        levels.append(np.full(n_groups, depth, dtype=np.int8))
        users.append(support[depth])
        all_keys.append(keys[depth])
    return ColdStart(
        strategy="attributes",
        columns=columns,
        keys=np.concatenate(all_keys).astype(str).reshape(sum(map(len, levels)), len(columns)),
        level=np.concatenate(levels),
        lists=np.concatenate(lists),
        users=np.concatenate(users).astype(np.int64),
    )


def load_user_attributes(
    path: Any, user_ids: np.ndarray, columns: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The users file's `columns` aligned to `user_ids` ("" where unknown); columns the file
    lacks (or a missing file) are left out, and the model backs off past them."""
    from pathlib import Path

    from recsys.ids import aligned_columns

    if not columns or not Path(path).is_file():
        return {}
    return aligned_columns(path, "USER_ID", list(columns), user_ids)


def parse_attributes(given: Mapping[str, Any], columns: tuple[str, ...], prefix: str = "") -> dict:
    """A newcomer's attributes from a request, checked: each name one of the bundle's
    cold-start `columns`, each value a non-empty string of at most MAX_VALUE_LENGTH printable
    characters. A value the shop has never seen is fine (it backs off); a malformed one is an
    `FieldError` naming `prefix + name`."""
    expected = ", ".join(columns) if columns else "none (the bundle's cold start uses none)"
    out: dict[str, str] = {}
    for name, value in given.items():
        field = f"{prefix}{str(name)[:40]}"
        if name not in columns:
            raise FieldError(
                f"unknown attribute {str(name)[:40]!r}; expected one of {expected}", field
            )
        if not isinstance(value, str) or not value.strip():
            shown = repr(value)[:40] if not isinstance(value, str) else "an empty string"
            raise FieldError(f"{field} = {shown}; expected a non-empty string", field)
        if len(value) > MAX_VALUE_LENGTH or not value.isprintable():
            raise FieldError(
                f"{field}: expected at most {MAX_VALUE_LENGTH} printable characters", field
            )
        out[name] = value.strip()
    return out
