"""Stage `matrix`: the users x items CSR matrix of confidences, with stable id maps."""

from recsys.cli import run_stage
from recsys.ids import save_ids
from recsys.io import save_csr
from recsys.matrix import build, load_pairs
from recsys.paths import ITEM_IDS, LAST_SEEN, MATRIX, USER_IDS


def main() -> None:
    confidence, last_seen, user_ids, item_ids = build(load_pairs())
    save_csr(MATRIX, confidence)
    save_csr(LAST_SEEN, last_seen)
    save_ids(USER_IDS, "USER_ID", user_ids)
    save_ids(ITEM_IDS, "ITEM_ID", item_ids)
    density = confidence.nnz / (confidence.shape[0] * confidence.shape[1])
    print(
        f"matrix: {confidence.shape[0]:,} users x {confidence.shape[1]:,} items, "
        f"{confidence.nnz:,} pairs (density {density:.3%})"
    )


if __name__ == "__main__":
    run_stage(main)
