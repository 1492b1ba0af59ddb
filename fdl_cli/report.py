"""Records -> tables, JSON/CSV/markdown, run summaries, run comparison and exports (no maths, no torch).

Everything here works on the per-checkpoint records of the store (`fdl_cli.fields.RECORD_FIELDS`) and,
for figures, overlaps and exports, on the stored arrays. The only computation is differences between
records and the alignment of two runs by step; the cross-run eigenspace overlap is delegated to
`fdl_cli.spectral.eigenspace_overlap` (imported lazily: only compare needs it).
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import itertools
import json
import math
import os
import re
import shlex
import shutil
import stat
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.cells import cell_len, set_cell_size
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style

from fdl_cli.errors import ESCAPE, FdlError, StoreError, counted, first_and_more, legible, write_refused
from fdl_cli.fields import (
    FLOAT_FIELDS,
    INT_FIELDS,
    INTEGER_LABELS_RECIPE,
    MODEL_CHANGES_FIELD,
    PREVIOUS_FIELDS,
    R2_OUTPUT_FIELDS,
    RECORD_FIELDS,
    SERIES_FIELDS,
    SMALL_PROBE_FIELD,
    STR_FIELDS,
    UNIT_SPEC,
    WHOLE_MODULES,
    ZERO_ONE_FIELD,
    number_text,
)
from fdl_cli.options import overlap_k_recorded
from fdl_cli.regimes import (
    COMPARE_THRESHOLDS,
    DLR_TIE,
    MOVED,
    MOVEMENT,
    STATIC,
    Thresholds,
    after_reference,
    feature_movement,
    low_rank_reference,
    movement_thresholds,
    narrow_dlr_clause,
    narrow_width_line,
    near_names,
    small_probe_line,
    threshold_text,
)
from fdl_cli.regimes import probe_chance as probe_chance_of

Record = dict[str, Any]

#: Columns of the default table: chosen to fit a 100-column terminal; `--wide` shows every field.
TABLE_FIELDS: tuple[str, ...] = (
    "step",
    "d_lr",
    "cka_init",
    "overlap_init",
    "k95_utility",
    "pi_hat_C",
    "eff_dim",
    "accuracy",
    "loss",
    "regime",
)

#: Short column headers of the table (the stable field name is used for any field not listed).
HEADERS: Mapping[str, str] = {
    "d_lr": "D_LR",
    "cka_init": "CKA₀",
    "cka_prev": "CKA₋₁",
    "overlap_init": "overlap₀",
    "overlap_prev": "overlap₋₁",
    "k95_utility": "k95 Π̂",
    "pi_hat_C": "Π̂(C)",
    "pi_star_C": "Π*(C)",
    "eff_dim": "D_ρ",
    "accuracy": "acc",
    "cross_entropy": "CE",
    "r2_min": "worst r2",
}

#: Fields bounded in [0, 1] (or close to it): shown with four decimals; other floats with 4 significant digits (in a
#: table, a column by `column_texts`).
UNIT_FIELDS = frozenset(
    {
        "d_lr",
        "dlr_alignment",
        "cka_init",
        "cka_prev",
        "overlap_init",
        "overlap_prev",
        "pi_star_C",
        "pi_hat_C",
        "accuracy",
        "r2",
    }
)

#: Fields whose largest change the run summary reports (SPEC.md §4, §5, §3).
SUMMARY_FIELDS: tuple[str, ...] = ("d_lr", "cka_init", "k95_utility")

#: What `fdl export --what` can write.
EXPORT_WHATS = ("eigenvalues", "quality", "utility", "eigenfunctions", "trajectories")


# ----------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Series:
    """The records of one (probe, layer) analysis of a run, in step order."""

    probe: str | None
    layer: str | None
    records: list[Record]

    @property
    def label(self) -> str:
        return f"{self.probe}/{self.layer}"

    @property
    def steps(self) -> list[int]:
        return [int(record["step"]) for record in self.records]


@dataclass(frozen=True)
class Run:
    """One store, read: its provenance, probes and the selected series.

    `several` is True when the store holds more than one (probe, layer) series, in which case every
    machine-readable record also carries `probe` and `layer` (DESIGN.md).
    """

    path: Path
    provenance: Mapping[str, Any]
    probes: Mapping[str, Any]
    series: list[Series]
    several: bool
    warnings: list[str] = field(default_factory=list)
    #: The open StoreReader while inside `opened_run` (arrays are then read without reopening the file).
    reader: Any = field(default=None, compare=False, repr=False)
    #: Where the checkpoints were computed (read with `history=True`): (a row of the store's history, or
    #: None for checkpoints it does not record, the steps of the stored checkpoints it computed).
    history: tuple[tuple[Mapping[str, Any] | None, tuple[int, ...]], ...] = ()
    #: the store's history attribute is damaged (a reader warning): none of `history` is recorded
    history_damaged: bool = False
    #: Where the series added to stored checkpoints later (a probe or layer added to the store) were computed
    #: (read with `history=True`): (a row of the store's history, (probe, layer), the steps it added it to).
    added: tuple[tuple[Mapping[str, Any], tuple[str, str], tuple[int, ...]], ...] = ()
    #: the checkpoints `fdl analyze --drop` removed (read with `history=True`): the store's `dropped` list
    dropped: tuple[Mapping[str, Any], ...] = ()
    #: the checkpoints `fdl analyze` refused for their values and the store lacks: its `refused` list (`refused_line`)
    refused: tuple[Mapping[str, Any], ...] = ()
    #: the changes of the model's code that `fdl analyze --accept-model-change` resumed the store across: its
    #: `model_changes` list (`model_change_line`)
    model_changes: tuple[Mapping[str, Any], ...] = ()
    #: Every (probe, layer) series of the store, selected or not, in the order of `series`: where a selected one
    #: stands among them (the names of a report's and a compare's figures, `figures._store_suffixes`).
    available: tuple[tuple[str, str], ...] = ()

    def records(self) -> list[Record]:
        """Every selected record; with several series in the store, each with `probe` and `layer`; when a
        selected series has per-output R² (`StoreReader.records(r2_outputs=True)`), each with R2_OUTPUT_FIELDS (null
        for the others); when a selected series' probe holds float 0/1 targets, each with `zero_one_targets`
        (ZERO_ONE_FIELD), last; when a selected series' probe is too small for EF (`small_probe_note`), each with
        SMALL_PROBE_FIELD after it; when the store mixes model code, each with MODEL_CHANGES_FIELD (the store's list,
        `model_change_items`) after them."""
        flags = {series.label: zero_one_targets(self, series) for series in self.series}
        flagged = any(flags.values())
        small = {series.label: small_probe_note(self, series) is not None for series in self.series}
        per_output = any(R2_OUTPUT_FIELDS[0] in record for series in self.series for record in series.records)
        changes = model_change_items(self)
        out: list[Record] = []
        for series in self.series:
            for record in series.records:
                row = {name: record.get(name) for name in RECORD_FIELDS}
                if self.several:
                    row["probe"], row["layer"] = series.probe, series.layer
                if per_output:
                    row.update((name, record.get(name)) for name in R2_OUTPUT_FIELDS)
                if flagged:  # last, as before the per-output fields came
                    row[ZERO_ONE_FIELD] = flags[series.label]
                if any(small.values()):
                    row[SMALL_PROBE_FIELD] = small[series.label]
                if changes is not None:  # the store's list, whole, in each record (as `fdl classify --json` gives it)
                    row[MODEL_CHANGES_FIELD] = changes
                out.append(row)
        return out


def zero_one_targets(run: Run, series: Series) -> bool | None:
    """Whether the series' probe holds float 0/1 targets, as the store records it (`ProbeInfo.zero_one_targets`;
    None: not recorded, a store written before the nineteenth session, or no such probe)."""
    info = run.probes.get(series.probe) if series.probe is not None else None
    value = getattr(info, "zero_one_targets", None)
    return None if value is None else bool(value)


def probe_chance(run: Run, series: Series) -> dict[str, float]:
    """{"chance_accuracy", "label_entropy"} of the series' class-label probe as the store records them
    (`probes.label_chance`), for `fdl classify`'s evidence; {} where not recorded."""
    return probe_chance_of(run.probes.get(series.probe) if series.probe is not None else None)


def anchor_skew_line(run: Run, series: Series) -> str | None:
    """analyze's warning that the series' probe's anchor subset misrepresents its classes (`probes.anchor_skew_warning`),
    as the store records it (`ProbeInfo.anchor_skew`), for report and classify: CKA, the overlaps and the regime see
    those rows alone. None where not recorded."""
    evidence = anchor_skew_evidence(run, series)
    return None if evidence is None else str(evidence["note"])


def anchor_skew_evidence(run: Run, series: Series) -> dict[str, Any] | None:
    """classify's evidence `anchor_skew` of `series`: the store's record (m, n, held, classes, distance, random) and
    the note (`anchor_skew_line`); None where not recorded."""
    skew = getattr(run.probes.get(series.probe) if series.probe is not None else None, "anchor_skew", None)
    if skew is None:
        return None
    from fdl_cli.probes import AnchorSkew, anchor_skew_warning

    return {**skew, "note": anchor_skew_warning(str(series.probe), AnchorSkew(**skew))}


def zero_one_caveat(run: Run, series: Series, *, of: str = "") -> str | None:
    """One line on what loss and r2 measure for a series whose probe holds float 0/1 targets (analyze warned
    it: `pipeline._zero_one_warning`), or None. `of`: whose probe, such as " of run A"."""
    if not zero_one_targets(run, series):
        return None
    outputs = getattr(run.probes.get(series.probe or ""), "n_outputs", None)
    line = (f"probe {series.probe!r}{of} holds float 0/1 targets (multi-label, or a binary classifier's as "
            "floats): loss and r2 compare the raw outputs with 0/1 as they are, and for a model trained with a "
            "sigmoid (BCEWithLogitsLoss) those are logits, so loss and r2 do not measure its fit")
    if outputs == 1:
        line += (f"; save the targets as integer labels ({INTEGER_LABELS_RECIPE}) and analyse again, into "
                 "another --out (or with --overwrite: the probe differs), to measure it as a binary classifier "
                 "(accuracy, cross_entropy = BCE)")
    return line


#: Why a store of a one-logit binary classifier has C = 2 (`pipeline._binary_logit`, which analyze's note says):
#: classify's rule ("k95_utility ≤ C + mf_extra = 3") and compare's "top C" and Π̂(C) read C = 2 of a model of one
#: output. **(choice)** Text only: classify's --json keeps the verdict's fields (final_n_outputs is 2; no field
#: there is about the model's outputs), and the store's provenance records binary_logit in its options.
BINARY_LOGIT_LINE = ("C = 2 for a model of one output: its output z is a binary classifier's logit, analysed as the "
                     "two classes' logits (0, z) (the store's options: binary_logit)")


def binary_logit(run: Run) -> bool:
    """Whether the store's options record a one-logit binary classifier (`BINARY_LOGIT_LINE`)."""
    options = run.provenance.get("options")
    return isinstance(options, Mapping) and options.get("binary_logit") is True


def binary_logit_note(run_a: Run, run_b: Run) -> str | None:
    """compare's note on why C is 2 for a run of a one-logit binary classifier, or None."""
    runs = [name for name, run in (("A", run_a), ("B", run_b)) if binary_logit(run)]
    if not runs:
        return None
    return (f"run {runs[0]}'s " if len(runs) == 1 else "runs A and B: ") + BINARY_LOGIT_LINE


def targets_without_energy(run: Run, series: Series) -> bool:
    """Whether the series' targets carry no energy (all 0; with --center, constant or one class), read from its
    records: a probe with targets whose Π*(C) is null (0/0: `spectral.measure`) and whose D of the quality is
    its all-shares-0 value 0.0 at every checkpoint measured (both: a record that holds neither, such as one a
    program wrote without the quality, says nothing of the targets' energy).
    **(choice)** Read, not recorded: the store keeps no flag of it (an older store resumes as it was), and a
    store written before Π*(C) of such targets was null (0.0 then) is not recognised (its 0/1 line stays)."""
    info = run.probes.get(series.probe) if series.probe is not None else None
    measured = [record for record in series.records if record.get("rank") is not None]
    return (info is not None and getattr(info, "task", "none") != "none" and bool(measured)
            and all(record.get("pi_star_C") is None and record.get("eff_dim_quality") == 0.0
                    for record in measured))


def centered(run: Run) -> bool:
    """Whether the store was analysed with --center (its recorded options; False where they are not recorded)."""
    options = run.provenance.get("options")
    return bool(options.get("center")) if isinstance(options, Mapping) else False


def targets_caveat(run: Run, series: Series, *, of: str = "") -> str | None:
    """The one line said beside loss and r2 of a series: that its probe has no targets (its acc and loss are
    blank), that its targets carry no energy (analyze warned it: `pipeline._no_energy_warning`), said in place
    of the float 0/1 line (`zero_one_caveat`) that all-zero float targets would otherwise get, or that line,
    or None."""
    info = run.probes.get(series.probe) if series.probe is not None else None
    if info is not None and getattr(info, "task", None) == "none":  # the columns' key explains acc and loss
        return (f"probe {series.probe!r}{of} has no targets (no y): accuracy, the loss, r2 and the quality Π* are "
                "not measured (null in the records); the spectrum, the utility Π̂, D_LR, CKA, the "
                "overlaps and the regime do not read targets")
    if not targets_without_energy(run, series):
        return zero_one_caveat(run, series, of=of)
    return (f"probe {series.probe!r}{of} holds targets that carry no energy ("
            + ("constant or one class, which --center removes" if centered(run) else "all 0") + "): the quality Q*, Π* "
            "is 0/0, not a measurement, so pi_star_C and k90/k95/k99_quality are null at every checkpoint (and r2, "
            "of a regression); the spectrum, the utility, D_LR, CKA, the overlaps and the regime do not read the "
            "targets")


#: At most this many steps are named in `constant_outputs_line`.
CONSTANT_STEPS_SHOWN = 8


def constant_outputs_line(series: Series) -> str | None:
    """The report's line on the checkpoints whose outputs are constant over the probe (`output_rank` 0: a zero
    or constant head, a dead layer before it), where D_LR is 1.0 by its degenerate rule, 0/0 and not a
    measurement, or None. analyze warns of them, classify notes a final one, and compare leaves them out of its
    verdict; without this line the table's 1.0000 read as the laziest features measured."""
    steps = [record["step"] for record in series.records if record.get("output_rank") == 0]
    if not steps:
        return None
    shown = ", ".join(map(str, steps[:CONSTANT_STEPS_SHOWN])) + (
        f" and {len(steps) - CONSTANT_STEPS_SHOWN} more" if len(steps) > CONSTANT_STEPS_SHOWN else "")
    return (f"D_LR is 1.0 at step{'s' if len(steps) > 1 else ''} {shown} by its degenerate rule, not a measurement: "
            "the model's outputs are constant over the probe there (output_rank 0: a zero or constant head, or a "
            "dead layer before it), so the output span is empty (docs/measures.md)")


def reference_rank_note(run: Run, series: Series, reference_step: Any) -> dict[str, Any] | None:
    """classify's evidence `low_rank_reference` of `series` (`regimes.low_rank_reference`): the overlaps' k is the
    recorded --overlap-k, else C (a --top-k below C records none: min(top_k, C))."""
    outputs = max((r["n_outputs"] for r in series.records if isinstance(r.get("n_outputs"), int)), default=0)
    options = run.provenance.get("options")
    wanted = (overlap_k_recorded(options, outputs) if isinstance(options, Mapping) else None) or outputs
    return low_rank_reference(series.records, reference_step, wanted)


def small_probe_note(run: Run, series: Series) -> str | None:
    """classify's evidence `small_probe` of `series` (`regimes.small_probe_line` of its last checkpoint, at the
    default thresholds, the report's, and the store's --center): its probe has too few inputs for the MF-vs-EF rule
    to find EF, so no regime of it can read EF. None otherwise."""
    return small_probe_line(series.records[-1], Thresholds(), center=centered(run)) if series.records else None


def degenerate_layer_lines(run: Run, series: Series) -> list[str]:
    """The report's lines on a degenerate layer or probe, in classify's words: its note on a reference of rank below
    the overlaps' k; for a layer of p ≤ C units, its line that D_LR is fixed by the width
    (`regimes.narrow_width_line` at the default thresholds, the report's; printed only where
    `regimes.narrow_dlr_clause` has a word on D_LR, since the table shows D_LR and not the run's verdict); and for
    a probe too small for EF, its `small_probe` line (`small_probe_note`: the table's regimes cannot read EF)."""
    steps = [int(r["step"]) for r in series.records if isinstance(r.get("step"), int)]
    if not steps:
        return []
    reference_step = reference_step_of(run.provenance)
    reference_step = min(steps) if reference_step is None else reference_step  # as `regimes.classify_run`
    lines = []
    if (low := reference_rank_note(run, series, reference_step)) is not None:
        lines.append(str(low["note"]))
    by_step = {r.get("step"): r for r in series.records}
    final, reference = by_step[max(steps)], by_step.get(reference_step)
    if narrow_dlr_clause(final, reference) is not None \
            and (narrow := narrow_width_line(final, Thresholds(), reference)) is not None:
        lines.append(narrow)
    if (small := small_probe_note(run, series)) is not None:
        lines.append(small)
    return lines


#: At most this many outputs are named one by one in `r2_outputs_line`; of more, the worst few and the best.
R2_OUTPUTS_SHOWN = 8


def r2_outputs_line(series: Series) -> str | None:
    """One line on the R² of each output at the last checkpoint that has them (`StoreReader.read_r2_outputs`),
    beside the pooled r2 of the table, or None (one output, classes, a store analysed before fdl stored them). Pooling
    weights each output by its target variance, so one badly fitted output hides in it: 0.79 pooled over
    0.41, 0.80, 0.93 (docs/measures.md)."""
    record = next((r for r in reversed(series.records) if r.get(R2_OUTPUT_FIELDS[0]) is not None), None)
    if record is None:
        return None
    values: list[float | None] = record[R2_OUTPUT_FIELDS[0]]

    def named(column: int) -> str:
        value = values[column]
        return f"y{column} " + ("— (constant target)" if value is None else number_text(value, ".4f"))

    defined = sorted((c for c in range(len(values)) if values[c] is not None), key=lambda c: (values[c], c))
    constant = len(values) - len(defined)
    if not defined:
        return (f"r2 per output at step {record['step']}: every target column is constant over the probe, so no "
                "output has an R² (0/0)")
    if len(values) <= R2_OUTPUTS_SHOWN:
        listing = ", ".join(map(named, range(len(values))))
    else:  # the worst few, then the best
        worst, best = defined[:R2_OUTPUTS_SHOWN - 1], defined[R2_OUTPUTS_SHOWN - 1:][-1:]
        listing = (f"{len(values)} outputs, the worst {len(worst)}" + (" and the best" if best else "") + ": "
                   + ", ".join(map(named, worst)) + "".join(", …, " + named(c) for c in best)
                   + (f", {constant} of constant target (undefined)" if constant else "")
                   + "; every one in --json (r2_outputs)")
    pooled = format_value("r2", record.get("r2"))
    # r2 = 1 − Σ_j SSE_j / Σ_j SST_j: a constant target column has no variance to weigh, but its errors count
    errors_too = "; a constant target's squared error counts too" if constant else ""
    return (f"r2 per output at step {record['step']}: {listing}; worst y{defined[0]} (r2 {pooled} pools them, "
            f"each output weighted by its target variance{errors_too})")


def _clean(value: Any) -> Any:
    """A plain Python value for a record field: numpy scalars unwrapped, NaN/inf and bytes normalised."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _digest_said(digest: object) -> str:
    """A recorded sha256 as a message shows it (its first 12 digits), or "not recorded" for a store without it (it
    showed "None…")."""
    return "not recorded" if digest is None else f"{str(digest)[:12]}…"


@contextmanager
def open_store(path: str | Path) -> Iterator[Any]:
    """The store's reader, with every low-level failure turned into a `StoreError` naming the path."""
    from fdl_cli.store import StoreReader

    path = Path(path)

    try:
        reader = StoreReader(path)
    except FdlError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise StoreError(
            f"{path} could not be read as an fdl store",
            got=f"{type(error).__name__}: {error}",
            fix="pass a store written by `fdl analyze`, or re-run the analysis",
        ) from None
    with reader:
        yield reader


def select_series(
    available: Sequence[tuple[str, str]], *, probe: str | None, layer: str | None, path: Path
) -> list[tuple[str, str]]:
    """The (probe, layer) pairs of the store matching `--probe` / `--layer` (None matches any)."""
    chosen = [
        (name, module)
        for name, module in available
        if (probe is None or name == probe) and (layer is None or module == layer)
    ]
    if not chosen:
        listing = ", ".join(f"--probe {name} --layer {module}" for name, module in available) or "none"
        # only what was asked for: "probe=None layer='nope'" showed Python's None for the --probe not given
        asked = " ".join(f"{name}={value!r}" for name, value in (("probe", probe), ("layer", layer)) if value is not None)
        # a name the store does not hold at all, close to one it does (`--layer FC1`, `--probe tset`): that one
        meant = [(f"--{option} {near[0]}", repr(value)) for option, value, names in (
            ("probe", probe, {name for name, _ in available}), ("layer", layer, {module for _, module in available}))
            if value is not None and value not in names and len(near := near_names(value, sorted(names))) == 1]
        raise StoreError(
            f"{path} holds no series for {asked}",
            got=f"series in the store: {listing}",
            fix=(f"did you mean {' '.join(option for option, _ in meant)}? (the store's "
                 f"name{'s' if len(meant) > 1 else ''} nearest to {' and '.join(value for _, value in meant)}); else "
                 if meant else "") + "pick one of the series listed above",
        )
    return chosen


def series_order(provenance: Mapping[str, Any]) -> tuple[list[str], list[str], bool]:
    """(probes, layers, given): the order of the run's series. Probes in the order `fdl analyze` was
    given them (`probe_order`; given = True), else by name (stores written before it was recorded:
    their probes table is sorted JSON); layers in the order analysed. Values of another type (a
    hand-edited store) are ignored."""

    def names(value: Any) -> list[str]:
        return [str(name) for name in value] if isinstance(value, (list, dict)) else []

    given = names(provenance.get("probe_order"))
    probes = given or sorted(names(provenance.get("probes")))
    return probes, names(provenance.get("layers")), bool(given)


def _series_key(provenance: Mapping[str, Any]) -> Any:
    probes, layers, _ = series_order(provenance)

    def key(pair: tuple[str, str]) -> tuple[int, str, int, str]:
        probe, layer = pair
        return (probes.index(probe) if probe in probes else len(probes), probe,
                layers.index(layer) if layer in layers else len(layers), layer)

    return key


def _read_run(
    reader: Any, path: Path, *, probe: str | None, layer: str | None, keep: bool, history: bool = False,
    r2_outputs: bool = False,
) -> Run:
    available = [(str(name), str(module)) for name, module in reader.series()]
    if not available:
        # every checkpoint damaged (or none stored): "holds no series for " and "pick one of the series listed
        # above", with none listed, said neither why nor what to do, and the warnings saying why went unprinted
        said = list(getattr(reader, "warnings", []))
        raise StoreError(
            f"{path} holds no intact checkpoint to read",
            got=said[0] + (f" (and {counted(len(said) - 1, 'more warning')})" if len(said) > 1 else "")
            if said else "no checkpoint is stored",
            fix=f"run `fdl analyze` on the run's checkpoints with --out {shlex.quote(str(path))} (it redoes damaged "
                "checkpoints), restore the store from a backup, or ask whoever sent it for the store as `fdl analyze` "
                "wrote it",
        )
    chosen = select_series(available, probe=probe, layer=layer, path=path)
    chosen.sort(key=_series_key(reader.provenance))  # the first series: the first probe given, the first layer
    series = []
    probes = dict(reader.probes())
    for name, module in chosen:
        # with r2_outputs, R2_OUTPUT_FIELDS where the series has per-output R² (the reader warns of a damaged one)
        raw = reader.records(probe=name, layer=module, r2_outputs=r2_outputs)
        records = [{key: _clean(value) for key, value in record.items()} for record in raw]
        records.sort(key=lambda record: int(record["step"]))
        series.append(Series(probe=name, layer=module, records=records))
    warnings = list(getattr(reader, "warnings", []))
    return Run(
        path=path,
        provenance=dict(reader.provenance),
        probes=probes,
        series=series,
        several=len(available) > 1,
        available=tuple(sorted(available, key=_series_key(reader.provenance))),
        warnings=warnings,
        reader=reader if keep else None,
        history=tuple((None if index is None else reader.history[index], tuple(steps))
                      for index, steps in reader.history_steps().items()) if history else (),
        history_damaged=bool(getattr(reader, "_history_damaged", False)),
        dropped=tuple(reader.dropped) if history else (),
        refused=tuple(reader.refused),
        model_changes=tuple(reader.model_changes),
        added=tuple((reader.history[index], key, tuple(steps)) for index, series in reader.added_history().items()
                    for key, steps in series.items()) if history else (),
    )


def add_final_r2_outputs(run: Run, series: Series) -> None:
    """R2_OUTPUT_FIELDS on the last record of `series` (of a `run` inside `opened_run`) where its checkpoint
    stores each output's R²: `fdl classify`'s evidence reads them there alone, so one dataset is read, not one a
    checkpoint of every regression series (`StoreReader.records(r2_outputs=True)`: 0.4 s per 1 000 checkpoints
    of each)."""
    from fdl_cli.store import r2_output_fields

    if not series.records or run.reader is None:
        return
    last, said = series.records[-1], len(run.reader.warnings)
    stored = run.reader.read_r2_outputs((series.probe, series.layer), steps={int(last["step"])}).get(int(last["step"]))
    if stored is not None:
        last.update(r2_output_fields(stored))
    run.warnings.extend(run.reader.warnings[said:])  # a damaged dataset, read as absent


def load_run(
    path: str | Path, *, probe: str | None = None, layer: str | None = None, history: bool = False,
    r2_outputs: bool = False,
) -> Run:
    """Read the records (and provenance) of a store, selecting series by `--probe` / `--layer`; with
    `history`, also where each checkpoint was computed (`Run.history`: an attribute read per checkpoint); with
    `r2_outputs`, the R² of each output of a regression of C > 1 outputs (`StoreReader.read_r2_outputs`: a dataset
    read per checkpoint of such a series)."""
    with open_store(path) as reader:
        return _read_run(reader, Path(path), probe=probe, layer=layer, keep=False, history=history,
                         r2_outputs=r2_outputs)


@contextmanager
def opened_run(
    path: str | Path, *, probe: str | None = None, layer: str | None = None, history: bool = False,
    r2_outputs: bool = False,
) -> Iterator[Run]:
    """`load_run` keeping the store open for `load_arrays` until the block ends (one scan of the file)."""
    with open_store(path) as reader:
        yield _read_run(reader, Path(path), probe=probe, layer=layer, keep=True, history=history,
                        r2_outputs=r2_outputs)


def _open_reader(run: Run) -> Any:
    """The store `opened_run` keeps open for the run, None once its block has closed it (or without one): reads
    after the block open the store anew."""
    return run.reader if run.reader is not None and not run.reader.closed else None


def load_arrays(run: Run, series: Series, steps: Sequence[int]) -> dict[int, Any]:
    """The stored arrays (`SeriesEntry`) of `steps` of one series of a run, reading the file once.

    Every array of each step: for one array of many steps, `iter_array` reads only that one."""
    if (reader := _open_reader(run)) is not None:
        return {step: reader.arrays(step, probe=series.probe, layer=series.layer) for step in steps}
    with open_store(run.path) as reader:
        return {step: reader.arrays(step, probe=series.probe, layer=series.layer) for step in steps}


def iter_array(
    run: Run, series: Series, steps: Sequence[int], name: str, *, rows: int | None = None
) -> Iterator[tuple[int, np.ndarray | None]]:
    """(step, the stored array `name` of that step, or None) for each of `steps`, read one at a time
    as the caller asks for them: memory stays that of one array whatever the number of checkpoints
    (`StoreReader.array`; `rows`: only the first rows, e.g. the top eigenvalues)."""

    def read(reader: Any) -> Iterator[tuple[int, np.ndarray | None]]:
        for step in steps:
            yield step, reader.array(step, name, probe=series.probe, layer=series.layer, rows=rows)

    if (reader := _open_reader(run)) is not None:
        yield from read(reader)
        return
    with open_store(run.path) as reader:
        yield from read(reader)


# ------------------------------------------------------------------------------------------ output


@contextmanager
def writing(path: str | Path) -> Iterator[Path]:
    """The one way fdl writes a file or makes a folder the user named (`--out`, `--html`, `--plots`).

    An OSError inside the block (missing folder, no permission, a read-only or special file system)
    becomes an `FdlError` naming the path, the operating system's reason and a fix, so the command
    exits 1 with one paragraph instead of a traceback.
    """
    target = Path(path)
    if _is_hdf5(target):
        raise FdlError(
            f"{target} is an HDF5 file (an fdl store?); fdl writes reports and exports only over other files",
            fix="choose another path (a store read by this command would be destroyed by writing over it)",
        )
    try:
        yield target
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename is not None and str(exc.filename) != str(target):
            reason = f"{reason}: {exc.filename}"
        parent = target.parent
        above = next((p for p in target.parents if p.exists()), None)  # the nearest existing folder above
        room = write_refused(exc, another="another path", one="a path")
        if room is not None:  # "did not let this user write" sent the user after permissions
            reason, fix = reason + room[0], room[1]
        elif above is not None and not above.is_dir():
            fix = f"{above} is a file, not a folder: choose another path"
        elif not parent.exists():
            fix = f"create the folder {parent} first, or choose another path"
        elif target.is_dir():
            fix = f"{target} is a folder: name a file in it, or another path"
        else:
            fix = f"choose another path ({parent.resolve()} did not let this user write {target.name} there)"
        raise FdlError(f"could not write {target}", got=reason, fix=fix) from None


def check_output(path: str | Path, *, folder: bool = False) -> None:
    """Refuse, before any work is shown or done, an output path that `writing` would refuse at the end:
    an HDF5 file (a store), a file whose folder is missing or is a file, a folder (--plots) below a file.
    (`fdl report run.h5 --html run.h5` printed the whole table, or the JSON on stdout, then failed.)"""
    target = Path(path)
    with writing(target):
        parent = target.parent
        if target.is_symlink() and not target.exists():
            # A dangling link: writing goes through it, so its target's folder is the one that counts
            # (a --plots folder cannot be made at a link at all).
            pointed = target.readlink()
            where = (target.parent / pointed).parent
            if folder or not where.is_dir():
                raise FdlError(
                    f"could not write {target}: it is a symbolic link to {pointed}, which does not exist",
                    fix=f"create {target.resolve() if folder else where} first, remove the link, or choose another path",
                )
        if folder:
            above = next((p for p in (target, *target.parents) if p.exists()), None)
            if above is not None and not above.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(target))
            if above is not None:
                _check_writable_folder(above, target)
        elif not parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(target))
        elif not is_stream(target):
            if target.is_file():
                with target.open("a"):  # opened as the final write opens it, nothing written (mtime kept)
                    pass
            elif not target.exists():
                _check_writable_folder(parent, target)


def _check_writable_folder(folder: Path, target: Path) -> None:
    """Raise the OSError (naming `target`) that creating `target` in `folder` would meet: a folder that
    exists but is read-only, on a read-only file system or in /proc passed the existence checks, and the
    command printed its whole report before failing. Tried by creating, then removing, a hidden file."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fdl-check-"):
            pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None


def _is_hdf5(path: Path) -> bool:
    """Whether `path` is an existing file that starts as an HDF5 file does (an fdl store, typically)."""
    from fdl_cli.store import HDF5_SIGNATURE, first_bytes

    return first_bytes(path) == HDF5_SIGNATURE  # b"" when absent, a folder, unreadable: nothing to destroy


#: The names of a process's open files: /dev/stdout, /dev/fd/N, /proc/self/fd/N (/dev/fd resolves to /proc/PID/fd).
_OPEN_FILE = re.compile(r"/dev/(?:std(?:in|out|err)|fd/\d+)|/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd/\d+")


def is_stream(path: str | Path) -> bool:
    """/dev/stdout, /dev/fd/N, /proc/self/fd/N: a stream the shell opened (`--out /dev/stdout >> log.csv`),
    written as it is and appended to: opening it for writing would truncate, and replacing it
    would swap, the file the shell opened (the log's first lines were lost). Also through a link
    (`out.csv -> /dev/stdout`); not a file that merely lies under /dev (/dev/shm/report.csv), which is
    replaced as any other."""
    current = os.path.abspath(path)
    for _ in range(40):  # as many links as the system follows
        # its folder resolved: `cd /dev/fd && ... --out 1`, a link to /dev/fd
        resolved = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        if _OPEN_FILE.fullmatch(current) or _OPEN_FILE.fullmatch(resolved):
            return True
        try:
            pointed = os.readlink(resolved)
        except OSError:
            return False  # not a link: a file, a device, a FIFO, or nothing yet
        current = os.path.abspath(os.path.join(os.path.dirname(resolved), pointed))
    return False


def text_mode(path: str | Path) -> str:
    """The mode a text output is opened in: "a" for a stream (see `is_stream`), else "w"."""
    return "a" if is_stream(path) else "w"


@contextmanager
def whole_or_untouched(target: Path) -> Iterator[Path]:
    """The path to write `target` through when it is written piece by piece: a new file beside it,
    renamed over it once the block ends without an error and removed otherwise, so that an export
    that fails part-way (a damaged checkpoint met after the first rows went out) leaves `target` as
    it was instead of a truncated CSV, or an `.npz` archive that loads but lacks the later steps.
    A link is followed (its target is replaced); `target` itself is written where it is not a regular
    file (a FIFO), is a stream (`is_stream`: /dev/stdout redirected to a file) or where no file can be
    made beside it (a folder closed to the user holding a file open to them). Inside `writing`, whose
    messages then name `target`."""
    try:
        replaced = stat.S_ISREG(os.stat(target).st_mode)  # through links: /dev/stdout is a pipe, a tty or a file
    except OSError:
        replaced = True  # not there yet (or a dangling link): made
    if is_stream(target):
        replaced = False
    real = Path(os.path.realpath(target))
    temporary = real.with_name(f".{real.name}.tmp-{os.getpid()}")
    if replaced:
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            pass  # left by a killed run of this pid: overwritten
        except OSError as exc:
            if not (real.is_file() and os.access(real, os.W_OK)):
                exc.filename = str(target)
                raise
            replaced = False
    if not replaced:
        yield target
        return
    try:
        yield temporary
        if real.exists():
            shutil.copymode(real, temporary)
        os.replace(temporary, real)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_file(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8; a path's byte that is not, `\\udcff`, as `\\xff`) to `path` through `writing`."""
    with writing(path) as target, target.open(text_mode(target), encoding="utf-8", errors=ESCAPE) as handle:
        handle.write(text)


def make_folder(path: str | Path) -> Path:
    """Create the folder `path` (and its parents) through `writing`; returns it."""
    with writing(path) as target:
        target.mkdir(parents=True, exist_ok=True)
    return target


# ------------------------------------------------------------------------------------------ format


def format_value(name: str, value: Any) -> str:
    """A record value as shown in tables: '—' for null, 4 decimals for [0, 1] measures, else 4 sig. digits."""
    if value is None:
        return "—"
    if name == "sha256":
        return str(value)[:12]
    if name == "r2_min":  # the worst output's R², shown as r2 is
        name = "r2"
    if name in INT_FIELDS:
        return str(int(value))
    if name in FLOAT_FIELDS and isinstance(value, (int, float)):
        return number_text(value, UNIT_SPEC if name in UNIT_FIELDS else ".4g")
    return str(value)


#: The most decimals a text table's column of floats shows (as a [0, 1] measure's), and the largest magnitude it
#: shows fixed: a column with a value that needs more decimals for its 4 significant digits, or one as large, is
#: written in scientific notation, every cell alike (`column_texts`).
COLUMN_DECIMALS, COLUMN_FIXED_BELOW = 4, 1e6
#: The scientific notation of such a column, every cell's (4 significant digits): `column_texts`, `signed_column`
COLUMN_SCIENTIFIC = ".3e"


def column_texts(name: str, values: Sequence[Any]) -> list[str]:
    """The cells of one text table's column of field `name` (`fdl report`'s, `fdl classify STORE...`'s), one rule for
    the column so that its numbers read down it: a float field other than a [0, 1] measure (a loss, D_ρ, a norm)
    has the fewest fixed decimals that show each value as 4 significant digits would (at most COLUMN_DECIMALS), its
    decimal points one above the other (right-justified); in scientific notation, 4 significant digits, where a value
    needs more decimals or is COLUMN_FIXED_BELOW or more. `format_value` shows every other field, and one value in a
    line of text; JSON, CSV and markdown keep their own (the number itself; 6 significant digits)."""
    if name not in FLOAT_FIELDS or name in UNIT_FIELDS or name == "r2_min":
        return [format_value(name, value) for value in values]
    numbers = [float(value) for value in values if isinstance(value, (int, float)) and math.isfinite(value)]
    needed = [_decimals(number) for number in numbers if number != 0.0]
    if any(places > COLUMN_DECIMALS for places in needed) or any(abs(number) >= COLUMN_FIXED_BELOW for number in numbers):
        spec = COLUMN_SCIENTIFIC
    else:
        spec = f".{max(needed, default=0)}f"
    return ["—" if value is None else number_text(float(value), spec) if isinstance(value, (int, float))
            else format_value(name, value) for value in values]


def _decimals(value: float) -> int:
    """The decimals 4 significant digits of `value` take written fixed, its trailing zeros dropped (1.25: 2, 0.0625:
    4, 1234.5: 0, 1.2e-05: 8)."""
    digits = max(0, 3 - math.floor(math.log10(abs(value))))
    shown = f"{value:.{digits}f}".rstrip("0")
    return len(shown.partition(".")[2])


#: The fields measured against a probe's targets that the tables show: none of them in any record, the probe had none
_TARGET_FIELDS = ("accuracy", "loss", "r2", "cross_entropy")


def _measures_targets(records: Iterable[Record]) -> bool:
    """Whether any of `records` holds a field measured against the probe's targets (`_TARGET_FIELDS`)."""
    return any(r.get(name) is not None for r in records for name in _TARGET_FIELDS)


def table_fields(*, wide: bool, records: Sequence[Record] = ()) -> tuple[str, ...]:
    """The table's columns: the narrow set, or with `wide` every record field. The narrow set shows R²
    in place of the accuracy for a regression probe (`records` with an r2 and no accuracy), and the
    cross-entropy in place of the loss (the MSE against one-hot labels, which a classifier's training
    need not lower) for a classification probe (`records` with a cross_entropy). Where only some
    checkpoints have one (a store analysed by an fdl before the field, then resumed), both: the
    earlier rows keep their loss rather than show only a blank CE. Records with an `r2_min` (the worst of
    several outputs' R², `StoreReader.read_r2_outputs`) add it beside R², and to the wide table's fields."""
    worst = any(r.get("r2_min") is not None for r in records)
    if not wide and records and not _measures_targets(records):
        # a probe without targets (x alone): its acc and loss were columns of "—" at every checkpoint
        return tuple(name for name in TABLE_FIELDS if name not in ("accuracy", "loss"))
    if not wide:
        regression = any(r.get("r2") is not None for r in records) and all(r.get("accuracy") is None for r in records)
        classes = any(r.get("cross_entropy") is not None for r in records)
        partly = classes and any(r.get("cross_entropy") is None and r.get("accuracy") is not None for r in records)
        swaps = ({"accuracy": ("r2", "r2_min") if worst else ("r2",)} if regression else
                 {"loss": ("loss", "cross_entropy") if partly else ("cross_entropy",)} if classes else {})
        return tuple(shown for name in TABLE_FIELDS for shown in swaps.get(name, (name,)))
    return tuple(RECORD_FIELDS) + (("r2_min",) if worst else ())


class PlainTable:
    """A rich renderable table of short plain-text cells, laid out once (rich's `Table` is far too slow).

    rich measures and renders every cell as its own renderable: ~4 s for 1000 checkpoints. Cells here
    are known strings, so the column widths are their cell lengths and each row is one line. The look
    follows rich's SIMPLE_HEAD box: bold header, a rule, columns three spaces apart. `fitted` leaves
    out whole columns for a narrow terminal; a line still wider than the terminal (one narrower than
    the columns always kept) is cut with an ellipsis (`cut`).
    """

    SEPARATOR = "   "

    def __init__(self, headers: Sequence[str], justify: Sequence[str], rows: Sequence[Sequence[str]],
                 *, title: str | None = None) -> None:
        # the cells as stderr will write them: a stream without fdl's typography gets its ASCII stand-ins, whose
        # widths the columns take (`legible`); a UTF-8 one, the cells as they are. Every cell is converted, whatever
        # the rule becomes: KOI8-R and cp437 hold "─" but not "Π̂" or "ρ", written "Pi^", "rho"
        encoding = getattr(sys.stderr, "encoding", None)
        self.rule = legible("─", encoding)
        self.ellipsis = legible("…", encoding)  # where a line is cut at the terminal's edge: "..." on ASCII, 3 cells
        title = None if title is None else legible(title, encoding)
        headers = [legible(header, encoding) for header in headers]
        rows = [[legible(cell, encoding) for cell in row] for row in rows]
        self.title = title
        self.widths = [
            max([cell_len(header), *(cell_len(row[i]) for row in rows)]) for i, header in enumerate(headers)
        ]
        self.lines = [self._line(headers, justify)] + [self._line(row, justify) for row in rows]
        self.width = sum(self.widths) + len(self.SEPARATOR) * (len(self.widths) - 1)
        self.hidden: list[str] = []  # the headers of the columns `fitted` left out
        self.full_width = self.width  # the width of the table with every column
        self.max_width: int | None = None  # the terminal's width it was fitted to

    @property
    def cut(self) -> bool:
        """Whether its lines are wider than the terminal it was fitted to (and so cut at its edge)."""
        return self.max_width is not None and self.width > self.max_width

    @classmethod
    def fitted(cls, headers: Sequence[str], justify: Sequence[str], rows: Sequence[Sequence[str]], *,
               title: str | None = None, max_width: int | None = None, priority: Sequence[int] = (),
               always: int = 1) -> PlainTable:
        """The table of every column, or within `max_width` (a terminal's) the columns taken in the
        order of `priority` (indices; the others follow in their own order) while they fit, shown in
        their own order. The first `always` of that order are kept even when they do not fit (their
        lines are then cut). `hidden` names the columns left out, each whole: a column cut at the
        terminal's edge hid the regime and the accuracy under a "…"."""
        table = cls(headers, justify, rows, title=title)
        if max_width is None or table.width <= max_width:
            return table
        order = [*priority, *(i for i in range(len(headers)) if i not in priority)]
        keep: list[int] = []
        used = -len(cls.SEPARATOR)
        for rank, index in enumerate(order):
            used += len(cls.SEPARATOR) + table.widths[index]
            if used > max_width and rank >= always:
                break
            keep.append(index)
        keep.sort()
        narrow = cls([headers[i] for i in keep], [justify[i] for i in keep], [[row[i] for i in keep] for row in rows],
                     title=title)
        narrow.hidden = [header for i, header in enumerate(headers) if i not in keep]
        narrow.full_width = table.width
        narrow.max_width = max_width
        return narrow

    def _line(self, cells: Sequence[str], justify: Sequence[str]) -> str:
        parts = []
        for cell, width, side in zip(cells, self.widths, justify, strict=True):
            pad = " " * (width - cell_len(cell))
            parts.append(pad + cell if side == "right" else cell + pad)
        return self.SEPARATOR.join(parts).rstrip()

    def __rich_measure__(self, console: Any, options: Any) -> Measurement:
        return Measurement(self.width, self.width)

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Segment]:
        max_width = options.max_width

        def fit(line: str) -> str:
            if cell_len(line) <= max_width:
                return line
            if max_width <= cell_len(self.ellipsis):
                return set_cell_size(line, max_width)
            return set_cell_size(line, max_width - cell_len(self.ellipsis)) + self.ellipsis

        if self.title:
            yield Segment(fit(self.title), Style(italic=True))
            yield Segment.line()
        yield Segment(fit(self.lines[0]), Style(bold=True))
        yield Segment.line()
        yield Segment(self.rule * min(self.width, max_width), Style(dim=True))
        yield Segment.line()
        for line in self.lines[1:]:
            yield Segment(fit(line))
            yield Segment.line()

    def left_out_note(self, *ways: str) -> str | None:
        """The line below a table `fitted` to a terminal: the columns left out, by their headers, and
        `ways` to see every column; None when nothing was left out or cut."""
        if not self.hidden and not self.cut:
            return None
        names = ", ".join(self.hidden) if self.hidden else "none"
        cut = "; lines cut at the terminal's edge" if self.cut else ""
        them = "it" if len(self.hidden) == 1 and not self.cut else "them"
        return (f"(left out for this terminal's width: {names}{cut}; a terminal {self.full_width} columns wide "
                f"shows {them}, as do {', '.join(ways[:-1])} and {ways[-1]})")


#: The columns of the narrow table in the order a narrow terminal keeps them: the step and the regime
#: always, then D_LR and the accuracy (or R²), then the movement; the loss goes first.
NARROW_PRIORITY: tuple[str, ...] = (
    "step", "regime", "d_lr", "accuracy", "r2", "r2_min", "cka_init", "k95_utility", "overlap_init", "pi_hat_C", "eff_dim",
    "cross_entropy", "loss",
)


def render_table(
    records: Sequence[Record], *, wide: bool = False, title: str | None = None, max_width: int | None = None,
    reference_step: int | None = None,
) -> PlainTable:
    """One row per checkpoint, the key fields; the narrow form fits a 100-column terminal. Within
    `max_width` whole columns are left out, in reverse `NARROW_PRIORITY` (with `wide`, every field
    after the step and the regime from the right), and `PlainTable.hidden` names them. The regime of a
    checkpoint before `reference_step` is marked (`regimes.BEFORE_REFERENCE`)."""
    from fdl_cli.regimes import BEFORE_REFERENCE

    fields = table_fields(wide=wide, records=records)
    first = ("step", "regime") if wide else NARROW_PRIORITY
    priority = [fields.index(name) for name in first if name in fields]
    justify = ["right" if name in INT_FIELDS or name in FLOAT_FIELDS or name == "r2_min" else "left"
               for name in fields]

    def cell(name: str, record: Record, text: str) -> str:
        if name == "r2_min":
            return worst_r2_text(record)
        early = reference_step is not None and int(record["step"]) < reference_step
        return text + BEFORE_REFERENCE if name == "regime" and early and record.get(name) is not None else text

    columns = [column_texts(name, [record.get(name) for record in records]) for name in fields]
    rows = [[cell(name, record, column[i]) for name, column in zip(fields, columns, strict=True)]
            for i, record in enumerate(records)]
    return PlainTable.fitted([HEADERS.get(name, name) for name in fields], justify, rows, title=title,
                             max_width=max_width, priority=priority, always=2)


def worst_r2_text(record: Record) -> str:
    """The `worst r2` cell: the smallest R² of one output and its target column, `0.2700 y0`; '—' for null."""
    value, column = record.get("r2_min"), record.get("r2_min_output")
    return "—" if value is None else f"{number_text(value, '.4f')} y{column}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return _clean(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _output_fields(records: Sequence[Record]) -> list[str]:
    several = any("probe" in record for record in records)
    flagged = any(ZERO_ONE_FIELD in record for record in records)
    per_output = any(R2_OUTPUT_FIELDS[0] in record for record in records)
    small = any(SMALL_PROBE_FIELD in record for record in records)
    mixed = any(MODEL_CHANGES_FIELD in record for record in records)
    return (list(RECORD_FIELDS) + (list(SERIES_FIELDS) if several else []) + (list(R2_OUTPUT_FIELDS) if per_output else [])
            + ([ZERO_ONE_FIELD] if flagged else []) + ([SMALL_PROBE_FIELD] if small else [])
            + ([MODEL_CHANGES_FIELD] if mixed else []))


def _cell_value(value: Any) -> Any:
    """A record value for a CSV or markdown cell: a list (`r2_outputs`) as its JSON text, `[0.27, null]`."""
    return json.dumps(value, allow_nan=False) if isinstance(value, list) else value


#: A CSV cell that must be quoted: a comma, a quote, or either line break. Python's csv module (3.11's) left a
#: carriage return alone unquoted (a layer or a path `fc\r1`), and read the row back as ending there.
_CSV_QUOTED = re.compile(r'[,"\r\n]')


def csv_cell(value: Any) -> str:
    """One value as every CSV of fdl writes it (docs/usage.md, "CSV"): null, NaN and infinity an empty cell (JSON
    has null for them), a boolean `True`/`False`, a float its repr (it reads back equal), a list its JSON text,
    and a text with a comma, a quote or a line break quoted, its quotes doubled."""
    value = _clean(value)
    if value is None:
        return ""
    if isinstance(value, (float, int)):  # a bool too: True / False
        return repr(value) if isinstance(value, float) else str(value)
    text = str(_cell_value(value))
    return '"' + text.replace('"', '""') + '"' if _CSV_QUOTED.search(text) else text


def csv_line(values: Iterable[Any]) -> str:
    """One row of `csv_cell`s, ended by a line feed."""
    return ",".join(map(csv_cell, values)) + "\n"


def records_to_json(records: Sequence[Record]) -> str:
    """A JSON array of records with the stable field names (null where a field does not apply)."""
    fields = _output_fields(records)
    rows = [{name: _clean(record.get(name)) for name in fields} for record in records]
    return json.dumps(rows, indent=2, default=_json_default, allow_nan=False) + "\n"


def records_to_csv(records: Sequence[Record]) -> str:
    """CSV with a header of the stable field names; null is the empty cell; floats round-trip (repr)."""
    fields = _output_fields(records)
    return "".join([csv_line(fields), *(csv_line(record.get(name) for name in fields) for record in records)])


def _markdown_value(name: str, value: Any) -> str:
    value = _clean(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return number_text(value, ".6g")
    if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):  # `model_changes`: as in CSV
        return markdown_text(json.dumps(value, allow_nan=False))
    if isinstance(value, list):  # `r2_outputs`: JSON text, its floats rounded as the table's others are
        return "[" + ", ".join("null" if item is None else _markdown_value(name, item) for item in value) + "]"
    return markdown_text(str(value))


#: The characters a text (a name: a checkpoint's path, a store's, a probe's, a layer's) is written with a backslash
#: before in a markdown cell: the backslash itself, the cell's `|`, and those that open or close GFM's inline markup,
#: emphasis `*` `_`, code `` ` ``, links `[` `]`, raw HTML and autolinks `<`, entities `&`, strikethrough `~` and
#: GitHub's math `$`. Each is ASCII punctuation, which CommonMark shows as itself after a backslash. The others
#: (`.`, `/`, `-`, `#`) have no meaning inside a cell and stay bare, and so does a `_` between two letters or digits
#: (`step_0.pt`), which can neither open nor close emphasis: a path reads as itself in the raw text too.
_MARKDOWN_ESCAPED = re.compile(r"([\\|*`\[\]<&~$]|(?<![^\W_])_|_(?![^\W_]))")


def markdown_text(text: str) -> str:
    """A text as a GFM table cell shows it as written: `_MARKDOWN_ESCAPED` backslash-escaped, and a line break (it
    would end the row) a `<br>`, which no text can then be taken for (its `<` is escaped)."""
    return re.sub(r"\r\n|\r|\n", "<br>", _MARKDOWN_ESCAPED.sub(r"\\\1", text))


def markdown_table(names: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table: `names` as the header, a row of `_markdown_value` cells per row. The
    names are fdl's field names, bare: their `_` lie within words, which GFM never takes for emphasis."""
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    lines += ["| " + " | ".join(_markdown_value(name, row.get(name)) for name in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def records_to_markdown(records: Sequence[Record]) -> str:
    """A GitHub-flavoured markdown table of every field (floats to 6 significant digits, null empty)."""
    return markdown_table(_output_fields(records), records)


FORMATTERS: Mapping[str, Callable[[Sequence[Record]], str]] = {
    "json": records_to_json,
    "csv": records_to_csv,
    "markdown": records_to_markdown,
}


# ----------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class RegimeSpan:
    """Consecutive checkpoints with the same regime."""

    regime: str
    first_step: int
    last_step: int
    #: checkpoints before the reference (`regimes.before_reference_line`)
    before_reference: bool = False


@dataclass(frozen=True)
class Change:
    """The largest change of one field between two consecutive checkpoints (with a value)."""

    name: str
    step_before: int
    step_after: int
    before: float
    after: float
    #: the smallest and largest value of the field (among checkpoints with one): a field whose every
    #: step is below the digits shown may still have drifted
    low: float = 0.0
    high: float = 0.0
    #: checkpoints where the field is null (a zero head's k95 and Π̂(C) at initialisation): "stayed at every
    #: checkpoint" said of the others read as if it held at those too
    undefined: int = 0

    @property
    def delta(self) -> float:
        return self.after - self.before


@dataclass(frozen=True)
class RunSummary:
    """What a run did, in a few numbers: span of steps, regime trajectory, largest changes, final values."""

    n_checkpoints: int
    first_step: int | None
    last_step: int | None
    regimes: list[RegimeSpan]
    changes: list[Change]
    final: Mapping[str, Any]
    #: the last checkpoint is the reference itself (`is_reference`)
    final_is_reference: bool = False
    #: the store's reference step, when checkpoints before it are among the records
    reference_step: int | None = None


def is_reference(record: Record) -> bool:
    """Whether a record is the reference checkpoint's own: its parameters are the reference's
    (param_dist_init exactly 0), which holds where CKA is not measured (fewer than 3 anchor points) too,
    and not for a frozen network's checkpoint stored before an unstored --reference (whose CKA is exactly
    1 as well, its head's parameters not the reference's). By CKA only in records without the distance."""
    distance = record.get("param_dist_init")
    return distance == 0.0 if distance is not None else record.get("cka_init") == 1.0


def regime_spans(records: Sequence[Record], *, reference_step: int | None = None) -> list[RegimeSpan]:
    """The regime trajectory compressed into spans of equal regime (null regimes are skipped); a span ends
    at `reference_step`, the checkpoints before it being marked `before_reference`."""
    spans: list[RegimeSpan] = []
    for record in records:
        regime, step = record.get("regime"), int(record["step"])
        if regime is None:
            continue
        early = reference_step is not None and step < reference_step
        if spans and spans[-1].regime == regime and spans[-1].before_reference == early:
            spans[-1] = RegimeSpan(regime, spans[-1].first_step, step, early)
        else:
            spans.append(RegimeSpan(str(regime), step, step, early))
    return spans


def reference_step_of(provenance: Mapping[str, Any]) -> int | None:
    """The store's `reference_step` (None when it has none, or another type: `fdl classify` warns of that)."""
    value = provenance.get("reference_step")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def largest_change(records: Sequence[Record], name: str) -> Change | None:
    """The consecutive pair (among checkpoints where `name` is defined) with the largest |Δ|."""
    points = [(int(r["step"]), float(r[name])) for r in records if r.get(name) is not None]
    best: Change | None = None
    values = [value for _, value in points]
    for (step_a, value_a), (step_b, value_b) in zip(points, points[1:], strict=False):
        if best is None or abs(value_b - value_a) > abs(best.delta):
            best = Change(name, step_a, step_b, value_a, value_b, min(values), max(values), len(records) - len(points))
    return best


def summarize(records: Sequence[Record], *, reference_step: int | None = None) -> RunSummary:
    """The run summary of one series' records (in step order); `reference_step`, the store's, marks the
    regimes of the checkpoints before it."""
    steps = [int(record["step"]) for record in records]
    changes = [change for name in SUMMARY_FIELDS if (change := largest_change(records, name)) is not None]
    final = {name: records[-1].get(name) for name in ("d_lr", "cka_init", "k95_utility", "regime")} if records else {}
    return RunSummary(
        n_checkpoints=len(records),
        first_step=steps[0] if steps else None,
        last_step=steps[-1] if steps else None,
        regimes=regime_spans(records, reference_step=reference_step),
        changes=changes,
        final=final,
        final_is_reference=bool(records) and is_reference(records[-1]),
        reference_step=reference_step if reference_step is not None and steps and steps[0] < reference_step else None,
    )


def summary_lines(summary: RunSummary) -> list[str]:
    """The run summary as plain sentences (for the terminal, the HTML page and the tests)."""
    if summary.n_checkpoints == 0:
        return ["no checkpoints in this series yet"]
    if summary.n_checkpoints == 1:
        lines = [f"1 checkpoint, step {summary.first_step}"]
    else:
        lines = [f"{summary.n_checkpoints} checkpoints, steps {summary.first_step}–{summary.last_step}"]
    if summary.regimes:
        from fdl_cli.regimes import BEFORE_REFERENCE, SHOWN_SPANS, before_reference_line, elide_spans

        trajectory = elide_spans(
            [
                f"{span.regime}{BEFORE_REFERENCE if span.before_reference else ''} ({span.first_step}"
                + (f"–{span.last_step})" if span.first_step != span.last_step else ")")
                for span in summary.regimes
            ],
            " → ",
            where="the regime column has every checkpoint",
        )
        count = f" ({len(summary.regimes)} spans)" if len(summary.regimes) > SHOWN_SPANS else ""
        lines.append(f"regime{count}: {trajectory}")
        if summary.reference_step is not None and any(span.before_reference for span in summary.regimes):
            lines.append(before_reference_line(summary.reference_step))
        alone = summary.n_checkpoints == 1 and summary.final_is_reference
        if alone and summary.regimes[0].regime == "coefficient":  # not a run stopped before its --reference
            # A trained model analysed alone read "regime: coefficient" and "final: ... regime coefficient"
            # (session 14), while `fdl classify` calls the run undetermined.
            lines.append(
                "a single checkpoint is its own reference, so its regime is 'coefficient' by definition (nothing "
                "moved since itself): the run's regime needs a later checkpoint (`fdl classify` says undetermined)"
            )
    else:
        lines.append("regime: not classified")
    for change in summary.changes:
        before, after = format_value(change.name, change.before), format_value(change.name, change.after)
        label = HEADERS.get(change.name, change.name)
        if change.delta == 0:
            where = f" with a value (null at {change.undefined})" if change.undefined else ""
            lines.append(f"{label} stayed {before} at every checkpoint{where}")
        elif before == after:  # a frozen network's CKA₀: "1.0000 → 1.0000" read as a change
            low, high = format_value(change.name, change.low), format_value(change.name, change.high)
            largest = f"{abs(change.delta):.1e}, between steps {change.step_before} and {change.step_after}"
            if low == high:
                lines.append(f"{label} stayed {before} to the digits shown (its largest change, {largest})")
            else:  # each step below the digits, not the drift: 1.0000 down to 0.9990 by 1e-5 steps
                lines.append(f"{label} ranged {low} – {high} in steps below the digits shown (the largest, {largest})")
        else:
            lines.append(
                f"{label} changed most between steps {change.step_before} and {change.step_after}: "
                f"{before} → {after}"
            )
    final = ", ".join(
        f"{HEADERS.get(name, name)} {format_value(name, value)}" for name, value in summary.final.items()
    )
    lines.append(f"final: {final}")
    return lines


def provenance_lines(
    provenance: Mapping[str, Any], history: Sequence[tuple[Mapping[str, Any] | None, Sequence[int]]] = (),
    *, store: str | Path | None = None, damaged: bool = False, dropped: Sequence[Mapping[str, Any]] = (),
    added: Sequence[tuple[Mapping[str, Any], tuple[str, str], Sequence[int]]] = (),
) -> list[str]:
    """The provenance keys worth showing, as 'key: value' lines (missing keys are skipped), then where the
    checkpoints were computed (`history_lines`; `Run.history`; `store`, the store's path, for its command),
    and the series added to them later (`Run.added`), and which `fdl analyze --drop` removed (`dropped_lines`;
    `Run.dropped`)."""
    lines = []
    for key in ("model", "model_kwargs", "layers", "probes", "options"):
        value = provenance.get(key)
        if key == "model" and value is None and key in provenance:  # recorded null: no --model, no model line said so
            lines.append(f"model: {WHOLE_MODULES}")
            continue
        if value in (None, "", [], {}):
            continue
        lines.append(_provenance_line(key, value, provenance.get("probe_order")))
    return lines + history_lines(history, provenance.get("environment"), store=store, damaged=damaged,
                                 added=added) + dropped_lines(dropped)


def _provenance_line(key: str, value: Any, probe_order: Any = None) -> str:
    """One provenance key as a line for people: `layer: 4:input`, `probe: probe (sha256 217099c8...)`, `options:
    anchor_size 4096, center no, ...`, `model_kwargs: hidden 512` (it read as JSON: `layers: ["4:input"]`,
    `options: {"center": false, ...}`).
    Every value is kept, each probe's whole sha256 (its file's, which `sha256sum` checks) among them; probes in the
    order given to analyze (`probe_order`), then any other by name. A value of an unexpected type (a hand-edited
    store) is said as JSON."""
    if key == "probes" and isinstance(value, Mapping):
        # read as the series are ordered (a hand-edited [["x"]] raised TypeError), each name once
        given = [name for name in dict.fromkeys(series_order({"probe_order": probe_order})[0]) if name in value]
        names = [*given, *sorted((name for name in value if name not in given), key=str)]
        said = [f"{name} (sha256 {value[name]})" for name in names]
    elif key in ("options", "model_kwargs") and isinstance(value, Mapping):
        # the factory's keyword arguments too (`model_kwargs: hidden 512`): a model line alone read the same for
        # runs of mlp(hidden=8) and mlp(hidden=512)
        return f"{key}: " + ", ".join(f"{name} {_option_text(value[name])}" for name in sorted(value, key=str))
    elif key in ("layers", "probes") and isinstance(value, (list, tuple)):
        said = [_option_text(item) for item in value]
    elif isinstance(value, (Mapping, list, tuple)):
        return f"{key}: {json.dumps(value, default=_json_default, sort_keys=True)}"
    else:
        return f"{key}: {value}"
    return f"{key if len(said) > 1 else key[:-1]}: {', '.join(said)}"


def _option_text(value: Any) -> str:
    """An option's value in words: `yes`/`no` for a flag, `none` for null, else as written."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value, default=_json_default, sort_keys=True)


#: How many lines `history_lines` gives at most: one per place the checkpoints were computed.
HISTORY_LINES = 3


def history_lines(
    history: Sequence[tuple[Mapping[str, Any] | None, Sequence[int]]], environment: Any = None,
    *, store: str | Path | None = None, damaged: bool = False,
    added: Sequence[tuple[Mapping[str, Any], tuple[str, str], Sequence[int]]] = (),
) -> list[str]:
    """Where a store's checkpoints were computed, one line per device, host and software (rows of the
    store's history that agree on them are one line), in step order; at most HISTORY_LINES lines.
    `history`: `Run.history`; `environment`: the provenance's, said for a store without a history; `store`:
    its path, in the command the last line gives for the rest (else STORE); `damaged`: its history attribute
    is (`Run.history_damaged`), which is why nothing is recorded (it said "stored before fdl kept a history").
    Then where the series added to stored checkpoints later were (`added`: `Run.added`), likewise
    (`added_lines`)."""
    places: dict[Any, list[int]] = {}
    rows: dict[Any, Mapping[str, Any] | None] = {}
    for row, steps in history:
        key = None if row is None else _place(row)
        places.setdefault(key, []).extend(steps)
        rows.setdefault(key, row)
    known = [key for key in places if key is not None and places[key]]
    total = sum(len(steps) for steps in places.values())
    if not known:
        if not isinstance(environment, Mapping) or not environment.get("host"):
            return added_lines(added, total, store=store)
        return [f"created on: host {environment.get('host')} (torch {environment.get('torch_version', '?')}, "
                f"fdl {environment.get('fdl_version', '?')}); where each checkpoint was computed is not recorded "
                + ("(its history attribute is damaged)" if damaged else "(the store has no history attribute)"),
                *added_lines(added, total, store=store)]
    order = sorted((key for key in places if places[key]), key=lambda key: min(places[key]))
    lines = []
    for key in order[: HISTORY_LINES if len(order) <= HISTORY_LINES else HISTORY_LINES - 1]:
        steps = sorted(places[key])
        which = f"all {total} checkpoints" if len(steps) == total > 1 else _steps_said(steps)
        row = rows[key]
        lines.append(f"computed: {which} " + ("(their groups record no history: where is not recorded)"
                                              if row is None else _where(row)))
    if len(order) > len(lines):
        rest = order[len(lines):]
        # the store's own path, to paste (it said STORE, though the report knows which store it reads)
        shown = "STORE" if store is None else shlex.quote(str(store))
        lines.append(f"computed: {sum(len(places[key]) for key in rest)} more checkpoints in {len(rest)} other "
                     f"places (the store's history: `h5dump -a /history {shown}`)")
    return lines + added_lines(added, total, store=store)


def _place(row: Mapping[str, Any]) -> tuple[str, ...]:
    """What `computed:` lines tell apart of a history row: device, host, torchrun ranks and software."""
    return tuple(json.dumps(row.get(name), sort_keys=True)
                 for name in ("device", "host", "world_size", "rank", "torch_version", "fdl_version", "dtype"))


def added_lines(
    added: Sequence[tuple[Mapping[str, Any], tuple[str, str], Sequence[int]]], total: int,
    *, store: str | Path | None = None,
) -> list[str]:
    """Where the series added to a store's checkpoints later (a probe or layer added to it) were computed, one
    line per device, host and software, in the order of their first step: `computed: test/fc2:input added to all
    300 checkpoints on cuda:0 …`; at most HISTORY_LINES lines. `added`: `Run.added`; `total`: the checkpoints
    the store holds (for "all")."""
    places: dict[tuple[str, ...], dict[tuple[str, str], set[int]]] = {}
    rows: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for row, key, steps in added:
        place = _place(row)
        places.setdefault(place, {}).setdefault(key, set()).update(steps)
        rows.setdefault(place, row)
    order = sorted(places, key=lambda place: min(min(steps) for steps in places[place].values()))
    lines = []
    for place in order[: HISTORY_LINES if len(order) <= HISTORY_LINES else HISTORY_LINES - 1]:
        series = sorted(places[place])
        shown = ", ".join(f"{probe}/{layer}" for probe, layer in series[:4]) + (
            f" and {len(series) - 4} more series" if len(series) > 4 else "")
        steps = sorted(set().union(*places[place].values()))
        which = f"all {total} checkpoints" if len(steps) == total > 1 else _steps_said(steps)
        lines.append(f"computed: {shown} added to {which} {_where(rows[place])}")
    if len(order) > len(lines):
        rest = len(order) - len(lines)
        lines.append(f"computed: series added in {rest} other places (the store's history: `h5dump -a /history "
                     f"{'STORE' if store is None else shlex.quote(str(store))}`)")
    return lines


def dropped_lines(dropped: Sequence[Mapping[str, Any]]) -> list[str]:
    """The checkpoints `fdl analyze --drop` removed from a store (its `dropped` list: second copies of files it
    keeps at other steps), in one line; none when it removed none. The history row of the run that computed
    them stays in the store (`h5dump -a /history`), which `computed:` lines leave out: it names no checkpoint."""
    items = [item for item in dropped if isinstance(item.get("step"), int) and not isinstance(item["step"], bool)]
    if not items:
        return []
    steps = sorted({int(item["step"]) for item in items})
    kept = sorted({int(item["kept"]) for item in items if isinstance(item.get("kept"), int)})
    at = f"at {_steps_said(kept)}" if 0 < len(kept) <= 3 else "at other steps"
    what = (f"a second copy of the file the store keeps {at}" if len(steps) == 1
            else f"second copies of the files the store keeps {at}")
    times = sorted({str(item["dropped"]) for item in items if isinstance(item.get("dropped"), str)})
    when = ""
    if times and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d.*\+00:00", times[-1]):
        last = f"{times[-1][:10]} {times[-1][11:16]} UTC"
        when = f" on {last}" if len(times) == 1 else f" ({len(times)} runs, the last on {last})"
    return [f"dropped: {_steps_said(steps)} ({what}) by `fdl analyze --drop`{when}"]


#: `FdlError.refused_as` -> what a refused checkpoint says of the run, in `refused_line`
_REFUSED_MEANS = {"weights": "NaN or Inf weights: the run diverged?",
                  "overflow": "a forward pass that overflowed to inf or NaN: the run diverged?"}


def _refusal_means(kind: str) -> str:
    """What a refusal of `kind` says of the run: an overflow in --dtype float16 ("overflow_float16") is no sign of
    divergence, and `--dtype float32` may analyse the checkpoint (a run of its own: a store holds one
    --dtype's numbers, and a resume with another is refused)."""
    if kind.startswith("overflow_"):
        return (f"a {kind.removeprefix('overflow_')} forward pass that overflowed to inf or NaN: float32 holds more, "
                "`fdl analyze --dtype float32` into another --out")
    return _REFUSED_MEANS.get(kind, "its values")


def refused_items(run: Run) -> list[dict[str, Any]] | None:
    """The checkpoints `fdl analyze` refused for their values, as `--json` gives them (`refused_steps` of
    `fdl classify`, and of each side of `fdl compare`): {"step", "path", "kind", "reason"} each; None for none."""
    return [{"step": item["step"], "path": item.get("path"), "kind": item.get("kind"), "reason": item.get("reason")}
            for item in run.refused] or None


def model_change_items(run: Run) -> list[dict[str, Any]] | None:
    """The store's `model_changes` as `--json` gives them (`fdl classify`'s `model_changes`, each record's of `fdl
    report`, each side's of `fdl compare`): its list, oldest first, as stored; None when it records none."""
    return [dict(change) for change in run.model_changes] or None


def model_change_line(run: Run) -> str | None:
    """One line saying that the store mixes model code: from which step on its checkpoints ran code changed since
    the store was made (`fdl analyze --accept-model-change`, the store's `model_changes`); None when it does not."""
    said = []
    for change in run.model_changes:
        listed = change.get("changed")
        changed = listed if isinstance(listed, list) else []
        files = ", ".join(f"{Path(str(item.get('code'))).name} (sha256 {str(item.get('old'))[:12]}… → "
                          f"{str(item.get('new'))[:12]}…)" for item in changed if isinstance(item, Mapping))
        kept = change.get("kept_old")
        but = (f", but for step{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))}, stored before it"
               if isinstance(kept, list) and kept else "")
        said.append(f"from step {change.get('from_step')} on its checkpoints ran changed code{but} ({files or '?'}; "
                    f"`fdl analyze --accept-model-change`, {change.get('time')}, fdl {change.get('fdl_version')})")
    if not said:
        return None
    return "this store mixes model code: " + "; ".join(said) + "; the checkpoints before keep the old code's numbers"


def refused_line(run: Run, covers: str) -> str | None:
    """One line naming the checkpoints `fdl analyze` refused for their values (the store's `refused` list: NaN or
    Inf weights, a forward pass that overflowed), by kind, and which steps `covers` (what the command shows: "the
    verdict", "this report") then spans; None when the store records none. The reasons in full: the list itself
    (`fdl classify --json`'s `refused_steps`)."""
    if not run.refused:
        return None
    kinds: dict[str, list[int]] = {}
    for item in run.refused:
        kinds.setdefault(str(item.get("kind", "")), []).append(int(item["step"]))
    said = "; ".join(f"{_steps_said(steps)} ({_refusal_means(kind)})" for kind, steps in kinds.items())
    refused = [int(item["step"]) for item in run.refused]
    stored = sorted({int(record["step"]) for series in run.series for record in series.records})
    if not stored:
        return f"refused: {said}, by `fdl analyze`: not in the store"
    span = f"steps {stored[0]}–{stored[-1]}" if len(stored) > 1 else f"step {stored[0]}"
    where = (f"{covers} covers {span} only" if min(refused) > stored[-1]
             else f"{covers} covers {span} without {'it' if len(refused) == 1 else 'them'}")
    return f"refused: {said}, by `fdl analyze`: not in the store, so {where}"


def _steps_said(steps: Sequence[int]) -> str:
    if len(steps) <= 3:
        return ("step " if len(steps) == 1 else "steps ") + ", ".join(map(str, steps))
    return f"{len(steps)} checkpoints from step {steps[0]} to {steps[-1]}"


def _where(row: Mapping[str, Any]) -> str:
    """'on cpu, host a (torch 2.13.0, fdl 0.1.0, float32)' of a history row."""
    device = str(row.get("device", "an unknown device"))
    size, rank = row.get("world_size", 1), row.get("rank", 0)
    if isinstance(size, int) and size > 1:
        device += (f" and {size - 1} more torchrun rank{'s' if size > 2 else ''}" if rank == 0
                   else f" (torchrun rank {rank} of {size})")
    return (f"on {device}, host {row.get('host', '?')} (torch {row.get('torch_version', '?')}, "
            f"fdl {row.get('fdl_version', '?')}, {row.get('dtype', '?')})")


def print_run(console: Any, run: Run, *, wide: bool = False) -> None:
    """The human report of a run on a rich console: provenance, then per series the table and summary."""
    for line in provenance_lines(run.provenance, run.history, store=run.path, damaged=run.history_damaged,
                                 dropped=run.dropped, added=run.added):
        console.print(line, markup=False, highlight=False)
    if (refused := refused_line(run, "this report")) is not None:
        console.print(refused, markup=False, highlight=False)
    if (mixed := model_change_line(run)) is not None:
        console.print(f"note: {mixed}", markup=False, highlight=False)
    for series in run.series:
        title = f"{run.path.name}: probe {series.probe}, layer {series.layer}"
        # A pipe or a log file has no width: print the table whole rather than cut at rich's 80 columns.
        # A narrow terminal gets fewer columns, named below the table, rather than lines cut at its edge.
        reference = reference_step_of(run.provenance)
        table = render_table(series.records, wide=wide, title=title,
                             max_width=console.width if console.is_terminal else None, reference_step=reference)
        if not console.is_terminal:
            console.width = max(console.width, table.width)
        console.print(table)
        store = shlex.quote(str(run.path))
        # of a store of several series, the commands name this one: export refuses such a store without it
        chosen = (f" --probe {shlex.quote(str(series.probe))} --layer {shlex.quote(str(series.layer))}"
                  if run.several else "")
        note = table.left_out_note(f"`fdl report {store}{chosen} --wide 2>&1 | less -S` (every field)",
                                   "--format csv", "--json", f"`fdl export {store} --what trajectories{chosen}`")
        if note:
            console.print(note, markup=False, highlight=False)
        for line in summary_lines(summarize(series.records, reference_step=reference)):
            console.print(line, markup=False, highlight=False)
        if (constant := constant_outputs_line(series)) is not None:
            console.print(constant, markup=False, highlight=False)
        for line in degenerate_layer_lines(run, series):
            console.print(line, markup=False, highlight=False)
        if (per_output := r2_outputs_line(series)) is not None:
            console.print(per_output, markup=False, highlight=False)
        if (caveat := targets_caveat(run, series)) is not None:
            console.print(caveat, markup=False, highlight=False)
        if (skew := anchor_skew_line(run, series)) is not None:
            console.print(f"note: {skew}", markup=False, highlight=False)
    if run.series:
        shown = dict.fromkeys(name for series in run.series for name in table_fields(wide=wide, records=series.records))
        console.print(column_key(tuple(shown), series_tasks(run, run.series)), markup=False, highlight=False)


def series_tasks(run: Run, series: Iterable[Series]) -> set[str]:
    """The tasks (`store.PROBE_TASKS`) of the probes of `series`, for `column_key`; "" for one the store does not tell."""
    return {str(getattr(run.probes.get(one.probe) if one.probe is not None else None, "task", "")) for one in series}


#: What a column of the key means where its field name does not say it.
COLUMN_NOTES: Mapping[str, str] = {
    "cross_entropy": "mean cross-entropy, natural log, of the raw outputs as logits",
    "r2_min": "the smallest R² of one output, y<j> its target column from 0; r2 pools the outputs",
}


def column_key(fields: Sequence[str], tasks: Iterable[str] = ()) -> str:
    """One line naming the record field behind each short column header of the table (the names of
    `--format json/csv`, `fdl export` and docs/measures.md). `tasks`: the tasks of the probes whose series the
    table shows (`store.PROBE_TASKS`), which tell what loss is measured against: a regression's targets, a
    classification's one-hot labels (both named where they are mixed or not known)."""
    pairs = [f"{HEADERS[name]} = {name}" + (" (" + COLUMN_NOTES[name] + ")" if name in COLUMN_NOTES else "")
             for name in fields if name in HEADERS]
    if "loss" in fields:
        against = {"classes"}, {"regression"}
        measured = set(tasks) - {"none"}
        pairs.append("loss = mean squared error per output of the raw outputs against the " + (
            "one-hot labels" if measured == against[0] else "targets" if measured == against[1]
            else "one-hot labels (or targets)"))
    if "regime" in fields:  # the names alone said nothing to a reader new to them (README and docs/regimes.md do)
        pairs.append(REGIME_KEY)
    return "columns: " + ", ".join(pairs)


#: The regimes' names in words, for the key below a table that shows them (docs/regimes.md, SPEC §7).
REGIME_KEY = "regime = coefficient (lazy: the features did not move), MF (minimal feature) or EF (extended feature)"


# ----------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Match:
    """A step of run A paired with a step of run B (exactly equal, or the mutual nearest)."""

    step_a: int
    step_b: int

    @property
    def exact(self) -> bool:
        return self.step_a == self.step_b


def align_steps(steps_a: Sequence[int], steps_b: Sequence[int]) -> list[Match]:
    """Pair the checkpoints of two runs by step: equal steps, else mutual nearest steps.

    Each step is used at most once; steps with no partner are left out (the caller notes them). A step midway
    between two of the other run's has both as its nearest: the candidate pairs (each step with a nearest of the
    other run's, itself a nearest of that one's) are taken nearest first, then earliest first. A tie "to the
    lower" on each side paired runs saved midway between each other (steps 0, 10, 20 against 5, 15, 25) at their
    first steps alone: A's 10 chose B's 5, B's 15 chose A's 10. Without a tie, these are the mutual nearest pairs.
    """
    sorted_a, sorted_b = sorted(set(steps_a)), sorted(set(steps_b))
    if not sorted_a or not sorted_b:
        return []

    def nearest(step: int, candidates: Sequence[int]) -> list[int]:
        index = bisect.bisect_left(candidates, step)
        around = candidates[max(index - 1, 0) : index + 1]
        closest = min(abs(other - step) for other in around)
        return [other for other in around if abs(other - step) == closest]

    candidates = sorted(
        (abs(step - partner), min(step, partner), step, partner)
        for step in sorted_a for partner in nearest(step, sorted_b) if step in nearest(partner, sorted_a)
    )
    paired: dict[int, int] = {}
    taken: set[int] = set()
    for _, _, step, partner in candidates:
        if step not in paired and partner not in taken:
            paired[step] = partner
            taken.add(partner)
    return [Match(step, paired[step]) for step in sorted_a if step in paired]


def few_matches_note(steps_a: Sequence[int], steps_b: Sequence[int], matches: Sequence[Match]) -> str | None:
    """A note when fewer than half of the shorter run's checkpoints found a partner, else None.

    Two runs whose steps count different things (a run saved as `epoch_N.pt` against one whose files hold
    the optimizer step) share little more than step 0, and the verdict "equally rich at every matched
    step" then rested on the two initialisations alone, with nothing but "left unmatched: 6 checkpoints
    of A, 6 of B" to say so. A short run against a long one, or one saved more often, is matched wholly
    and gets no note.
    """
    sorted_a, sorted_b = sorted(set(steps_a)), sorted(set(steps_b))
    if not matches or 2 * len(matches) >= min(len(sorted_a), len(sorted_b)):
        return None
    shown = ", ".join(_step_pair(m) for m in matches[:3])
    shown += f" and {len(matches) - 3} more" if len(matches) > 3 else ""
    return (
        f"only {len(matches)} of A's {len(sorted_a)} and B's {len(sorted_b)} checkpoints are matched by step "
        f"({shown}; A's steps {sorted_a[0]}–{sorted_a[-1]}, B's {sorted_b[0]}–{sorted_b[-1]}), and the "
        "comparison covers those alone. If the runs count steps differently (epochs in one, optimizer steps in "
        "the other), their steps do not line up: give both steps of one kind (`fdl analyze` reads a checkpoint's "
        "own step before its epoch, and `--step-regex` a step in its file name)"
    )


#: How many steps `unmatched_note` names of each run before "and N more".
UNMATCHED_SHOWN = 6


def unmatched_note(steps_a: Sequence[int], steps_b: Sequence[int], matches: Sequence[Match]) -> str | None:
    """"left unmatched: 0 checkpoints of A, 2 of B (steps 50, 150)", the steps of each run with no partner (the first
    UNMATCHED_SHOWN, then "and N more"), or None where every checkpoint is matched. The counts alone said how many
    the table leaves out, never which."""
    said = []
    for steps, matched in ((steps_a, {m.step_a for m in matches}), (steps_b, {m.step_b for m in matches})):
        left = sorted(set(steps) - matched)
        shown = first_and_more(left, UNMATCHED_SHOWN)
        said.append((len(left), f" ({'step' if len(left) == 1 else 'steps'} {shown})" if left else ""))
    (count_a, shown_a), (count_b, shown_b) = said
    if not count_a and not count_b:
        return None
    return f"left unmatched: {counted(count_a, 'checkpoint')} of A{shown_a}, {count_b} of B{shown_b}"


def span_note(steps_a: Sequence[int], steps_b: Sequence[int], matches: Sequence[Match]) -> str | None:
    """A note naming the checkpoints of a run before its first matched step or after its last (a longer run, one
    resumed later), which neither the table nor the verdict covers, or None. "left unmatched: 15 checkpoints of A,
    0 of B" said neither where they were nor that a verdict "Run A is richer (last matched step: ...)" of a run
    compared with one a tenth as long was of the first 80 steps of its 1000."""
    if not matches:
        return None
    first, last = matches[0], matches[-1]
    beyond, outside_in_all = [], 0
    for run, steps, low, high in (("A", steps_a, first.step_a, last.step_a), ("B", steps_b, first.step_b, last.step_b)):
        for where, outside in (("before", [step for step in steps if step < low]),
                               ("after", [step for step in steps if step > high])):
            if outside:
                shown = f"step {outside[0]}" if len(outside) == 1 else f"steps {min(outside)}–{max(outside)}"
                beyond.append(f"run {run}'s {counted(len(outside), 'checkpoint')} {where} it ({shown})")
                outside_in_all += len(outside)
    if not beyond:
        return None
    if len(matches) == 1:  # "steps 200–200" said of one
        span = (f"step {first.step_a}" if first.exact else f"step {first.step_a} of A ({first.step_b} of B)") \
            + ", the only matched step"
    else:
        span = (f"steps {first.step_a}–{last.step_a}" if first.exact and last.exact else
                f"steps {first.step_a}–{last.step_a} of A ({first.step_b}–{last.step_b} of B)") \
            + ", the span of the matched steps"
    return (f"the comparison covers {span}: " + " and ".join(beyond)
            + (" is" if outside_in_all == 1 else " are") + " in neither the table nor the verdict")


def compared_fields(record_a: Record, record_b: Record) -> tuple[str, ...]:
    """The fields compare differences and gives of each run: RECORD_FIELDS, then R2_OUTPUT_FIELDS where either
    record has them (a regression of C > 1 outputs whose store holds their R²: `StoreReader.read_r2_outputs`)."""
    per_output = R2_OUTPUT_FIELDS[0] in record_a or R2_OUTPUT_FIELDS[0] in record_b
    return RECORD_FIELDS + (R2_OUTPUT_FIELDS if per_output else ())


def field_differences(record_a: Record, record_b: Record, partners: Mapping[int, int] | None = None) -> dict[str, Any]:
    """B − A for every numeric field (None when either side is null); for text fields None when equal,
    else 'a → b'. Identity fields (step, prev_step, path, sha256) are left out: a difference of steps
    is no difference between the runs. With R2_OUTPUT_FIELDS (`compared_fields`): `r2_min` B − A, `r2_outputs`
    the list of each output's B − A (None where either is null, or all of it where the runs' outputs differ in
    number), `r2_min_output` as a text field ('0 → 2', the worst output changed), None where either is null.
    PREVIOUS_FIELDS are None where the records' previous checkpoints differ (`previous_differs`, `partners`)."""
    diffs: dict[str, Any] = {}
    apart = previous_differs(record_a, record_b, partners)
    for name in compared_fields(record_a, record_b):
        if name in ("step", "prev_step", "path", "sha256"):
            continue
        value_a, value_b = record_a.get(name), record_b.get(name)
        if apart and name in PREVIOUS_FIELDS:
            diffs[name] = None
        elif name == "r2_outputs":
            diffs[name] = None if value_a is None or value_b is None or len(value_a) != len(value_b) else [
                None if a is None or b is None else b - a for a, b in zip(value_a, value_b, strict=True)]
        elif name == "r2_min_output":
            diffs[name] = None if value_a is None or value_b is None or value_a == value_b else f"{value_a} → {value_b}"
        elif name in INT_FIELDS or name in FLOAT_FIELDS or name == "r2_min":
            diffs[name] = None if value_a is None or value_b is None else value_b - value_a
        else:
            diffs[name] = None if value_a == value_b else f"{value_a} → {value_b}"
    return diffs


def previous_differs(record_a: Record, record_b: Record, partners: Mapping[int, int] | None = None) -> bool:
    """Whether two records' PREVIOUS_FIELDS measure against different checkpoints: their prev_step differ (a
    store analysed at a subset of another's checkpoints, `--steps` or `--every`, compares a step with an earlier
    one; null: no previous checkpoint), and are not matched to each other (`partners`: run A's step -> run B's, the
    matched steps; runs saved a step apart, 0, 100 against 1, 101, compare 100 with 0 and 101 with 1 alike). A
    prev_step not recorded (null beside a cka_prev or overlap_prev: a store written before fdl recorded it, which
    its reader warns of) cannot tell, and the records are compared as before."""
    def previous(record: Record) -> tuple[bool, Any]:  # (recorded, prev_step)
        value = record.get("prev_step")
        return value is not None or all(record.get(name) is None for name in PREVIOUS_FIELDS), value

    (known_a, prev_a), (known_b, prev_b) = previous(record_a), previous(record_b)
    return known_a and known_b and prev_a != prev_b and (
        prev_a is None or prev_b is None or (partners or {}).get(prev_a) != prev_b)


def previous_apart(comparison: Comparison) -> list[ComparedStep]:
    """The matched steps whose records' previous checkpoints differ (`previous_differs`): PREVIOUS_FIELDS are not
    compared there."""
    partners = {match.step_a: match.step_b for compared in comparison.steps
                if (match := getattr(compared, "match", None)) is not None}
    return [compared for compared in comparison.steps
            if previous_differs(getattr(compared, "record_a", {}), getattr(compared, "record_b", {}), partners)]


def previous_line(comparison: Comparison) -> str | None:
    """"cka_prev, overlap_prev: compared at 2 of 3 matched steps; at 1 step the runs' previous checkpoints differ
    (at step 30: A's is step 20, B's step 10)", or None where they differ at no matched step."""
    apart = previous_apart(comparison)
    if not apart:
        return None
    first = apart[0]
    step_a, step_b = first.match.step_a, first.match.step_b
    where = f"step {step_a}" if step_a == step_b else f"steps {step_a}↔{step_b}"

    def said(record: Record) -> str:
        value = record.get("prev_step")
        return "none" if value is None else f"step {value}"

    total = len(comparison.steps)
    return (f"{', '.join(PREVIOUS_FIELDS)}: compared at {total - len(apart)} of {total} matched steps; at "
            f"{counted(len(apart), 'step')} the runs' previous checkpoints differ ({'e.g. ' if len(apart) > 1 else ''}"
            f"at {where}: A's is {said(first.record_a)}, B's {said(first.record_b)})")


@dataclass(frozen=True)
class ComparedStep:
    """One matched pair of checkpoints: both records, B − A, and the cross-run eigenspace overlap."""

    match: Match
    record_a: Record
    record_b: Record
    differences: Mapping[str, Any]
    overlap: float | None
    #: the k of `overlap` (C, run A's --overlap-k, or fewer where a run stores fewer); None without one
    overlap_k: int | None = None
    #: whether the overlap was computed at this step, one of the `--overlap-steps` spread over the run (`overlap`
    #: None there: it cannot be, a gap in the figure); a step not chosen is no gap, the line drawn past it
    overlap_computed: bool = False


@dataclass(frozen=True)
class Comparison:
    """Two runs aligned by step."""

    path_a: Path
    path_b: Path
    steps: list[ComparedStep]
    notes: list[str]
    verdict: str
    option_differences: list[OptionDifference] = field(default_factory=list)
    #: the k of the cross-run overlap in words: "top C", or the k used and why
    overlap_label: str = "top C"
    #: whether run A's and run B's probes hold float 0/1 targets (`zero_one_targets`; None: not recorded)
    zero_one_targets: tuple[bool | None, bool | None] = (None, None)
    #: the thresholds the verdict used (COMPARE_THRESHOLDS, as `--threshold` set them)
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(COMPARE_THRESHOLDS))
    #: the verdict in a word (`richer_run`): "a", "b", "equal", or None where D_LR cannot tell
    richer: str | None = None
    #: whether run A's and run B's features moved at the matched steps (`features_moved`; None: cannot tell)
    moved: tuple[bool | None, bool | None] = (None, None)
    #: the (probe, layer) of run A and of run B where either store holds several series or they differ, named in
    #: the header and carried by every `--json` record as `probe` and `layer` (DESIGN.md); None otherwise
    series: tuple[tuple[str | None, str | None], tuple[str | None, str | None]] | None = None
    #: the checkpoints `fdl analyze` refused in run A and in run B (`refused_items`; None: the store records none)
    refused: tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None] = (None, None)
    #: whether run A's and run B's probes are too small for EF (`small_probe_note`; the notes give the line)
    small_probe: tuple[bool, bool] = (False, False)
    #: the changes of the model's code run A's and run B's stores mix (`model_change_items`; None: none recorded)
    model_changes: tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None] = (None, None)


@dataclass(frozen=True)
class OptionDifference:
    """An analysis choice (an `fdl analyze` option, the layers, the reference step) that differs between runs."""

    option: str
    a: Any
    b: Any


#: Analysis choices, beyond `provenance["options"]`, whose difference makes field differences mix
#: analysis with training (the model and the probe are what a comparison is about, or checked elsewhere).
COMPARED_PROVENANCE = ("layers", "reference_step")


#: Options a store records only when not these (`AnalyzeOptions.numeric_options`): absent, they are these.
UNRECORDED_OPTIONS: Mapping[str, Any] = {"cka_dtype": "float64", "weights": None}


def option_differences(provenance_a: Mapping[str, Any], provenance_b: Mapping[str, Any], *,
                       outputs: tuple[int | None, int | None] = (None, None),
                       layers: tuple[str | None, str | None] | None = None) -> list[OptionDifference]:
    """The analysis choices recorded in both stores' provenance that differ (options first, by name). `layers`: the
    layers of the two series compared, which then stand for the stores' lists of layers (`layer`): another layer a
    store holds takes no part in the comparison, whose numbers a layer analysed beside them leaves as they are. An option a
    store records only when not its default is that default where absent: `cka_dtype` and `weights`
    (UNRECORDED_OPTIONS), and `overlap_k` min(top_k, C), C a store's `outputs` (its probes' largest n_outputs;
    None: not known, and overlap_k compared only where both record it). Compared as recorded, a run analysed
    with `--overlap-k 5` or `--cka-dtype float32` against one analysed without was warned of nothing."""
    options_a, options_b = (_options_as_run(provenance, count)
                            for provenance, count in ((provenance_a, outputs[0]), (provenance_b, outputs[1])))
    if not any(isinstance(options := provenance.get("options"), Mapping) and "overlap_k" in options
               for provenance in (provenance_a, provenance_b)):
        # neither run was given --overlap-k (each k is min(top_k, C)): a difference is top_k's, said as such, or
        # C's, which compare's note of the outputs says; "overlap_k: A 4 vs B 10" named an option no one chose
        options_a.pop("overlap_k", None)
        options_b.pop("overlap_k", None)
    pairs = [(name, options_a[name], options_b[name]) for name in sorted(set(options_a) & set(options_b))]
    pairs += [
        (name, provenance_a[name], provenance_b[name])
        for name in COMPARED_PROVENANCE
        if name in provenance_a and name in provenance_b and not (layers is not None and name == "layers")
    ]
    if layers is not None:
        pairs.append(("layer", *layers))
    differences = []
    for name, value_a, value_b in pairs:
        value_a, value_b = _plain(value_a), _plain(value_b)
        if value_a != value_b:
            differences.append(OptionDifference(option=name, a=value_a, b=value_b))
    return differences


def _options_as_run(provenance: Mapping[str, Any], outputs: int | None) -> dict[str, Any]:
    """A store's recorded `options` with those it leaves out at their defaults filled in (`option_differences`);
    {} for a store that records none."""
    options = provenance.get("options")
    if not isinstance(options, Mapping):
        return {}
    filled = {**UNRECORDED_OPTIONS, **options}
    if "overlap_k" not in options and (k := overlap_k_recorded(options, outputs)) is not None:
        filled["overlap_k"] = k  # `pipeline._overlap_k_option`
    return filled


def _plain(value: Any) -> Any:
    """A provenance value as plain Python (lists, not arrays or tuples) so equal choices compare equal."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return _clean(value)


def option_difference_note(comparison: Comparison) -> str | None:
    """One warning naming every analysis choice that differs between the runs (A vs B), or None. Each value is said
    as `fdl report` says it (`_option_text`: `center: A no vs B yes`, `layer: A fc1 vs B fc2`);
    Python's reprs (`A False vs B True`, `A ['4:input']`) read as code. `--json` keeps the values themselves."""
    if not comparison.option_differences:
        return None

    def said(value: Any) -> str:
        return ", ".join(map(_option_text, value)) if isinstance(value, list) and value else _option_text(value)

    listing = "; ".join(f"{d.option}: A {said(d.a)} vs B {said(d.b)}" for d in comparison.option_differences)
    return (
        f"the two runs were analysed with different options ({listing}); their field differences "
        "then mix these analysis choices with differences in training (re-analyse one run with the "
        "other's options to compare training alone)"
    )


def compare_thresholds(overrides: Sequence[str]) -> dict[str, float]:
    """COMPARE_THRESHOLDS with `fdl compare --threshold NAME=VALUE` overrides applied: dlr_tie a number >= 0; the
    movement thresholds (MOVEMENT) read and checked by classify's own rules (`Thresholds.with_overrides`: the same
    names, ranges, overlap_moved <= overlap_static, and errors), after the others, as one set."""
    values = dict(COMPARE_THRESHOLDS)
    known = ", ".join(f"{name} (default {value:g})" for name, value in COMPARE_THRESHOLDS.items())
    movement = []
    for text in overrides:
        name, sep, value = (part.strip() for part in text.partition("="))
        if sep and name in MOVEMENT:
            movement.append(text)
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        good = bool(sep) and math.isfinite(number) and number >= 0
        if sep and name not in values:
            from fdl_cli.regimes import named_alike, near_names

            # classify's thresholds that compare has no use for (the regime's k95 rule and final window)
            unused = {f.name for f in dataclasses.fields(Thresholds)} - set(values)
            if (classifies := named_alike(name, unused)) is not None:
                raise FdlError(f"unknown compare threshold {name!r}: {classifies} is a threshold of fdl classify, not "
                               "of fdl compare", got=f"fdl compare's thresholds: {known}",
                               fix=f"pass it to fdl classify (--threshold {classifies}={value if good else 'VALUE'}); "
                               "fdl compare takes --threshold NAME=VALUE with one of those names")
            # as classify's: DLR_TIE, dlr-tie named (`regimes.Thresholds.with_overrides`), `overlap` both overlaps
            near = near_names(name, values)
            raise FdlError(f"unknown compare threshold {name!r}" + (f" (did you mean {' or '.join(near)}?)" if near
                                                                    else ""),
                           got=f"fdl compare's thresholds: {known}",
                           fix=f"pass --threshold {near[0]}={value if good else 'VALUE'}" if len(near) == 1 else
                           "pass --threshold NAME=VALUE with one of those names")
        if not good:
            raise FdlError(f"bad threshold {text!r}: expected NAME=VALUE with VALUE a finite number >= 0",
                           got=f"{value!r}" if sep else f"{text!r} (no '=')", fix="e.g. --threshold dlr_tie=0.002")
        values[name] = number
    if movement:
        chosen = Thresholds.with_overrides(movement)
        values.update((name, getattr(chosen, name)) for name in MOVEMENT)
    return values


def thresholds_line(thresholds: Mapping[str, float]) -> str:
    """The line `thresholds:` of `fdl compare`: every threshold in force, each with what it decides. A tie other
    than the default is the user's (a seed study's spread, say), so it is not given the default's reason."""
    tie = thresholds["dlr_tie"]
    why = (": rounding's, as between float32 and bfloat16 analyses" if tie == DLR_TIE else
           f", as given; the default {threshold_text(DLR_TIE)} is rounding's")
    return (f"thresholds: dlr_tie = {threshold_text(tie)} (a D_LR difference up to it is a tie{why}); "
            + ", ".join(f"{name} = {threshold_text(thresholds[name])}" for name in MOVEMENT)
            + " (whether a run's features moved, by fdl classify's rule)")


def richer_run(steps: Sequence[ComparedStep], *, tie: float = DLR_TIE,
               unmatched: tuple[Sequence[Record], Sequence[Record]] = ((), ()),
               movement: Thresholds | None = None,
               references: tuple[int | None, int | None] = (None, None)) -> tuple[str | None, str]:
    """Which run is richer (lower D_LR) and from which matched step on: in a word, "a" or "b" (the run richer at
    the last matched step), "equal" where the runs end equally rich, None where D_LR cannot tell (`fdl compare
    --json`'s `richer`, which a script tests rather than the sentence), and in plain words (the verdict). D_LR
    values at most `tie` apart (DLR_TIE: rounding's, not training's) are equally rich. `unmatched`: each run's
    records at the checkpoints the other run does not match; `movement`: the thresholds by which a run's features
    moved (`_movement_note`, `fdl compare --threshold cka_static=...`; None: classify's defaults); `references`:
    each run's reference step (`_run_movements`)."""
    signs: list[tuple[Match, int]] = []  # (matched steps, +1 when B is richer, -1 when A is, 0 tie)
    exact = True  # every tie an exact one: "same D_LR", as before the tolerance
    constant: list[tuple[Match, list[str]]] = []  # matched steps left out: the runs whose outputs are constant
    for compared in steps:
        d_a, d_b = compared.record_a.get("d_lr"), compared.record_b.get("d_lr")
        if d_a is None or d_b is None:
            continue
        if flat := _constant_outputs(compared):
            constant.append((compared.match, flat))
            continue
        sign = 0 if abs(d_b - d_a) <= tie else (1 if d_b < d_a else -1)
        exact = exact and (sign != 0 or d_a == d_b)
        signs.append((compared.match, sign))
    left_out = _constant_outputs_note(constant)
    if not signs:
        if constant:
            return None, "D_LR is not measured at the matched steps: cannot say which run is richer." + left_out
        return None, "D_LR is not available at the matched steps: cannot say which run is richer."
    last = signs[-1][1]
    if len(signs) > 1:  # of all the matched steps, or of those measured, where some are left out (constant outputs)
        every = "at every matched step" if len(signs) == len(steps) else (
            f"at the {len(signs)} of the {len(steps)} matched steps where D_LR is measured")
    else:  # the step after a comma, not in parentheses: "at the only matched step (step 350 of A (400 of B))"
        only = "the only matched step" if len(steps) == 1 else (
            "the only matched step with both D_LR" + (" measured" if constant else ""))
        every = f"at {only}, {_matched_step(signs[0][0])}"
    same = "same D_LR" if exact else f"D_LR within dlr_tie = {tie:g}"
    if last == 0:  # a lazy run tied with a learning one is as much a lazy run as one ranked richer
        if all(sign == 0 for _, sign in signs):
            return "equal", f"The runs are equally rich ({same}) {every}." + left_out + _movement_note(
                steps, unmatched=unmatched, thresholds=movement, references=references)
        return "equal", (f"The runs end equally rich ({same} at the last matched step)." + left_out
                         + _movement_note(steps, unmatched=unmatched, thresholds=movement, references=references))
    first_index = len(signs) - 1
    while first_index > 0 and signs[first_index - 1][1] == last:
        first_index -= 1
    winner, loser = ("B", "A") if last > 0 else ("A", "B")
    # The last matched step with both D_LR (the signs above skip the others)
    final = next(c for c in reversed(steps) if c.record_a.get("d_lr") is not None
                 and c.record_b.get("d_lr") is not None and not _constant_outputs(c))
    d_a, d_b = final.record_a.get("d_lr"), final.record_b.get("d_lr")
    when = every if first_index == 0 else f"from {_matched_step(signs[first_index][0])} on"
    # "measured" where a step left out (constant outputs) has both D_LR, 1.0 by the rule
    where = "last matched step" if final is steps[-1] else (f"{_matched_step(final.match)}, the last with both D_LR"
                                                           + (" measured" if constant else ""))
    gap = ""
    if d_a is not None and d_b is not None and max(d_a, d_b) > 0:
        gap = f", {abs(d_a - d_b) / max(d_a, d_b):.0%} lower" if abs(d_a - d_b) >= 0.005 * max(d_a, d_b) else ", <1% lower"
    values = f"D_LR A {format_value('d_lr', d_a)}, B {format_value('d_lr', d_b)}{gap}"
    return winner.lower(), (
        # one signed step: `when` names it, and its values follow it ("(step 350) (last matched step: ...)")
        f"Run {winner} is richer than run {loser} (lower D_LR) {when}"
        + (f": {values}." if len(signs) == 1 else f" ({where}: {values}).")
        + left_out + _movement_note(steps, richer=winner, unmatched=unmatched, thresholds=movement,
                                   references=references)
    )


def _constant_outputs(compared: ComparedStep) -> list[str]:
    """The runs ("A", "B") whose outputs are constant over the probe at this matched step (output_rank 0: a
    zero head, say), where D_LR is 1.0 by its degenerate rule, not a measurement (docs/measures.md)."""
    return [name for name, record in (("A", compared.record_a), ("B", compared.record_b))
            if record.get("output_rank") == 0]


def _constant_outputs_note(constant: Sequence[tuple[Match, list[str]]]) -> str:
    """The sentence naming the matched steps `richer_run` left out (`_constant_outputs`), or ""."""
    if not constant:
        return ""
    runs = sorted({name for _, names in constant for name in names})
    shown = ", ".join(_matched_step(match) for match, _ in constant[:6]) + (
        f" and {len(constant) - 6} more" if len(constant) > 6 else "")
    whose = "runs A's and B's" if runs == ["A", "B"] else f"run {runs[0]}'s"
    return (f" Left out of this verdict: {shown}, where {whose} outputs are constant over the probe (output_rank 0, "
            "a zero or constant head?), so D_LR is 1.0 there by its degenerate rule, not a measurement.")


def _step_pair(match: Match) -> str:
    """"100", or for a nearest-step pair "100↔105" (A's step, B's), as compare's notes name a matched step."""
    return str(match.step_a) if match.exact else f"{match.step_a}↔{match.step_b}"


def _matched_step(match: Match) -> str:
    """"step 100", or for a nearest-step pair "step 100 of A and 105 of B": the verdict named A's step alone,
    "run B is richer from step 55 on" for a run B without a step 55. Without parentheses, since the verdict puts
    it in some ("(step 100 of A (105 of B), the last with both D_LR: ...)" nested them)."""
    return f"step {match.step_a}" if match.exact else f"step {match.step_a} of A and {match.step_b} of B"


@dataclass(frozen=True)
class _RunMovement:
    """How one run's features moved (`feature_movement`) at the matched steps and at those the other run lacks."""

    name: str  # "A" or "B"
    records: list[Record]  # at the matched steps from its reference on (`regimes.after_reference`, and the reference)
    moved: bool  # moved (below a static bound, no conflict) at some matched step after its reference
    static: bool  # static at every matched step after its reference, one at least
    later: list[Record]  # its records at the steps the other run does not match where its features moved
    #: its records at the steps the other run does not match that tell neither moved nor static (a conflict, no
    #: measure): classify calls such a run undetermined, so compare calls it no lazy run either
    unsettled: list[Record]
    #: its reference's step where matched steps before it were left out (an `analyze --reference` after the first
    #: step: classify does not read them either), else None
    reference: int | None = None


def _run_movements(steps: Sequence[ComparedStep], thresholds: Thresholds,
                   unmatched: tuple[Sequence[Record], Sequence[Record]],
                   references: tuple[int | None, int | None] = (None, None)) -> list[_RunMovement]:
    """Run A's and run B's `_RunMovement`: the evidence of `_movement_note`'s sentences and `features_moved`,
    judged as `fdl classify` judges a run, from the checkpoints after its reference (`references`: each run's
    reference step; None: its first matched step)."""
    runs = []
    for (name, side), elsewhere, reference in zip((("A", "record_a"), ("B", "record_b")), unmatched, references,
                                                  strict=True):
        matched = [getattr(compared, side) for compared in steps]
        if reference is None and matched:
            reference = min(int(r["step"]) for r in matched)
        records = [r for r in matched if int(r["step"]) == reference or after_reference(int(r["step"]), reference)]
        said = [feature_movement(r, thresholds)[0] for r in records if after_reference(int(r["step"]), reference)]
        there = [(r, feature_movement(r, thresholds)[0]) for r in elsewhere
                 if after_reference(int(r["step"]), reference)]
        runs.append(_RunMovement(name=name, records=records, moved=MOVED in said,
                                 static=bool(said) and all(movement == STATIC for movement in said),
                                 later=[r for r, movement in there if movement == MOVED],
                                 unsettled=[r for r, movement in there if movement not in (MOVED, STATIC)],
                                 reference=reference if len(records) < len(matched) else None))
    return runs


def features_moved(steps: Sequence[ComparedStep], *, thresholds: Thresholds | None = None,
                   unmatched: tuple[Sequence[Record], Sequence[Record]] = ((), ()),
                   references: tuple[int | None, int | None] = (None, None)) -> tuple[bool | None, bool | None]:
    """Whether run A's and run B's features moved at the matched steps, as the verdict's sentences say it
    (`_movement_note`; `fdl compare --json`'s `moved`): True where they moved at one (below `cka_static` or
    `overlap_static`, not a conflict), False where the run is static at every matched step after its reference, one
    at least, and at its checkpoints the other run does not match; None where the matched steps cannot tell: the
    reference alone (its own 1.0 says nothing), one without either measure, a conflict (CKA static, the top-C eigenspace
    below `overlap_moved`: classify's undetermined), or a run that moved, or is neither moved nor static, only at
    a step the other does not match. Only the matched steps after each run's reference count, as in `fdl classify`
    (`references`, `_run_movements`): one before a mid-run `analyze --reference` is measured against a later
    checkpoint."""
    said = [True if run.moved else False if run.static and not run.later and not run.unsettled else None
            for run in _run_movements(steps, thresholds or Thresholds(), unmatched, references)]
    return said[0], said[1]


def _movement_note(steps: Sequence[ComparedStep], *, richer: str | None = None,
                   unmatched: tuple[Sequence[Record], Sequence[Record]] = ((), ()),
                   thresholds: Thresholds | None = None,
                   references: tuple[int | None, int | None] = (None, None)) -> str:
    """A sentence for each run whose features never moved (the classifier's `static` at every matched
    step: CKA to its reference at or above `cka_static` and the top-C overlap at or above
    `overlap_static`, `thresholds` as `fdl compare --threshold` set them; None: classify's defaults): its D_LR is
    that of features it did not learn, so "richer" then compares a lazy
    run's fixed features with the other run's (SPEC §7: coefficient). CKA alone is not enough: a run
    whose top-C eigenspace rotated under a static CKA is a conflict that `fdl classify` calls
    undetermined, not coefficient. A matched step where neither measure exists (features constant over the
    anchors: a layer that died) is no evidence of a static run, and a measure missing at some matched steps is
    said where it is measured, not "at every matched step". Where one run never moved and the other moved (a
    frozen backbone against a trained net), a last sentence says which of the two learned features, and, where
    `richer` (the verdict's run, "A" or "B"; None for a tie) is the static one, that its lower D_LR is its
    readout's. `unmatched`: each run's records at its checkpoints the other run does not match; a run static at
    the matched steps whose features moved at one of those is said to have moved there, neither lazy nor one
    that did not learn features. `references`: each run's reference step; the matched steps before it are not
    read (`_run_movements`), and the sentence says "from its reference (step N) on"."""
    thresholds = thresholds or Thresholds()
    notes = []
    static, moved = [], []  # the runs that never moved, and those that moved at a matched step
    for run in _run_movements(steps, thresholds, unmatched, references):
        name, records = run.name, run.records
        if run.moved:
            moved.append((name, records))
        if run.static:
            # a measure of every matched step first, under "at every matched step"; one missing at some (CKA null:
            # too few anchors) at those where it is measured: it said "at every matched step" of the reference's 1.0
            measures = sorted(_static_measures(records, thresholds), key=lambda said: len(said[2]) < len(records))
            every = ("at every matched step " + ("" if run.reference is None else
                                                 f"from its reference (step {run.reference}) on ")
                     if len(measures[0][2]) == len(records) else "")
            shown = [f"{label} ≥ {threshold_text(bound)}" + (f" at the {len(values)} of the {len(records)} matched "
                                                             "steps where it is measured" if len(values) < len(records)
                                                             else "") + f", lowest {text}"
                     for label, bound, values, text in measures]
            # "a lazy run" of a run the other does not follow to where it moved, or to where its measures tell
            # neither moved nor static (a conflict, a measure missing: classify's undetermined)
            if elsewhere := run.later or run.unsettled:
                other = "B" if name == "A" else "A"
                at = (f"{'step' if len(elsewhere) == 1 else 'steps'} "
                      f"{first_and_more([int(r['step']) for r in elsewhere], UNMATCHED_SHOWN)}, which no checkpoint of "
                      f"{other} matches")
                there = (f"they moved at {at} ({_moved_measures(run.later, thresholds)})" if run.later else
                         f"at {at}, its measures tell neither moved nor static (a conflict, or a measure missing: "
                         "`fdl classify` gives the evidence)")
                notes.append(
                    f" Run {name}'s features did not move at the matched steps ({every}{', and '.join(shown)}):"
                    f" its D_LR there is that of its reference checkpoint's features; {there}.")
                continue
            static.append(name)
            notes.append(
                f" Run {name}'s features did not move ({every}{', and '.join(shown)}): its D_LR is "
                "that of its reference checkpoint's features, not of features learned in these steps, a lazy "
                "(coefficient) run (`fdl classify` gives the evidence)."
            )
    if len(static) == 1 and len(moved) == 1:
        # "Run A is richer" of a frozen backbone read as "A learned more": D_LR ranks richness, which fixed features
        # may win through their readout alone; which run learned features is the other question, answered here
        (name, records), = moved
        notes.append(f" Of the two runs, only {name}'s features moved ({_moved_measures(records, thresholds)}): "
                     f"{name} learned features, {static[0]} did not"
                     + (f"; {static[0]}'s lower D_LR comes from its readout of fixed features."
                        if richer == static[0] else "."))
    return "".join(notes)


def _static_measures(records: Sequence[Record], thresholds: Thresholds) -> list[tuple[str, float, list[float], str]]:
    """(label, static bound, values, lowest in words) of each measure a static run's `records` hold: "lowest
    1.0000" of a lazy run's 0.9999996 reads as 1 less its gap instead."""
    from fdl_cli.regimes import one_minus_gap

    said = []
    for field_name, label, bound in (("cka_init", "CKA to its reference", thresholds.cka_static),
                                     ("overlap_init", "top-C overlap", thresholds.overlap_static)):
        values = [r[field_name] for r in records if r.get(field_name) is not None]
        if values:
            lowest = min(values)
            text = format_value(field_name, lowest)
            if text == format_value(field_name, 1.0) and lowest < 1.0:
                text = one_minus_gap(lowest)
            said.append((label, bound, values, text))
    return said


def _moved_measures(records: Sequence[Record], thresholds: Thresholds) -> str:
    """"CKA to its reference down to 0.6250, top-C overlap to 0.5000": the lowest of each measure of `records`
    that is below its static bound, the measures that moved (a CKA a hair under 1 beside a rotated eigenspace
    read "CKA to its reference down to 1.0000" as the evidence)."""
    return ", ".join(
        f"{label} {format_value(field_name, least)}"
        for field_name, label, bound in (("cka_init", "CKA to its reference down to", thresholds.cka_static),
                                         ("overlap_init", "top-C overlap to", thresholds.overlap_static))
        if (least := min((r[field_name] for r in records if r.get(field_name) is not None), default=bound)) < bound)


def probe_sha(run: Run, series: Series, attr: str = "sha256") -> str | None:
    """The series' probe's `attr` as the store records it: its file's sha256, or `x_sha256` (its inputs')."""
    info = run.probes.get(series.probe) if series.probe is not None else None
    sha = getattr(info, attr, None) if info is not None else None
    return str(sha) if sha else None


#: `check_same_probe`'s note when the probe files differ but their inputs agree (a label-shuffle control)
SAME_INPUTS_NOTE = "the probes differ in their labels only: the overlap compares the same inputs"
#: The fields a probe's labels (or targets) are measured against, as the notes on two probes of the same inputs name them
LABEL_FIELDS_SAID = "the fields measured against the labels (accuracy, loss, r2, cross_entropy, Π*, nc1)"


def _unlabelled_probe(run_a: Run, series_a: Series, run_b: Run, series_b: Series) -> str | None:
    """For two probes of the same inputs: what the labels leave of the comparison where a probe holds none (no y),
    or None where both hold labels. "the probes differ in their labels only" and "the same inputs with other
    labels" were said of a probe without any against one with them."""
    bare = [name for name, run, series in (("A", run_a, series_a), ("B", run_b, series_b))
            if getattr(run.probes.get(series.probe) if series.probe is not None else None, "task", None) == "none"]
    if not bare:
        return None
    if len(bare) == 2:
        return "the same inputs, and neither holds labels (no y): every field is measured on the same data"
    other = "B" if bare == ["A"] else "A"
    return (f"the same inputs, run {bare[0]}'s probe without labels (no y): {LABEL_FIELDS_SAID} are run {other}'s "
            f"alone, left unmatched")


def check_same_probe(run_a: Run, series_a: Series, run_b: Run, series_b: Series) -> str | None:
    """Refuse a cross-run overlap unless both series were analysed on the same probe inputs: the same file
    (same sha256), or, where both stores record the inputs' sha256 (`x_sha256`), files whose inputs agree
    (the eigenfunctions are functions of x alone). Returns SAME_INPUTS_NOTE in that second case, else None."""
    sha_a, sha_b = probe_sha(run_a, series_a), probe_sha(run_b, series_b)
    if sha_a is not None and sha_a == sha_b:
        return None
    x_a, x_b = probe_sha(run_a, series_a, "x_sha256"), probe_sha(run_b, series_b, "x_sha256")
    if sha_a is not None and x_a is not None and x_a == x_b:
        bare = _unlabelled_probe(run_a, series_a, run_b, series_b)
        return SAME_INPUTS_NOTE if bare is None else f"the probes hold {bare}; the overlap compares the same inputs"
    lacking = [str(run.path) for run, value in ((run_a, x_a), (run_b, x_b)) if value is None]
    # The store keeps no digest of the inputs as a set (x_sha256 is taken in their order, the anchors are the first
    # m rows and their inputs are stored for 1-D probes alone), so the same points in another order cannot be told
    # from other points: the fix names the order as a cause where the probes hold as many points, which a
    # permutation keeps, and the numbers where they differ, which rules it out.
    counts = [getattr(run.probes.get(series.probe) if series.probe is not None else None, "n", None)
              for run, series in ((run_a, series_a), (run_b, series_b))]
    known = all(type(count) is int for count in counts)
    raise StoreError(
        "the two runs were not analysed on the same probe inputs, so their eigenspaces cannot be compared",
        got=(
            f"{run_a.path}: probe {series_a.probe!r} sha256 {_digest_said(sha_a)}, "
            f"{run_b.path}: probe {series_b.probe!r} sha256 {_digest_said(sha_b)}"
            + (f"; the inputs' sha256 differ too ({str(x_a)[:12]}…, {str(x_b)[:12]}…)" if not lacking else
               f"; {' and '.join(lacking)} record{'s' if len(lacking) == 1 else ''} no sha256 of the probe's "
               "inputs alone (x_sha256), so only the same file is taken as the same probe")
            + (f"; probes of {counts[0]} and {counts[1]} points" if known and counts[0] != counts[1] else "")
        ),
        fix="analyse both runs with the same probe inputs (--probe; the labels may differ)"
        + (", saved in one order: the same points in another order count as other inputs (their sha256 is taken in "
           "order);" if known and counts[0] == counts[1] else ",")
        + " or pass --no-overlap to compare only the per-checkpoint fields",
    )


def probe_difference_note(run_a: Run, series_a: Series, run_b: Run, series_b: Series) -> str | None:
    """Under `--no-overlap` (which skips `check_same_probe`): a note when the two series were analysed on other
    probe files, or None (the same file, or not recorded). compare then said nothing of it, and its differences
    read as training's where they are also the data's (a held-out probe against a training one, say)."""
    sha_a, sha_b = probe_sha(run_a, series_a), probe_sha(run_b, series_b)
    if sha_a is None or sha_b is None or sha_a == sha_b:
        return None
    x_a, x_b = probe_sha(run_a, series_a, "x_sha256"), probe_sha(run_b, series_b, "x_sha256")
    if x_a is not None and x_a == x_b:
        what = (_unlabelled_probe(run_a, series_a, run_b, series_b)
                or f"the same inputs with other labels: {LABEL_FIELDS_SAID} are of other targets")
    else:
        what = "each run's fields describe its own probe's data, so their differences are the data's as well as training's"
    return (f"the runs were analysed on different probe files (A: {series_a.probe!r} sha256 {sha_a[:12]}…, "
            f"B: {series_b.probe!r} sha256 {sha_b[:12]}…): {what}")


def recorded_overlap_k(provenance: Mapping[str, Any]) -> int | None:
    """The overlaps' k a store was analysed with (`--overlap-k`), None when it is C (none recorded)."""
    options = provenance.get("options")
    recorded = options.get("overlap_k") if isinstance(options, Mapping) else None
    return recorded if type(recorded) is int and recorded > 0 else None


@dataclass
class CrossOverlaps:
    """`cross_overlaps`: the overlap at each matched step, and the k it was taken with."""

    values: dict[Match, float | None] = field(default_factory=dict)
    #: the k asked for (run A's --overlap-k, else C)
    wanted: set[int] = field(default_factory=set)
    #: the k used at each step with an overlap (bounded by the columns both runs store and the anchors)
    ks: dict[Match, int] = field(default_factory=dict)
    #: whether the k asked for is C (run A recorded no --overlap-k)
    wanted_is_c: bool = True
    #: the fewest columns each run stored at the steps compared
    columns: dict[str, int] = field(default_factory=dict)
    #: (anchor points, k) of the steps left unmeasured because both top-k bases span every anchor point
    spanned: set[tuple[int, int]] = field(default_factory=set)
    #: the steps so left unmeasured
    spanned_at: set[Match] = field(default_factory=set)

    @property
    def used(self) -> set[int]:
        return set(self.ks.values())

    def label(self) -> str:
        """How the overlap line names its k: "top C", or the k used and why."""
        used = self.used
        if not used or (used == self.wanted and self.wanted_is_c):
            return "top C"
        shown = f"top {min(used)}" if len(used) == 1 else f"top {min(used)}–{max(used)}"
        # fewer than run A's --overlap-k: the k used alone, as for C (the note says why)
        return shown + (", run A's --overlap-k" if not self.wanted_is_c and used == self.wanted else "")

    def note(self) -> str | None:
        """Why fewer than the k asked for were compared, or why no overlap was measured, when so."""
        if self.spanned and not self.used:
            points, k = min(self.spanned)
            return (f"the cross-run overlap is not measured: the stores hold the eigenfunctions on "
                    f"{counted(points, 'distinct anchor point')}, which the top {k} span whole (the overlap would be 1 "
                    "whatever the features do); analyse with a larger --anchor-size")
        if self.values and all(value is None for value in self.values.values()):
            # the table then has no column of it (`render_comparison_table`): why, said
            where = "the matched step" if len(self.values) == 1 else f"any of the {len(self.values)} matched steps"
            return (f"the cross-run overlap is not measured: the runs do not both hold eigenfunctions to compare at "
                    f"{where} compared (a run whose features have rank 0 on the probe stores none)")
        if not self.used or min(self.used) >= min(self.wanted):
            return None
        fewest = min(self.columns, key=lambda run: self.columns[run])
        if self.columns[fewest] > min(self.used):  # the anchors bound k
            why = f"the stores hold them on {counted(min(self.used), 'anchor point')} (--anchor-size)"
        else:
            why = f"run {fewest} stores {self.columns[fewest]} a checkpoint (its --top-k / --overlap-k, or its rank)"
        used, wanted = min(self.used), min(self.wanted)
        return f"the cross-run overlap compares the top {counted(used, 'eigenfunction')}, not the top {wanted}: {why}"

    def missing_note(self) -> str | None:
        """Where the overlap was computed at some steps but has no value at others: which, and why (the table
        shows "—" there as at a step --overlap-steps left out; `note` speaks for a step-less overlap)."""
        missing = [match for match, value in self.values.items() if value is None]
        if not missing or len(missing) == len(self.values):
            return None
        shown = ", ".join(_step_pair(match) for match in missing[:5])
        shown += f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        why = []
        if any(match in self.spanned_at for match in missing):
            why.append("both runs' top k span every distinct anchor point (the overlap would be 1 whatever the "
                       "features do; a larger --anchor-size measures it)")
        if any(match not in self.spanned_at for match in missing):
            why.append("the runs do not both hold eigenfunctions (a run whose features have rank 0 on the probe "
                       "stores none)")
        return (f"the cross-run overlap is not measured at {counted(len(missing), 'step')} of the "
                f"{len(self.values)} it was computed at ({shown}): " + ", or ".join(why))


def _distinct_rows(values_a: np.ndarray, values_b: np.ndarray) -> int:
    """How many distinct rows the two runs' values (m, k_a) and (m, k_b) hold side by side: the distinct
    anchor inputs, as a repeated input gives equal rows in both runs (the values of one deterministic
    forward pass, stored as float32). Rows equal in one run alone are distinct inputs whose features that
    run does not tell apart (collapsed, dead units): counted by that run's rows alone they made the
    overlap "not measured" for `compare A B` where `compare B A` measured it."""
    return int(np.unique(np.ascontiguousarray(np.hstack([values_a, values_b])), axis=0).shape[0])


def cross_overlaps(
    run_a: Run, series_a: Series, run_b: Run, series_b: Series, matches: Sequence[Match]
) -> CrossOverlaps:
    """O_C between the top-C eigenfunctions of the two runs at each matched step (SPEC.md §5); O_k with
    the k run A was analysed with (`--overlap-k`); k bounded by the columns both runs store."""
    from fdl_cli.spectral import eigenspace_overlap

    by_step_a = {int(record["step"]): record for record in series_a.records}
    result = CrossOverlaps()
    values_a = iter_array(run_a, series_a, [match.step_a for match in matches], "eigenfunctions")
    values_b = iter_array(run_b, series_b, [match.step_b for match in matches], "eigenfunctions")
    recorded = recorded_overlap_k(run_a.provenance)
    result.wanted_is_c = recorded is None
    # C where a record's n_outputs is null: the probe's, which the store records for every probe
    probe_outputs = getattr(run_a.probes.get(series_a.probe or ""), "n_outputs", None)
    for match, (_, stored_a), (_, stored_b) in zip(matches, values_a, values_b, strict=True):
        # run A's --overlap-k when it was analysed with one, else C (the stored columns bound both)
        k = int(recorded if recorded is not None else by_step_a[match.step_a].get("n_outputs") or probe_outputs or 1)
        a, b = np.asarray(stored_a, dtype=np.float64), np.asarray(stored_b, dtype=np.float64)
        if a.ndim == 2 and b.ndim == 2 and a.shape[0] != b.shape[0]:
            # said by `eigenspace_overlap` too, without saying which run holds which: the one to analyse again
            raise StoreError(
                "eigenspace overlap needs eigenfunction values on the same inputs: the runs were analysed with "
                "different --anchor-size values",
                got=f"{run_a.path} (A) holds them on {a.shape[0]} anchor points, {run_b.path} (B) on {b.shape[0]}",
                fix="analyse one run again with the other's --anchor-size (into a new --out), or pass --no-overlap "
                    "to compare only the per-checkpoint fields",
            )
        # the anchor points' distinct inputs: a repeated input has the same row of values in both runs
        # (the same probe), and bases spanning the functions on the distinct ones overlap 1 whatever
        points = (_distinct_rows(a, b) if a.ndim == 2 and b.ndim == 2 and a.size and a.shape[0] == b.shape[0]
                  else None)
        result.values[match] = eigenspace_overlap(a, b, k=k, points=points)
        spans = b.ndim == 2 and points is not None and 0 < points <= min(k, a.shape[1], b.shape[1])
        if spans and result.values[match] is None:
            result.spanned.add((int(points or 0), k))
            result.spanned_at.add(match)
        # a step with nothing to compare (rank 0 on a side: no eigenfunction stored) names no k
        if a.ndim == 2 and b.ndim == 2 and result.values[match] is not None:
            result.wanted.add(k)
            result.ks[match] = min(k, a.shape[1], b.shape[1], a.shape[0])
            for run, columns in (("A", a.shape[1]), ("B", b.shape[1])):
                result.columns[run] = min(result.columns.get(run, columns), columns)
    return result


def overlap_tie(run: Run, series: Series, evidence: Mapping[str, Any], thresholds: Any) -> dict[str, Any] | None:
    """For `fdl classify`: when the final checkpoint's movement rests on the overlap alone
    (`regimes.overlap_alone`), the relative eigengaps at the overlaps' cut k of the reference and of that
    checkpoint (from the stored eigenvalues), whether either is a near-tie (`regimes.NEAR_TIE_GAP`), and
    then the overlap of the top-k' eigenspaces past the tie (the smallest k' > k where both gaps clear
    it, up to 2k and within the stored eigenfunctions). None where that does not apply or is not stored.

    k is the k the stored overlap_init was taken with: --overlap-k, else C, bounded as analyze bounds it
    by the columns both checkpoints store and the anchor points. A store that recorded no overlap_k and
    stores fewer than C columns (--top-k below C, with --overlap-k equal to it, or an fdl older than
    overlap_k) compared its top --top-k: the gap at C was not the cut's (session 15 review)."""
    from fdl_cli.regimes import NEAR_TIE_GAP, overlap_alone, relative_gap
    from fdl_cli.spectral import eigenspace_overlap

    final_step, reference_step = evidence.get("final_step"), evidence.get("reference_step")
    by_step = {int(record["step"]): record for record in series.records}
    if not isinstance(final_step, int) or not isinstance(reference_step, int) or reference_step not in by_step:
        return None
    final = by_step.get(final_step)
    if final is None or not overlap_alone(final, thresholds):
        return None
    recorded = recorded_overlap_k(run.provenance)
    steps = [reference_step, final_step]
    values = dict(iter_array(run, series, steps, "eigenfunctions"))
    a, b = (np.asarray(values.get(step), dtype=np.float64) for step in steps)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        return None
    k = min(int(recorded if recorded is not None else final.get("n_outputs") or 0), a.shape[1], b.shape[1], a.shape[0])
    spectra: dict[int, list[float]] = {}
    for step, stored in iter_array(run, series, steps, "eigenvalues"):
        if stored is None:
            return None
        spectra[step] = [float(value) for value in stored]
    gap_reference, gap_final = (relative_gap(spectra[step], k) for step in steps)
    if gap_reference is None or gap_final is None:
        return None
    options = run.provenance.get("options")
    tie: dict[str, Any] = {
        "k": k, "step": final_step, "reference_step": reference_step, "cka_init": final["cka_init"],
        "overlap_init": final["overlap_init"], "gap_reference": gap_reference, "gap_final": gap_final,
        # both top-k spaces ill-defined; on one side only, eigenvalues crossed the cut (`overlap_tie_line`)
        "near_tie": max(gap_reference, gap_final) < NEAR_TIE_GAP,
        "crossing": min(gap_reference, gap_final) < NEAR_TIE_GAP <= max(gap_reference, gap_final),
        "wider_k": None, "wider_overlap": None,
        # --center: the eigenfunctions, hence the overlap, are centered as CKA is
        "centered": centered(run),
    }
    if not (tie["near_tie"] or tie["crossing"]):
        return tie
    # k' within 2k: far past C (51 of 64 for a digits MLP at C = 10) the overlap says little of the top C
    tie["columns"] = columns = min(a.shape[1], b.shape[1])
    tie["wider_limit"] = limit = min(2 * k, columns)
    # the eigenfunctions asked for (K = max(--top-k, k)): a store holding fewer spans no more directions on
    # the anchors, so a larger --top-k would not look further (`overlap_tie_line`)
    top_k = options.get("top_k") if isinstance(options, Mapping) else None
    tie["top_k"] = max(top_k, k) if type(top_k) is int else None
    for wider in range(k + 1, limit + 1):
        wider_gaps = [relative_gap(spectra[step], wider) for step in steps]
        if all(gap is not None and gap >= NEAR_TIE_GAP for gap in wider_gaps):
            overlap = eigenspace_overlap(a, b, k=wider, points=_distinct_rows(a, b))
            if overlap is not None:
                tie["wider_k"], tie["wider_overlap"] = wider, overlap
            break
    return tie


#: Matched steps at which `fdl compare` computes the cross-run overlap by default: each needs the stored
#: eigenfunctions of both runs (a few ms per checkpoint), so a 1000-checkpoint comparison stays fast.
OVERLAP_STEPS = 20


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """Up to `count` items spread evenly by index, first and last kept (all when count is None)."""
    if count is None or len(items) <= count:
        return list(items)
    if count <= 1:
        return list(items[-1:]) if count == 1 else []
    indices = sorted({round(i * (len(items) - 1) / (count - 1)) for i in range(count)})
    return [items[i] for i in indices]


def compare_runs(
    run_a: Run, run_b: Run, *, overlap: bool = True, overlap_steps: int | None = OVERLAP_STEPS,
    thresholds: Mapping[str, float] | None = None,
) -> Comparison:
    """Align two runs by step, difference every field, and (same probe) the cross-run overlap.

    The overlap is computed at `overlap_steps` matched steps spread over the run (None: at every one);
    `thresholds`: COMPARE_THRESHOLDS as `compare_thresholds` gives them (None, or a name left out: its default).
    """
    thresholds = {**COMPARE_THRESHOLDS, **(thresholds or {})}  # every one in force: those not given at their default
    series_a = _single_series(run_a, "compare needs one per run")
    series_b = _single_series(run_b, "compare needs one per run", fix="pick store B's with --probe-b NAME and/or "
                              "--layer-b NAME (--probe / --layer select store A's, and store B's when not given)")
    same_inputs = check_same_probe(run_a, series_a, run_b, series_b) if overlap else None
    matches = align_steps(series_a.steps, series_b.steps)
    different = None if overlap else probe_difference_note(run_a, series_a, run_b, series_b)
    notes = [note for note in (same_run_note(run_a, series_a, run_b, series_b), same_inputs, different)
             if note is not None]
    nearest = [match for match in matches if not match.exact]
    if nearest:
        shown = ", ".join(_step_pair(m) for m in nearest[:5])
        more = f" and {len(nearest) - 5} more" if len(nearest) > 5 else ""
        notes.append(f"{counted(len(nearest), 'step')} matched to the nearest step of the other run: {shown}{more}")
    if (unmatched := unmatched_note(series_a.steps, series_b.steps, matches)) is not None:
        notes.append(unmatched)
    if (few := few_matches_note(series_a.steps, series_b.steps, matches)) is not None:
        notes.append(few)
    elif (span := span_note(series_a.steps, series_b.steps, matches)) is not None:
        notes.append(span)
    if not matches:
        notes.append("no checkpoints to compare")
    overlaps = CrossOverlaps()
    if overlap and matches:
        chosen = spread(matches, overlap_steps)
        overlaps = cross_overlaps(run_a, series_a, run_b, series_b, chosen)
        notes.extend(note for note in (overlaps.note(), overlaps.missing_note()) if note is not None)
        if len(chosen) < len(matches):
            notes.append(
                f"eigenspace overlap A·B computed at {len(chosen)} of {len(matches)} matched steps "
                "(--overlap-steps all for every one)"
            )
    record_a = {int(record["step"]): record for record in series_a.records}
    record_b = {int(record["step"]): record for record in series_b.records}
    outputs = sorted({
        (record_a[match.step_a].get("n_outputs"), record_b[match.step_b].get("n_outputs")) for match in matches
    } - {(None, None)}, key=str)
    if any(a != b for a, b in outputs):
        shown = "; ".join(f"A {a}, B {b}" for a, b in outputs if a != b)
        notes.append(
            f"the runs have different numbers of outputs C ({shown}): D_LR (through the output rank r_Ŷ), Π̂(C), "
            "k95 against C and the regimes are each relative to its own task, so the differences and the verdict "
            "below compare different tasks, not only different training"
        )
    if (devices := device_difference_note(run_a, series_a, run_b, series_b)) is not None:
        notes.append(devices)
    notes += zero_one_notes(run_a, series_a, run_b, series_b)
    small = (small_probe_note(run_a, series_a), small_probe_note(run_b, series_b))
    notes += _per_run(*small)
    # the overlap A·B, and each run's CKA and overlaps, see the first m rows of each probe alone
    notes += _per_run(anchor_skew_line(run_a, series_a), anchor_skew_line(run_b, series_b))
    if (binary := binary_logit_note(run_a, run_b)) is not None:
        notes.append(binary)
    partners = {match.step_a: match.step_b for match in matches}
    steps = [
        ComparedStep(
            match=match,
            record_a=record_a[match.step_a],
            record_b=record_b[match.step_b],
            differences=field_differences(record_a[match.step_a], record_b[match.step_b], partners),
            overlap=overlaps.values.get(match),
            overlap_k=overlaps.ks.get(match),
            overlap_computed=match in overlaps.values,
        )
        for match in matches
    ]
    matched_a, matched_b = {m.step_a for m in matches}, {m.step_b for m in matches}
    rest = ([r for r in series_a.records if r["step"] not in matched_a],
            [r for r in series_b.records if r["step"] not in matched_b])
    movement = movement_thresholds(thresholds)
    references = (_reference_of(run_a, series_a), _reference_of(run_b, series_b))
    richer, verdict = richer_run(steps, tie=thresholds["dlr_tie"], unmatched=rest, movement=movement,
                                 references=references)
    return Comparison(
        path_a=run_a.path, path_b=run_b.path, steps=steps, notes=notes,
        verdict=verdict, richer=richer, thresholds=thresholds,
        moved=features_moved(steps, thresholds=movement, unmatched=rest, references=references),
        option_differences=option_differences(run_a.provenance, run_b.provenance,
                                              outputs=(_largest_outputs(run_a), _largest_outputs(run_b)),
                                              layers=(series_a.layer, series_b.layer)),
        overlap_label=overlaps.label(),
        zero_one_targets=(zero_one_targets(run_a, series_a), zero_one_targets(run_b, series_b)),
        series=((series_a.probe, series_a.layer), (series_b.probe, series_b.layer))
        if run_a.several or run_b.several or series_a.label != series_b.label else None,
        refused=(refused_items(run_a), refused_items(run_b)),
        model_changes=(model_change_items(run_a), model_change_items(run_b)),
        small_probe=(small[0] is not None, small[1] is not None),
    )


def _reference_of(run: Run, series: Series) -> int | None:
    """The run's reference step as `fdl classify` takes it: the stored one, else the series' first stored step."""
    stored = reference_step_of(run.provenance)
    return stored if stored is not None else min((int(r["step"]) for r in series.records), default=None)


def same_run_note(run_a: Run, series_a: Series, run_b: Run, series_b: Series) -> str | None:
    """One line when B is A again, or None: the same series of the same store file, or a series whose checkpoints
    (their sha256, step by step), probe file (its sha256) and every field are A's (a copy of the store, or the same
    run analysed twice alike). compare then printed a table of zeros and "equally rich" and nothing more, where the
    likelier story is a wrong file given as B. The checkpoints' paths and the series' names are not compared: the
    same files analysed under another name or moved elsewhere give the same fields."""
    def samefile() -> bool:
        try:
            return os.path.samefile(run_a.path, run_b.path)
        except OSError:
            return False

    if (series_a.probe, series_a.layer) == (series_b.probe, series_b.layer) and samefile():
        return (f"A and B are the same store and series ({run_a.path}): every difference is zero (was another run "
                "meant as B?)")

    def fields(record: Record) -> dict[str, Any]:
        return {name: _plain(value) for name, value in record.items() if name not in ("path", "probe", "layer")}

    records_a, records_b = series_a.records, series_b.records
    if not records_a or len(records_a) != len(records_b) or not all(r.get("sha256") for r in records_a) \
            or probe_sha(run_a, series_a) != probe_sha(run_b, series_b) \
            or any(fields(a) != fields(b) for a, b in zip(records_a, records_b, strict=True)):
        return None
    return ("stores A and B hold the same checkpoints (the same sha256 at every step) with the same fields: every "
            "difference is zero (a copy of one store, or the run analysed twice alike; was another run meant as B?)")


def _largest_outputs(run: Run) -> int | None:
    """The largest C of a store's probes (the C its options' `overlap_k` is recorded against), None without one."""
    counts = [info.n_outputs for info in run.probes.values() if type(getattr(info, "n_outputs", None)) is int]
    return max(counts) if counts else None


def _per_run(line_a: str | None, line_b: str | None) -> list[str]:
    """compare's notes of a line each run may have: one for both where they say the same, else one a run."""
    if line_a is not None and line_a == line_b:
        return [f"runs A and B: {line_a}"]
    return [f"run {side}: {line}" for side, line in (("A", line_a), ("B", line_b)) if line is not None]


def zero_one_notes(run_a: Run, series_a: Series, run_b: Run, series_b: Series) -> list[str]:
    """compare's notes on runs whose probes hold float 0/1 targets, or targets that carry no energy
    (`targets_caveat`): one for both runs when their probes have one name and the same line, else one for each
    run that has one."""
    both = " of runs A and B"
    if series_a.probe == series_b.probe and (line := targets_caveat(run_a, series_a, of=both)) is not None \
            and line == targets_caveat(run_b, series_b, of=both):
        return [line]
    return [caveat for run, series, of in ((run_a, series_a, " of run A"), (run_b, series_b, " of run B"))
            if (caveat := targets_caveat(run, series, of=of)) is not None]


def device_difference_note(run_a: Run, series_a: Series, run_b: Run, series_b: Series) -> str | None:
    """A note when the two series compared were computed on different devices (their stores' history, read with
    `history=True`: `series_devices`), or None (the same, or not recorded on either side). The model's float32
    forward pass rounds differently on a CPU and a GPU, and on two GPUs (fdl keeps TF32 off, which bounds
    it but does not remove it): the smallest differences between the runs may be the devices'."""
    on_a, on_b = series_devices(run_a, series_a), series_devices(run_b, series_b)
    if not on_a or not on_b or set(on_a) == set(on_b):
        return None
    return (f"the runs were computed on different devices (A: {', '.join(on_a)}; B: {', '.join(on_b)}): the model's "
            "forward pass rounds differently on each, so the smallest differences between the runs may be the "
            "devices', not training's (analyse both on one device to compare training alone)")


def series_devices(run: Run, series: Series) -> list[str]:
    """The devices that computed a series' checkpoints, in step order: at a step the store's series was added to
    later (a probe or layer added: `Run.added`), the device of that run; at the others, that of the run that
    computed the checkpoint (`Run.history`); those not recorded are left out. A store's other series are no
    concern of it (compare read the devices of every checkpoint, not those of an added series compared)."""
    steps = set(series.steps)
    rows: dict[int, Mapping[str, Any] | None] = {
        step: row for row, checkpoint_steps in run.history for step in checkpoint_steps if step in steps}
    rows.update({step: row for row, key, added_steps in run.added if key == (series.probe, series.layer)
                 for step in added_steps if step in steps})
    return list(dict.fromkeys(str(row["device"]) for _, row in sorted(rows.items())
                              if row is not None and row.get("device") is not None))


#: Fields of the compare table (differences B − A), chosen to fit 100 columns.
COMPARE_FIELDS: tuple[str, ...] = ("d_lr", "cka_init", "overlap_init", "k95_utility", "pi_hat_C", "accuracy")


def compare_fields(comparison: Comparison) -> tuple[str, ...]:
    """The fields of the compare table: COMPARE_FIELDS, with R² in the accuracy's place where both runs' probes
    are regression ones (a record with an r2 and none with an accuracy), as `table_fields` gives the report's: the
    table's Δ acc of two regression runs was a column of "—", their R² named among the other fields. Beside R²
    the worst output's (`r2_min`, "Δ worst r2") where a record has one, as the report's table shows it."""
    records = [getattr(compared, side, {}) for compared in comparison.steps for side in ("record_a", "record_b")]
    if records and not _measures_targets(records):  # neither probe has targets: Δ acc was "—" at every step
        return tuple(name for name in COMPARE_FIELDS if name != "accuracy")
    regression = any(r.get("r2") is not None for r in records) and all(r.get("accuracy") is None for r in records)
    worst = ("r2_min",) if any(r.get("r2_min") is not None for r in records) else ()
    return tuple(shown for name in COMPARE_FIELDS
                 for shown in (("r2", *worst) if regression and name == "accuracy" else (name,)))


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    """The comparison for `--format json`: matched steps with both records, B − A and the overlap."""
    return {
        "a": str(comparison.path_a),
        "b": str(comparison.path_b),
        "steps": [
            {
                "step_a": compared.match.step_a,
                "step_b": compared.match.step_b,
                "exact": compared.match.exact,
                "overlap": compared.overlap,
                "overlap_k": compared.overlap_k,
                # whether the overlap was computed here (one of the --overlap-steps): a null `overlap` is then one
                # that cannot be (no eigenfunction stored on a side, bases spanning the anchors), else a step left out
                "overlap_computed": compared.overlap_computed,
                "differences": {name: _clean(value) for name, value in compared.differences.items()},
                **{side: {**_series_keys(comparison, side),
                          **{name: _clean(record.get(name))
                             for name in compared_fields(compared.record_a, compared.record_b)}}
                   for side, record in (("a", compared.record_a), ("b", compared.record_b))},
            }
            for compared in comparison.steps
        ],
        "notes": list(comparison.notes),
        "verdict": comparison.verdict,
        # the verdict in a word, for a script to test: "a", "b", "equal", or null where D_LR cannot tell
        "richer": comparison.richer,
        # whether each run's features moved at the matched steps, as the verdict says it; null: cannot tell
        "moved": dict(zip("ab", comparison.moved, strict=True)),
        # every threshold in force (dlr_tie, and the movement thresholds shared with classify), as `fdl classify
        # --json` gives its own
        "thresholds": dict(comparison.thresholds),
        "option_differences": [
            {"option": d.option, "a": d.a, "b": d.b} for d in comparison.option_differences
        ],
        # only when a run's probe holds float 0/1 targets (its note says what loss and r2 measure), as in
        # `fdl report --format json`: the comparisons of other runs print as before
        **({ZERO_ONE_FIELD: dict(zip("ab", comparison.zero_one_targets, strict=True))}
           if any(comparison.zero_one_targets) else {}),
        # only when a store records checkpoints `fdl analyze` refused, each side's as `fdl classify --json` gives
        # them (null for a side with none): the matched steps leave them out, and the stderr note says so too
        **({"refused_steps": dict(zip("ab", comparison.refused, strict=True))} if any(comparison.refused) else {}),
        # only when a store mixes model code, each side's list as `fdl classify --json` gives it (null for a side
        # without a change): the stderr note says so too
        **({MODEL_CHANGES_FIELD: dict(zip("ab", comparison.model_changes, strict=True))}
           if any(comparison.model_changes) else {}),
        # only when a run's probe is too small for EF (its note says so), as in `fdl report --format json`
        **({SMALL_PROBE_FIELD: dict(zip("ab", comparison.small_probe, strict=True))}
           if any(comparison.small_probe) else {}),
        # only where the runs' previous checkpoints differ at some matched step (`previous_line`): there the
        # differences of PREVIOUS_FIELDS are null, each run's prev_step ("a", "b") the checkpoint its values measure against
        **({"prev_step_differs": [
            {"step_a": compared.match.step_a, "step_b": compared.match.step_b,
             "a": compared.record_a.get("prev_step"), "b": compared.record_b.get("prev_step")}
            for compared in apart]} if (apart := previous_apart(comparison)) else {}),
    }


def _series_keys(comparison: Comparison, side: str) -> dict[str, str | None]:
    """`probe` and `layer` of a compared record, where the comparison names its series (`Comparison.series`)."""
    if comparison.series is None:
        return {}
    probe, layer = comparison.series[0 if side == "a" else 1]
    return {"probe": probe, "layer": layer}


def _compared_path(comparison: Comparison, side: str) -> str:
    """A store as the comparison's header names it: its path, and its series where `Comparison.series` says."""
    path = comparison.path_a if side == "a" else comparison.path_b
    named = _series_keys(comparison, side)
    return f"{path} (probe {named['probe']}, layer {named['layer']})" if named else str(path)


def comparison_to_json(comparison: Comparison) -> str:
    return json.dumps(comparison_to_dict(comparison), indent=2, default=_json_default, allow_nan=False)


def comparison_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Flat rows for `--format csv|markdown`: the matched steps, the overlap, `delta_<field>` = B − A,
    then each run's own values, `a_<field>` and `b_<field>` (a table of the two runs side by side
    needs them, not only their differences)."""
    rows = []
    # each run's prev_step where the runs' previous checkpoints differ at some step (`previous_line`), which leaves
    # `delta_cka_prev` / `delta_overlap_prev` empty there
    previous = ("prev_step",) if previous_apart(comparison) else ()
    for compared in comparison.steps:
        row: dict[str, Any] = {
            "step_a": compared.match.step_a,
            "step_b": compared.match.step_b,
            "exact": compared.match.exact,
            "overlap": compared.overlap,
            "overlap_k": compared.overlap_k,
            "overlap_computed": compared.overlap_computed,
        }
        row.update((f"delta_{name}", _clean(value)) for name, value in compared.differences.items())
        row.update((f"a_{name}", value) for name, value in _series_keys(comparison, "a").items())
        row.update((f"a_{name}", _clean(compared.record_a.get(name))) for name in (*compared.differences, *previous))
        row.update((f"b_{name}", value) for name, value in _series_keys(comparison, "b").items())
        row.update((f"b_{name}", _clean(compared.record_b.get(name))) for name in (*compared.differences, *previous))
        if any(comparison.small_probe):  # last, where a run's probe is too small for EF (its stderr note says so)
            row.update((f"{side}_{SMALL_PROBE_FIELD}", flag) for side, flag in zip("ab", comparison.small_probe,
                                                                                   strict=True))
        rows.append(row)
    return rows


def comparison_to_text(comparison: Comparison, fmt: str) -> str:
    """The comparison as json, csv or markdown (the rows of `comparison_rows`)."""
    if fmt == "json":
        return comparison_to_json(comparison) + "\n"
    rows = comparison_rows(comparison)
    names = list(rows[0]) if rows else ["step_a", "step_b", "exact", "overlap", "overlap_k", "overlap_computed"]
    return rows_to_text(names, rows, fmt)


def rows_to_text(names: Sequence[str], rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Flat rows as csv (null: the empty cell) or a markdown table, with `names` as the header."""
    if fmt == "csv":
        return "".join([csv_line(names), *(csv_line(row[name] for name in names) for row in rows)])
    return markdown_table(names, rows)


def print_comparison(console: Any, comparison: Comparison, options: Sequence[str] = ()) -> None:
    """The human comparison: matched-step table, the fields that differ, notes and the verdict. `options`: those
    given that choose what is compared (`compare_options`), which the command a narrow terminal is pointed to keeps."""
    console.print(f"A: {_compared_path(comparison, 'a')}\nB: {_compared_path(comparison, 'b')}", markup=False,
                  highlight=False)
    # As `print_run`: a pipe gets the whole table, a narrow terminal fewer columns, named below it.
    table = render_comparison_table(comparison, max_width=console.width if console.is_terminal else None)
    if not console.is_terminal:
        console.width = max(console.width, table.width)
    console.print(table)
    paths = f"{shlex.quote(str(comparison.path_a))} {shlex.quote(str(comparison.path_b))}"
    given = "".join(f" {shlex.quote(option)}" for option in options)
    note = table.left_out_note(f"`fdl compare {paths}{given} 2>&1 | less -S`", "--format csv", "--json")
    if note:
        console.print(note, markup=False, highlight=False)
    for line in difference_lines(comparison):
        console.print(line, markup=False, highlight=False)
    measured = [(c.match, c.overlap) for c in comparison.steps if c.overlap is not None]
    if measured:
        # "last" is the last step with a value, which the step names (the last matched step may have none)
        console.print(
            f"eigenspace overlap A·B ({comparison.overlap_label}): min {min(v for _, v in measured):.4f}, "
            f"last {measured[-1][1]:.4f} at step {_step_pair(measured[-1][0])}",
            markup=False, highlight=False,
        )
    for note in comparison.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(thresholds_line(comparison.thresholds), markup=False, highlight=False)
    console.print(comparison.verdict, markup=False, highlight=False)


def _signed(name: str, value: Any, spec: str | None = None) -> str:
    """A difference B − A as text: "+" or "−" before it, in the field's own digits (`format_value`), or `spec`."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    if spec is not None:
        return ("+" if value > 0 else "−") + number_text(abs(float(value)), spec)
    text = format_value(name, abs(value))
    if isinstance(value, float) and float(text) == 0.0:
        # a difference that the field's 4 decimals round to zero (rounding's, 1e-16 of Π*(C)) read "−0.0000":
        # none, beside the same line's "differs"; its own digits say how small it is
        text = format(abs(value), ".2g")
    return ("+" if value > 0 else "−") + text


def signed_column(name: str, values: Sequence[Any]) -> list[str]:
    """The cells of the compare table's column of the differences of field `name`, one rule down it as
    `column_texts` gives report's columns: the field's own digits (a [0, 1] measure's 4 decimals), or, where a
    difference in the column is one those round to zero, scientific notation in every cell (`+1.500e-05` over
    `−1.000e-04`; `_signed` alone read `+1.5e-05` over `−0.0001`); an exact zero "0", null "—"."""
    tiny = any(isinstance(value, float) and value != 0 and math.isfinite(value)
               and float(format_value(name, abs(value))) == 0.0 for value in values)
    return [_signed(name, value, COLUMN_SCIENTIFIC if tiny else None) for value in values]


#: The columns of the comparison a narrow terminal keeps, in this order (the others follow).
COMPARE_PRIORITY: tuple[str, ...] = ("step A", "step B", "Δ D_LR", "overlap A·B", "Δ acc", "Δ CKA₀")


def compare_options(*, probe: str | None = None, layer: str | None = None, probe_b: str | None = None,
                    layer_b: str | None = None, no_overlap: bool = False, overlap_steps: str = str(OVERLAP_STEPS),
                    thresholds: Sequence[str] = ()) -> list[str]:
    """The options of `fdl compare` given that choose what it compares and says (the series, the overlap, the
    thresholds), in the order `--help` lists them, those at their defaults left out: the command to rerun it."""
    chosen = [(flag, value) for flag, value in
              (("--probe", probe), ("--layer", layer), ("--probe-b", probe_b), ("--layer-b", layer_b))
              if value is not None]
    words = [word for pair in chosen for word in pair]
    words += ["--no-overlap"] if no_overlap else []
    words += ["--overlap-steps", overlap_steps] if overlap_steps != str(OVERLAP_STEPS) else []
    return words + [word for threshold in thresholds for word in ("--threshold", threshold)]


def render_comparison_table(comparison: Comparison, *, max_width: int | None = None) -> PlainTable:
    """Matched steps with the differences (B − A) of the key fields and the cross-run overlap; within
    `max_width` (a terminal's) whole columns are left out, the last of `COMPARE_PRIORITY` last."""
    fields = compare_fields(comparison)
    # no overlap at any step (--no-overlap, or none measurable: a note says why): no column of dashes, which a
    # narrow terminal kept before the fields that hold numbers
    overlap = any(compared.overlap is not None for compared in comparison.steps)
    headers = ["step A", "step B", *("Δ " + HEADERS.get(name, name) for name in fields),
               *(("overlap A·B",) if overlap else ())]
    # each column's cells by one rule (`signed_column`)
    columns = [signed_column(name, [compared.differences.get(name) for compared in comparison.steps])
               for name in fields]
    rows = [
        [
            str(compared.match.step_a),
            str(compared.match.step_b),
            *(column[i] for column in columns),
            *(("—" if compared.overlap is None else f"{compared.overlap:.4f}",) if overlap else ()),
        ]
        for i, compared in enumerate(comparison.steps)
    ]
    # the accuracy's place, R² of regression probes; none where neither probe has targets
    fit = next((name for name in fields if name in ("accuracy", "r2")), None)
    shown = [(None if fit is None else "Δ " + HEADERS.get(fit, fit)) if name == "Δ acc" else name
             for name in COMPARE_PRIORITY]
    priority = [headers.index(name) for name in shown if name is not None and name in headers]
    return PlainTable.fitted(headers, ["right"] * len(headers), rows, title="B − A at matched steps",
                             max_width=max_width, priority=priority, always=3)


#: The name `difference_lines` gives `loss` for a classification probe: the MSE of the logits against the one-hot
#: labels, which beside the cross-entropy read as the training loss ("loss: ... +25.61" of a run trained with cross-entropy).
CLASSIFICATION_LOSS = "loss (MSE(logits, one-hot))"


#: Fields that differ beyond the table's and `regime` are named on one line when more than this many do (two
#: ordinary runs differ in ~20: a line each buried the table's fields and the regime); fewer get their lines.
OTHER_FIELDS_IN_FULL = 3


def difference_lines(comparison: Comparison) -> list[str]:
    """The lines below the compare table: each field of the table (`compare_fields`) and `regime` that differs at
    some matched step, with how many steps and the largest B − A; each numeric field null in one run only (a
    measure one run has and the other has not: Π(C) of outputs without energy, a k_τ never reached, a store
    written before such a measure became null), said apart; the other fields that differ each as the table's
    when at most OTHER_FIELDS_IN_FULL do, else named on one line that points to --format csv / --json (which
    hold every field at every step), and alike those null in one run only, named on a line for each way they are
    (a probe without y left nine such lines). `loss` is named CLASSIFICATION_LOSS where both runs' probes are
    classification ones (an accuracy or a cross-entropy)."""
    fields = {name: (differs, nulls) for name, differs, nulls in _field_lines(comparison)}
    shown = compare_fields(comparison)
    # in the table's order; the worst output's column beside its R² (a line of its own, not among the others)
    first = (*shown, *(("r2_min_output",) if "r2_min" in shown else ()), "regime")
    others = [name for name, (differs, _) in fields.items() if differs is not None and name not in first]
    named = len(others) > OTHER_FIELDS_IN_FULL
    others_null = [name for name, (_, nulls) in fields.items() if nulls is not None and name not in first]
    nulls_named = len(others_null) > OTHER_FIELDS_IN_FULL
    lines = []
    for name in (*first, *(name for name in fields if name not in first)):
        differs, nulls = fields.get(name, (None, None))
        if differs is not None and not (named and name in others):
            lines.append(differs)
        if nulls is not None and not (nulls_named and name in others_null):
            lines.append(f"{_loss_label(comparison, name)}: null in one run only {_null_sides(*nulls)}")
    if named:
        lines.append(f"{len(others)} other fields differ: {', '.join(others)} (B − A of every field at every "
                     "matched step: add --format csv or --json)")
    if nulls_named:
        ways: dict[tuple[int, int], list[str]] = {}
        for name, (_, nulls) in fields.items():
            if nulls is not None and name in others_null:
                ways.setdefault(nulls, []).append(name)
        lines += [f"{counted(len(names), 'other field')} null in one run only {_null_sides(*sides)}: {', '.join(names)}"
                  for sides, names in ways.items()]
    previous = previous_line(comparison)
    return (lines or ["no field differs at any matched step"]) + ([previous] if previous is not None else [])


def _null_sides(in_a: int, in_b: int) -> str:
    """Where a field is null in one run only: "at 3 steps (run B at 3, where run A has a value)"."""
    return (f"at {counted(in_a + in_b, 'step')} ("
            + ", ".join(f"run {run} at {count}, where run {other} has a value"
                        for run, other, count in (("A", "B", in_a), ("B", "A", in_b)) if count) + ")")


def _loss_label(comparison: Comparison, name: str) -> str:
    return CLASSIFICATION_LOSS if name == "loss" and _classification(comparison) else name


def _field_lines(comparison: Comparison) -> Iterator[tuple[str, str | None, tuple[int, int] | None]]:
    """Each record field's line of `difference_lines` when it differs at some matched step (how many steps and the
    largest |B − A|, or a text field's first change) or None, and at how many steps it is null in run A only and
    in run B only, or None (at none). R2_OUTPUT_FIELDS too where the records have them: `r2_min` as a number,
    `r2_min_output` as a text field (the list `r2_outputs` only in --json and CSV)."""
    per_output = any(R2_OUTPUT_FIELDS[0] in getattr(compared, side, {}) for compared in comparison.steps
                     for side in ("record_a", "record_b"))
    apart = {id(compared) for compared in previous_apart(comparison)}
    for name in RECORD_FIELDS + (R2_OUTPUT_FIELDS[1:] if per_output else ()):
        if name in ("step", "path", "sha256"):
            continue
        values = [compared.differences.get(name) for compared in comparison.steps]
        numeric = [value for value in values if isinstance(value, (int, float)) and value != 0]
        text = [value for value in values if isinstance(value, str)]
        label = _loss_label(comparison, name)
        differs = None
        if numeric:
            largest = max(numeric, key=abs)
            differs = f"{label}: differs at {counted(len(numeric), 'step')}, largest B − A {_signed(name, largest)}"
        elif text:
            differs = f"{label}: differs at {counted(len(text), 'step')} (e.g. {text[0]})"
        nulls = None
        if (name in INT_FIELDS or name in FLOAT_FIELDS or name == "r2_min") and name != "prev_step":
            # a step left out of the previous fields (`previous_line` says why) is no null of either run's there
            kept = [compared for compared in comparison.steps if name not in PREVIOUS_FIELDS or id(compared) not in apart]
            sides = [(getattr(compared, "record_a", {}).get(name) is None,
                      getattr(compared, "record_b", {}).get(name) is None) for compared in kept]
            in_a, in_b = sum(1 for a, b in sides if a and not b), sum(1 for a, b in sides if b and not a)
            if in_a or in_b:
                nulls = (in_a, in_b)
        yield name, differs, nulls


def _classification(comparison: Comparison) -> bool:
    """Whether both runs' probes of the comparison are classification ones: each run with a record with an accuracy
    or a cross-entropy (a classification probe against a regression one, `--probe-b`, has a loss B of MSE against
    its targets, not the one-hot labels)."""
    return all(any(record.get("accuracy") is not None or record.get("cross_entropy") is not None
                   for record in (getattr(compared, side, {}) for compared in comparison.steps))
               for side in ("record_a", "record_b"))


# ------------------------------------------------------------------------------------------ export


def _single_series(run: Run, why: str = "export writes one", *, fix: str | None = None) -> Series:
    if len(run.series) != 1:
        labels = ", ".join(series.label for series in run.series)
        raise StoreError(
            f"{run.path} holds several series; {why}",
            got=labels,
            fix=fix or "pick one with --probe NAME and/or --layer NAME",
        )
    return run.series[0]


def trajectories(run: Run, series: Series | None = None) -> dict[str, list[Any]]:
    """Column-oriented records: {'step': [...], field: [...]} for every field (RECORD_FIELDS order: the
    store's /trajectories group, path, sha256 and regime included), of `series` or the run's one series; then
    R2_OUTPUT_FIELDS where its records have them (a run read with `r2_outputs`), as `fdl report --json` gives."""
    chosen = _single_series(run) if series is None else series
    per_output = any(R2_OUTPUT_FIELDS[0] in record for record in chosen.records)
    return {name: [_clean(record.get(name)) for record in chosen.records]
            for name in RECORD_FIELDS + (R2_OUTPUT_FIELDS if per_output else ())}


def select_steps(run: Run, series: Series, steps: Sequence[int] | None) -> Series:
    """`series` with only the records of `steps` (`fdl export --steps`), in step order; every step asked
    for must be stored, or FdlError names those that are not and the stored ones."""
    if steps is None:
        return series
    stored = series.steps
    missing = [step for step in dict.fromkeys(steps) if step not in set(stored)]
    if missing:
        shown = ", ".join(map(str, stored[:12])) + (f", ... ({len(stored)} in all)" if len(stored) > 12 else "")
        raise FdlError(
            f"--steps: {'step' if len(missing) == 1 else 'steps'} {', '.join(map(str, missing))} "
            f"{'is' if len(missing) == 1 else 'are'} not in {run.path} ({series.label})",
            got=f"stored steps: {shown or '(none)'}",
            fix="pick stored steps (`fdl report` lists them)",
        )
    wanted = set(steps)
    return dataclasses.replace(series, records=[record for record in series.records if int(record["step"]) in wanted])


def write_export(
    run: Run, what: str, fmt: str, *, stdout: IO[str], out: Path | None, steps: Sequence[int] | None = None
) -> str | None:
    """Write `fdl export`: csv/json to `stdout` (or `out`), npy as a `.npz` archive to `out`.

    npy: a NumPy `.npz` archive (`np.load(FILE)`) holding `steps` (int64) and, per checkpoint, the
    float64 array `step_<N>` (lengths differ between checkpoints, so nothing is padded; a checkpoint that
    stores no quality: NaN, one a k of its rank); for
    `trajectories`, `steps` and one float64 array per numeric field (null → NaN). `steps`: only those
    checkpoints (each must be stored), in step order. Returns a note for the terminal, or None.

    Stored arrays are read and written one checkpoint at a time: the eigenfunctions of 1 000
    checkpoints at m = 4 096 anchors and K = 64 are 1 GB stored and ~8 GB as CSV text, which must not
    be held in memory. A store that turns out damaged part-way leaves what was written on stdout so far
    (and fdl exits 1 naming the step, and saying the output is incomplete: `_write_rows`); an `out` file is
    replaced only once complete (`whole_or_untouched`).
    """
    if what not in EXPORT_WHATS:
        raise FdlError(f"unknown --what {what!r}", fix=f"use one of {', '.join(EXPORT_WHATS)}")
    if fmt == "npy" and out is None:
        raise FdlError("--format npy writes a binary .npz archive and needs --out FILE", fix="add --out FILE.npz")
    series, tag = export_series(run, what, steps)
    if what == "trajectories":
        columns = trajectories(run, series)
        if fmt == "npy":
            assert out is not None
            arrays: dict[str, np.ndarray] = {"steps": np.asarray(columns["step"], dtype=np.int64)}
            for name, values in columns.items():
                if name in ("step", *STR_FIELDS):  # npy: numeric fields only
                    continue
                if name == R2_OUTPUT_FIELDS[0]:  # (checkpoints, C): a row of NaN where a checkpoint has none
                    # C from the records where no checkpoint exported has them (--steps of a resumed older store)
                    outputs = max((len(v) for v in values if v is not None),
                                  default=max((int(n) for n in columns["n_outputs"] if n is not None), default=0))
                    arrays[name] = np.array([[np.nan] * outputs if v is None else [np.nan if x is None else x for x in v]
                                             for v in values], dtype=np.float64).reshape(len(values), outputs)
                    continue
                arrays[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            _save_npz(out, arrays.items())
            return f"wrote {len(arrays) - 1} trajectories of {counted(len(columns['step']), 'checkpoint')} to {out}"
        text = _trajectories_text(_tagged(columns, tag), fmt)
        if out is not None:
            write_text_file(out, text)
            return f"wrote {what} to {out}"
        stdout.write(text)
        return None
    steps = series.steps
    per_step = _finite(run, series, what, iter_array(run, series, steps, what))
    if fmt == "npy":
        assert out is not None
        # a checkpoint that stores no such array (quality without targets) is NaN at each k of its rank, as
        # null is NaN in the trajectories' archive: without an entry it read as though it were not stored
        stored = (
            (f"step_{step}", np.asarray(_missing(run, series, step) if values is None else values, dtype=np.float64))
            for step, values in per_step
        )
        _save_npz(out, itertools.chain([("steps", np.asarray(steps, dtype=np.int64))], stored))
        return f"wrote {what} of {counted(len(steps), 'checkpoint')} to {out}"
    at = _Reading(steps)
    _write_rows(stdout, out, [(None, tag, at.tally(per_step))], what, fmt, tagged=tag is not None, at=at)
    return None if out is None else f"wrote {what} to {out}"


def export_series(run: Run, what: str, steps: Sequence[int] | None) -> tuple[Series, tuple[str, str] | None]:
    """The series `fdl export` writes of `run` (its one selected series, at `steps`) and the (probe, layer) its rows
    end with, None for a store of one series; FdlError where it cannot be exported (several series, a step not
    stored, no such array stored)."""
    series = select_steps(run, _single_series(run), steps)
    # a store of several series: each row names its series, as `report --format csv|json` does (two exports of
    # two probes, concatenated, are told apart); a store of one keeps its columns
    tag = (str(series.probe), str(series.layer)) if run.several else None
    if what != "trajectories" and series.steps and not _stores_any(run, series, what):
        raise FdlError(
            f"{run.path} stores no {what}",
            got="null at every checkpoint (the probe has no targets)" if what == "quality" else None,
            fix="analyse with a probe holding targets y" if what == "quality" else None,
        )
    return series, tag


def _tagged(columns: Mapping[str, list[Any]], tag: tuple[str, str] | None) -> dict[str, list[Any]]:
    """The trajectories' `columns` with the (probe, layer) columns of `tag` after them (SERIES_FIELDS)."""
    if tag is None:
        return dict(columns)
    count = len(columns["step"])
    return {**columns, **{name: [value] * count for name, value in zip(SERIES_FIELDS, tag, strict=True)}}


@dataclass
class ExportPart:
    """One store of `fdl export STORE...` (`write_export_several`): the store as given, the (probe, layer) of its
    series, whether it holds several (its rows then name that series, and so do every store's), and its
    trajectories' columns (`--what trajectories`) or the steps whose arrays are read when written (the store is
    opened again then, one store at a time)."""

    store: str
    series: tuple[str, str]
    several: bool
    steps: list[int]
    columns: dict[str, list[Any]] | None = None
    #: the store's file that was checked (`StoreReader.file_version`): another when its rows are written replaced it
    version: tuple[int, int, int] | None = None


def export_part(run: Run, store: str, what: str, steps: Sequence[int] | None) -> ExportPart:
    """`run`, given as `store`, as one part of `fdl export STORE...`, checked before any store's row is written:
    FdlError where it cannot be exported (`export_series`), or where an array asked for is damaged. Every such array
    is read here, one at a time (and dropped): data failing its checksum, an array of the wrong rank or one not
    finite shows only when read, and was met while the rows went out, after the other stores'. Reading costs little
    beside the text: docs/benchmarks.md's `--format npy` export of 1 000 checkpoints' eigenfunctions, reading them
    all, took 1.2 s where the CSV took 66 s."""
    series, _ = export_series(run, what, steps)
    columns = trajectories(run, series) if what == "trajectories" else None
    if columns is None:
        for _ in _finite(run, series, what, iter_array(run, series, series.steps, what)):
            pass
    return ExportPart(store, (str(series.probe), str(series.layer)), run.several, series.steps, columns,
                      _file_version(run))


def _file_version(run: Run) -> tuple[int, int, int] | None:
    """`StoreReader.file_version` of the store `opened_run` holds open for `run`; None without one."""
    reader = _open_reader(run)
    return None if reader is None else reader.file_version()


def write_export_several(
    parts: Sequence[ExportPart], what: str, fmt: str, *, stdout: IO[str], out: Path | None,
    probe: str | None, layer: str | None,
) -> str | None:
    """Write `fdl export STORE...` (csv/json): one table of every store's rows, in the order given, each row's first
    column (a JSON record's first key) `store`, the path as given. The columns are the union of the stores' (a
    store of several series adds `probe` and `layer`, which then name a store of one series' too; a regression of
    several outputs `r2_outputs`...), in the order one store has them, empty (null) in the rows of a store without
    them. Trajectories' JSON stays columns (a list a field); the arrays' JSON an array of records. Returns a note
    for the terminal, or None. The parts were checked (`export_part`); a store that fails when read again for its
    rows (replaced since) is an FdlError saying where the output stops (`_write_rows`)."""
    # a store of several series among them: every row names its series, one store's only one too
    tagged = any(part.several for part in parts)
    if what == "trajectories":
        tables = [_tagged(part.columns or {"step": []}, part.series if tagged else None) for part in parts]
        names = [name for name in (*RECORD_FIELDS, *R2_OUTPUT_FIELDS, *SERIES_FIELDS)
                 if any(name in table for table in tables)]
        columns = {"store": [part.store for part, table in zip(parts, tables, strict=True) for _ in table["step"]]}
        for name in names:  # null in the rows of a store without the column
            columns[name] = [value for table in tables for value in table.get(name, [None] * len(table["step"]))]
        text = _trajectories_text(columns, fmt)
        if out is not None:
            write_text_file(out, text)
            return f"wrote {what} of {counted(len(parts), 'store')} to {out}"
        stdout.write(text)
        return None

    at = _Reading()

    def per_store() -> Iterator[tuple[str | None, tuple[str, str] | None, Iterable[tuple[int, np.ndarray | None]]]]:
        for index, part in enumerate(parts):  # each store open while its rows are written (`_write_arrays_text`)
            at.part(part, index, len(parts))
            with at.reading(), opened_run(part.store, probe=probe, layer=layer) as run:
                at.changed = _file_version(run) != part.version
                series = _single_series(run)
                per_step = _finite(run, series, what, iter_array(run, series, part.steps, what))
                yield part.store, part.series if tagged else None, at.tally(per_step)

    _write_rows(stdout, out, per_store(), what, fmt, tagged=tagged, at=at)
    return None if out is None else f"wrote {what} of {counted(len(parts), 'store')} to {out}"


class _Reading:
    """Where an export of stored arrays is (the store and the step whose rows come next), to say where it stopped
    when reading fails after rows went out (`_write_rows`)."""

    def __init__(self, steps: Sequence[int] = ()) -> None:
        self.store: str | None = None  # None: one store's export
        self.of = ""  # which of the stores: "(store 2 of 3)"
        self.steps = list(steps)
        self.done = 0  # the steps whose rows were written
        self.changed = False  # the store's file is not the one checked (`export_part`)

    def part(self, part: ExportPart, index: int, count: int) -> None:
        self.store, self.of, self.steps, self.done, self.changed = (
            part.store, f"(store {index + 1} of {count})", part.steps, 0, False)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """An FdlError of the block (opening or reading a store) as `_ReadFailed`: not one of writing `out`."""
        try:
            yield
        except FdlError as error:
            raise _ReadFailed(error) from None

    def tally(self, per_step: Iterable[tuple[int, np.ndarray | None]]) -> Iterator[tuple[int, np.ndarray | None]]:
        with self.reading():
            for item in per_step:
                yield item
                self.done += 1  # the next asked for: this one's rows are written

    def where(self) -> str:
        """Where the rows stop: "before step 200" (one store's export), "at b.h5 (store 2 of 3), before its step
        200", "... before its first row"."""
        step = f"step {self.steps[self.done]}" if self.done < len(self.steps) else "end"
        if self.store is None:
            return f"before {step}"
        return f"at {self.store} {self.of}, before its {step if self.done else 'first row'}"


class _ReadFailed(Exception):
    """The FdlError of a store read while an export's rows are written (`_Reading.reading`)."""

    def __init__(self, error: FdlError) -> None:
        super().__init__(error.message)
        self.error = error


def _write_rows(
    stdout: IO[str], out: Path | None,
    parts: Iterable[tuple[str | None, tuple[str, str] | None, Iterable[tuple[int, np.ndarray | None]]]],
    what: str, fmt: str, *, tagged: bool, at: _Reading,
) -> None:
    """`_write_arrays_text` of `parts` to `out`, replaced once whole (`whole_or_untouched`), or to `stdout`. A store
    that fails to be read part-way, after rows went out (one replaced since `export_part` checked it, as a running
    `fdl analyze` commits; one store's export, which reads each array once), is an FdlError that says so after the
    store's error: the output incomplete (JSON: no whole document) and where it stops, or `out` not written."""
    place = "on stdout" if out is None else ""  # "": `out` left as it was
    try:
        if out is None:
            _write_arrays_text(stdout, parts, what, fmt, tagged=tagged)
            return
        with (
            writing(out) as target,
            whole_or_untouched(target) as path,
            path.open(text_mode(path), encoding="utf-8") as handle,
        ):
            if path == target:  # written in place (a FIFO, /dev/stdout redirected): incomplete there
                place = f"in {out}"
            _write_arrays_text(handle, parts, what, fmt, tagged=tagged)
    except _ReadFailed as failed:
        why = f" ({at.store} changed after the export checked it: a running `fdl analyze` committed to it?)" \
            if at.changed else ""
        if not place:
            said = f"{out} not written (left as it was): the export stopped {at.where()}{why}"
        elif fmt == "json":
            said = f"the JSON {place} is cut off, no whole document: it stops {at.where()}{why}"
        else:
            said = f"the CSV {place} is incomplete: it stops {at.where()}, and lacks the rows from there on{why}"
        raise FdlError(f"{failed.error.message}\n{said}") from None


def _finite(
    run: Run, series: Series, what: str, per_step: Iterable[tuple[int, np.ndarray | None]]
) -> Iterator[tuple[int, np.ndarray | None]]:
    """`per_step`, refusing a stored array that holds NaN or infinity: fdl stores none (SPEC §8), so such a
    value is damage (another writer, a bit flip under a recomputed checksum), and JSON has no token for it (the
    export ended in a ValueError traceback) while CSV wrote `nan`, read back by every reader as a number."""
    reference = reference_step_of(run.provenance)
    for step, values in per_step:
        if values is not None and not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            redo = "" if step == reference else f", or analyse it again: `fdl analyze ... --out {run.path} --redo {step}`"
            raise StoreError(
                f"{run.path} is damaged at checkpoint step {step} ({series.label}): its stored {what} are not all finite",
                got=f"{bad} of {values.size} values NaN or infinite",
                fix=f"restore the store from a backup{redo}, or re-run `fdl analyze ... --overwrite` to rebuild it",
            )
        yield step, values


def _missing(run: Run, series: Series, step: int) -> np.ndarray:
    """NaN of the length a checkpoint's quality would have, r (its utilities', always stored): its npy entry."""
    (_, utility), = iter_array(run, series, [step], "utility")
    return np.full(0 if utility is None else utility.shape[0], np.nan)


def _stores_any(run: Run, series: Series, what: str) -> bool:
    """Whether some checkpoint of the series stores the array `what` (its datasets' names only: no data is read)."""
    if what != "quality":  # every complete checkpoint has the others (quality is absent without targets)
        return True
    return any(values is not None for _, values in iter_array(run, series, series.steps, what, rows=0))


class _Unseekable:
    """A stream opened for appending (`is_stream`), as zipfile sees it: it may tell but not seek, so
    it writes each member's sizes after its data instead of going back to its header, a write that
    an appended file would put at its end (and opening it "wb" would truncate what the shell opened)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        return self._handle.write(data)

    def tell(self) -> int:
        return self._handle.tell()

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        """Nothing: the handle is closed by whoever opened it."""


def _save_npz(out: Path, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """An `.npz` archive as `np.savez` writes it (uncompressed zip, one `NAME.npy` member each), one
    array at a time, so the arrays may come from a generator."""
    # a file handle keeps the name exactly as given (no '.npz' appended)
    with (
        writing(out) as target,
        whole_or_untouched(target) as path,
        path.open("ab" if is_stream(path) else "wb") as handle,
        zipfile.ZipFile(_Unseekable(handle) if is_stream(path) else handle, mode="w", allowZip64=True) as archive,
    ):
        for name, array in arrays:
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _trajectories_text(columns: Mapping[str, list[Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(dict(columns), indent=2, default=_json_default, allow_nan=False) + "\n"
    return "".join([csv_line(columns), *map(csv_line, zip(*columns.values(), strict=True))])


def _write_arrays_text(
    stream: IO[str],
    parts: Iterable[tuple[str | None, tuple[str, str] | None, Iterable[tuple[int, np.ndarray | None]]]],
    what: str, fmt: str, *, tagged: bool,
) -> None:
    """The per-checkpoint arrays as CSV or JSON, written to `stream` one checkpoint at a time (the
    text is what `csv_line` and `json.dumps(rows, indent=2)` of all the rows would give). `parts`: a store's
    name (its rows' first column `store`; None: one store, no such column), the (probe, layer) its rows end with
    (SERIES_FIELDS; None: a store of one series) and its (step, array) pairs; `tagged`: whether the rows have
    the (probe, layer) columns (empty in the rows of a part without them)."""
    if fmt == "json":
        first = True
        for store, tag, per_step in parts:
            for step, values in per_step:
                row: dict[str, Any] = {} if store is None else {"store": store}
                row.update({"step": step, what: None if values is None else values.astype(np.float64).tolist()})
                if tagged:
                    row.update(zip(SERIES_FIELDS, tag or (None, None), strict=True))
                text = json.dumps(row, indent=2, allow_nan=False).replace("\n", "\n  ")
                stream.write(("[\n  " if first else ",\n  ") + text)
                first = False
        stream.write("[]\n" if first else "\n]\n")
        return
    # Every value is a number: no field needs quoting, so lines are joined directly (`csv_line` costs ~1 µs a
    # cell, minutes for the eigenfunctions of a large run). A checkpoint that stores no such array (quality
    # without targets) is one row of empty cells, as JSON's null: without it the CSV said nothing of that
    # checkpoint, and read as though it were not in the store.
    # The series' names (a layer's may hold a comma) and the store's are quoted by `csv_cell`, once.
    header = "" if not tagged else "," + ",".join(SERIES_FIELDS)
    written = False
    for store, tag, per_step in parts:
        if not written:
            named = "" if store is None else "store,"
            stream.write(f"{named}step,point,k,value{header}\n" if what == "eigenfunctions"
                         else f"{named}step,k,{what}{header}\n")
            written = True
        end = "\n" if not tagged else "," + csv_line(tag or (None, None))
        start = "" if store is None else csv_cell(store) + ","
        if what == "eigenfunctions":
            for step, values in per_step:
                if values is None:
                    stream.write(f"{start}{step},,,{end}")
                    continue
                for point, row in enumerate(values.astype(np.float64).tolist()):
                    stream.write("".join(f"{start}{step},{point},{k},{value!r}{end}"
                                         for k, value in enumerate(row, start=1)))
        else:
            for step, values in per_step:
                if values is None:
                    stream.write(f"{start}{step},,{end}")
                    continue
                listed = values.astype(np.float64).tolist()
                stream.write("".join(f"{start}{step},{k},{value!r}{end}" for k, value in enumerate(listed, start=1)))
