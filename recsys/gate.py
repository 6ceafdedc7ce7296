"""Champion/challenger gate: promote the freshly trained bundle only if it serves the new
held-out pairs better (or, by the rule, not worse) than the production one.

Both bundles are scored the way a service would use them, on the same users and the same
held-out pairs (`data/test.npz` of the current pipeline, ids through `data/user_ids.csv` and
`data/item_ids.csv`): each bundle's precomputed top-K for the users it knows, its fallback
for the others, mapped through its own id maps, so any two families compare (an EASE
champion against an ALS challenger). An item the champion never saw cannot be in its lists,
so it is a miss for it; the report says how many held-out pairs that is. Per-user AP@K and
NDCG@K come from `recsys.metrics.per_user_metrics`, the routine `evaluate` uses, and the
verdict is the paired bootstrap of challenger - champion over users (`recsys.bootstrap`).

The production model is what the registry's stage (`gate.stage`, `prod`) points at: fetched
with `dvc artifacts get`, or given as a bundle folder (`--champion`, e.g. the one a service
is serving). With `--promote`, a passing challenger is assigned the stage with GTO (HEAD is
registered as a new version if it is not one yet). Exit codes: 0 promoted (or would be,
without `--promote`), 3 champion kept, 2 error. With a global time split (`mask.strategy:
global_time`, cutoff after the champion's data) the held-out pairs are ones neither model
trained on; with a random split the champion may have trained on some, and the gate says so.

    recsys gate [--champion DIR | --repo URL] [--challenger DIR] [--promote]
                          [--json PATH] [--summary PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.bootstrap import paired_difference, verdict
from recsys.bundle import Bundle, load_bundle
from recsys.commands import CommandParser
from recsys.errors import EXIT_USER_ERROR, StageError
from recsys.evaluation import EvaluateParams
from recsys.ids import load_ids
from recsys.io import load_csr, read_json, write_json, write_text
from recsys.metrics import per_user_metrics
from recsys.params import Section, load
from recsys.paths import BUNDLE, ITEM_IDS, SPLIT_JSON, TEST, USER_IDS

EXIT_PROMOTED = 0
EXIT_KEPT = 3
ARTIFACT = "recsys-bundle"  # dvc.yaml `artifacts:`
RULES = ["better", "not_worse"]
GATE_METRICS = {"map_at_k": "MAP", "ndcg_at_k": "NDCG"}


@dataclass(frozen=True)
class GateParams:
    """`gate:` params: when a challenger replaces the champion.

    `better`: for every metric in `metrics`, the 95% interval of challenger - champion lies
    above 0 (significantly better). `not_worse`: its lower end is at least -`margin` (not
    significantly worse by more than `margin`; the challenger is the newer model, so a tie
    goes to fresher data).
    """

    rule: str
    metrics: tuple[str, ...]
    margin: float
    stage: str

    @classmethod
    def from_section(cls, s: Section) -> GateParams:
        metrics = s.choices("metrics", list(GATE_METRICS), ["map_at_k", "ndcg_at_k"])
        return cls(
            rule=s.choice("rule", RULES, "better"),
            metrics=tuple(metrics),
            margin=s.float("margin", 0.0, min=0, max=1),
            stage=s.str("stage", "prod"),
        )


@dataclass(frozen=True)
class Scored:
    """One bundle's per-user AP and NDCG on the held-out users, and what it could not see."""

    ap: np.ndarray
    ndcg: np.ndarray
    known_users: int
    unseen_items: int
    unseen_pairs: int


def served_top_k(bundle: Bundle, user_ids: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """The top-`k` each user gets from `bundle` (fallback for users it does not know), as
    column indices of the held-out matrix (-1 for an item outside it or an empty slot)."""
    bundle.check_n(k)
    served, _ = bundle.recommend_many(user_ids, k)
    pos = np.minimum(np.searchsorted(item_ids, served), item_ids.size - 1)
    return np.where(item_ids[pos] == served, pos, -1).astype(np.int64)


def score_bundle(
    bundle: Bundle, test: sp.csr_matrix, user_ids: np.ndarray, item_ids: np.ndarray, k: int
) -> Scored:
    """Per-user AP@k and NDCG@k of what `bundle` serves to every user with held-out pairs."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    rows = test[users]
    recs = served_top_k(bundle, user_ids[users], item_ids, k)
    per_user = per_user_metrics(recs, rows)
    found_rows, known = bundle.user_rows(user_ids[users])
    personalised = known & bundle.personalised[found_rows]
    seen = np.isin(item_ids, bundle.item_ids)
    unseen_cols = ~seen[rows.indices]
    return Scored(
        ap=per_user["ap"],
        ndcg=per_user["ndcg"],
        known_users=int(np.count_nonzero(personalised)),
        unseen_items=int(np.unique(rows.indices[unseen_cols]).size),
        unseen_pairs=int(np.count_nonzero(unseen_cols)),
    )


def compare(
    champion: Scored, challenger: Scored, samples: int, seed: int
) -> dict[str, dict[str, float | str]]:
    """Paired bootstrap of challenger - champion for each gate metric, same seed for both."""
    out: dict[str, dict[str, float | str]] = {}
    for name, attr in (("map_at_k", "ap"), ("ndcg_at_k", "ndcg")):
        new, old = getattr(challenger, attr), getattr(champion, attr)
        mean, low, high = paired_difference(new, old, samples, seed)
        out[name] = {
            "champion": float(old.mean()),
            "challenger": float(new.mean()),
            "difference": mean,
            "ci_low": low,
            "ci_high": high,
            "verdict": verdict(low, high),
        }
    return out


def rule_holds(result: dict[str, dict[str, Any]], params: GateParams) -> bool:
    """Whether the challenger passes `params.rule` on every metric in `params.metrics`."""
    if params.rule == "better":
        return all(result[m]["ci_low"] > 0 for m in params.metrics)
    return all(result[m]["ci_low"] >= -params.margin for m in params.metrics)


# --------------------------------------------------------------------------- registry


def _tool(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run gto or dvc from this interpreter's environment, capturing its output."""
    exe = Path(sys.executable).parent / args[0]
    command = [str(exe) if exe.exists() else args[0], *args[1:]]
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise StageError(f"{args[0]}: not installed; expected it on PATH") from None


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip(" ❌") for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def prod_version(repo: str, stage: str) -> str | None:
    """`recsys-bundle@vX.Y.Z` the registry's `stage` points at in `repo`, None if none."""
    proc = _tool(["gto", "show", f"{ARTIFACT}#{stage}", "--ref", "-r", repo])
    if proc.returncode == 0:
        return proc.stdout.strip() or None
    if "Cannot find artifact" in proc.stdout + proc.stderr:
        return None  # never registered
    raise StageError(f"gto show {ARTIFACT}#{stage} in {repo}: {_last_line(proc)}")


def fetch_champion(repo: str, stage: str, dest: Path) -> None:
    """`dvc artifacts get` of the stage's version into `dest` (data from the DVC remote)."""
    proc = _tool(["dvc", "artifacts", "get", repo, ARTIFACT, "--stage", stage, "-o", str(dest)])
    if proc.returncode != 0:
        raise StageError(f"dvc artifacts get {repo} {ARTIFACT} --stage {stage}: {_last_line(proc)}")


def promote(stage: str) -> str:
    """Assign `stage` to HEAD with GTO (registering HEAD as the next version if needed);
    return the new `stage` version. Refuses when dvc.lock differs from HEAD: the promoted
    version must be the committed challenger."""
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "dvc.lock"], capture_output=True, text=True
    )
    if dirty.returncode != 0 or dirty.stdout.strip():
        raise StageError(
            "dvc.lock: not committed; expected the challenger committed at HEAD before --promote"
        )
    # GTO's tags are annotated, so git needs a tagger; without one GTO only says where to
    # report a bug
    ident = subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], capture_output=True, text=True)
    if ident.returncode != 0:
        raise StageError(
            "git has no identity for the registry's tags; expected git config user.name and "
            "user.email (or GIT_COMMITTER_NAME and GIT_COMMITTER_EMAIL)"
        )
    proc = _tool(["gto", "assign", ARTIFACT, "HEAD", "--stage", stage])
    if proc.returncode != 0:
        raise StageError(f"gto assign {ARTIFACT} HEAD --stage {stage}: {_last_line(proc)}")
    version = prod_version(".", stage)
    if version is None:
        raise StageError(f"gto assign {ARTIFACT} HEAD --stage {stage}: no version in the stage")
    return version


# --------------------------------------------------------------------------- report


def report_lines(
    label: dict[str, str], sides: dict[str, Scored], result: dict[str, dict[str, Any]], k: int
) -> list[str]:
    """The verdict as plain lines: who, on which users, what each could not see, the
    paired differences."""
    users = sides["challenger"].ap.size
    lines = [f"gate: {users:,} users with held-out pairs ({TEST}), top {k} served by each bundle"]
    for side in ("champion", "challenger"):
        s = sides[side]
        lines.append(
            f"gate: {side} {label[side]}: personalises {s.known_users:,} of them (the "
            f"rest get its fallback); {s.unseen_pairs:,} held-out pairs are on {s.unseen_items:,} "
            "items it never saw (misses for it)"
        )
    for name, r in result.items():
        lines.append(
            f"gate: {GATE_METRICS[name]}@{k} champion {r['champion']:.4f} challenger "
            f"{r['challenger']:.4f} difference {r['difference']:+.4f} "
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] {r['verdict']}"
        )
    return lines


def markdown(lines: list[str], decision: str) -> str:
    """A job summary: the decision first, then the report lines."""
    body = "\n".join(f"- {line.removeprefix('gate: ')}" for line in lines)
    return f"## Champion/challenger gate: {decision}\n\n{body}\n"


# --------------------------------------------------------------------------- CLI


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        description="Score the production bundle (champion) and the new one (challenger) on "
        "the same held-out pairs, print the paired bootstrap verdict for MAP@K and NDCG@K, "
        "and promote the challenger with GTO when the gate rule in params.yaml holds. "
        "Exit 0: promoted (or would be), 3: champion kept, 2: error.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--champion", help="the champion's bundle folder (e.g. the one served)")
    source.add_argument(
        "--repo", default=".", help="git repo whose registry stage is the champion (default .)"
    )
    parser.add_argument("--challenger", default=str(BUNDLE), help=f"new bundle ({BUNDLE})")
    parser.add_argument("--promote", action="store_true", help="assign the stage when it passes")
    parser.add_argument("--json", help="write the verdict as JSON here")
    parser.add_argument("--summary", help="append the verdict as Markdown here (a job summary)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """The gate; returns the exit code."""
    params = load(GateParams.from_section, "gate", optional=True)
    evaluate = load(EvaluateParams.from_section, "evaluate")
    k = evaluate.k
    test = load_csr(TEST)
    user_ids, item_ids = load_ids(USER_IDS, "USER_ID"), load_ids(ITEM_IDS, "ITEM_ID")
    if (user_ids.size, item_ids.size) != test.shape or test.nnz == 0:
        raise StageError(f"{TEST}: no held-out pairs matching {USER_IDS} / {ITEM_IDS}; dvc repro")
    challenger = load_bundle(args.challenger)
    label = {"challenger": f"{args.challenger} ({challenger.metadata['model_type']}, "
             f"bundle {challenger.version})"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        if args.champion:
            champion_dir, name = Path(args.champion), str(args.champion)
        else:
            name = prod_version(args.repo, params.stage) or ""
            champion_dir = Path(tmp) / "champion"
            if name:
                fetch_champion(args.repo, params.stage, champion_dir)
        if not name:
            return _first_model(args, params, label["challenger"])
        champion = load_bundle(champion_dir)
        label["champion"] = f"{name} ({champion.metadata['model_type']}, bundle {champion.version})"
        sides = {
            "champion": score_bundle(champion, test, user_ids, item_ids, k),
            "challenger": score_bundle(challenger, test, user_ids, item_ids, k),
        }
    result = compare(
        sides["champion"], sides["challenger"], evaluate.bootstrap_samples, evaluate.bootstrap_seed
    )
    lines = report_lines(label, sides, result, k)
    strategy = read_json(SPLIT_JSON).get("strategy") if SPLIT_JSON.exists() else None
    if strategy != "global_time":
        lines.append(
            f"gate: note: mask.strategy is {strategy}; the champion may have trained on some "
            "held-out pairs (mask.strategy: global_time avoids it)"
        )
    passed = rule_holds(result, params)
    floor = "0" if params.rule == "better" else f"-{params.margin:g}"
    rule = (
        f"rule {params.rule}: lower end of the interval > {floor} for {', '.join(params.metrics)}"
    )
    decision = "kept the champion"
    version = None
    if passed:
        version = promote(params.stage) if args.promote else None
        decision = f"promoted {version} to {params.stage}" if version else "would promote"
    lines.append(f"gate: {rule}: {'holds' if passed else 'fails'}; {decision}")
    print("\n".join(lines))
    _write_outputs(args, lines, decision, passed, version, result, sides, label, params)
    return EXIT_PROMOTED if passed else EXIT_KEPT


def _first_model(args: argparse.Namespace, params: GateParams, label: str) -> int:
    """No version in the stage yet: the challenger has nothing to beat."""
    version = promote(params.stage) if args.promote else None
    decision = f"promoted {version} to {params.stage}" if version else "would promote"
    line = f"gate: no version in {params.stage} yet; challenger {label}: {decision}"
    print(line)
    _write_outputs(args, [line], decision, True, version, {}, {}, {"challenger": label}, params)
    return EXIT_PROMOTED


def _write_outputs(
    args: argparse.Namespace,
    lines: list[str],
    decision: str,
    passed: bool,
    version: str | None,
    result: dict[str, Any],
    sides: dict[str, Scored],
    label: dict[str, str],
    params: GateParams,
) -> None:
    if args.json:
        write_json(
            args.json,
            {
                "promoted": passed and version is not None,
                "passed": passed,
                "decision": decision,
                "version": version,
                "rule": {
                    "rule": params.rule,
                    "metrics": list(params.metrics),
                    "margin": params.margin,
                    "stage": params.stage,
                },  # fmt: skip
                "bundles": label,
                "metrics": result,
                "unseen": {
                    side: {
                        "users_known": s.known_users,
                        "items": s.unseen_items,
                        "pairs": s.unseen_pairs,
                    }  # fmt: skip
                    for side, s in sides.items()
                },
            },
        )
    if args.summary:
        path = Path(args.summary)
        previous = path.read_text() if path.exists() else ""
        write_text(path, previous + markdown(lines, decision))


def main(argv: list[str] | None = None) -> int:
    """`recsys gate`: exit 0 promoted (or would be), 3 kept, 2 a user error (one line)."""
    try:
        return run(_parse(argv))
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
