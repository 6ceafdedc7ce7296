"""Model families, one module per algorithm (as in implicit), and the one registry.

`model.type` in params.yaml names the family; its own params section (`als:`, `ease:`, ...)
holds its knobs. Every family implements `recsys.families.base.Family`, which is all that
train, evaluate, export, the bundle and `recsys.recommend` use.

| type | module | model file holds |
|---|---|---|
| als | `als` (implicit ALS) | user/item factors, regularization, alpha |
| bpr | `bpr` (implicit BPR) | user/item factors (item bias column) |
| lmf | `lmf` (implicit LMF) | user/item factors (bias columns) |
| itemknn | `itemknn` (implicit Cosine/BM25/TFIDF) | sparse item x item similarity |
| ease | `ease` (ours, closed form) | dense item x item B |
| rp3beta | `rp3beta` (ours) | sparse item x item random-walk weights |
| popular | `popular` | distinct users per item |
| spark_als | `spark_als` (MLlib ALS, implicit) | user/item factors, regularization, alpha |
| rerank | `rerank` (generators + LightGBM) | generators' arrays, item features, text ranker |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.errors import StageError
from recsys.families.als import AlsModel
from recsys.families.base import Family
from recsys.families.bpr import BprModel
from recsys.families.ease import EaseModel
from recsys.families.itemknn import ItemKnnModel
from recsys.families.lmf import LmfModel
from recsys.families.popular import PopularModel
from recsys.families.rerank import RerankModel
from recsys.families.rp3beta import Rp3betaModel
from recsys.families.spark_als import SparkAlsModel
from recsys.io import load_npz
from recsys.params import Section, load
from recsys.paths import PARAMS_FILE, model_file

FAMILIES: dict[str, type[Family]] = {
    cls.type: cls
    for cls in (
        AlsModel, BprModel, LmfModel, ItemKnnModel, EaseModel, Rp3betaModel, PopularModel,
        SparkAlsModel, RerankModel,
    )
}  # fmt: skip
DEFAULT = "als"


@dataclass(frozen=True)
class ModelParams:
    """`model:` params: which family train fits and evaluate and export use. A params file
    from before the families (no `model:` section) means ALS; dvc.yaml needs the section."""

    type: str = DEFAULT

    @classmethod
    def from_section(cls, s: Section) -> ModelParams:
        return cls(type=s.choice("type", list(FAMILIES), DEFAULT))


def load_model_params(path: Path | str = PARAMS_FILE) -> ModelParams:
    """The validated `model:` section (optional: ALS when missing)."""
    return load(ModelParams.from_section, "model", path, optional=True)


def load_family(path: Path | str = PARAMS_FILE) -> tuple[type[Family], Any]:
    """The family named by `model.type` and its params section, both validated."""
    family = FAMILIES[load_model_params(path).type]
    params = load(family.Params.from_section, family.type, path, optional=family.OPTIONAL_SECTION)
    return family, params


def load_model(
    path: Path | str, expected: str, shape: tuple[int | None, int], threads: int
) -> Family:
    """A saved model, checked: the family `expected`, arrays matching `shape` (users or
    None for a serving copy, items)."""
    arrays = load_npz(path)
    saved = str(arrays.pop("family", ""))
    if saved != expected:
        raise StageError(
            f"{path}: holds a {saved or 'unlabelled'} model; expected {expected} "
            "(model.type); re-run the train stage"
        )
    return FAMILIES[expected].from_arrays(arrays, path, shape, threads)


__all__ = ["FAMILIES", "DEFAULT", "Family", "ModelParams", "load_family", "load_model",
           "load_model_params", "model_file"]  # fmt: skip
