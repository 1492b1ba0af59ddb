"""Defects found by the review of the twelfth session's change set (readers one array at a time,
exports streamed, --overlap-k, shell completion), each as the behaviour that was wrong."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from tests.test_analyze import fdl
from tests.test_report import make_store

STEPS = (0, 100, 200, 300)


def _reshaped(store: Path, step: int, name: str, shape: tuple[int, ...]) -> None:
    """Rewrite one stored array of one checkpoint with the same values in another rank (a store
    written by hand or by another tool: not what fdl writes)."""
    with h5py.File(store, "r+") as file:
        leaf = file[f"checkpoints/step_{step}/train/fc1"]
        data = leaf[name][()]
        del leaf[name]
        leaf.create_dataset(name, data=data.reshape(shape))


@pytest.mark.parametrize(("name", "shape"), [("eigenfunctions", (-1,)), ("eigenvalues", (-1, 1))])
def test_an_array_of_the_wrong_rank_is_a_damaged_checkpoint_for_every_reader(
    tmp_path: Path, name: str, shape: tuple[int, ...]
) -> None:
    """`StoreReader.array` (exports, compare's overlap, the heat map) read a dataset of any rank, which
    `arrays()` refused as damage: `fdl export --what eigenfunctions` died with a TypeError traceback,
    `--what eigenvalues` exited 0 writing rows like `200,1,[0.5]`, and compare blamed the anchors."""
    store = make_store(tmp_path / "run.h5", steps=STEPS)
    intact = make_store(tmp_path / "intact.h5", steps=STEPS)
    _reshaped(store, 200, name, shape)
    damaged = f"error: {store} is damaged at checkpoint step 200 (train/fc1)"
    for fmt in ("csv", "json"):
        result = fdl("export", store, "--what", name, "--format", fmt)
        assert result.code == 1, result.stdout[-300:]
        assert damaged in result.stderr and f"{name} must be" in result.stderr
    npz = fdl("export", store, "--what", name, "--format", "npy", "--out", tmp_path / "e.npz")
    assert npz.code == 1 and damaged in npz.stderr
    if name == "eigenfunctions":
        compared = fdl("compare", intact, store, "--overlap-steps", "all")
        assert compared.code == 1 and "is damaged at checkpoint step 200" in compared.stderr, compared.stderr
        assert "anchor points" not in compared.stderr


def _flip_a_byte_of(store: Path, step: int, name: str) -> None:
    """Damage one byte of one checkpoint's array data: its Fletcher-32 checksum then fails on reading."""
    with h5py.File(store, "r") as file:
        offset = file[f"checkpoints/step_{step}/train/fc1/{name}"].id.get_chunk_info(0).byte_offset
    data = bytearray(store.read_bytes())
    data[offset + 2] ^= 0xFF
    store.write_bytes(bytes(data))


@pytest.mark.parametrize(("what", "fmt"), [("eigenvalues", "csv"), ("eigenfunctions", "json"), ("utility", "npy")])
def test_an_export_that_fails_part_way_leaves_its_out_file_as_it_was(tmp_path: Path, what: str, fmt: str) -> None:
    """Exports are written one checkpoint at a time. A checkpoint whose data fails its checksum, met
    after the first ones were written, left `--out` truncated: a CSV of the first steps that reads as
    a whole one, an .npz that loads with `steps` naming checkpoints it lacks, and a previous export at
    that path destroyed. Now the file is replaced only once complete."""
    store = make_store(tmp_path / "run.h5", steps=STEPS)
    _flip_a_byte_of(store, 200, what)
    out = tmp_path / "exports" / f"e.{fmt}"
    out.parent.mkdir()
    out.write_text("the previous export\n")
    result = fdl("export", store, "--what", what, "--format", fmt, "--out", out)
    assert result.code == 1
    assert f"error: {store} is damaged at checkpoint step 200 (train/fc1)" in result.stderr
    assert out.read_text() == "the previous export\n"
    assert sorted(path.name for path in out.parent.iterdir()) == [out.name]  # nothing half-written beside it
    fresh = tmp_path / "exports" / f"new.{fmt}"
    assert fdl("export", store, "--what", what, "--format", fmt, "--out", fresh).code == 1
    assert not fresh.exists()


def test_a_complete_export_replaces_the_file_keeping_its_mode_and_links(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run.h5", steps=STEPS)
    expected = fdl("export", store, "--what", "eigenvalues", "--format", "csv").stdout
    assert expected.startswith("step,k,eigenvalues\n0,1,")
    out = tmp_path / "e.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    assert fdl("export", store, "--what", "eigenvalues", "--format", "csv", "--out", out).code == 0
    assert out.read_text() == expected and (out.stat().st_mode & 0o777) == 0o640
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "target.csv")  # dangling until written through
    assert fdl("export", store, "--what", "eigenvalues", "--format", "csv", "--out", link).code == 0
    assert link.is_symlink() and (tmp_path / "target.csv").read_text() == expected
    # a device is written as it is, never replaced by a file
    assert fdl("export", store, "--what", "eigenvalues", "--format", "csv", "--out", "/dev/null").code == 0
    assert Path("/dev/null").is_char_device()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["e.csv", "link.csv", "run.h5", "target.csv"]


def test_a_resume_that_changes_top_k_alone_is_not_told_to_pass_overlap_k(tmp_path: Path) -> None:
    """A store of --top-k 64 (>= C = 4: its overlaps are O_4, no overlap_k recorded) resumed with
    --top-k 2 records overlap_k 4 (k = C differs from min(top_k, C) = 2). The refusal said 'the store's
    overlaps compare the top 4 eigenfunctions (an earlier fdl took them over --top-k ...): pass
    --overlap-k 4', which this run's k already is: passing it was refused again with the same advice."""
    from tests.test_overlap_top_k import _analyze, _run

    folder, model, _ = _run(tmp_path)
    out = tmp_path / "k64.h5"
    assert _analyze(tmp_path, folder, model, out, "--steps", "0,1").code == 0
    for extra in ((), ("--overlap-k", "4")):
        refused = _analyze(tmp_path, folder, model, out, "--top-k", "2", *extra)
        assert refused.code == 1 and "Traceback" not in refused.stderr
        assert "options.top_k: 64 (store) vs 2 (this run)" in refused.stderr
        assert "--overlap-k" not in refused.stderr and "the store records no overlap_k" not in refused.stderr
        assert "fix: pass --overwrite to replace it, or another --out to keep both" in refused.stderr


def _bash_tab(words: list[str], cword: int) -> list[str]:
    """What fdl answers bash's completion function: COMP_WORDS as bash splits the line (at '=' and
    ':' too, COMP_WORDBREAKS), joined with spaces as click's bash script passes them."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "_FDL_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(words), "COMP_CWORD": str(cword)}
    code = "from fdl_cli.cli import main; main()"
    tab = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert tab.returncode == 0 and tab.stderr == "", tab.stderr
    return tab.stdout.split()


def test_bash_completes_store_names_after_an_option_written_with_equals_or_a_colon(tmp_path: Path) -> None:
    """bash hands `--format=json` over as '--format', '=', 'json' and `--layer fc2:input` as 'fc2', ':',
    'input' (checked in an interactive bash): click took 'json', or ':', for the store, so
    `fdl report --format=json run.h5 --layer <Tab>` completed to nothing (zsh and fish pass the words whole)."""
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2:input"))
    other = make_store(tmp_path / "other.h5", layers=("head",))
    layers = ["plain,fc1", "plain,fc2:input"]
    assert _bash_tab(["fdl", "report", "--format", "=", "json", str(store), "--layer", ""], 7) == layers
    assert _bash_tab(["fdl", "export", "--what", "=", "eigenvalues", str(store), "--probe", ""], 7) == ["plain,train"]
    compare = ["fdl", "compare", str(store), "--layer", "fc2", ":", "input", str(other), "--layer-b", ""]
    assert _bash_tab(compare, 9) == ["plain,head"]
    # the option's own value after '=': as before, the names, and click's choices
    assert _bash_tab(["fdl", "report", str(store), "--layer", "=", "fc"], 5) == layers
    assert _bash_tab(["fdl", "report", str(store), "--layer", "="], 4) == layers
    assert _bash_tab(["fdl", "report", str(store), "--format", "=", "j"], 5) == ["plain,json"]


def test_a_model_file_nested_too_deep_to_parse_completes_to_nothing(tmp_path: Path) -> None:
    """`x = 1 + 1 + ...` of 3 000 terms (15 kB) makes ast.parse raise RecursionError, which the Tab
    printed as a traceback into the command line."""
    from tests.test_completion import complete

    model = tmp_path / "model.py"
    model.write_text("def build():\n    pass\n\nx = 1" + " + 1" * 5000 + "\n")
    assert complete(["analyze", "x", "--model"], f"{model}:") == []


@pytest.mark.parametrize("what", ["eigenvalues", "trajectories"])
def test_out_dev_stdout_appended_to_a_file_is_appended_not_replaced(tmp_path: Path, what: str) -> None:
    """`--out /dev/stdout >> log.csv`: /dev/stdout resolves to log.csv, which was then replaced by the
    export alone (the first line lost); a stream under /dev or /proc is written as it is."""
    import subprocess
    import sys

    store = make_store(tmp_path / "run.h5", steps=STEPS)
    log = tmp_path / "log.csv"
    log.write_text("first line\n")
    code = "from fdl_cli.cli import main; main()"
    with log.open("a") as stream:
        result = subprocess.run(
            [sys.executable, "-c", code, "export", str(store), "--what", what, "--format", "csv",
             "--out", "/dev/stdout"], stdout=stream, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr
    expected = fdl("export", store, "--what", what, "--format", "csv").stdout
    assert expected.count("\n") > 2 and log.read_text() == "first line\n" + expected
