"""Compare two runs locally: metrics, params, and whether map_at_k's change is beyond noise.

    recsys compare REV_A REV_B [--out report.md] [--repo DIR]

Each side is a git revision (branch, tag, commit), an experiment name from `dvc exp show`
(e.g. `bally-sups`), or `workspace`. Both sides' files come from git and DVC: metrics through
`dvc metrics diff`, the per-user values through `dvc get` (from the local cache, or the
remote after `dvc exp pull`). The report is the pull-request report's (`recsys report`)
with REV_A as the base: a paired bootstrap over the same users when both runs evaluated the
same held-out pairs, else the two runs' 95% intervals.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from recsys.commands import CommandParser
from recsys.commands.report import (
    WORKSPACE,
    ReportError,
    build_report,
    check_repo_dir,
    write_report,
)
from recsys.errors import EXIT_USER_ERROR


def resolve(repo: Path, name: str) -> str:
    """A git revision as given, or the commit of the experiment called `name` (experiments
    live under refs/exps/, which plain git revisions do not reach)."""
    if name == WORKSPACE:
        return name
    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if known.returncode == 0:
        return name
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"],
        cwd=repo, capture_output=True, text=True, check=False,
    ).stdout.split("\n")  # fmt: skip
    matches = [line.split()[1] for line in refs if line and line.split()[0].endswith(f"/{name}")]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ReportError(f"experiment name {name!r} is ambiguous; give its commit instead")
    raise ReportError(f"unknown git revision or experiment {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the run to compare against (revision or experiment)")
    parser.add_argument("new", help="the run to report on (revision, experiment, workspace)")
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root")
    args = parser.parse_args(argv)
    try:
        check_repo_dir(args.repo)
        old, new = resolve(args.repo, args.old), resolve(args.repo, args.new)
        report = build_report(args.repo, old, new)
        report = report.replace(f"`{old}` -> `{new}`", f"`{args.old}` -> `{args.new}`", 1)
        write_report(report, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
