"""The stable field names of fdl's per-checkpoint records (`--format json|csv`, the store's attributes).

Every module that writes or reads a record uses these tuples, so the names live in one place.
A field that does not apply to a checkpoint (no labels, no reference yet, ...) is `None` (JSON null).
"""

from __future__ import annotations

from typing import Final

#: A store's `model` in words where it records none (null): no --model, each checkpoint a module saved whole
#: (pickled, TorchScript, torch.export), as `fdl report`'s provenance and a refused resume say it.
WHOLE_MODULES: Final = "the modules the checkpoints hold, saved whole (no --model)"

#: Fields that identify the checkpoint (the same for every probe and layer).
CHECKPOINT_FIELDS: Final = ("step", "path", "sha256")

#: Fields of one (probe, layer) analysis of one checkpoint, in DESIGN.md order.
MEASURE_FIELDS: Final = (
    "n_probe",
    "n_features",
    "n_outputs",
    "rank",
    "d_lr",
    "output_rank",
    "dlr_alignment",
    "feature_pr",
    "eff_dim",
    "eff_dim_quality",
    "eff_dim_utility",
    "k90_quality",
    "k95_quality",
    "k99_quality",
    "k90_utility",
    "k95_utility",
    "k99_utility",
    "pi_star_C",
    "pi_hat_C",
    "cka_init",
    "cka_prev",
    "overlap_init",
    "overlap_prev",
    "nc1",
    "param_norm",
    "param_dist_init",
    "accuracy",
    "loss",
    "regime",
    # Beyond DESIGN.md's list: R² of a regression probe (SPEC §6), and the step that cka_prev /
    # overlap_prev compare with (the nearest checkpoint before this one, among the run's files, that
    # was analysed successfully: docs/measures.md).
    "r2",
    "prev_step",
    # The mean natural-log cross-entropy of the outputs as logits, for probes with class labels (`loss`
    # stays the MSE against one-hot labels: docs/measures.md). Stores written before it lack it: null
    # there (ADDED_FIELDS).
    "cross_entropy",
)

#: Measure fields added after stores were first written: a store written by an earlier fdl lacks their
#: attributes and trajectory datasets, and reads them as null. The next `fdl analyze` of it adds the
#: datasets, with values at the checkpoints it analyses only (`--overwrite` recomputes the others; a
#: resume recomputes a stored checkpoint's cka_prev / overlap_prev whose prev_step is null, and fills it).
ADDED_FIELDS: Final = frozenset({"cross_entropy", "prev_step"})

#: Fields measured against the checkpoint before this one among those analysed (its step: `prev_step`): two stores
#: with different previous checkpoints at a step (one analysed at a subset of the other's) measure different pairs.
PREVIOUS_FIELDS: Final = ("cka_prev", "overlap_prev")

#: All fields of a record, in output order.
RECORD_FIELDS: Final = CHECKPOINT_FIELDS + MEASURE_FIELDS

#: Extra keys present in every record when a store holds several probes or layers.
SERIES_FIELDS: Final = ("probe", "layer")

#: Extra key of every record of `fdl report --format json|csv|markdown` when a selected series' probe holds
#: float 0/1 targets (the store's `zero_one_targets`; docs/store.md): loss and r2 then compare the raw
#: outputs with 0/1. true for such a series, false (null: not recorded) for the others; absent otherwise.
ZERO_ONE_FIELD: Final = "zero_one_targets"

#: Extra key of every record of `fdl report --format json|csv|markdown` when a selected series' probe is too small
#: for the MF-vs-EF rule to find EF (n ≤ C + mf_extra inputs, n − 1 under --center, before a wider layer: `fdl
#: classify`'s evidence `small_probe`, docs/regimes.md): true for such a series, false for the others; absent
#: otherwise, so the records of every other store are as before. `fdl compare --json` has {"a", "b"} of it, and its
#: CSV `a_small_probe` and `b_small_probe`.
SMALL_PROBE_FIELD: Final = "small_probe"

#: Extra key of every record of `fdl report --format json|csv|markdown` when the store mixes model code (`fdl analyze
#: --accept-model-change` resumed it across an edit of the model's code: its `model_changes`, docs/store.md): the
#: store's list, as `fdl classify --json` gives it (the CSV its JSON text), last; absent otherwise, so the records of
#: every other store are as before. `fdl compare --json` has {"a", "b"} of it (null for a run without a change).
MODEL_CHANGES_FIELD: Final = "model_changes"

#: Extra keys of every record of `fdl report --format json|csv|markdown` when a selected series is a regression of
#: C > 1 outputs whose store holds their R² one by one (the `r2_outputs` dataset: docs/store.md): `r2_outputs` the
#: list of C values (null for a constant target column), `r2_min` the smallest of them and `r2_min_output` its
#: column (from 0); null at checkpoints without the dataset (analysed by an fdl before it) and for other series.
#: Absent otherwise, so the records of every other store are as before. `r2` keeps its pooled meaning.
R2_OUTPUT_FIELDS: Final = ("r2_outputs", "r2_min", "r2_min_output")

#: How a probe's whole-number float targets of one output become the integer class labels fdl reads: a
#: column (n, 1) flattened first, since integer labels of that shape are refused (`probes`). Said by the
#: probe-width error, analyze's 0/1 warning and the readers' 0/1 caveat alike.
INTEGER_LABELS_RECIPE: Final = "y.reshape(-1).astype(np.int64)"

INT_FIELDS: Final = frozenset(
    {
        "step",
        "n_probe",
        "n_features",
        "n_outputs",
        "rank",
        "output_rank",
        "k90_quality",
        "k95_quality",
        "k99_quality",
        "k90_utility",
        "k95_utility",
        "k99_utility",
        "prev_step",
    }
)
STR_FIELDS: Final = frozenset({"path", "sha256", "regime", "probe", "layer"})
FLOAT_FIELDS: Final = frozenset(RECORD_FIELDS) - INT_FIELDS - STR_FIELDS

#: The regimes of SPEC.md §7 (and `undetermined` when the evidence conflicts): the values of the `regime` field, for a
#: reader of stores (the tests draw records from it); fdl's own code spells each where its rule gives it.
REGIMES: Final = ("coefficient", "MF", "EF", "undetermined")


#: How text shows a [0, 1] measure (D_LR, CKA, an accuracy, R²): 4 decimals, in the tables' columns and in a line of
#: prose alike, so that "the accuracy is 0.8125" reads as the table's cell at that step does (the accuracy of a
#: probe of a few thousand points moves in its fourth decimal). JSON and CSV keep the number itself.
UNIT_SPEC: Final = ".4f"


def number_text(value: float, spec: str) -> str:
    """`value` formatted with the format `spec` (".3f", ".4g") for text (tables, notes, verdicts): a value
    that rounds to zero shows no sign, as PEP 682's "z" option does on Python ≥ 3.11 (fdl runs on 3.10).
    The entropy of one class, −1·log 1, is −0.0 and read "cross_entropy -0.000"; `max(-0.0, 0.0)` is −0.0
    too. JSON and CSV keep the number as it is."""
    shown = format(value, spec)
    return shown[1:] if shown.startswith("-") and float(shown.rstrip("%")) == 0.0 else shown
