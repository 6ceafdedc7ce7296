"""Export stage: everything a recommendation service needs, and nothing else.

`models/bundle/` holds the factors, the id maps, top-N recommendations precomputed for every
known user (training items excluded), the cold-start fallback and `metadata.json` (params,
metrics, input hashes, library versions, shapes). All arrays are pickle-free `.npz` with
fixed-width unicode ids, so a service loads them with numpy alone; `stages.recommend` is
such a reader. No timestamps anywhere: the same inputs give a byte-identical bundle.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from stages.common import (
    BUNDLE,
    BUNDLE_FORMAT,
    ITEM_IDS,
    ITEMS,
    METRICS_JSON,
    MODEL,
    TRAIN,
    USER_IDS,
    Params,
    StageError,
    atomic_dir,
    cpu_budget,
    load_csr,
    load_factors,
    load_ids,
    read_json,
    run_stage,
    worker_threads,
    write_json,
    write_npz,
)
from stages.fallback import build_fallback, load_item_categories
from stages.ranking import model_from_factors, top_k_unseen
from stages.train import read_params as read_als_params


def precompute_recommendations(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: sp.csr_matrix,
    top_n: int,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`top_n` unseen items and their scores for every user (the offline-serving table).

    int32 item indices and float32 scores, users x top_n; -1 / NaN where a user has fewer
    unseen items than top_n.
    """
    model = model_from_factors(user_factors, item_factors, threads or cpu_budget())
    train = sp.csr_matrix(train)
    train.sort_indices()
    return top_k_unseen(model, train, np.arange(train.shape[0]), top_n)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    names = ("implicit", "numpy", "scipy", "pandas")
    return {name: importlib_metadata.version(name) for name in names}


def build_bundle(
    out: Path,
    train: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    categories: np.ndarray | None,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    top_n: int,
    fallback_size: int,
    extra_metadata: dict[str, Any],
    threads: int = 0,
) -> dict[str, Any]:
    """Write the bundle's files into the (empty) directory `out`; return the metadata."""
    user_ids = np.asarray(user_ids, dtype=str)
    item_ids = np.asarray(item_ids, dtype=str)
    recs, scores = precompute_recommendations(user_factors, item_factors, train, top_n, threads)
    # A user whose pairs were all held out has no history: the model's row is noise.
    personalised = np.diff(sp.csr_matrix(train).indptr) > 0
    recs[~personalised] = -1
    scores[~personalised] = np.nan
    fallback = item_ids[build_fallback(train, categories, fallback_size)]

    arrays = {
        "factors.npz": {"user_factors": user_factors, "item_factors": item_factors},
        "ids.npz": {"user_ids": user_ids, "item_ids": item_ids},
        "recommendations.npz": {
            "items": recs,
            "scores": scores,
            "personalised": personalised,
            "fallback": fallback,
        },
    }
    for name, members in arrays.items():
        write_npz(out / name, **members)
    meta = {
        "format": BUNDLE_FORMAT,
        "top_n": top_n,
        "fallback_size": int(fallback.size),
        "users": int(user_ids.size),
        "items": int(item_ids.size),
        "personalised_users": int(personalised.sum()),
        "arrays": {
            f"{name}:{key}": {"shape": list(arr.shape), "dtype": arr.dtype.str}
            for name, members in arrays.items()
            for key, arr in members.items()
        },
    } | extra_metadata
    write_json(out / "metadata.json", meta)
    return meta


def main() -> None:
    params = Params.load("export")
    top_n = params.int("top_n", min=1)
    fallback_size = params.int("fallback_size", min=1)
    params.check_unknown()
    als_params = asdict(read_als_params(Params.load("als")))  # validated as train does

    train = load_csr(TRAIN)
    user_ids = load_ids(USER_IDS, "USER_ID")
    item_ids = load_ids(ITEM_IDS, "ITEM_ID")
    if train.shape != (user_ids.size, item_ids.size):
        raise StageError(
            f"{TRAIN} has shape {train.shape} but {USER_IDS}/{ITEM_IDS} list "
            f"{user_ids.size} users x {item_ids.size} items; re-run dvc repro"
        )
    user_factors, item_factors = load_factors(MODEL, *train.shape)
    categories = load_item_categories(ITEMS, item_ids)
    metrics = read_json(METRICS_JSON)

    extra = {
        "params": {"als": als_params, "export": {"top_n": top_n, "fallback_size": fallback_size}},
        "metrics": metrics,
        "inputs_md5": {str(TRAIN): md5sum(TRAIN), str(MODEL): md5sum(MODEL)},
        "created_by": library_versions(),
    }
    # als.threads > 0 pins the thread count as in training; the output never depends on it.
    threads = worker_threads(als_params["threads"])
    with atomic_dir(BUNDLE) as out:
        meta = build_bundle(
            out,
            train,
            user_ids,
            item_ids,
            categories,
            user_factors,
            item_factors,
            top_n,
            fallback_size,
            extra,
            threads=threads,
        )
    print(
        f"export: {BUNDLE}/ with top-{top_n} for {meta['personalised_users']} of "
        f"{meta['users']} users, fallback of {meta['fallback_size']} items"
    )


if __name__ == "__main__":
    run_stage(main)
