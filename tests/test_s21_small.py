"""Session 21, small fixes: the series in the titles of `fdl compare --plots` figures, distinct names for the
compare figures of two series whose names clean to one, the layer (probe) order a resume is told, and classify's
note on a run whose outputs are constant over the probe. Each test failed before its fix; those marked "guard"
pin what the fix must not break."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fdl_cli import report as rep
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process as fdl
from tests.test_report import make_store
from tests.test_s21_zero import _analyze, _checkpoints, _probe

# -- 1. the series compared in the titles of compare's figures ------------------------------------------------------


def _titles(run_a: rep.Run, run_b: rep.Run) -> dict[str, str]:
    from fdl_cli.figures import compare_figures

    comparison = rep.compare_runs(run_a, run_b, overlap=False)
    return {stem: figure.axes[0].get_title() for stem, figure in compare_figures(run_a, run_b, comparison)}


def test_compare_figures_of_stores_of_several_series_name_the_series_in_their_titles(tmp_path: Path) -> None:
    """1. The file names of a compare of stores of several series carry the series, the figures' titles did not
    (a report's HTML titles do): an image opened alone did not say which layer it compared."""
    a = make_store(tmp_path / "a.h5", layers=("fc1", "fc2"))
    b = make_store(tmp_path / "b.h5", layers=("fc1", "fc2"), seed=3)
    same = _titles(rep.load_run(a, layer="fc2"), rep.load_run(b, layer="fc2"))
    assert same == {"compare_trajectories_train-fc2": "feature change over training (train/fc2)",
                    "compare_k95_utility_train-fc2":
                        r"eigenfunctions used by the learned function (k95 of $\hat{\Pi}$) (train/fc2)"}
    other = _titles(rep.load_run(a, layer="fc1"), rep.load_run(b, layer="fc2"))
    assert other["compare_trajectories_train-fc1_vs_train-fc2"] == (
        "feature change over training (A: train/fc1, B: train/fc2)")
    assert other["compare_k95_utility_train-fc1_vs_train-fc2"].endswith(" (A: train/fc1, B: train/fc2)")


def test_compare_figures_of_single_series_stores_keep_their_titles(tmp_path: Path) -> None:
    """1 (guard). Names without the series, titles without it."""
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    assert _titles(rep.load_run(a), rep.load_run(b)) == {
        "compare_trajectories": "feature change over training",
        "compare_k95_utility": r"eigenfunctions used by the learned function (k95 of $\hat{\Pi}$)"}


# -- 2. two series whose names clean to one ------------------------------------------------------------------------


def _names(folder: Path, prefix: str) -> set[str]:
    return {path.name for path in folder.iterdir() if path.name.startswith(prefix)}


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_compares_of_two_series_cleaned_to_one_name_write_distinct_files(tmp_path: Path) -> None:
    """2. Layers fc:input and fc_input both clean to `_train-fc_input`: the compare of one, then of the other,
    into one folder wrote the same names, the second over the first. Each now takes its place among the store's
    series, `_1` and `_2`, as the store's report names its figures; a compare again removes none of the other's."""
    store = make_store(tmp_path / "run.h5", layers=("fc:input", "fc_input"))
    other = make_store(tmp_path / "other.h5", layers=("fc:input", "fc_input"), seed=4)
    plots = tmp_path / "plots"
    for layer in ("fc:input", "fc_input"):
        done = fdl("compare", store, other, "--layer", layer, "--no-overlap", "--plots", plots)
        assert done.returncode == 0, done.stderr
        assert "removed" not in done.stderr  # the other's are named as left, as any other compare's
    names = {f"compare_{stem}_train-fc_input_{index}.{ext}" for stem in ("trajectories", "k95_utility")
             for index in (1, 2) for ext in ("png", "svg")}
    assert _names(plots, "compare_") == names
    listed = json.loads((plots / ".fdl-figures.json").read_text())["files"]
    assert {name: entry["compare"]["series_a"] for name, entry in listed.items()} == {
        name: "train/fc:input" if "_1." in name else "train/fc_input" for name in names}
    again = fdl("compare", store, other, "--layer", "fc:input", "--no-overlap", "--plots", plots)
    assert again.returncode == 0 and "removed" not in again.stderr
    assert _names(plots, "compare_") == names
    # the store's report gives each series the same place
    assert fdl("report", store, "--format", "csv", "--plots", plots).returncode == 0
    assert {"trajectories_train-fc_input_1.png", "trajectories_train-fc_input_2.png"} <= _names(plots, "traj")
    # store B's series of the other layer: both places in the name
    done = fdl("compare", store, other, "--layer", "fc:input", "--layer-b", "fc_input", "--no-overlap",
               "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert (plots / "compare_trajectories_train-fc_input_1_vs_train-fc_input_2.png").is_file()


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_compare_of_a_series_cleaned_to_one_name_removes_the_figures_it_wrote_unnumbered(tmp_path: Path) -> None:
    """2 (guard). The figures an earlier fdl's compare wrote under the shared name, listed under its series, are
    removed by the compare of the same series now that it writes `_1` (the folder's list, across the names)."""
    import hashlib

    store = make_store(tmp_path / "run.h5", layers=("fc:input", "fc_input"))
    plots = tmp_path / "plots"
    assert fdl("compare", store, store, "--layer", "fc:input", "--no-overlap", "--plots", plots).returncode == 0
    listing = json.loads((plots / ".fdl-figures.json").read_text())
    for name in list(listing["files"]):  # as the fdl before the fix named them
        old = name.replace("_1.", ".")
        (plots / old).write_bytes((plots / name).read_bytes())
        listing["files"][old] = {**listing["files"].pop(name),
                                 "sha256": hashlib.sha256((plots / old).read_bytes()).hexdigest()}
        (plots / name).unlink()
    (plots / ".fdl-figures.json").write_text(json.dumps(listing))
    done = fdl("compare", store, store, "--layer", "fc:input", "--no-overlap", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert "note: removed 4 figure files an earlier compare of these stores and series wrote" in done.stderr
    assert _names(plots, "compare_") == {f"compare_{stem}_train-fc_input_1.{ext}"
                                         for stem in ("trajectories", "k95_utility") for ext in ("png", "svg")}


# -- 3. the stored layers (probes) given in another order ----------------------------------------------------------


@pytest.fixture
def two_layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(checkpoints, probe, store of layers [2:input, 0] of 2 checkpoints)."""
    checkpoints = _checkpoints(tmp_path / "ck", steps=2)
    probe = _probe(tmp_path / "probe.npz", np.arange(50) % 3)
    store = tmp_path / "run.h5"
    done = _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "0")
    assert done.returncode == 0, done.stderr
    return checkpoints, probe, store


def test_the_stored_layers_in_another_order_are_told_the_order_that_resumes(two_layers: tuple[Path, Path, Path]) -> None:
    """3. `--layer 0 --layer 2:input` on a store of [2:input, 0] was told only "--overwrite / another --out"
    (which loses the stored series, or splits the run); the fix now gives the store's order, and that resumes."""
    checkpoints, probe, store = two_layers
    before = store.read_bytes()
    swapped = _analyze(checkpoints, probe, store, "--layer", "0", "--layer", "2:input")
    assert swapped.returncode == 1 and "Traceback" not in swapped.stderr
    assert ("fix: the store holds these layers in another order: give them in its order, --layer 2:input --layer 0, "
            "to resume; else pass --overwrite to replace it, or another --out to keep both") in swapped.stderr
    other = _analyze(checkpoints, probe, store, "--layer", "0", "--layer", "2:input", "--top-k", "5")
    assert other.returncode == 1
    assert ("give them in its order, --layer 2:input --layer 0 (the other differences above remain: options.top_k); "
            "else pass --overwrite") in other.stderr
    assert store.read_bytes() == before  # nothing stored is lost
    again = _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "0")
    assert again.returncode == 0, again.stderr  # what the fix names resumes


def test_a_stored_layer_left_out_of_layers_in_another_order_is_told_the_store_order(tmp_path: Path) -> None:
    """3. Store [2:input, 1, 0] resumed with `--layer 0 --layer 2:input`: a layer left out, the others in another
    order; told only "--overwrite / another --out", it is now told the left-out layer and the store's order."""
    checkpoints = _checkpoints(tmp_path / "ck", steps=2)
    probe = _probe(tmp_path / "probe.npz", np.arange(50) % 3)
    store = tmp_path / "run.h5"
    assert _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "1", "--layer", "0").returncode == 0
    done = _analyze(checkpoints, probe, store, "--layer", "0", "--layer", "2:input")
    assert done.returncode == 1
    assert ("fix: the store also holds the layer '1', at every checkpoint: give it too, with the store's layers in its "
            "order, --layer 2:input --layer 1 --layer 0, to resume; else pass --overwrite") in done.stderr


def test_the_stored_probes_in_another_order_resume(tmp_path: Path) -> None:
    """3 (guard). Probes given in another order than the store's (`--probe b=... --probe a=...` on a store of a, b)
    resume as they are: the probes are a table by name. The store keeps its order: report lists a first still."""
    checkpoints = _checkpoints(tmp_path / "ck", steps=3)
    a, b = _probe(tmp_path / "a.npz", np.arange(50) % 3), _probe(tmp_path / "b.npz", np.arange(50) % 2)
    store = tmp_path / "run.h5"
    model = ("--model", "tests.tiny_models:mlp", "-o", store)
    (checkpoints / "step_2.pt").rename(tmp_path / "step_2.pt")
    assert fdl("analyze", checkpoints, *model, "--probe", f"a={a}", "--probe", f"b={b}").returncode == 0
    (tmp_path / "step_2.pt").rename(checkpoints / "step_2.pt")
    done = fdl("analyze", checkpoints, *model, "--probe", f"b={b}", "--probe", f"a={a}")
    assert done.returncode == 0, done.stderr
    assert "1 checkpoint analysed, 2 already in the store" in done.stderr
    records = json.loads(fdl("report", store, "--format", "json").stdout)
    records = records["records"] if isinstance(records, dict) else records
    assert [(record["probe"], record["step"]) for record in records] == [("a", 0), ("a", 1), ("a", 2),
                                                                         ("b", 0), ("b", 1), ("b", 2)]


# -- 4. classify of a run whose outputs are constant over the probe -------------------------------------------------

CONSTANT_NOTE = ("the model's outputs are constant over the probe at the final checkpoint (step 3; output_rank 0: a "
                 "zero or constant head?), so the regime reads nothing learned")


@pytest.fixture(scope="module")
def constant_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stores of 4 checkpoints: a head of zero weights and a bias (seed 27: a confident MF on Π̂ of the constant),
    a zero head, and a trained one."""
    folder = tmp_path_factory.mktemp("constant_heads")
    probe = _probe(folder / "probe.npz", np.arange(50) % 3)
    for name, head, seed in (("constant", "constant", 27), ("zero", "zero", 27), ("trained", "trained", 27)):
        done = _analyze(_checkpoints(folder / name, head=head, seed=seed), probe, folder / f"{name}.h5")
        assert done.returncode == 0, done.stderr
    return folder


def test_classify_notes_that_constant_outputs_read_nothing_learned(constant_heads: Path) -> None:
    """4. A zero-weight head with a bias: outputs constant over the probe, D_LR 1.0 by its degenerate rule, and
    classify said a confident "MF" from Π̂ of that constant with nothing beside it. The verdict stays (its rules are
    docs/regimes.md's); a note says the outputs are constant, in the text and in --json's evidence."""
    verdict = json.loads(fdl("classify", constant_heads / "constant.h5", "--json").stdout)
    assert verdict["regime"] == "MF" and verdict["evidence"]["final_d_lr"] == 1.0  # the verdict is unchanged
    constant = verdict["evidence"]["constant_outputs"]
    assert constant["step"] == 3 and constant["output_rank"] == 0
    assert constant["note"] == (
        CONSTANT_NOTE + ": MF here says only that the features moved (cka_init, overlap_init); D_LR is 1.0 there by "
        "its degenerate rule, and Π̂ (k95_utility, pi_hat_C) measures where the constant lies on the eigenfunctions, "
        "not a learned function")
    text = fdl("classify", constant_heads / "constant.h5")
    assert text.returncode == 0
    lines = text.stdout.splitlines() + text.stderr.splitlines()
    assert lines.count(constant["note"]) == 1
    evidence = next(line for line in lines if line.startswith("evidence: "))
    assert "constant_outputs" not in evidence and "final_output_rank" not in evidence
    # `--expect MF` still passes: a note, not a verdict
    assert fdl("classify", constant_heads / "constant.h5", "--expect", "MF").returncode == 0


def test_classify_of_a_zero_head_notes_it_and_a_trained_head_gets_no_note(constant_heads: Path) -> None:
    """4. A zero head (Π̂ 0/0, undetermined already): the note too, without the MF/EF clause; a trained head
    (guard): no note, and no new key in the evidence."""
    zero = json.loads(fdl("classify", constant_heads / "zero.h5", "--json").stdout)
    assert zero["regime"] == "undetermined"
    assert zero["evidence"]["constant_outputs"]["note"] == (
        CONSTANT_NOTE + "; D_LR is 1.0 there by its degenerate rule, and Π̂ is 0/0 there (the outputs all 0)")
    trained = json.loads(fdl("classify", constant_heads / "trained.h5", "--json").stdout)
    assert "constant_outputs" not in trained["evidence"] and "final_output_rank" not in trained["evidence"]
    said = fdl("classify", constant_heads / "trained.h5")
    assert "constant over the probe" not in said.stdout + said.stderr
