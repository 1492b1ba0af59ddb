"""Pure rules: measures -> regime verdict + evidence; the thresholds live in one frozen dataclass.

Regimes of SPEC.md §7: **coefficient** (the features did not move: all learning is in the last layer),
**MF** (minimal feature: the learned function rides on about C eigenfunctions) and **EF** (extended
feature: the features moved and the function uses many more than C eigenfunctions); **undetermined**
only when the evidence conflicts. The rules, in the order they are tried, and the reasoning behind
each threshold are in docs/regimes.md. No torch, no I/O: records (dicts of the fields of
`fdl_cli.fields`) in, frozen verdicts out.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fdl_cli.errors import FdlError
from fdl_cli.fields import R2_OUTPUT_FIELDS, UNIT_SPEC, number_text

#: Printed with every verdict: the regimes describe how features were learned, not whether that is good.
NOTE = (
    "MF is not generalisation: random labels can reach MF too. The regime says how the features "
    "were learned, not whether the model is good."
)

# Movement of the features relative to the reference checkpoint (one checkpoint).
STATIC, MOVED, CONFLICT, UNKNOWN = "static", "moved", "conflict", "unknown"


@dataclass(frozen=True)
class Thresholds:
    """Every number the verdict depends on (override with `--threshold NAME=VALUE`).

    The defaults are calibrated on the constructed runs of `examples/calibration.py`
    (docs/regimes.md gives the margins).
    """

    #: CKA to the reference at or above this: the kernel did not move.
    cka_static: float = 0.99
    #: Overlap of the top-C eigenspace with the reference's at or above this: the eigenfunctions did not move.
    overlap_static: float = 0.95
    #: Overlap below this moved beyond doubt: if CKA still says static, the evidence conflicts.
    overlap_moved: float = 0.80
    #: MF when k95 of the utility is at most C + mf_extra (the extra one: the constant/bias direction).
    mf_extra: float = 1.0
    #: How many final checkpoints must agree on MF or EF (fewer when the run is shorter).
    final_window: float = 3.0

    def __post_init__(self) -> None:
        problems = []
        for name in MOVEMENT:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name}={threshold_text(value)} is outside [0, 1]")
        if self.overlap_moved > self.overlap_static:
            problems.append(f"overlap_moved={threshold_text(self.overlap_moved)} is above "
                            f"overlap_static={threshold_text(self.overlap_static)}")
        if not (math.isfinite(self.mf_extra) and self.mf_extra >= 0):
            problems.append(f"mf_extra={threshold_text(self.mf_extra)} must be a finite number ≥ 0")
        if not (self.final_window >= 1 and float(self.final_window).is_integer()):
            problems.append(f"final_window={threshold_text(self.final_window)} must be a whole number ≥ 1")
        if problems:
            raise FdlError(
                "inconsistent thresholds",
                got="; ".join(problems),
                fix="CKA and overlap thresholds lie in [0, 1], overlap_moved ≤ overlap_static, mf_extra ≥ 0, "
                "final_window ≥ 1",
            )

    @classmethod
    def with_overrides(cls, overrides: Sequence[str] | Mapping[str, float]) -> Thresholds:
        """Parse NAME=VALUE strings (or a mapping); unknown names are a clear error."""
        names = {f.name for f in fields(cls)}
        pairs: dict[str, float] = {}
        # the name is judged before the value, as compare's: `dlr_tie=abc` was offered `cka_static=0.98`
        items: Iterable[tuple[str, float | str, str | None]] = (
            ((name, value, None) for name, value in overrides.items()) if isinstance(overrides, Mapping)
            else ((*_split(text), text) for text in overrides))
        for name, value, text in items:
            if name not in names:
                shown = threshold_text(float(value)) if text is None else _value_text(str(value))
                # compare's own (dlr_tie): the movement thresholds it shares are classify's too
                if (compares := named_alike(name, set(COMPARE_THRESHOLDS) - names)) is not None:
                    raise FdlError(
                        f"unknown threshold {name!r}: {compares} is a threshold of fdl compare, not of fdl classify",
                        got=f"known thresholds: {', '.join(sorted(names))}",
                        fix=f"pass it to fdl compare (--threshold {compares}={shown}); fdl classify "
                        "takes --threshold NAME=VALUE with one of those names",
                    )
                near = near_names(name, names)  # CKA_STATIC too
                raise FdlError(
                    f"unknown threshold {name!r}" + (f" (did you mean {' or '.join(near)}?)" if near else ""),
                    got=f"known thresholds: {', '.join(sorted(names))}",
                    fix=f"pass --threshold {near[0]}={shown}" if len(near) == 1 else
                    "pass --threshold NAME=VALUE with one of those names",
                )
            pairs[name] = float(value) if text is None else _number(text, name, str(value))
        return replace(cls(), **pairs)

    def as_dict(self) -> dict[str, float | int]:
        """name -> value; the counts (`COUNTS`) as integers when whole (`fdl classify --json` printed
        `"final_window": 3.0`), a fractional mf_extra as given."""
        values: dict[str, float | int] = asdict(self)
        for name in COUNTS:
            value = float(values[name])
            if value.is_integer():
                values[name] = int(value)
        return values


#: The thresholds that count (eigenfunctions beyond C, checkpoints): integers in `Thresholds.as_dict`.
COUNTS = ("mf_extra", "final_window")
#: The thresholds of feature movement (`feature_movement`), which `fdl compare` takes too: its verdict says which
#: run's features moved by them, so a run classify calls coefficient under an override is static in compare's words
#: under the same one. Their defaults, ranges and checks are `Thresholds`' alone.
MOVEMENT = ("cka_static", "overlap_static", "overlap_moved")

#: `fdl compare`'s tie tolerance (`--threshold dlr_tie=VALUE`): two D_LR values at most this far apart are a tie
#: when deciding which run is richer. Measured (session 21) on the sample run (25 checkpoints) and on a wider
#: LayerNorm/GELU MLP (6 checkpoints, two layers), each analysed again: in bfloat16 |Δ D_LR| reached 2.3e-4, in
#: float16 3.9e-5, with another --batch-size 4e-9. A run called richer by less was rounding's, not training's;
#: 1e-3 keeps ~4x that margin and stays below the smallest gap the paper tells apart (0.031 vs 0.034). Not a bound:
#: a small CNN's initialisation moved by 0.0107 in bfloat16 (docs/measures.md, "Tie tolerance").
DLR_TIE = 1e-3
#: The thresholds `fdl compare --threshold NAME=VALUE` takes, with their defaults: its own dlr_tie, then the movement
#: thresholds it shares with classify (`MOVEMENT`, defaults from `Thresholds`). Here, in the pure core: classify names
#: dlr_tie as compare's (`Thresholds.with_overrides`); fdl_cli.report, which reads stores and imports rich, uses them.
COMPARE_THRESHOLDS: Mapping[str, float] = {"dlr_tie": DLR_TIE, **{name: getattr(Thresholds(), name) for name in MOVEMENT}}


def movement_thresholds(values: Mapping[str, float]) -> Thresholds:
    """The `Thresholds` of feature movement that `values` (compare's: `COMPARE_THRESHOLDS` with overrides) set; the
    others at their defaults, which `feature_movement` does not read."""
    return Thresholds.with_overrides({name: values[name] for name in MOVEMENT if name in values})


def named_alike(name: str, names: Iterable[str]) -> str | None:
    """The one of `names` that `name` is, in any case and with '-' for '_' (`DLR-TIE`: dlr_tie), else None: a
    threshold of the other command (classify's given to compare, compare's to classify) is named as such."""
    folded = name.strip().casefold().replace("-", "_")
    return next((known for known in names if known == folded), None)


def near_names(name: str, names: Iterable[str]) -> list[str]:
    """The known name `name` was likely meant as, or the two it is as close to (`overlap`: overlap_moved or
    overlap_static, where one alone, in a fix to copy, set the one the user may not have meant); [] for none.
    Classify's and compare's `--threshold` both suggest with it."""
    folded = name.casefold()
    scored = sorted(((difflib.SequenceMatcher(None, folded, known).ratio(), known) for known in names), reverse=True)
    close = [(ratio, known) for ratio, known in scored if ratio >= 0.6]
    if len(close) > 1 and close[0][0] - close[1][0] < 0.05:
        return sorted(known for _, known in close[:2])
    return [known for _, known in close[:1]]


def threshold_text(value: float) -> str:
    """A threshold as text: its shortest form (`0.99`, `3`), every digit it was given (`0.9999999`, which
    `:g` rounded to "1" in classify's rule and thresholds lines), never `-0`."""
    value = float(value) + 0.0
    shown = f"{value:g}"
    return shown if float(shown) == value else repr(value)


def _split(text: str) -> tuple[str, str]:
    """NAME=VALUE as (name, value text); the value is read once the name is known (`_number`)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise FdlError(f"bad threshold {text!r}: no '=' between a name and a value",
                       fix="write it as NAME=VALUE, e.g. --threshold cka_static=0.98")
    return name.strip(), value


def _value_text(value: str) -> str:
    """A value given to a threshold of the other command or misspelt, as its fix shows it: its shortest form
    (`threshold_text`) where it is a finite number, else VALUE."""
    try:
        number = float(value)
    except ValueError:
        return "VALUE"
    return threshold_text(number) if math.isfinite(number) else "VALUE"


def _number(text: str, name: str, value: str) -> float:
    """The value of the threshold `name` given as `text` (NAME=VALUE), a finite number, else a clear error."""
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise FdlError(
            f"bad threshold {text!r}: its value must be a finite number",
            got=f"{value.strip()!r}" + (" (not finite)" if number is not None else " (not a number)"),
            fix=f"e.g. --threshold {_example(name)}",
        )
    return number


#: A value to show in the example of each threshold's error: its default would change nothing.
_EXAMPLES = {"cka_static": "0.98", "overlap_static": "0.9", "overlap_moved": "0.7", "mf_extra": "2", "final_window": "5"}


def _example(name: str) -> str:
    """NAME=VALUE for an error's example: the threshold named, with a value of its kind (`mf_extra=0.98`
    was offered for a count of eigenfunctions, session 15); cka_static's for a name it does not know."""
    return f"{name}={_EXAMPLES[name]}" if name in _EXAMPLES else "cka_static=0.98"


@dataclass(frozen=True)
class CheckpointVerdict:
    """The regime of one checkpoint, the movement of its features and the rule that fired."""

    regime: str
    rule: str
    movement: str = UNKNOWN


def one_minus_gap(value: float) -> str:
    """A value just below 1 written as 1 − its gap (`1 − 1.3e-06`), where rounding would show 1: a lazy
    run's CKA of 0.9999987 read "min cka_init = 1", as a frozen network's exactly-1 does (session 14)."""
    return f"1 − {1.0 - value:.2g}"


def _fmt(value: Any) -> str:
    """4 significant digits; a value that rounds to 1 without being 1 is shown as `one_minus_gap`."""
    if value is None:
        return "null"
    if isinstance(value, float):
        shown = number_text(value, ".4g")
        return one_minus_gap(value) if shown == "1" and value < 1.0 else shown
    return str(value)


def _fmt_below(value: Any, threshold: float) -> str:
    """`_fmt`, with the significant digits it takes for a value below `threshold` not to read as it: cka_init
    0.98996 read "0.99" beside "features moved (below 0.99 ...)"."""
    shown = _fmt(value)
    digits = 4
    while isinstance(value, float) and value < threshold and digits < 17 and not shown.startswith("1 −") \
            and float(shown) >= threshold:
        digits += 1
        shown = number_text(value, f".{digits}g")
    return shown


def feature_movement(record: Mapping[str, Any], thresholds: Thresholds) -> tuple[str, str]:
    """(movement, reason): did the features move relative to the reference?

    `static` when every available measure is at or above its static threshold; `conflict` when CKA
    says static but the top-C eigenspace moved beyond doubt (overlap below overlap_moved); `moved`
    otherwise; `unknown` without either measure. The reverse (overlap static, CKA moved) is `moved`:
    the uncentered top-C eigenspace holds the near-constant direction, which rarely moves.
    """
    cka, overlap = record.get("cka_init"), record.get("overlap_init")
    if cka is None and overlap is None:
        return UNKNOWN, (
            "cka_init and overlap_init are null: no reference to measure movement against, an anchor "
            "subset too small to measure it (CKA needs 3 anchor points, the overlaps more than k; analyze "
            "warned: raise --anchor-size, or use a larger probe), or features constant over the anchor points "
            "(a dead layer: CKA is 0/0, and zero features have no eigenfunction; analyze warned)"
        )
    th = thresholds
    cka_static = cka is None or cka >= th.cka_static
    overlap_static = overlap is None or overlap >= th.overlap_static
    shown = f"cka_init = {_fmt_below(cka, th.cka_static)}, overlap_init = {_fmt_below(overlap, th.overlap_static)}"
    if cka_static and overlap_static:
        return STATIC, (f"{shown} (≥ {threshold_text(th.cka_static)}, ≥ {threshold_text(th.overlap_static)}): "
                        "features unchanged")
    if cka is not None and overlap is not None and cka_static and overlap < th.overlap_moved:
        return CONFLICT, (
            f"CKA says static (cka_init = {_fmt(cka)} ≥ {threshold_text(th.cka_static)}) but the top-C eigenspace moved "
            f"(overlap_init = {_fmt_below(overlap, th.overlap_moved)} < {threshold_text(th.overlap_moved)})"
        )
    return MOVED, f"{shown}: features moved (below {threshold_text(th.cka_static)} or {threshold_text(th.overlap_static)})"


def checkpoint_regime(
    record: Mapping[str, Any], thresholds: Thresholds = Thresholds(), *, reference: bool = False
) -> CheckpointVerdict:
    """The regime of one checkpoint relative to the reference (SPEC.md §7).

    The reference checkpoint itself is `coefficient` by definition (nothing has moved yet).
    """
    if reference:
        return CheckpointVerdict("coefficient", "the reference checkpoint: nothing has moved yet", STATIC)
    movement, reason = feature_movement(record, thresholds)
    if movement == STATIC:
        return CheckpointVerdict("coefficient", reason, movement)
    if movement in (UNKNOWN, CONFLICT):
        return CheckpointVerdict("undetermined", reason, movement)
    k95, outputs = record.get("k95_utility"), record.get("n_outputs")
    if k95 is None or not outputs:
        return CheckpointVerdict(
            "undetermined", f"{reason}, but the outputs carry no utility to count (k95_utility is null)", movement
        )
    limit = outputs + thresholds.mf_extra
    if k95 <= limit:
        return CheckpointVerdict("MF", f"{reason}; k95_utility = {k95} ≤ C + mf_extra = {threshold_text(limit)}", movement)
    return CheckpointVerdict("EF", f"{reason}; k95_utility = {k95} > C + mf_extra = {threshold_text(limit)}", movement)


@dataclass(frozen=True)
class RunVerdict:
    """The run-level verdict: regime, the rule that fired, its evidence and the per-checkpoint trajectory."""

    regime: str
    rule: str
    evidence: dict[str, Any]
    trajectory: tuple[tuple[int, CheckpointVerdict], ...]
    thresholds: Thresholds
    #: the checkpoints `fdl analyze` refused for their values (NaN or Inf weights, an overflow), which the store
    #: lacks and the verdict does not cover: {"step", "path", "kind", "reason"} each; None: the store records none
    refused: list[dict[str, Any]] | None = None
    #: the changes of the model's code the store was resumed across (`fdl analyze --accept-model-change`, the store's
    #: `model_changes`): the checkpoints from each one's from_step on ran the new code; None: the store records none
    model_changes: list[dict[str, Any]] | None = None

    def as_json(self) -> dict[str, Any]:
        """`{"regime", "evidence", "thresholds", "trajectory": [{"step", "regime"}, ...]}` (DESIGN.md), and
        `refused_steps` where the store records refused checkpoints, `model_changes` where it mixes model code
        (absent otherwise: the object as before)."""
        return {
            "regime": self.regime,
            "evidence": dict(self.evidence),
            "thresholds": self.thresholds.as_dict(),
            "trajectory": [{"step": step, "regime": verdict.regime} for step, verdict in self.trajectory],
            **({"refused_steps": self.refused} if self.refused else {}),
            **({"model_changes": self.model_changes} if self.model_changes else {}),
        }


_EVIDENCE_FIELDS = ("cka_init", "overlap_init", "k95_utility", "n_outputs", "d_lr", "pi_hat_C", "accuracy", "r2")


def _min_field(records: Sequence[Mapping[str, Any]], name: str) -> tuple[float | None, int | None]:
    present = [(r[name], int(r["step"])) for r in records if r.get(name) is not None]
    if not present:
        return None, None
    value, step = min(present)
    return float(value), step


def entered_mf(trajectory: Sequence[tuple[int, CheckpointVerdict]]) -> tuple[int | None, int | None]:
    """(first step that is MF, first step from which every later checkpoint is MF), None when never."""
    first = next((step for step, verdict in trajectory if verdict.regime == "MF"), None)
    stayed = None
    for step, verdict in reversed(trajectory):
        if verdict.regime != "MF":
            break
        stayed = step
    return first, stayed


def after_reference(step: int, reference_step: int | None) -> bool:
    """Whether the checkpoint at `step` is one the run's verdict reads (`classify_run`'s rules): after the
    reference. One before a mid-run `analyze --reference` is measured against a later checkpoint, and the
    reference is static by definition. `fdl compare` judges whether a run's features moved from the same ones."""
    return reference_step is not None and step > reference_step


def classify_run(
    records: Sequence[Mapping[str, Any]],
    thresholds: Thresholds = Thresholds(),
    *,
    reference_step: int | None = None,
    center: bool = False,
) -> RunVerdict:
    """The run's regime, recomputed from the stored measures with `thresholds` (the stored `regime` is ignored).

    Rules, first match wins (docs/regimes.md):
      1. no checkpoint after the reference                 -> undetermined
      2. no checkpoint after the reference moved            -> coefficient
      3. the final checkpoint is undetermined (conflict)    -> undetermined
      4. features moved, but the final checkpoint is static -> undetermined
      5. the last `final_window` moved checkpoints mix MF and EF -> undetermined
      6. otherwise the final checkpoint's regime (MF or EF).
    `records` are sorted by step here; the reference is `reference_step` or the first step. `center`: the store's
    --center, under which the rank is at most n − 1 (`small_probe_line`).
    """
    ordered = sorted(records, key=lambda record: int(record["step"]))
    if reference_step is None and ordered:
        reference_step = int(ordered[0]["step"])
    trajectory = tuple(
        (int(r["step"]), checkpoint_regime(r, thresholds, reference=int(r["step"]) == reference_step)) for r in ordered
    )
    evidence: dict[str, Any] = {"reference_step": reference_step, "n_checkpoints": len(ordered)}
    # From the checkpoints after the reference only, as the run's rules: one before a mid-run --reference is
    # measured against a later checkpoint, and its MF says only that it differs from the reference (an
    # initialisation was "first_mf_step": 0 beside "MF from step 500" before the nineteenth session).
    # `describe` reads the MF ones before it from the trajectory.
    first_mf, stayed_mf = entered_mf(
        [(step, v) for step, v in trajectory if after_reference(step, reference_step)]
    )

    final_records: list[Mapping[str, Any]] = []  # the final checkpoint's record, once the rules reach it

    def verdict(regime: str, rule: str) -> RunVerdict:
        evidence["rule"] = rule
        at_reference = next((r for r in ordered if int(r["step"]) == reference_step), None)
        narrow = narrow_width_line(ordered[-1], thresholds, at_reference) if ordered else None
        if narrow is not None:  # beside the verdict, whose rules are unchanged (docs/regimes.md, "A layer that cannot…")
            evidence["narrow_layer"] = narrow
        small = small_probe_line(ordered[-1], thresholds, center=center) if ordered else None
        if small is not None:  # likewise (docs/regimes.md, "A probe too small for EF")
            evidence["small_probe"] = small
        if final_records and final_records[0].get("output_rank") == 0:
            # A note beside the verdict, whose rules are unchanged (docs/regimes.md, "Constant outputs")
            step = evidence["final_step"]
            evidence["constant_outputs"] = {
                "step": step, "output_rank": 0,
                "note": constant_outputs_line(regime, step, evidence.get("final_pi_hat_C")),
            }
        return RunVerdict(regime, rule, evidence, trajectory, thresholds)

    after = [
        (r, v)
        for r, (step, v) in zip(ordered, trajectory, strict=True)
        if after_reference(step, reference_step)
    ]
    if not after:
        # Counted, not len - 1: the reference itself need not be stored (a run stopped before it).
        before = sum(1 for step, _ in trajectory if step != reference_step)
        if before <= 0:
            return verdict("undetermined", "no checkpoint after the reference: nothing to measure movement against")
        return verdict(
            "undetermined",
            f"no checkpoint after the reference (step {reference_step}): the run's regime is read from "
            f"the checkpoints after it; the {before} before it {'is' if before == 1 else 'are'} classified in the "
            "trajectory only (analyse with the first checkpoint as the reference, the default, to classify the run)",
        )

    moved_records = [r for r, _ in after]
    for name in ("cka_init", "overlap_init"):
        value, step = _min_field(moved_records, name)
        evidence[f"min_{name}"], evidence[f"min_{name}_step"] = value, step
    final_record, final = after[-1]
    evidence["final_step"] = int(final_record["step"])
    evidence.update({f"final_{name}": final_record.get(name) for name in _EVIDENCE_FIELDS})
    # each output's R² beside the pooled final_r2, where the records hold them (`fdl report --json`'s fields)
    evidence.update({f"final_{name}": final_record[name] for name in R2_OUTPUT_FIELDS if name in final_record})
    final_records.append(final_record)
    evidence["final_rule"] = final.rule
    evidence["first_mf_step"], evidence["mf_since_step"] = first_mf, stayed_mf

    movements = [v.movement for _, v in after]
    if all(m == STATIC for m in movements):
        return verdict(
            "coefficient",
            f"no checkpoint after the reference moved: min cka_init = {_fmt(evidence['min_cka_init'])} "
            f"≥ {threshold_text(thresholds.cka_static)} and min overlap_init = {_fmt(evidence['min_overlap_init'])} "
            f"≥ {threshold_text(thresholds.overlap_static)}",
        )
    if final.regime == "undetermined":
        return verdict("undetermined", f"final checkpoint (step {evidence['final_step']}): {final.rule}")
    if final.movement == STATIC:
        moved_step = next((int(r["step"]) for r, v in after if v.movement == MOVED), None)
        if moved_step is None:  # not static somewhere, yet never measured as moved: unmeasured or conflicting
            odd_record, odd = next((r, v) for r, v in after if v.movement != STATIC)
            return verdict(
                "undetermined",
                f"the final checkpoint is static, but step {int(odd_record['step'])} is not: {odd.rule}",
            )
        return verdict(
            "undetermined",
            f"features moved (from step {moved_step}) but the final checkpoint is back at the reference: {final.rule}",
        )
    window = [(int(r["step"]), v.regime) for r, v in after if v.movement == MOVED][-int(thresholds.final_window) :]
    evidence["final_window"] = [{"step": step, "regime": regime} for step, regime in window]
    kinds = {regime for _, regime in window} & {"MF", "EF"}
    if len(kinds) > 1:
        shown = ", ".join(f"{step}: {regime}" for step, regime in window)
        return verdict("undetermined", f"the last {len(window)} moved checkpoints flip between MF and EF ({shown})")
    return verdict(final.regime, f"final checkpoint (step {evidence['final_step']}): {final.rule}")


#: A regime trajectory of more spans than this is shown as its first and last SHOWN_SPANS // 2 spans
#: around a count of those left out: a run whose k95 hovers at C + 1 flips between MF and EF at
#: checkpoint after checkpoint, and 1 000 checkpoints made one line of ~12 000 characters.
SHOWN_SPANS = 12


def elide_spans(parts: Sequence[str], separator: str, *, where: str) -> str:
    """`parts` joined by `separator`, or, beyond SHOWN_SPANS of them, the first and last SHOWN_SPANS // 2
    around "… N more (where) …", N ≥ 3 (the marker is longer than one or two spans)."""
    if len(parts) <= SHOWN_SPANS + 2:
        return separator.join(parts)
    half = SHOWN_SPANS // 2
    left_out = len(parts) - 2 * half
    return separator.join([*parts[:half], f"… {left_out} more spans ({where}) …", *parts[-half:]])


def trajectory_segments(
    trajectory: Sequence[tuple[int, CheckpointVerdict]], *, reference_step: int | None = None
) -> list[tuple[int, int, str]]:
    """Runs of equal regime: [(first step, last step, regime), ...] in step order; with `reference_step`,
    the regimes of checkpoints before it carry BEFORE_REFERENCE (a run of them ends at the reference)."""
    segments: list[tuple[int, int, str]] = []
    for step, checkpoint in trajectory:
        regime = checkpoint.regime + (BEFORE_REFERENCE if reference_step is not None and step < reference_step else "")
        if segments and segments[-1][2] == regime:
            segments[-1] = (segments[-1][0], step, regime)
        else:
            segments.append((step, step, regime))
    return segments


#: Marks the regime of a checkpoint before the reference (an `analyze --reference` after the first step),
#: in the text of `fdl classify` and `fdl report`; the JSON and the stored `regime` are unchanged.
BEFORE_REFERENCE = "*"


def before_reference_line(reference_step: int) -> str:
    """What BEFORE_REFERENCE means, below a trajectory that has it. The per-checkpoint rules measure the
    movement of a checkpoint before the reference against the reference, a later checkpoint: "MF" at the
    initialisation said only that it differs from the trained reference (docs/regimes.md)."""
    return (
        f"{BEFORE_REFERENCE} before the reference (step {reference_step}): their movement (cka_init, overlap_init) is "
        "measured against a later checkpoint, so their regime says only how they differ from the reference, not how "
        "features were learned up to them; the run's regime is read from the checkpoints after it (to classify those "
        "too, analyse again with the first checkpoint as the reference, the default, into a new store: another --out, "
        "or --overwrite, since a store keeps the reference it was analysed with)"
    )


#: The first MF checkpoint's accuracy within this factor of chance (`chance`), and at most half way from it to
#: 1: the text says the function there is still nearly constant (printed only, no rule depends on it).
NEAR_CHANCE = 1.5


def probe_chance(probe: Any) -> dict[str, float]:
    """{"chance_accuracy", "label_entropy"} of a probe as the store records them (a `store.ProbeInfo`:
    `probes.label_chance`), for a verdict's evidence, which `chance` reads; {} where not recorded (a store written
    before they were, a regression's probe). `fdl classify` adds them so; a notebook does the same with
    `verdict.evidence.update(probe_chance(run.probes().get(probe)))` (docs/store.md; None, a probe group the
    reader skipped as damaged, gives {}, 1/C as classify reads it). Both or neither: `chance` reads
    the two together, so one alone (a store edited by hand, or the other's value out of range) would be listed in
    the evidence while the lines read 1/C and log C."""
    share, entropy = getattr(probe, "chance_accuracy", None), getattr(probe, "label_entropy", None)
    if share is None or entropy is None:
        return {}
    return {"chance_accuracy": float(share), "label_entropy": float(entropy)}


def chance(evidence: Mapping[str, Any], classes: int) -> tuple[float, float, str, str]:
    """(chance accuracy, chance cross-entropy, the words for each) that a classify line reads a checkpoint
    against: the probe's own where the store records them (`probes.label_chance`: the largest class's share of
    the labels and their entropy, copied into the evidence by `fdl classify`), else those of a uniform guess over
    the C outputs, 1/C and log C: a head of 1 000 classes on labels of 5 read its accuracy against "chance 0.001"
    where a guess that ignores the input scores 0.200 (docs/regimes.md)."""
    share, entropy = evidence.get("chance_accuracy"), evidence.get("label_entropy")
    if isinstance(share, float) and isinstance(entropy, float):
        return (share, entropy, f"chance {share:{UNIT_SPEC}}: the largest class's share of the probe's labels",
                f"the labels' entropy {entropy:.3f}")
    # "1/C =": a bare "chance 0.250" of a store written before the probe's chance reads as the probe's own
    return 1 / classes, math.log(classes), f"chance 1/C = {1 / classes:{UNIT_SPEC}}", f"log C = {math.log(classes):.3f}"

#: A reference checkpoint at least this far from chance to a perfect fit ((accuracy − 1/C) / (1 − 1/C),
#: and 1 − cross-entropy / log C where it is stored; or R² for regression) already fits the probe: a
#: coefficient verdict then says that the features did not move after it, not that the network never
#: learned them (printed only, no rule depends on it).
TRAINED_REFERENCE = 0.5


#: A relative eigengap (λ_k − λ_{k+1}) / λ_k below this at the overlaps' cut k is a near-tie: the top-k
#: eigenspace is then ill-defined, and a small change of the kernel can rotate it far (Davis–Kahan: the
#: rotation is bounded by the change over the gap). Used by classify's note only; no verdict depends on it.
NEAR_TIE_GAP = 0.2


def relative_gap(eigenvalues: Sequence[float], k: int) -> float | None:
    """(λ_k − λ_{k+1}) / λ_k of a descending spectrum (λ beyond the stored ones are 0); None when λ_k is
    not stored or not positive (the top-k eigenspace holds null directions)."""
    if k < 1 or len(eigenvalues) < k or not eigenvalues[k - 1] > 0:
        return None
    after = float(eigenvalues[k]) if len(eigenvalues) > k else 0.0
    return (float(eigenvalues[k - 1]) - max(after, 0.0)) / float(eigenvalues[k - 1])


def overlap_alone(record: Mapping[str, Any], thresholds: Thresholds) -> bool:
    """Whether a checkpoint's movement rests on the overlap alone: CKA says static, the overlap does not
    (`moved` when the overlap is at or above overlap_moved, `conflict` below it)."""
    cka, overlap = record.get("cka_init"), record.get("overlap_init")
    return cka is not None and overlap is not None and cka >= thresholds.cka_static and overlap < thresholds.overlap_static


def overlap_tie_line(tie: Mapping[str, Any], thresholds: Thresholds) -> str:
    """classify's note on a final checkpoint whose movement rests on the overlap alone (`overlap_alone`):
    the eigengaps at the cut k of the reference and of that checkpoint, and what they say (session 15: a
    lazy run whose top two eigenvalues were within 7 % read EF on overlap_init = 0.89 at CKA 0.998; the
    top-2 eigenspace, past the tie, overlapped 0.9994).

    A near-tie on both sides (`near_tie`) leaves both top-k eigenspaces ill-defined; on one side only
    (`crossing`), eigenvalues crossed the cut: the other side's top-k space is well defined and differs,
    which is a change of the kernel (a direction trained past another reads so: the session's study of
    51 constructed runs), and no `--overlap-k` is suggested then."""
    k, step, reference = tie["k"], tie["step"], tie["reference_step"]
    head = (f"the move at step {step} rests on the overlap alone (cka_init = {_fmt(tie['cka_init'])} ≥ "
            f"{threshold_text(thresholds.cka_static)}, overlap_init = {_fmt(tie['overlap_init'])} < "
            f"{threshold_text(thresholds.overlap_static)}); "
            f"the eigengap (λ_{k} − λ_{k + 1}) / λ_{k} is {_percent(tie['gap_reference'])} at the reference (step "
            f"{reference}) and {_percent(tie['gap_final'])} at step {step}")
    wider = tie.get("wider_k")
    past = (f"the top-{wider} eigenspaces of step {reference} and step {step} overlap {_fmt(tie['wider_overlap'])} "
            "(from the stored eigenfunctions)" if wider is not None else None)
    if tie.get("crossing"):
        tied, clear = ((f"the reference (step {reference})", f"step {step}") if tie["gap_reference"] < NEAR_TIE_GAP
                       else (f"step {step}", f"the reference (step {reference})"))
        text = (f"{head}: near-tied (below {NEAR_TIE_GAP:g}) at {tied} only, so eigenvalues crossed the cut k = {k}: "
                f"the top-{k} eigenspace of {clear} is well defined and differs, a change of the kernel (a direction "
                "trained past another reads so)")
        if past is None:
            return text
        if tie["wider_overlap"] >= thresholds.overlap_static:
            return f"{text}; past the tie, {past}: the same directions, in another order"
        # the wider eigenspaces differ too: the crossing is not all that moved
        return (f"{text}; past the tie, {past}, below overlap_static = "
                f"{threshold_text(thresholds.overlap_static)}: the wider eigenspace moved too")
    if not tie["near_tie"]:
        # a --center store's overlap is centered too: only the weighting differs from CKA's
        why = ("the overlap weighs weak directions as much as strong ones" if tie.get("centered")
               else "the overlap is uncentered, and weighs weak directions as much as strong ones")
        return (f"{head}: no near-tie (below {NEAR_TIE_GAP:g}), so the top-{k} eigenspace itself turned while the "
                f"centered kernel stayed close ({why})")
    text = (f"{head}: a near-tie (below {NEAR_TIE_GAP:g}) on both sides of the cut k = {k} lets a small change of "
            f"the kernel rotate the top-{k} eigenspace, so the overlap may measure the tie rather than moved "
            "features (a run stopped while a learned direction overtakes another reads the same)")
    if past is None:
        return text + f" ({_no_wider(tie)})"
    return f"{text}. Past the tie, {past}: `fdl analyze --overlap-k {wider}` classifies on that overlap"


def _no_wider(tie: Mapping[str, Any]) -> str:
    """Why a near-tie's note gives no overlap past the tie: no k' up to 2k clears it, or the store holds too
    few eigenfunctions to look that far ("no k up to 1" of a --top-k 1 store tried no k' at all)."""
    k, limit = tie["k"], tie.get("wider_limit")
    columns, asked = tie.get("columns"), tie.get("top_k")
    if limit is None or columns is None or limit >= 2 * k:
        return f"no k up to {2 * k if limit is None else limit} clears the tie"
    if asked is not None and columns < asked:
        # fewer than --top-k asked for: the features span no more directions on the anchor points
        return (f"no k from {k + 1} to {limit} clears the tie, and the features span no more directions on the "
                "anchor points" if limit > k else f"the features span no direction past k = {k} on the anchor points")
    more = f"`fdl analyze --top-k {2 * k}` stores enough to look up to 2k = {2 * k}"
    if limit <= k:
        return f"the store holds no eigenfunction past k = {k} (--top-k {columns}): {more}"
    return f"no k from {k + 1} to {limit}, the eigenfunctions stored (--top-k {columns}), clears the tie: {more}"


def _percent(value: float) -> str:
    return f"{number_text(100 * value, '.3g')} %"


def reference_fit(record: Mapping[str, Any], evidence: Mapping[str, Any] | None = None) -> tuple[float, str] | None:
    """(share of the way from chance to a perfect fit, its words) of a checkpoint, None without a measure.

    For classes, the lesser of the accuracy's share and the cross-entropy's (1 − CE / log C, log C being
    the cross-entropy of a uniform guess). 1/C is chance for balanced classes only, which the store does
    not record: an untrained network that predicts the majority class everywhere on a probe of 84 % class
    0 scored 0.8375, 68 % of the way from 1/2 to 1 (session 14), but its cross-entropy stays near log C. Where the
    store records the probe's own chance (`evidence`, `chance`), from that instead; None for a probe of one class
    (nothing but a constant to fit)."""
    accuracy, classes, r2 = record.get("accuracy"), record.get("n_outputs"), record.get("r2")
    if accuracy is not None and classes and classes >= 2:
        level, baseline, level_words, baseline_words = chance(evidence or {}, classes)
        if level >= 1.0 or baseline <= 0.0:
            return None
        share = (accuracy - level) / (1 - level)
        words = f"accuracy {number_text(accuracy, UNIT_SPEC)}, {level_words}"
        entropy = record.get("cross_entropy")  # null in stores written before it (fields.ADDED_FIELDS)
        if entropy is not None:
            share = min(share, 1 - entropy / baseline)
            words += f", cross-entropy {number_text(entropy, '.3f')} against {baseline_words}"
        return share, words
    if r2 is not None:
        return float(r2), f"R² {number_text(r2, '.3f')}"
    return None


def constant_outputs_line(regime: str, step: int, pi_hat_c: float | None) -> str:
    """classify's note on a run whose outputs are constant over the probe at its final checkpoint (output_rank
    0: a zero or constant head). Without --center, Π̂ of a constant non-zero output is measured (the energy of
    the outputs' mean on each eigenfunction), and a head of zero weights and a bias read a confident MF or EF
    beside D_LR 1.0, with nothing to say that the network's function is constant (session 21)."""
    pi_hat = ("Π̂ is 0/0 there (the outputs all 0)" if pi_hat_c is None
              else "Π̂ (k95_utility, pi_hat_C) measures where the constant lies on the eigenfunctions, not a learned "
                   "function")
    regime_says = (f": {regime} here says only that the features moved (cka_init, overlap_init)"
                   if regime in ("MF", "EF") else "")
    return (f"the model's outputs are constant over the probe at the final checkpoint (step {step}; output_rank 0: "
            f"a zero or constant head?), so the regime reads nothing learned{regime_says}; D_LR is 1.0 there by its "
            f"degenerate rule, and {pi_hat}")


def narrow_dlr_clause(final: Mapping[str, Any], reference: Mapping[str, Any] | None) -> str | None:
    """The narrow-layer notes' word on D_LR, for a layer of p ≤ C units (`final`'s `n_features`): the outputs of a
    linear head on it can span every feature direction (dlr_alignment 1), so D_LR = 1 − √(feature_pr / p), set by
    how evenly the features spread over p directions whatever was learned: 0 by the formula for one unit, at most
    1 − 1/√p otherwise, at initialisation too (a 2-unit layer before a 3-class head read 0.078 at step 0, a 1-unit
    one 0.0, "maximally rich"). None for a wider layer. `reference` gives the reference's D_LR to show it."""
    width, outputs = final.get("n_features"), final.get("n_outputs")
    if not isinstance(width, int) or not isinstance(outputs, int) or not 0 < width <= outputs:
        return None
    value = reference.get("d_lr") if reference is not None else None
    at_reference = (f" ({value:.4f} at the reference, step {reference.get('step')})"
                    if reference is not None and isinstance(value, float) else "")
    if width == 1:
        return ("and D_LR = 0 by the formula wherever the outputs span the one unit's direction (a linear head on it: "
                f"dlr_alignment 1, feature_pr 1), at initialisation as after training{at_reference}, so D_LR does not "
                "measure richness here")
    return (f"and D_LR is bounded by the width too: outputs that span all p = {width} ≤ C = {outputs} feature directions "
            "(dlr_alignment 1, as a linear head on them gives unless --dlr-energy leaves one out) make D_LR = "
            f"1 − √(feature_pr / p) ≤ 1 − 1/√p = {1 - 1 / math.sqrt(width):.3f}{at_reference}, however the features "
            "were learned: it cannot read lazy here")


def narrow_width_line(record: Mapping[str, Any], thresholds: Thresholds,
                      reference: Mapping[str, Any] | None = None) -> str | None:
    """The evidence `narrow_layer` of a run whose layer (at its last checkpoint, `record`) has p ≤ C + mf_extra
    units: k95_utility ≤ rank ≤ p, so the MF-vs-EF rule cannot return EF, whatever the verdict (a 64-unit layer
    before a 1 000-class head read MF, coefficient or undetermined with nothing in `--json` to say EF was out of
    reach). None otherwise."""
    width, outputs = record.get("n_features"), record.get("n_outputs")
    if not isinstance(width, int) or not isinstance(outputs, int) or outputs < 1:
        return None
    limit = outputs + thresholds.mf_extra
    if width > limit:
        return None
    dlr = narrow_dlr_clause(record, reference)
    return (f"k95_utility ≤ p = {width} ≤ C + mf_extra = {threshold_text(limit)}: the layer is too narrow for the rule "
            "to find EF" + (f"; {dlr}" if dlr else ""))


def small_probe_line(record: Mapping[str, Any], thresholds: Thresholds, *, center: bool = False) -> str | None:
    """The evidence `small_probe` of a run whose probe has n ≤ C + mf_extra inputs (n − 1 with `center`, --center:
    the mean taken out leaves rank ≤ n − 1) and whose layer (at its last checkpoint, `record`) has more units than
    C + mf_extra: k95_utility ≤ rank ≤ n, so the MF-vs-EF rule cannot return EF, whatever the layer learned (a
    1 000-class head and a probe of one image a class; the narrow-layer note blamed the layer's width or a
    bottleneck). None otherwise: a layer of p ≤ C + mf_extra units is `narrow_width_line`'s."""
    n, width, outputs = record.get("n_probe"), record.get("n_features"), record.get("n_outputs")
    if not isinstance(n, int) or not isinstance(width, int) or not isinstance(outputs, int) or outputs < 1:
        return None
    limit, bound = outputs + thresholds.mf_extra, n - int(center)
    if bound > limit or width <= limit:
        return None
    said = f"n − 1 = {bound} (--center)" if center else f"n = {n} probe inputs"
    return (f"k95_utility ≤ rank ≤ {said} ≤ C + mf_extra = {threshold_text(limit)}: the probe is too "
            f"small for the rule to find EF, whatever the layer's {width} units learned; analyse with a probe of more "
            f"than {threshold_text(limit + int(center))} inputs")


def narrow_layer_line(verdict: RunVerdict, records: Sequence[Mapping[str, Any]]) -> str | None:
    """For an MF verdict whose layer spans at most C + mf_extra directions on the probe (its rank) at the final
    checkpoint and already at the reference (or has no more units): k95_utility ≤ rank, so EF could not be read
    and MF follows from the layer, not from what was learned (session 21: a width-2 layer before a 5-class head
    read "MF" with nothing to say so). A rank that fell to C during training (collapse) is not named. Printed only."""
    ev = verdict.evidence
    by_step = {r.get("step"): r for r in records}
    final, reference = by_step.get(ev.get("final_step")), by_step.get(ev.get("reference_step"))
    if verdict.regime != "MF" or final is None or not final.get("n_outputs"):
        return None
    limit = final["n_outputs"] + verdict.thresholds.mf_extra
    rank, width = final.get("rank"), final.get("n_features")
    if not isinstance(rank, int) or rank > limit:
        return None
    units = isinstance(width, int) and width <= limit
    if not units and ev.get("small_probe") is not None:
        return None  # the probe, not the layer, caps the rank: the evidence's `small_probe` line says so
    start = reference.get("rank") if reference is not None else None
    if not units and not (isinstance(start, int) and start <= limit):
        return None
    why = (f"the layer has {width} unit{'s' if width != 1 else ''}" if units
           else f"its rank was {start} at the reference (step {ev.get('reference_step')}) already")
    return (
        f"the layer spans {rank} direction{'s' if rank != 1 else ''} on the probe at step {ev['final_step']} (rank "
        f"{rank} ≤ C + mf_extra = {threshold_text(limit)}; {why}), so k95_utility cannot exceed the MF limit: MF "
        "here follows from the layer (its width, or a bottleneck before it), not from what was learned, and EF "
        "could not be read; what was measured is that the features moved (cka_init, overlap_init)"
    ) + (f"; {dlr}" if (dlr := narrow_dlr_clause(final, reference)) else "")


def low_rank_reference(records: Sequence[Mapping[str, Any]], reference_step: Any, k: int) -> dict[str, Any] | None:
    """The evidence `low_rank_reference` of a run whose reference checkpoint's features have rank r with 0 < r < k,
    the overlaps' k (C, or --overlap-k): constant features at initialisation (r = 1), a layer of fewer than k
    units. analyze takes every overlap_init at k = r then (docs/measures.md), so a run can read moved, and MF,
    from an overlap that says the features left a degenerate reference; with constant reference features CKA is
    null and the overlap is all the movement rule reads. A caveat beside the verdict, whose rules are unchanged
    (docs/regimes.md is silent on such a reference; the conservative choice of the other notes). None otherwise."""
    by_step = {r.get("step"): r for r in records}
    reference = by_step.get(reference_step)
    rank = reference.get("rank") if reference is not None else None
    later = [r for r in records if isinstance(r.get("step"), int) and isinstance(reference_step, int)
             and r["step"] > reference_step]
    if reference is None or not isinstance(rank, int) or not 0 < rank < k or not later:
        return None
    final = max(later, key=lambda r: int(r["step"]))
    width = reference.get("n_features")
    if isinstance(width, int) and width < k:  # a narrow layer: every checkpoint's overlap, the reference's alone
        note = (f"the layer has {width} unit{'s' if width != 1 else ''}, fewer than the overlaps' k = {k}: overlap_init "
                f"is taken at k ≤ {width} at every checkpoint, the top {width} eigenfunction{'s' if width != 1 else ''}, "
                "all the layer spans, not the top k (docs/measures.md)")
        return {"step": reference_step, "rank": rank, "k": rank, "overlap_k": k, "note": note}
    alone = (", and cka_init is null (the reference's features are constant over the anchor points), so the move "
             "rests on that overlap alone") if final.get("cka_init") is None else ""
    note = (f"the reference checkpoint (step {reference_step}) has features of rank {rank} on the probe, below the "
            f"overlaps' k = {k}: overlap_init is taken at k = {rank} there, the top {rank} "
            f"eigenfunction{'s' if rank != 1 else ''} and not the top {k} (docs/measures.md){alone}; a low "
            "overlap_init can say that the features left a degenerate reference rather than how a top-k eigenspace "
            "moved (analyze --reference with a later checkpoint measures from features of full rank)")
    pr, dlr = reference.get("feature_pr"), reference.get("d_lr")
    if isinstance(pr, float) and abs(pr - 1.0) <= 1e-9 and isinstance(dlr, float) and dlr <= 1e-9:
        # centered rank 1 whose direction the outputs span: D_LR 0 by the formula, "maximally rich" at initialisation
        note += (f"; its D_LR {dlr:.4f} there is that of features of centered rank 1 (feature_pr 1) whose one direction "
                 "the outputs span: 0 by the formula, not a measure of richness")
    return {"step": reference_step, "rank": rank, "k": rank, "overlap_k": k, "note": note}


def one_eigenfunction_line(first: Mapping[str, Any]) -> str | None:
    """For the first MF checkpoint `first` of a probe without targets (no accuracy to be near chance, as
    `describe`'s labelled line reads): k95 of Π̂ = 1 with C ≥ 2 outputs, that is 95 % of their energy on one
    eigenfunction, as a network's function that barely varies puts it (on the near-constant eigenfunction of the
    uncentered default). The grokking example's unlabelled probe `all` read "MF from step 1" with nothing to say so,
    where its labelled probes got the near-chance line (session 22). None otherwise; C = 1 is left out: one output
    on one eigenfunction is also the features collapsed onto it. Printed only."""
    k95, outputs = first.get("k95_utility"), first.get("n_outputs")
    if k95 != 1 or outputs is None or outputs < 2:
        return None
    return (
        f"at step {first['step']}, the first MF checkpoint, k95 of Π̂ is 1 for C = {outputs} outputs: 95 % of their "
        "energy lies on one eigenfunction, as when the network's function barely varies over the probe (or its "
        "outputs share an offset far larger than what varies); the probe has no labels to tell (a labelled probe's "
        "accuracy would), so MF means more from where k95_utility has risen above 1"
    )


def near_chance(accuracy: float, level: float) -> bool:
    """Whether an accuracy is near the chance `level` (`chance`): within NEAR_CHANCE of it and at most half way from
    it to 1; never for a probe of one class (level 1), which has nothing but a constant to fit."""
    return level < 1.0 and accuracy <= min(NEAR_CHANCE * level, (1 + level) / 2)


def final_near_chance_line(verdict: RunVerdict, records: Sequence[Mapping[str, Any]], *,
                           said_of: int | None = None) -> str | None:
    """classify's line on an MF or EF verdict whose final checkpoint's accuracy is near chance (`NEAR_CHANCE`, as
    the first MF checkpoint's line reads it), or None. Features that collapsed (all ReLUs but one dead: rank 1,
    k95_utility 1) or moved while the network drifted away from the task read a confident MF at the accuracy of a
    guess that ignores the input. Printed only, as the first MF checkpoint's line; not for the step `said_of`,
    which that line names already."""
    step = verdict.evidence.get("final_step")
    final = next((r for r in records if step is not None and r.get("step") == step), None)
    if verdict.regime not in ("MF", "EF") or final is None or step == said_of:
        return None
    accuracy, classes = final.get("accuracy"), final.get("n_outputs")
    if accuracy is None or not classes or classes < 2:
        return None
    level, _, level_words, _ = chance(verdict.evidence, classes)
    if not near_chance(accuracy, level):
        return None
    return (f"at step {step}, the final checkpoint, the accuracy is {number_text(accuracy, UNIT_SPEC)} ({level_words}): "
            "the network's function there is little better than a guess that ignores the input (features that "
            f"collapsed, a layer that died, a run that diverged?), so {verdict.regime} says how the features moved "
            "and how many eigenfunctions carry that function, not that the task was learned")


def describe(verdict: RunVerdict, records: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The verdict as plain text lines for a terminal: regime, rule, trajectory, evidence, thresholds, note.

    With the run's `records`: when the first MF checkpoint's accuracy is within NEAR_CHANCE of chance,
    a line says why MF came so early (a nearly constant function lies on few eigenfunctions; a review
    saw "MF from step 5" at 9.6 % accuracy on ten classes and took it for a learned function)."""
    ev = verdict.evidence
    lines = [f"regime: {verdict.regime}", f"rule: {verdict.rule}"]
    reference_step = ev.get("reference_step")
    reference = reference_step if isinstance(reference_step, int) else None
    shown = [
        f"{first}" + (f"–{last}" if last != first else "") + f": {regime}"
        for first, last, regime in trajectory_segments(verdict.trajectory, reference_step=reference)
    ]
    segments = f"{len(shown)} spans" if len(shown) > SHOWN_SPANS else ""
    lines.append(f"trajectory (step: regime{'; ' + segments if segments else ''}): "
                 + elide_spans(shown, " | ", where="--json lists every checkpoint"))
    mid_run = reference is not None and any(step < reference for step, _ in verdict.trajectory)
    if reference is not None and mid_run:
        lines.append(before_reference_line(reference))
    # first_mf_step and mf_since_step count the checkpoints after the reference only (`classify_run`)
    after = " after the reference" if mid_run else ""
    if ev.get("mf_since_step") is not None:
        # the first MF step in brackets where it says more: an earlier one (the run left MF and came back), or the
        # first after a mid-run reference; else "MF from step 5 to the end (first MF checkpoint: step 5)"
        first_mf = ev["first_mf_step"] != ev["mf_since_step"] or mid_run
        lines.append(f"MF from step {ev['mf_since_step']} to the end"
                     + (f" (first MF checkpoint{after}: step {ev['first_mf_step']})" if first_mf else ""))
    elif ev.get("first_mf_step") is not None:
        lines.append(f"MF first at step {ev['first_mf_step']}{after}, but the run did not stay MF")
    else:
        early = [(step, v) for step, v in verdict.trajectory if reference is not None and step < reference]
        early_first, early_stayed = entered_mf(early)
        if early_stayed is not None and len(early) == len(verdict.trajectory):
            # A run stopped before its --reference (the reference is analysed first, stored in its place): every
            # stored checkpoint precedes it, and "MF from step S to the end" read as the run's MF (session 14).
            lines.append(
                f"MF from step {early_stayed} to the last checkpoint, all before the reference (step "
                f"{reference}): their movement is measured against a later checkpoint, so their MF says only "
                "that they differ from the reference"
            )
        elif early_first is not None:
            # An initialisation read "MF first at step 0, but the run did not stay MF" beside a coefficient
            # verdict (session 14), and "the run never became MF" beside MF* checkpoints would read as a
            # contradiction of the trajectory.
            lines.append(
                f"MF first at step {early_first} (before the reference, step {reference}: its movement is measured "
                "against a later checkpoint, so its MF says only that it differs from the reference), and no MF "
                "checkpoint after it"
            )
        else:
            lines.append("the run never became MF")
    first = next((r for r in records if ev.get("first_mf_step") is not None and r.get("step") == ev["first_mf_step"]), None)
    accuracy, classes = (first.get("accuracy"), first.get("n_outputs")) if first is not None else (None, None)
    level, _, level_words, _ = chance(ev, classes) if classes and classes >= 2 else (1.0, 0.0, "", "")
    if first is not None and accuracy is not None and near_chance(accuracy, level):
        lines.append(
            f"at step {ev['first_mf_step']}, the first MF checkpoint, the accuracy is {number_text(accuracy, UNIT_SPEC)} "
            f"({level_words}) and k95 of Π̂ is {_fmt(first.get('k95_utility'))}: the network's function is still "
            "nearly constant, which few eigenfunctions carry; MF means more from where the accuracy has risen"
        )
    elif first is not None and accuracy is None and first.get("r2") is None:
        line = one_eigenfunction_line(first)
        if line is not None:
            lines.append(line)
    if (line := final_near_chance_line(verdict, records, said_of=ev.get("first_mf_step") if first is not None
                                       and accuracy is not None else None)) is not None:
        lines.append(line)
    reference = ev.get("reference_step")
    reference_record = next((r for r in records if reference is not None and r.get("step") == reference), None)
    fit = reference_fit(reference_record, ev) if reference_record is not None else None
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    if verdict.regime == "coefficient" and fit is not None and fit[0] >= TRAINED_REFERENCE:
        # A --reference in mid-run: the learning is in the store, before it, not in an earlier run (session 14)
        earlier = sum(1 for step in steps if isinstance(reference, int) and step < reference)
        where = (
            f"they were learned before it: the {earlier} checkpoint{'s' if earlier != 1 else ''} before step "
            f"{reference} {'are' if earlier != 1 else 'is'} in the store; analyse with the first checkpoint as the "
            "reference, the default, to classify that learning"
            if earlier
            else "they may have been learned before it; a fine-tuning or resumed run, or a trained model saved as "
            "the first checkpoint"
        )
        lines.append(
            f"the reference checkpoint (step {reference}) already fits the probe ({fit[1]}): 'coefficient' says "
            f"its features did not move after it, not that the network never learned features ({where})"
        )
    if isinstance(reference, int) and steps and reference > 0 and reference == min(steps):
        lines.append(
            f"the reference is step {reference}, the first checkpoint, not the initialisation: cka_init and "
            f"overlap_init measure the change since step {reference} (its 'coefficient' says only that it is the "
            "reference). A Trainer, timm's CheckpointSaver and Lightning save no step 0: save the model before "
            "training (e.g. as checkpoint-0) to measure from the start"
        )
    # Under MF, the line that says what MF means then; else the evidence's own (`narrow_width_line`)
    narrow = narrow_layer_line(verdict, records) or ev.get("narrow_layer") or ev.get("small_probe")
    if narrow is not None:
        lines.append(narrow)
    if ev.get("overlap_tie"):
        lines.append(overlap_tie_line(ev["overlap_tie"], verdict.thresholds))
    constant = ev.get("constant_outputs")
    if isinstance(constant, Mapping) and constant.get("note"):
        lines.append(str(constant["note"]))
    low = ev.get("low_rank_reference")
    if isinstance(low, Mapping) and low.get("note"):
        lines.append(str(low["note"]))
    skip = {"rule", "final_window", "final_rule", "note", "probe", "layer", "overlap_tie", "zero_one_targets",
            "constant_outputs", "final_r2_outputs", "narrow_layer", "small_probe",
            "low_rank_reference", "anchor_skew"}  # each output's R²: in --json; the lines above; classify's note
    lines.append("evidence: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in ev.items() if k not in skip))
    lines.append(thresholds_line(verdict.thresholds))
    lines.append(f"note: {NOTE}")
    return lines


def thresholds_line(thresholds: Thresholds) -> str:
    """`thresholds: cka_static = 0.99, ...`: the thresholds in force, each with every digit given."""
    return "thresholds: " + ", ".join(f"{k} = {threshold_text(v)}" for k, v in thresholds.as_dict().items())
