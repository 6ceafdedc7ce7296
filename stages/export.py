"""Stage `export`: the model bundle a recommendation service loads (`recsys.bundle`)."""

from dataclasses import asdict

from recsys.blas import describe
from recsys.bundle import build_bundle
from recsys.cli import run_stage
from recsys.coldstart import ColdStartParams, build_coldstart, load_user_attributes
from recsys.errors import StageError
from recsys.fallback import ExportParams, load_item_categories
from recsys.families import load_family, load_model, model_file
from recsys.ids import load_ids, load_item_metadata
from recsys.io import atomic_dir, load_csr, md5sum, read_json
from recsys.params import load
from recsys.paths import BUNDLE, ITEM_IDS, ITEMS, METRICS_JSON, TRAIN, USER_IDS, USERS
from recsys.threads import stage_threads


def main() -> None:
    params = load(ExportParams.from_section, "export")
    cold = load(ColdStartParams.from_section, "coldstart", optional=True)
    # recorded in the metadata, validated as train does
    family, family_params = load_family()
    threads = stage_threads()
    user_ids, item_ids = load_ids(USER_IDS, "USER_ID"), load_ids(ITEM_IDS, "ITEM_ID")
    params.check_items(item_ids.size, ITEM_IDS)
    train = load_csr(TRAIN)
    if train.shape != (user_ids.size, item_ids.size):
        raise StageError(
            f"{TRAIN} has shape {train.shape} but {USER_IDS}/{ITEM_IDS} list "
            f"{user_ids.size} users x {item_ids.size} items; re-run dvc repro"
        )
    path = model_file(family.type)
    model = load_model(path, family.type, train.shape, threads)
    extra = {
        "params": {
            "model": {"type": family.type},
            family.type: asdict(family_params),
            "export": asdict(params),
            "coldstart": asdict(cold),
        },
        "metrics": read_json(METRICS_JSON),
        "inputs_md5": {str(TRAIN): md5sum(TRAIN), str(path): md5sum(path)},
        "platform": describe(),  # CPU architecture, BLAS kernels, library versions
    }
    categories = load_item_categories(ITEMS, item_ids)
    item_metadata = load_item_metadata(ITEMS, item_ids)  # category, style, price, description
    attributes = load_user_attributes(USERS, user_ids, cold.columns)
    coldstart = build_coldstart(train, attributes, cold, params.fallback_size, categories)
    with atomic_dir(BUNDLE) as out:
        meta = build_bundle(
            out, model, train, user_ids, item_ids, categories, params, extra, item_metadata,
            coldstart=coldstart, user_attributes=attributes,
        )  # fmt: skip
    print(
        f"export: {BUNDLE}/ ({family.type}) with top-{params.top_n} for "
        f"{meta['personalised_users']:,} of {meta['users']:,} users, fallback of "
        f"{meta['fallback_size']} items; cold start: {cold.strategy}, "
        f"{coldstart.level.size} groups over {', '.join(coldstart.columns) or 'no columns'}"
    )


if __name__ == "__main__":
    run_stage(main)
