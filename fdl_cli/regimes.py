"""Pure rules: measures -> regime verdict + evidence; the thresholds live in one frozen dataclass.

Regimes of SPEC.md §7: **coefficient** (the features did not move: all learning is in the last layer),
**MF** (minimal feature: the learned function rides on about C eigenfunctions) and **EF** (extended
feature: the features moved and the function uses many more than C eigenfunctions). The reasoning
behind each threshold is in docs/regimes.md. No torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fdl_cli.errors import FdlError


@dataclass(frozen=True)
class Thresholds:
    """Every number the verdict depends on (override with `--threshold NAME=VALUE`)."""

    #: CKA to the reference at or above this: the kernel did not move.
    cka_static: float = 0.99
    #: Overlap of the top-C eigenspace with the reference's at or above this: the eigenfunctions did not move.
    overlap_static: float = 0.95
    #: MF when k95 of the utility is at most C + mf_extra (the extra one: the constant/bias direction).
    mf_extra: float = 1.0

    @classmethod
    def with_overrides(cls, overrides: Sequence[str] | Mapping[str, float]) -> Thresholds:
        """Parse NAME=VALUE strings (or a mapping); unknown names are a clear error."""
        names = {f.name for f in fields(cls)}
        pairs: dict[str, float] = {}
        items = overrides.items() if isinstance(overrides, Mapping) else (_split(text) for text in overrides)
        for name, value in items:
            if name not in names:
                raise FdlError(
                    f"unknown threshold {name!r}",
                    got=f"known thresholds: {', '.join(sorted(names))}",
                    fix="pass --threshold NAME=VALUE with one of those names",
                )
            pairs[name] = float(value)
        return replace(cls(), **pairs)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _split(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise FdlError(
            f"bad threshold {text!r}", got=text, fix="write it as NAME=VALUE, e.g. --threshold cka_static=0.98"
        ) from None


@dataclass(frozen=True)
class CheckpointVerdict:
    regime: str
    rule: str


def features_static(record: Mapping[str, Any], thresholds: Thresholds) -> bool | None:
    """True when both the kernel (CKA) and the top-C eigenspace (overlap) stayed at the reference."""
    cka, overlap = record.get("cka_init"), record.get("overlap_init")
    if cka is None and overlap is None:
        return None
    static_cka = cka is None or cka >= thresholds.cka_static
    static_overlap = overlap is None or overlap >= thresholds.overlap_static
    return static_cka and static_overlap


def checkpoint_regime(record: Mapping[str, Any], thresholds: Thresholds = Thresholds()) -> CheckpointVerdict:
    """The regime of one checkpoint relative to the reference (SPEC.md §7)."""
    static = features_static(record, thresholds)
    if static is None:
        return CheckpointVerdict("undetermined", "no reference to measure movement against")
    if static:
        return CheckpointVerdict(
            "coefficient",
            f"cka_init ≥ {thresholds.cka_static} and overlap_init ≥ {thresholds.overlap_static}: features unchanged",
        )
    k95, outputs = record.get("k95_utility"), record.get("n_outputs")
    if k95 is None or not outputs:
        return CheckpointVerdict("undetermined", "features moved but the outputs carry no utility to count")
    limit = outputs + thresholds.mf_extra
    if k95 <= limit:
        return CheckpointVerdict("MF", f"features moved and k95_utility = {k95} ≤ C + {thresholds.mf_extra:g} = {limit:g}")
    return CheckpointVerdict("EF", f"features moved and k95_utility = {k95} > C + {thresholds.mf_extra:g} = {limit:g}")
