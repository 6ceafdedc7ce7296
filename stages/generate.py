"""Stage `generate`: the event log, item and user tables (the synthetic shop, or your files)."""

from __future__ import annotations

from dataclasses import dataclass

from recsys.cli import run_stage
from recsys.events import ImportParams, import_events
from recsys.params import Section, load
from recsys.shop import ShopParams, build_shop, write_outputs

SOURCES = ["synthetic", "files"]


@dataclass(frozen=True)
class GenerateParams:
    """`generate:` params: the source, and the params of that source (the other's are kept
    in params.yaml for switching back, and ignored)."""

    shop: ShopParams | None
    files: ImportParams | None

    @classmethod
    def from_section(cls, s: Section) -> GenerateParams:
        if s.choice("source", SOURCES, "synthetic") == "synthetic":
            s.ignore(ImportParams.KEYS)
            return cls(shop=ShopParams.from_section(s), files=None)
        s.ignore(ShopParams.KEYS)
        return cls(shop=None, files=ImportParams.from_section(s))


def main() -> None:
    params = load(GenerateParams.from_section, "generate")
    if params.files is not None:
        import_events(params.files)
        return
    catalogue, users, events = build_shop(params.shop)
    write_outputs(catalogue, users, events)
    print(
        f"generate: synthetic shop (seed {params.shop.seed}): {len(events):,} events, "
        f"{len(users):,} users, {len(catalogue):,} items"
    )


if __name__ == "__main__":
    run_stage(main)
