"""params.yaml, read the way DVC reads it, and strict typed access to one section.

DVC parses params.yaml as YAML 1.2 (ruamel.yaml, safe): `1e-3` is a number and `yes` is a
string. Reading it any other way would let `dvc params diff` and a stage disagree about a
value, so this module uses the same parser. Every stage turns its section into a frozen
dataclass (see `load`) before doing any work; every error names `section.key`.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from recsys.errors import StageError
from recsys.paths import PARAMS_FILE

T = TypeVar("T")
_REQUIRED = object()


# The last file text parsed and its params: a stage reads its sections one call at a time,
# and each call parsed the file twice (the shape check, then the load); evaluate made five
# calls, 0.065 s of its 0.39 s under cProfile.
_last_parsed: dict[str, dict[str, Any]] = {}


def read_params_file(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """The whole file as plain dicts; any problem is one StageError line naming the file.

    Each call reads the file; a text already parsed is not parsed again (the caller gets its
    own copy)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run from the repository root") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: cannot read ({exc})") from None
    if text not in _last_parsed:
        params = _parse_params(path, text)
        _last_parsed.clear()
        _last_parsed[text] = params
    return copy.deepcopy(_last_parsed[text])


def _parse_params(path: Path, text: str) -> dict[str, Any]:
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        _check_shape(path, YAML(typ="safe").parse(text))
        params = YAML(typ="safe").load(text)
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise StageError(f"{path}: line {line}: duplicate key; expected each key once") from None
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        problem = exc.problem or "syntax error"
        raise StageError(f"{path}: line {line}: not valid YAML ({problem})") from None
    except YAMLError as exc:
        raise StageError(f"{path}: not valid YAML ({exc})") from None
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise StageError(f"{path}: expected a mapping of sections at the top level")
    return params


MAX_DEPTH = 32  # params.yaml nests 3 levels; ruamel's composer recurses per level
MAX_NODES = 100_000  # values after expanding aliases; ours has a few hundred


def update_params_file(path: Path | str, updates: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge `updates` (section -> {key: value}) into a params file, as `dvc exp run -S` sets
    values; for the scratch copies of tests and benchmarks (comments are not kept)."""
    import yaml

    path = Path(path)
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _check_shape(path: Path, events: Any) -> None:
    """Refuse, from the parser's event stream (no recursion, nothing built), a file nested
    deeper than MAX_DEPTH or whose aliases expand past MAX_NODES values: a "billion laughs"
    of nine levels of `[*b, *b, ...]` is a few lines but hangs anything that walks it."""
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        ScalarEvent,
    )

    sizes: dict[str, int] = {}  # anchor -> values it expands to
    stack: list[tuple[str | None, int]] = [(None, 0)]  # (anchor, values so far) per level
    for event in events:
        line = event.start_mark.line + 1 if event.start_mark else "?"
        if isinstance(event, CollectionStartEvent):
            if len(stack) > MAX_DEPTH:
                raise StageError(f"{path}: line {line}: nested deeper than {MAX_DEPTH} levels")
            stack.append((event.anchor, 0))
            continue
        if isinstance(event, CollectionEndEvent):
            anchor, size = stack.pop()
            size += 1
        elif isinstance(event, ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, AliasEvent):
            anchor, size = None, sizes.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        parent_anchor, total = stack[-1]
        total = min(total + size, MAX_NODES + 1)
        stack[-1] = (parent_anchor, total)
        if total > MAX_NODES:
            raise StageError(
                f"{path}: line {line}: aliases expand to over {MAX_NODES:,} values; "
                "expected plain params (a YAML alias bomb?)"
            )


def _refuse_dates(values: Any, where: str) -> None:
    """DVC cannot record a YAML date in dvc.lock, so `dvc repro` would fail later: refuse now."""
    if isinstance(values, dict):
        for key, value in values.items():
            _refuse_dates(value, f"{where}.{key}")
    elif isinstance(values, list):
        for i, value in enumerate(values):
            _refuse_dates(value, f"{where}[{i}]")
    elif isinstance(values, dt.date):
        raise StageError(
            f"params.yaml: {where} = {values.isoformat()} is an unquoted date, which DVC cannot "
            f'store; expected a quoted string: "{values.isoformat()}"'
        )


class Section:
    """Typed, validated access to one params section; every error names `section.key`.

    Reading a key marks it used, and `check_unknown()` rejects keys nobody read, so a typo
    such as `als.factor` fails instead of being silently ignored.
    """

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self.name = name
        self.values = dict(values)
        self._read: set[str] = set()

    @classmethod
    def load(cls, name: str, path: Path | str = PARAMS_FILE, optional: bool = False) -> Section:
        params = read_params_file(path)
        values = params.get(name)
        if values is None and optional:
            values = {}
        if not isinstance(values, dict):
            raise StageError(f"{path}: missing section '{name}:' (a mapping of params)")
        _refuse_dates(values, name)
        return cls(name, values)

    def ignore(self, keys: tuple[str, ...]) -> None:
        """Accept `keys` unread: params of a mode that is not active (kept for switching)."""
        self._read.update(keys)

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.values:
            return self.values[key]
        if default is _REQUIRED:
            raise StageError(f"params.yaml: missing {self._key(key)}")
        return default

    def _fail(self, key: str, value: Any, allowed: str) -> StageError:
        return StageError(f"params.yaml: {self._key(key)} = {value!r}; expected {allowed}")

    def int(self, key: str, default: Any = _REQUIRED, *, min: int | None = None,
            max: int | None = None, hint: str = "") -> int:  # fmt: skip
        value = self._get(key, default)
        allowed = f"an integer{_bounds(min, max)}{hint}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, value, allowed)
        if (min is not None and value < min) or (max is not None and value > max):
            raise self._fail(key, value, allowed)
        return value

    def float(self, key: str, default: Any = _REQUIRED, *, min: float | None = None,
              max: float | None = None, min_exclusive: bool = False,
              max_exclusive: bool = False) -> float:  # fmt: skip
        value = self._get(key, default)
        allowed = f"a number{_bounds(min, max, min_exclusive, max_exclusive)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, value, allowed)
        value = float(value)
        if not math.isfinite(value):
            raise self._fail(key, value, allowed)
        if min is not None and (value < min or (min_exclusive and value == min)):
            raise self._fail(key, value, allowed)
        if max is not None and (value > max or (max_exclusive and value == max)):
            raise self._fail(key, value, allowed)
        return value

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, value, "true or false")
        return value

    def choice(self, key: str, choices: list[str], default: Any = _REQUIRED) -> str:
        value = self._get(key, default)
        if value not in choices:
            raise self._fail(key, value, "one of " + ", ".join(choices))
        return value

    def choices(self, key: str, choices: list[str], default: Any = _REQUIRED) -> list[str]:
        """A non-empty list of distinct names, each one of `choices` (what to compare, which
        generators to combine)."""
        value = self._get(key, default)
        if (
            not isinstance(value, list)
            or not value
            or any(v not in choices for v in value)
            or len(set(value)) != len(value)
        ):
            raise self._fail(
                key, value, "a non-empty list of distinct names from " + ", ".join(choices)
            )
        return list(value)

    def str(self, key: str, default: Any = _REQUIRED, *, empty: bool = False) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise self._fail(key, value, "a string" if empty else "a non-empty string")
        return value

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        """The value as YAML gave it, for a key whose type the caller checks (a union)."""
        return self._get(key, default)

    def mapping(self, key: str, default: Any = _REQUIRED) -> dict[str, Any]:
        value = self._get(key, default)
        if not isinstance(value, dict) or not value:
            raise self._fail(key, value, "a non-empty mapping")
        return dict(value)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.values) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise StageError(
                f"params.yaml: unknown param {self._key(unknown[0])}; known keys: {known}"
            )


def load(
    parse: Callable[[Section], T],
    name: str,
    path: Path | str = PARAMS_FILE,
    *,
    optional: bool = False,
) -> T:
    """Section `name` of params.yaml parsed by `parse` (a dataclass's `from_section`).

    Keys `parse` did not read are refused, so the whole section is validated before any work.
    An `optional` section may be missing: every key then takes its default.
    """
    section = Section.load(name, path, optional)
    value = parse(section)
    section.check_unknown()
    return value


def _bounds(
    lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False
) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '<='} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
