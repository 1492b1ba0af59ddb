"""Session 24, a researcher's notebook: the numbers of `fdl analyze` into numpy/pandas.

1. docs/store.md's plain-h5py snippet read one trajectory; its string datasets (`path`, `sha256`, `regime`) come
   back from h5py 3 as bytes, which nothing said: the snippet now gives every column, strings as str.
2. Nothing said whether plain h5py may read a store that `fdl analyze` is writing (locking, SWMR?), nor that an
   open handle keeps the store as it was opened: store.md says so, and a handle opened with h5py's defaults does
   not stop a commit.
3. The spectrum over steps (eigenvalue k against the step, the rank varying by checkpoint) and the overlap of the
   eigenfunctions of two steps had no recipe: store.md's second Python snippet gives both, equal to the exports
   and to the stored `overlap_init`.
4. usage.md's "Export" named no key of the `--format npy` archive (only `fdl export --help` did).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli_run import fdl_in_process
from tests.test_s16_docs import SAMPLES, STORE, USAGE

STEPS = [0, 50, 100, 250, 500, 1000]


def _python_blocks(heading: str) -> list[str]:
    """Every ```python block of docs/store.md's section `heading` (up to the next `## `)."""
    section = STORE.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("api") / "run.h5"
    done = fdl_in_process("analyze", SAMPLES, "--probe", f"train={SAMPLES / 'probe.npz'}",
                          "--steps", ",".join(map(str, STEPS)), "-o", store)
    assert done.returncode == 0, done.stderr
    return store


def _report(store: Path) -> list[dict[str, object]]:
    done = fdl_in_process("report", store, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_h5py_snippet_gives_every_column_with_strings_as_str(sample_store: Path) -> None:
    code = _python_blocks("## Reading without fdl")[0].replace('"run.h5"', repr(str(sample_store)))
    scope: dict[str, object] = {}
    exec(compile(code.replace("train/fc2:input", "train/4:input"), "docs/store.md", "exec"), scope)
    columns = scope["columns"]
    assert isinstance(columns, dict)
    records = _report(sample_store)
    assert sorted(columns) == sorted(records[0])
    for name, values in columns.items():
        expected = [record[name] for record in records]
        if name in ("path", "sha256", "regime"):
            assert [type(value) for value in values] == [str] * len(STEPS), name
            assert list(values) == [value if value is not None else "" for value in expected], name
        else:
            assert values.dtype.kind in "fi", name
            np.testing.assert_array_equal(values, np.array([np.nan if v is None else v for v in expected], float))


def test_a_handle_opened_with_h5pys_defaults_keeps_its_store_while_analyze_commits(tmp_path: Path) -> None:
    """The writer replaces the file, never edits it: a notebook's handle (h5py's default file locking) does not
    block a commit, and reads the checkpoints of when it was opened; opening again reads the new ones."""
    store = tmp_path / "run.h5"
    assert fdl_in_process("analyze", SAMPLES, "--steps", "0,50", "-o", store).returncode == 0
    with h5py.File(store, "r") as held:
        done = fdl_in_process("analyze", SAMPLES, "--steps", "0,50,100,1000", "-o", store)
        assert done.returncode == 0, done.stderr
        assert held["trajectories/probe/4:input/step"][()].tolist() == [0, 50]
        assert sorted(held["checkpoints"]) == ["step_0", "step_50"]
    with h5py.File(store, "r") as again:
        assert again["trajectories/probe/4:input/step"][()].tolist() == [0, 50, 100, 1000]
    section = " ".join(STORE.split("## Reading without fdl", 1)[1].split("\n## ", 1)[0].split())
    assert "no SWMR" in section and "open it again" in section


def test_the_notebook_snippet_gives_the_spectrum_over_steps_and_the_overlap(sample_store: Path) -> None:
    blocks = _python_blocks("## Reading from Python")
    assert len(blocks) == 2, "store.md: the records snippet and the notebook tables snippet"
    code = blocks[1]
    assert code.count('"sample.fdl.h5"') == 1
    scope: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace('"sample.fdl.h5"', repr(str(sample_store))), "docs/store.md", "exec"), scope)
    records = _report(sample_store)
    assert scope["records"] == records
    assert scope["steps"] == STEPS
    exported = json.loads(fdl_in_process("export", sample_store, "--what", "eigenvalues", "--format", "json").stdout)
    eigenvalues = scope["eigenvalues"]
    assert isinstance(eigenvalues, np.ndarray)
    width = max(len(row["eigenvalues"]) for row in exported)
    assert eigenvalues.shape == (len(STEPS), width) and width > min(len(row["eigenvalues"]) for row in exported)
    for row, stored in zip(eigenvalues, exported, strict=True):
        np.testing.assert_array_equal(row[: len(stored["eigenvalues"])], stored["eigenvalues"])
        assert np.isnan(row[len(stored["eigenvalues"]):]).all()  # NaN past the checkpoint's rank
    assert scope["k"] == 10  # C of the digits
    assert scope["overlap"] == pytest.approx(records[-1]["overlap_init"], rel=1e-12)
    assert 0.3 < float(scope["overlap"]) < 0.9  # type: ignore[arg-type]


def test_usage_md_names_the_keys_of_the_npz_archives(sample_store: Path, tmp_path: Path) -> None:
    section = " ".join(USAGE.split("\n## Export", 1)[1].split("\n## ", 1)[0].split())
    assert "`steps` (int64) and `step_<N>`" in section and "one float64 array per numeric field" in section
    spectra, columns = tmp_path / "e.npz", tmp_path / "t.npz"
    for what, out in (("eigenvalues", spectra), ("trajectories", columns)):
        assert fdl_in_process("export", sample_store, "--what", what, "--format", "npy", "-o", out).returncode == 0
    with np.load(spectra) as archive:
        assert archive["steps"].dtype == np.int64
        assert sorted(archive.files) == sorted(["steps", *(f"step_{step}" for step in STEPS)])
    with np.load(columns) as archive:
        named = set(re.findall(r"`(\w+)`", section.split("one float64 array per numeric field", 1)[1][:120]))
        assert {"path", "sha256", "regime"} <= named
        assert not named & set(archive.files)
        assert "d_lr" in archive.files and archive["d_lr"].dtype == np.float64


@pytest.mark.parametrize("locking", [{}, {"locking": True}, {"locking": "best-effort"}, {"locking": False}])
def test_a_store_reader_shares_a_handle_the_notebook_holds_open(sample_store: Path, locking: dict[str, object]) -> None:
    """HDF5 refuses a second opening in one process with other locking flags: with `h5py.File(path)` open,
    `StoreReader(path)` failed as "cannot be read as an HDF5 file (truncated, corrupt ...)", its fix to restore
    a backup or rebuild the store with --overwrite. It now shares that opening; the notebook's handle and the
    objects it opened stay usable once the reader is closed."""
    from fdl_cli.store import StoreReader

    with h5py.File(sample_store, "r", **locking) as held:  # type: ignore[arg-type]
        d_lr = held["trajectories/train/4:input/d_lr"]
        with StoreReader(sample_store) as run:
            records = run.records()
            spectrum = run.array(STEPS[-1], "eigenvalues")
        assert [record["step"] for record in records] == STEPS and run.warnings == []
        np.testing.assert_array_equal(d_lr[()], [record["d_lr"] for record in records])
        np.testing.assert_array_equal(held[f"checkpoints/step_{STEPS[-1]}/train/4:input/eigenvalues"][()], spectrum)


def test_the_eigenvalue_csv_pivots_to_the_notebook_s_table(sample_store: Path) -> None:
    """usage.md's pandas pivot needs one row per (step, k), k from 1 up to each checkpoint's rank."""
    done = fdl_in_process("export", sample_store, "--what", "eigenvalues")
    rows = [line.split(",") for line in done.stdout.splitlines()]
    assert rows[0] == ["step", "k", "eigenvalues"]
    by_step: dict[int, list[int]] = {}
    for step, k, _ in rows[1:]:
        by_step.setdefault(int(step), []).append(int(k))
    assert list(by_step) == STEPS
    assert all(ks == list(range(1, len(ks) + 1)) for ks in by_step.values())


def test_flags_it_cannot_share_are_said_as_such_not_as_a_corrupt_store(sample_store: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fdl_cli.errors import StoreError
    from fdl_cli.store import StoreReader

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("Unable to synchronously open file (file locking 'ignore disabled locks' flag values don't match)")

    monkeypatch.setattr(h5py, "File", refuse)
    with pytest.raises(StoreError) as excinfo:
        StoreReader(sample_store)
    error = excinfo.value
    assert str(error).startswith(f"{sample_store} is open in this process already, with HDF5 file-locking flags")
    assert error.fix == "close that h5py.File first, or open it with h5py.File(path, 'r', locking=False), as fdl does"
    assert "overwrite" not in str(error) and "corrupt" not in str(error)
