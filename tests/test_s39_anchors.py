"""A probe whose anchor subset, its first m rows (SPEC §5), misrepresents its classes.

cka_init, cka_prev, overlap_init and overlap_prev (and the regime that rests on them) see the first m rows alone. A
probe sorted by class (a torchvision ImageFolder validation set) gave them a few classes silently: the sample's
probe sorted by label, --anchor-size 100, gave anchors of classes [47, 51, 2] of 10 and cka_init 0.875 at step 1000
against 0.550 unsorted. analyze now warns where the anchors' class mix is far from the probe's
(`probes.anchor_class_skew`), and stays silent on a shuffled probe, even of 1 000 classes.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.probes import anchor_class_skew
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import REPO, fdl_in_process
from tests.tiny_models import mlp


def test_a_shuffled_probe_is_not_warned_even_of_many_classes() -> None:
    """ImageNet-like: 1 000 classes of 50, 4 096 anchors of 50 000, where ~1.4 % of the classes are absent from
    random anchors and their class mix differs from the probe's by ~0.19 by chance; and 10 or 2 classes."""
    cases = [
        (np.repeat(np.arange(1000), 50), 4096),
        (np.repeat(np.arange(10), 500), 4096),
        (np.repeat(np.arange(2), 50), 10),
        (np.repeat(np.arange(3), 100), 30),
    ]
    for labels, m in cases:
        for seed in range(5):
            assert anchor_class_skew(np.random.default_rng(seed).permutation(labels), m) is None, (labels.max(), m)


def test_a_sorted_probe_is_warned() -> None:
    imagenet = anchor_class_skew(np.repeat(np.arange(1000), 50), 4096)
    assert imagenet is not None
    assert (imagenet.held, imagenet.classes, imagenet.m, imagenet.n) == (82, 1000, 4096, 50000)
    assert abs(imagenet.distance - 0.918) < 1e-9 and imagenet.random < 0.25
    # the audit's default case: 10 classes of 500, the first 4 096 of 5 000 rows lack class 9 alone
    ten = anchor_class_skew(np.repeat(np.arange(10), 500), 4096)
    assert ten is not None and (ten.held, ten.classes) == (9, 10)
    assert abs(ten.distance - 0.5 * (8 * (500 / 4096 - 0.1) + (0.1 - 96 / 4096) + 0.1)) < 1e-9


def test_every_row_an_anchor_is_never_warned() -> None:
    assert anchor_class_skew(np.repeat(np.arange(10), 50), 500) is None
    assert anchor_class_skew(np.repeat(np.arange(10), 50), 4096) is None


def test_the_bundled_sample_probe_is_not_warned_and_sorted_it_is() -> None:
    labels = np.load(REPO / "sample_checkpoints" / "probe.npz")["y"]
    for m in (20, 100, 250, 499):
        assert anchor_class_skew(labels, m) is None, m
    skew = anchor_class_skew(np.sort(labels), 100)  # the audit's: anchors of classes [47, 51, 2] of 10
    assert skew is not None and (skew.held, skew.classes) == (3, 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """A tiny MLP's two checkpoints analysed on a probe of 4 classes of 30, sorted and shuffled, with 40 anchors
    (the sorted probe's first 40 rows hold classes 0 (30) and 1 (10)): name -> (store, analyze's stderr)."""
    folder = tmp_path_factory.mktemp("anchors")
    run = folder / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(4, 8, 4, seed=step).state_dict(), run / f"step_{step}.pt")
    x = np.random.default_rng(1).normal(size=(120, 4)).astype(np.float32)
    labels = np.repeat(np.arange(4), 30)
    out: dict[str, tuple[Path, str]] = {}
    for name, y in (("sorted", labels), ("shuffled", np.random.default_rng(0).permutation(labels))):
        np.savez(folder / f"{name}.npz", x=x, y=y)
        done = fdl_in_process(
            "analyze",
            run,
            "--model",
            "tests.tiny_models:mlp",
            "--model-kwargs",
            '{"n_in": 4, "hidden": 8, "n_out": 4}',
            "--probe",
            folder / f"{name}.npz",
            "--anchor-size",
            "40",
            "--out",
            folder / f"{name}.h5",
        )
        assert done.returncode == 0, done.stderr
        out[name] = (folder / f"{name}.h5", " ".join(done.stderr.split()))
    return out


#: what analyze, report and classify say of the sorted probe (the path is said by analyze alone)
SAID = (
    "its first 40 of 120 rows, the anchor subset (--anchor-size 40), hold 2 of its 4 classes, in a class mix that "
    "differs from the probe's by 0.50 (total variation"
)
WHY = "cka_init, cka_prev, overlap_init and overlap_prev, and the regime that rests on them, see those rows alone"
FIX = "shuffle the probe's rows once, x and y alike, with a fixed seed, and analyse it into a new store"


def test_analyze_warns_of_a_class_sorted_probe_and_not_of_it_shuffled(runs: dict[str, tuple[Path, str]]) -> None:
    store, said = runs["sorted"]
    assert f"warning: probe 'probe' ({store.with_suffix('.npz')}): {SAID}" in said
    assert WHY in said and FIX in said and "or analyse with --anchor-size 120 (every row)" in said
    assert said.count(SAID) == 1  # once per probe
    assert "anchor subset" not in runs["shuffled"][1] and "class mix" not in runs["shuffled"][1]


def test_the_store_records_it_and_report_and_classify_repeat_it(runs: dict[str, tuple[Path, str]]) -> None:
    store, _ = runs["sorted"]
    with h5py.File(store, "r") as opened:
        recorded = json.loads(opened["probes/probe"].attrs["anchor_skew"])
    assert {key: recorded[key] for key in ("m", "n", "held", "classes")} == {"m": 40, "n": 120, "held": 2, "classes": 4}
    assert recorded["distance"] == pytest.approx(0.5) and 0 < recorded["random"] < 0.25
    for command in (["report"], ["report", "--json"], ["classify"], ["classify", "--json"]):
        done = fdl_in_process(*command, store)
        assert done.returncode == 0, done.stderr
        shown = " ".join((done.stdout + done.stderr).split())
        assert f"note: probe 'probe': {SAID}" in shown and WHY in shown, command
    shuffled, _ = runs["shuffled"]
    with h5py.File(shuffled, "r") as opened:
        assert "anchor_skew" not in opened["probes/probe"].attrs
    for command in (["report"], ["classify"]):
        done = fdl_in_process(*command, shuffled)
        assert done.returncode == 0 and "anchor subset" not in done.stdout + done.stderr, command


def test_a_damaged_record_is_a_reader_warning(runs: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(runs["sorted"][0], damaged)
    with h5py.File(damaged, "r+") as opened:
        opened["probes/probe"].attrs["anchor_skew"] = '{"m": 40}'
    done = fdl_in_process("classify", damaged)
    assert done.returncode == 0, done.stderr
    shown = " ".join(done.stderr.split())
    assert "probe /probes/probe has anchor_skew = " in shown and "ignored" in shown
    assert "anchor subset" not in shown


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_compare_export_and_the_html_page_repeat_it(runs: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    """compare's overlap A·B and each run's CKA and overlaps, export's CKA and overlap columns and e_k(x) on the
    anchor points, and the --html page's numbers see the first m rows alone: each says so, as report does."""
    store, _ = runs["sorted"]
    shuffled, _ = runs["shuffled"]
    one = fdl_in_process("compare", store, shuffled)
    assert one.returncode == 0, one.stderr
    shown = " ".join((one.stdout + one.stderr).split())
    assert f"run A: probe 'probe': {SAID}" in shown and "run B: probe" not in shown
    both = " ".join(fdl_in_process("compare", store, store).stderr.split())
    assert f"runs A and B: probe 'probe': {SAID}" in both and both.count(SAID) == 1
    for what in ("trajectories", "eigenfunctions"):
        done = fdl_in_process("export", store, "--what", what, "--out", tmp_path / f"{what}.csv")
        assert done.returncode == 0, done.stderr
        assert f"note: probe 'probe': {SAID}" in " ".join(done.stderr.split()), what
    plain = fdl_in_process("export", shuffled, "--what", "trajectories", "--out", tmp_path / "plain.csv")
    assert plain.returncode == 0 and "anchor subset" not in plain.stderr
    page = tmp_path / "page.html"
    done = fdl_in_process("report", store, "--html", page)
    assert done.returncode == 0, done.stderr
    escaped = "note: probe 'probe': " + SAID
    assert escaped.replace("'", "&#x27;") in " ".join(page.read_text().split())


def test_classify_json_carries_the_skew_in_its_evidence(runs: dict[str, tuple[Path, str]]) -> None:
    """A script reading `fdl classify --json` learns of the skew from the evidence, not from stderr alone: the store's
    record and the note (session 40). Absent for the shuffled probe, so other stores' JSON is as before."""
    store, _ = runs["sorted"]
    done = fdl_in_process("classify", store, "--json")
    assert done.returncode == 0, done.stderr
    skew = json.loads(done.stdout)["evidence"]["anchor_skew"]
    assert {key: skew[key] for key in ("m", "n", "held", "classes")} == {"m": 40, "n": 120, "held": 2, "classes": 4}
    assert skew["distance"] == pytest.approx(0.5) and 0 < skew["random"] < 0.25
    assert SAID in " ".join(skew["note"].split()) and WHY in " ".join(skew["note"].split())
    text = fdl_in_process("classify", store)
    shown = text.stdout + text.stderr
    evidence = next(line for line in shown.splitlines() if line.startswith("evidence: "))
    assert "anchor_skew" not in evidence and " ".join(shown.split()).count(SAID) == 1  # said once, as a note
    shuffled = fdl_in_process("classify", runs["shuffled"][0], "--json")
    assert shuffled.returncode == 0 and "anchor_skew" not in json.loads(shuffled.stdout)["evidence"]


def test_a_classify_sweeps_csv_has_an_anchor_skew_column_where_a_store_has_one(
        runs: dict[str, tuple[Path, str]]) -> None:
    """Session 40: the sweep's CSV said nothing of it (a stderr note only)."""
    done = fdl_in_process("classify", runs["shuffled"][0], runs["sorted"][0], "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0][-1] == "anchor_skew" and [row[-1] for row in rows[1:]] == ["False", "True"]
    alone = fdl_in_process("classify", runs["shuffled"][0], runs["shuffled"][0], "--format", "csv")
    assert alone.returncode == 0 and "anchor_skew" not in alone.stdout, alone.stderr
